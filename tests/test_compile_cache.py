"""XLA's persistent compilation cache (vxm_keras.compile_cache): one folder per kind of machine,
broken entries removed before TensorFlow reads them, and the same numbers from a loaded
executable as from a freshly compiled one."""

import json
import os
import subprocess
import sys

import numpy as np

from vxm_keras import compile_cache

from conftest import REPO

# a function compiled by XLA, run in a fresh process with the cache as vxm_keras.device sets it
_PROGRAM = r'''
import json, sys
from vxm_keras.compile_cache import enable
folder = enable()
import tensorflow as tf
from vxm_keras.losses import NCC
rng = tf.random.Generator.from_seed(3)
fixed, moved = rng.uniform([1, 12, 14, 10, 1]), rng.uniform([1, 12, 14, 10, 1])
ncc = NCC(win=5)
value = float(tf.reduce_mean(ncc.prepared_loss(ncc.prepare(fixed), moved)))
print(json.dumps({'folder': folder, 'value': value}))
'''


def _run(env_changes):
    env = {k: v for k, v in os.environ.items() if k not in ('TF_XLA_FLAGS', 'TF_CPP_MIN_LOG_LEVEL')}
    env.update(env_changes)
    proc = subprocess.run([sys.executable, '-c', _PROGRAM], capture_output=True, text=True, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


def _entries(folder):
    return {e.name: e.stat().st_mtime_ns for e in os.scandir(folder) if e.name.endswith('.pb')}


def test_the_folder_is_named_by_the_cpu_tensorflow_and_xla_flags():
    base = compile_cache.machine_tag(cpu='x86_64 flags=avx avx2 avx512f', tf_version='2.21.0', xla_flags='')
    assert base.startswith('tf-2.21.0-')
    assert compile_cache.machine_tag(cpu='x86_64 flags=avx avx2', tf_version='2.21.0', xla_flags='') != base
    assert compile_cache.machine_tag(cpu='x86_64 flags=avx avx2 avx512f', tf_version='2.20.0', xla_flags='') != base
    assert compile_cache.machine_tag(cpu='x86_64 flags=avx avx2 avx512f', tf_version='2.21.0',
                                     xla_flags='--xla_cpu_use_thunk_runtime=false') != base
    assert compile_cache.machine_tag(cpu='x86_64 flags=avx avx2 avx512f', tf_version='2.21.0', xla_flags='') == base


def test_the_cache_is_off_or_moved_by_its_variable(monkeypatch, tmp_path):
    monkeypatch.setenv(compile_cache.VARIABLE, 'off')
    assert compile_cache.cache_root() is None
    monkeypatch.setenv(compile_cache.VARIABLE, str(tmp_path / 'mine'))
    assert compile_cache.cache_root() == str(tmp_path / 'mine')
    monkeypatch.delenv(compile_cache.VARIABLE)
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'xdg'))
    assert compile_cache.cache_root() == str(tmp_path / 'xdg' / 'vxm_keras' / 'xla')


def test_enable_declines_when_tensorflow_is_loaded_or_the_user_chose_a_cache(monkeypatch, tmp_path):
    monkeypatch.setenv(compile_cache.VARIABLE, str(tmp_path))
    # this test process has TensorFlow loaded already: its flags were read
    assert 'tensorflow' in sys.modules and compile_cache.enable() is None
    monkeypatch.delitem(sys.modules, 'tensorflow')
    monkeypatch.setenv('TF_XLA_FLAGS', '--tf_xla_persistent_cache_directory=/somewhere/else')
    assert compile_cache.enable() is None
    assert os.environ['TF_XLA_FLAGS'] == '--tf_xla_persistent_cache_directory=/somewhere/else'


def test_enable_declines_a_folder_it_cannot_write_or_without_room(monkeypatch, tmp_path):
    monkeypatch.delitem(sys.modules, 'tensorflow')
    monkeypatch.delenv('TF_XLA_FLAGS', raising=False)
    blocker = tmp_path / 'a_file'
    blocker.write_text('not a folder')
    monkeypatch.setenv(compile_cache.VARIABLE, str(blocker / 'cache'))
    assert compile_cache.enable() is None
    monkeypatch.setenv(compile_cache.VARIABLE, str(tmp_path / 'with space'))
    assert compile_cache.enable() is None
    monkeypatch.setenv(compile_cache.VARIABLE, str(tmp_path / 'cache'))

    class Full:
        free = compile_cache.MIN_FREE_BYTES - 1
    monkeypatch.setattr(compile_cache.shutil, 'disk_usage', lambda path: Full)
    assert compile_cache.enable() is None
    assert 'TF_XLA_FLAGS' not in os.environ


def test_tidy_removes_broken_entries_stale_temporaries_and_the_oldest_past_the_limit(tmp_path):
    from google.protobuf import struct_pb2
    message = struct_pb2.Struct()
    message.update({'key': 'x' * 300, 'n': 3.0})
    data = message.SerializeToString()
    names = {'old.pb': data, 'new.pb': data, 'empty.pb': b'', 'truncated.pb': data[:37],
             'x.pb.tmp1a2b': data[:10], 'fresh.pb.tmp3c4d': data[:10], 'other.txt': b'kept'}
    for name, content in names.items():
        (tmp_path / name).write_bytes(content)
    now = 1_000_000.0
    for name in names:
        os.utime(tmp_path / name, (now - 10, now - 10))
    os.utime(tmp_path / 'old.pb', (now - 100, now - 100))
    os.utime(tmp_path / 'x.pb.tmp1a2b', (now - 2 * 3600, now - 2 * 3600))
    removed = compile_cache.tidy(str(tmp_path), max_bytes=10 ** 9, now=now)
    assert sorted(removed) == ['empty.pb', 'truncated.pb', 'x.pb.tmp1a2b']
    # past the limit, the oldest entry goes first
    removed = compile_cache.tidy(str(tmp_path), max_bytes=len(data) + 1, now=now)
    assert removed == ['old.pb']
    assert sorted(os.listdir(tmp_path)) == ['.checked', 'fresh.pb.tmp3c4d', 'new.pb', 'other.txt']
    # entries a tidy has seen are not parsed again; ones written since are
    for name, written in [('seen.pb', now - 100), ('since.pb', now + 5)]:
        (tmp_path / name).write_bytes(data[:37])
        os.utime(tmp_path / name, (written, written))
    removed = compile_cache.tidy(str(tmp_path), max_bytes=10 ** 9, now=now + 10)
    assert removed == ['since.pb']


def test_a_later_process_loads_what_the_first_compiled_with_the_same_numbers(tmp_path):
    off, _ = _run({compile_cache.VARIABLE: 'off'})
    assert off['folder'] is None
    first, _ = _run({compile_cache.VARIABLE: str(tmp_path)})
    folder = first['folder']
    assert folder.startswith(str(tmp_path)) and os.path.basename(folder) == compile_cache.machine_tag()
    written = _entries(folder)
    assert written, 'nothing was written to the cache'
    second, stderr = _run({compile_cache.VARIABLE: str(tmp_path)})
    # loaded, not recompiled: no entry rewritten; and TensorFlow's loading noise hidden
    assert _entries(folder) == written
    assert 'E0000' not in stderr and 'SIGILL' not in stderr
    assert first['value'] == second['value'] == off['value']
    # a truncated entry (a crash after the rename) would fail TensorFlow's read: it is removed first
    victim = os.path.join(folder, sorted(written)[0])
    with open(victim, 'rb') as f:
        data = f.read()
    with open(victim, 'wb') as f:
        f.write(data[:len(data) // 3])
    third, _ = _run({compile_cache.VARIABLE: str(tmp_path)})
    assert third['value'] == off['value']
    assert set(_entries(folder)) == set(written)


def test_register_py_gives_the_same_files_with_the_cache(tmp_path):
    """The command as a user runs it, twice with the cache (compiled, then loaded) and once
    without: the moved images are equal to the bit."""
    from vxm_keras import networks, save_model
    from vxm_keras.io import load_volfile, save_volfile
    rng = np.random.default_rng(5)
    shape = (32, 32, 32)
    model_file = str(tmp_path / 'm.h5')
    save_model(networks.vm2(shape), model_file)
    from scipy.ndimage import gaussian_filter
    vols = [np.clip(gaussian_filter(rng.random(shape), 2) * 3 - 1, 0, 1).astype(np.float32) for _ in range(2)]
    save_volfile(str(tmp_path / 'moving.npz'), vols[0])
    save_volfile(str(tmp_path / 'fixed.npz'), vols[1])
    outputs = []
    for run, setting in enumerate([str(tmp_path / 'cache'), str(tmp_path / 'cache'), 'off']):
        out = str(tmp_path / f'moved{run}.npz')
        env = {k: v for k, v in os.environ.items() if k not in ('TF_XLA_FLAGS', 'TF_CPP_MIN_LOG_LEVEL')}
        env[compile_cache.VARIABLE] = setting
        proc = subprocess.run([sys.executable, os.path.join(REPO, 'register.py'), '--moving', str(tmp_path / 'moving.npz'),
                               '--fixed', str(tmp_path / 'fixed.npz'), '--model', model_file, '--moved', out,
                               '--optimize', '3', '--optimize-coarse', '2', '--optimize-fine', '1'],
                              capture_output=True, text=True, env=env)
        assert proc.returncode == 0, proc.stderr
        assert proc.stderr.strip() == ''
        outputs.append(load_volfile(out))
    assert os.listdir(tmp_path / 'cache')
    np.testing.assert_array_equal(outputs[0], outputs[1])
    np.testing.assert_array_equal(outputs[0], outputs[2])
