"""tf.distribute: MirroredStrategy equals single-device training; multi-worker train.py."""
import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np

from conftest import REPO
from vxm_keras.io import save_volfile

MIRRORED = textwrap.dedent("""
    import sys
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices('CPU')[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    import vxm_keras
    from vxm_keras import losses

    rng = np.random.default_rng(0)
    x = rng.random((4, 2, 32, 32, 1)).astype(np.float32)
    inputs, targets = [x[:, 0], x[:, 1]], [x[:, 1], np.zeros((4, 32, 32, 2), np.float32)]

    def train(strategy, epochs=3):
        keras.utils.set_random_seed(0)
        with strategy.scope():
            model = vxm_keras.vm1((32, 32))
            model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=[losses.NCC(win=5), losses.Grad('l2')],
                          loss_weights=[1.0, 0.5])
        if epochs:
            model.fit(inputs, targets, batch_size=4, epochs=epochs, shuffle=False, verbose=0)
        return model.get_weights()

    initial = train(tf.distribute.OneDeviceStrategy('/cpu:0'), epochs=0)
    single = train(tf.distribute.OneDeviceStrategy('/cpu:0'))
    mirrored_strategy = tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1'])
    assert mirrored_strategy.num_replicas_in_sync == 2
    mirrored = train(mirrored_strategy)
    np.savez(sys.argv[1], diff=max(np.abs(a - b).max() for a, b in zip(single, mirrored)),
             moved_single=max(np.abs(a - s).max() for a, s in zip(single, initial)),
             moved_mirrored=max(np.abs(a - s).max() for a, s in zip(mirrored, initial)))
""")


def test_mirrored_strategy_matches_single_device(tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3')
    subprocess.run([sys.executable, '-c', MIRRORED, str(tmp_path / 'out.npz')], check=True, env=env,
                   capture_output=True)
    out = np.load(tmp_path / 'out.npz')
    # both runs trained (three Adam steps of 1e-3 move some weight by about 3e-3) and ended equal
    assert float(out['moved_single']) > 1e-3 and float(out['moved_mirrored']) > 1e-3
    assert float(out['diff']) < 1e-5


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(('127.0.0.1', 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def test_two_workers_train_and_save_one_model(tmp_path):
    data = tmp_path / 'data'
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        save_volfile(data / f's{i}.npz', rng.random((32, 32, 32)).astype(np.float32))
    ports = _free_ports(2)
    cluster = {'worker': [f'127.0.0.1:{p}' for p in ports]}
    procs = []
    for index in range(2):
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3',
                   TF_CONFIG=json.dumps({'cluster': cluster, 'task': {'type': 'worker', 'index': index}}))
        procs.append(subprocess.Popen(
            [sys.executable, os.path.join(REPO, 'train.py'), '--data-dir', str(data), '--atlas', 'none',
             '--model', 'vm1', '--epochs', '2', '--steps-per-epoch', '2', '--batch-size', '2',
             '--model-dir', str(tmp_path / 'run'), '--seed', '0'],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    assert sorted(f for f in os.listdir(tmp_path / 'run')) == ['0001.h5', '0002.h5', 'training_log.csv']
    import csv
    rows = list(csv.DictReader(open(tmp_path / 'run' / 'training_log.csv')))
    assert [r['epoch'] for r in rows] == ['0', '1'] and all(np.isfinite(float(r['loss'])) for r in rows)
    import vxm_keras
    model = vxm_keras.load_model(tmp_path / 'run' / '0002.h5')
    assert model.inshape == (32, 32, 32)
