"""The flat scripts run as a user runs them: subprocesses on small synthetic data."""
import csv
import os
import subprocess
import sys

import numpy as np
import pytest

from vxm_keras.io import load_volfile, save_volfile

from conftest import AFFINE, REPO, SHAPE, blob, scipy_warp, script, user_error  # noqa: F401


def test_train_writes_checkpoints_and_log(dataset):
    run = dataset / 'run'
    assert sorted(p for p in os.listdir(run) if p.endswith('.h5')) == ['0001.h5', '0002.h5']
    rows = list(csv.DictReader(open(run / 'training_log.csv')))
    assert [r['epoch'] for r in rows] == ['0', '1'] and all(np.isfinite(float(r['loss'])) for r in rows)
    assert not [p for p in os.listdir(run) if p.startswith('.')], 'temporary files left behind'


def test_train_resumes_from_checkpoint_epoch(dataset, tmp_path):
    import shutil
    run = tmp_path / 'run'
    shutil.copytree(dataset / 'run', run)
    script('train.py', '--data-dir', dataset / 'train', '--atlas', dataset / 'atlas.npz',
           '--epochs', 3, '--steps-per-epoch', 2, '--model-dir', run, '--load-model', run / '0002.h5')
    assert sorted(p for p in os.listdir(run) if p.endswith('.h5')) == ['0001.h5', '0002.h5', '0003.h5']
    rows = list(csv.DictReader(open(run / 'training_log.csv')))
    assert [r['epoch'] for r in rows] == ['0', '1', '2']


def test_train_scan_to_scan_and_bad_input(dataset, tmp_path):
    run = tmp_path / 'run'
    # bfloat16 U-Net on the CPU (--mixed-precision): the field and the warped image stay float32
    proc = script('train.py', '--data_dir', dataset / 'train', '--atlas', 'none', '--image-loss', 'mse',
                  '--epochs', 1, '--steps_per_epoch', 2, '--model_dir', run, '--mixed-precision')
    assert 'U-Net in bfloat16' in proc.stdout
    rows = list(csv.DictReader(open(run / 'training_log.csv')))
    assert np.isfinite(float(rows[0]['loss']))
    import vxm_keras
    model = vxm_keras.load_model(run / '0001.h5')
    moved, field = model.predict([np.ones((1, *SHAPE, 1), np.float32)] * 2, verbose=0)
    assert moved.dtype == field.dtype == np.float32 and np.isfinite(field).all()
    bad = tmp_path / 'bad'
    bad.mkdir()
    save_volfile(bad / 'a.npz', np.zeros((30, 32, 32), np.float32))
    save_volfile(bad / 'b.npz', np.zeros((30, 32, 32), np.float32))
    err = user_error(script('train.py', '--data-dir', bad, '--atlas', 'none', '--model-dir', tmp_path / 'r2',
                            check=False))
    assert 'not divisible by 16' in err
    err = user_error(script('train.py', '--data-dir', bad, '--model-dir', tmp_path / 'r3', check=False))
    assert 'a.npz' in err and 'differs' in err  # the default atlas is 160x192x224


def test_train_one_scan_needs_augmentation(dataset, tmp_path):
    one = tmp_path / 'one'
    one.mkdir()
    first = sorted(os.listdir(dataset / 'train'))[0]
    os.symlink(dataset / 'train' / first, one / first)
    err = user_error(script('train.py', '--data-dir', one, '--atlas', 'none', '--model-dir', tmp_path / 'r0',
                            check=False))
    assert first in err and 'at least 2 scans' in err and '--augment' in err
    # with augmentation the scan is paired with itself, each side deformed on its own (trained with
    # the MIND image term: the registry of image losses serves training too)
    run = tmp_path / 'r1'
    script('train.py', '--data-dir', one, '--atlas', 'none', '--augment', '--image-loss', 'mind',
           '--epochs', 1, '--steps-per-epoch', 2, '--model-dir', run, '--seed', 1)
    rows = list(csv.DictReader(open(run / 'training_log.csv')))
    # identical copies would leave nothing to register: a positive image loss shows they differ
    assert float(rows[0]['loss']) > 1e-4 and np.isfinite(float(rows[0]['loss']))
    import keras
    import vxm_keras  # noqa: F401  (registers the losses)
    model = keras.models.load_model(run / '0001.h5')
    assert type(model.loss[0]).__name__ == 'MIND' and model._compile_config.config['loss_weights'] == [2.5, 1.0]


def test_register_writes_outputs_keeping_affine(dataset, tmp_path):
    model = dataset / 'run' / '0002.h5'
    vol, seg = blob(np.array(SHAPE) / 2 + (2, 1, 0))
    save_volfile(tmp_path / 'm.nii.gz', vol, affine=AFFINE)
    save_volfile(tmp_path / 'm_seg.nii.gz', seg, affine=AFFINE)
    out = tmp_path / 'out'
    out.mkdir()
    proc = script('register.py', '--moving', tmp_path / 'm.nii.gz', '--fixed', dataset / 'atlas.npz',
                  '--model', model, '--moved', out / 'moved.nii.gz', '--warp', out / 'warp.npz',
                  '--moving-seg', tmp_path / 'm_seg.nii.gz', '--moved-seg', out / 'moved_seg.nii.gz',
                  '--png', out / 'fig.png')
    assert 'predict' in proc.stdout
    moved, aff = load_volfile(out / 'moved.nii.gz', ret_affine=True)
    np.testing.assert_allclose(aff, AFFINE)
    assert moved.shape == SHAPE
    warp = load_volfile(out / 'warp.npz')
    assert warp.shape == SHAPE + (3,)
    # the moved image is the moving image resampled by the written warp
    ref = scipy_warp(vol[..., None], warp, order=1)[..., 0]
    np.testing.assert_allclose(moved, ref, atol=1e-4)
    moved_seg = load_volfile(out / 'moved_seg.nii.gz')
    ref_seg = scipy_warp(seg[..., None], warp, order=0)[..., 0]
    assert set(np.unique(moved_seg)) <= {0, 17} and np.mean(moved_seg == ref_seg) > 0.999
    assert os.path.getsize(out / 'fig.png') > 1000
    assert sorted(os.listdir(out)) == ['fig.png', 'moved.nii.gz', 'moved_seg.nii.gz', 'warp.npz']

    # an existing output is not replaced without --overwrite, and nothing is touched
    before = (out / 'moved.nii.gz').read_bytes()
    err = user_error(script('register.py', '--moving', tmp_path / 'm.nii.gz', '--fixed', dataset / 'atlas.npz',
                            '--model', model, '--moved', out / 'moved.nii.gz', check=False))
    assert 'moved.nii.gz' in err and '--overwrite' in err
    assert (out / 'moved.nii.gz').read_bytes() == before
    # --overwrite replaces it; with --xla the compiled prediction gives the same field (network alone)
    for name, extra in (('warp_net.npz', []), ('warp_xla.npz', ['--xla'])):
        script('register.py', '--moving', tmp_path / 'm.nii.gz', '--fixed', dataset / 'atlas.npz', '--model', model,
               '--moved', out / 'moved.nii.gz', '--warp', out / name, '--overwrite', '--optimize', 0, *extra)
    np.testing.assert_allclose(load_volfile(out / 'warp_xla.npz'), load_volfile(out / 'warp_net.npz'), atol=1e-4)


def test_register_bad_inputs(dataset, tmp_path):
    model = dataset / 'run' / '0002.h5'
    atlas = dataset / 'atlas.npz'
    save_volfile(tmp_path / 'small.npz', np.random.default_rng(1).random((32, 32, 16)).astype(np.float32))
    save_volfile(tmp_path / 'flat.npz', np.random.default_rng(2).random((32, 32)).astype(np.float32))
    nan = np.zeros(SHAPE, np.float32)
    nan[3, 3, 3] = np.nan
    save_volfile(tmp_path / 'nan.npz', nan)
    np.savez(tmp_path / 'oddkey.npz', image=np.zeros(SHAPE, np.float32), other=np.zeros(3))
    (tmp_path / 'trunc.nii.gz').write_bytes((dataset / 'train' / 's0.npz').read_bytes()[:100])
    save_volfile(tmp_path / 'constant.npz', np.full(SHAPE, 0.5, np.float32))
    save_volfile(tmp_path / 'echoes.nii.gz', np.random.default_rng(0).random(SHAPE + (3,)).astype(np.float32))
    cases = [
        (['--moving', tmp_path / 'missing.npz'], 'missing.npz: file not found'),
        (['--moving', tmp_path / 'small.npz'], 'differs from the fixed scan'),
        (['--moving', tmp_path / 'flat.npz', '--fixed', tmp_path / 'flat.npz'], 'flat.npz: a 2-D scan, but the model registers 3-D'),
        (['--moving', tmp_path / 'nan.npz'], 'NaN'),
        (['--moving', tmp_path / 'constant.npz'], 'constant.npz: every voxel is 0.5: a constant image has nothing'),
        (['--moving', tmp_path / 'constant.npz', '--cross-contrast'], 'constant.npz: every voxel is 0.5'),
        (['--moving', tmp_path / 'echoes.nii.gz'], 'echoes.nii.gz: expected a 2-D or 3-D scan, got shape'),
        (['--moving', tmp_path / 'oddkey.npz'], 'keys found: image, other'),
        (['--moving', tmp_path / 'trunc.nii.gz'], 'trunc.nii.gz: cannot read'),
        (['--moving', atlas, '--model', tmp_path / 'nomodel.h5'], 'nomodel.h5: model file not found'),
        (['--moving', atlas, '--moved', tmp_path / 'nodir' / 'x.npz'], 'does not exist'),
        (['--moving', tmp_path / 'scan.txt'], 'scan.txt: unknown volume format'),
        (['--moving', tmp_path / 'empty.nii.gz'], 'empty.nii.gz: file is empty'),
        (['--moving', atlas, '--model', tmp_path / 'notamodel.h5'], 'notamodel.h5: cannot be loaded'),
        (['--moving', atlas, '--model', tmp_path / 'model2d.h5'], 'a 3-D scan, but the model registers 2-D'),
    ]
    (tmp_path / 'scan.txt').write_text('not a scan')
    (tmp_path / 'empty.nii.gz').write_bytes(b'')
    (tmp_path / 'notamodel.h5').write_bytes(b'\x89HDF\r\n junk')
    import vxm_keras
    vxm_keras.save_model(vxm_keras.vm1((32, 32)), tmp_path / 'model2d.h5')
    for extra, message in cases:
        args = ['--fixed', atlas, '--model', model, '--moved', tmp_path / 'o.npz'] + extra
        err = user_error(script('register.py', *args, check=False))
        assert message in err, (extra, err)
    assert not os.path.exists(tmp_path / 'o.npz')


def test_evaluate_scan_to_scan_and_atlas(dataset, tmp_path):
    model = dataset / 'run' / '0002.h5'
    proc = script('test.py', '--model', model, '--data-dir', dataset / 'train', '--atlas', 'none',
                  '--labels', 17, '--out-dir', tmp_path / 'eval')
    assert '12 registrations' in proc.stdout and 'Jacobian' in proc.stdout
    rows = list(csv.DictReader(open(tmp_path / 'eval' / 'dice.csv')))
    assert len(rows) == 24 and {r['method'] for r in rows} == {'affine', 'model'}
    # the affine rows are the plain Dice of the two label maps
    from vxm_keras.metrics import dice
    a = load_volfile(dataset / 'train' / 's0.npz', key='seg')
    b = load_volfile(dataset / 'train' / 's1.npz', key='seg')
    row = [r for r in rows if r['pair'] == 's0->s1' and r['method'] == 'affine'][0]
    assert float(row['dice']) == pytest.approx(dice(a, b, [17])[1][0])
    assert os.path.getsize(tmp_path / 'eval' / 'dice_boxplot.png') > 1000
    proc = script('test.py', '--model', model, '--data-dir', dataset / 'train', '--atlas', dataset / 'atlas.npz',
                  '--labels', 17)
    assert 'atlas space' in proc.stdout


def test_register_batch_skips_bad_inputs_and_resumes(dataset, tmp_path):
    model = dataset / 'run' / '0002.h5'
    scans = tmp_path / 'scans'
    scans.mkdir()
    for i in range(3):
        vol, _ = blob(np.array(SHAPE) / 2 + (i, -i, 0))
        save_volfile(scans / f'good{i}.nii.gz', vol, affine=AFFINE)
    save_volfile(scans / 'wrongshape.npz', np.random.default_rng(1).random((32, 32, 16)).astype(np.float32))
    save_volfile(scans / 'blank.nii.gz', np.zeros(SHAPE, np.float32), affine=AFFINE)
    (scans / 'broken.nii.gz').write_bytes(b'\x1f\x8b garbage')
    out = tmp_path / 'out'
    proc = script('register.py', '--moving', scans, '--fixed', dataset / 'atlas.npz', '--model', model,
                  '--out-dir', out, '--save-warp', check=False)
    assert proc.returncode == 1 and 'Traceback' not in proc.stderr
    assert 'wrongshape.npz: shape (32, 32, 16) differs' in proc.stderr
    assert 'broken.nii.gz: cannot read' in proc.stderr
    assert 'blank.nii.gz: every voxel is 0: a constant image has nothing to register' in proc.stderr
    assert '3 registered, 0 already done, 3 failed of 6 scans' in proc.stdout
    expected = sorted([f'good{i}_moved.nii.gz' for i in range(3)] + [f'good{i}_warp.nii.gz' for i in range(3)])
    assert sorted(os.listdir(out)) == expected
    # each output equals a single registration of the same scan
    single = tmp_path / 'single.nii.gz'
    script('register.py', '--moving', scans / 'good1.nii.gz', '--fixed', dataset / 'atlas.npz',
           '--model', model, '--moved', single)
    np.testing.assert_allclose(load_volfile(out / 'good1_moved.nii.gz'), load_volfile(single), atol=1e-6)
    np.testing.assert_allclose(load_volfile(out / 'good1_moved.nii.gz', ret_affine=True)[1], AFFINE)

    # a second run refuses to overwrite, --resume skips the finished scans
    os.unlink(out / 'good2_moved.nii.gz')
    (scans / 'list.txt').write_text('good0.nii.gz\ngood1.nii.gz\ngood2.nii.gz\n')
    err = user_error(script('register.py', '--moving-list', scans / 'list.txt', '--fixed', dataset / 'atlas.npz',
                            '--model', model, '--out-dir', out, '--save-warp', check=False))
    assert 'good0_moved.nii.gz: exists' in err
    proc = script('register.py', '--moving-list', scans / 'list.txt', '--fixed', dataset / 'atlas.npz',
                  '--model', model, '--out-dir', out, '--save-warp', '--resume')
    assert '1 registered, 2 already done, 0 failed of 3 scans' in proc.stdout
    assert os.path.exists(out / 'good2_moved.nii.gz')


def test_sigkill_mid_training_leaves_loadable_checkpoints(dataset, tmp_path):
    import signal
    import time
    run = tmp_path / 'run'
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3')
    proc = subprocess.Popen([sys.executable, os.path.join(REPO, 'train.py'), '--data-dir', str(dataset / 'train'),
                             '--atlas', str(dataset / 'atlas.npz'), '--model', 'vm1', '--epochs', '1000',
                             '--steps-per-epoch', '2', '--model-dir', str(run)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not os.path.exists(run / '0003.h5'):
        time.sleep(0.2)
    assert os.path.exists(run / '0003.h5'), 'training did not reach epoch 3'
    time.sleep(0.7)  # somewhere inside a later epoch or a save
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    import vxm_keras
    finished = sorted(p for p in os.listdir(run) if p.endswith('.h5') and not p.startswith('.'))
    assert len(finished) >= 3
    for name in finished:
        vxm_keras.load_model(run / name)  # every visible checkpoint is complete
    rows = list(csv.DictReader(open(run / 'training_log.csv')))
    assert len(rows) >= 3 and all(np.isfinite(float(r['loss'])) for r in rows)
    assert [int(r['epoch']) for r in rows] == list(range(len(rows)))
    # resuming from the last one continues its numbering and clears stale temporary files
    last = finished[-1]
    script('train.py', '--data-dir', dataset / 'train', '--atlas', dataset / 'atlas.npz',
           '--epochs', int(last[:4]) + 1, '--steps-per-epoch', 1, '--model-dir', run, '--load-model', run / last)
    assert os.path.exists(run / f'{int(last[:4]) + 1:04d}.h5')
    assert not [p for p in os.listdir(run) if p.startswith('.')]


def test_seeded_run_resumed_equals_straight_run(dataset, tmp_path):
    common = ['--data-dir', dataset / 'train', '--atlas', dataset / 'atlas.npz', '--model', 'vm1',
              '--steps-per-epoch', 3, '--lr', 1e-3, '--seed', 5]
    script('train.py', *common, '--epochs', 2, '--model-dir', tmp_path / 'straight')
    script('train.py', *common, '--epochs', 1, '--model-dir', tmp_path / 'split')
    script('train.py', *common, '--epochs', 2, '--model-dir', tmp_path / 'split',
           '--load-model', tmp_path / 'split' / '0001.h5')
    import vxm_keras
    a = vxm_keras.load_model(tmp_path / 'straight' / '0002.h5').get_weights()
    b = vxm_keras.load_model(tmp_path / 'split' / '0002.h5').get_weights()
    first = vxm_keras.load_model(tmp_path / 'split' / '0001.h5').get_weights()
    assert max(np.abs(x - y).max() for x, y in zip(a, first)) > 1e-4  # epoch 2 did change the weights
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, atol=1e-6)


def test_diffeomorphic_model_end_to_end(dataset, tmp_path):
    run = tmp_path / 'run'
    script('train.py', '--data-dir', dataset / 'train', '--atlas', dataset / 'atlas.npz', '--model', 'vm2diff',
           '--bidir', '--epochs', 1, '--steps-per-epoch', 2, '--model-dir', run)
    rows = list(csv.DictReader(open(run / 'training_log.csv')))
    assert {'transformer_loss', 'transformer_inv_loss', 'flow_params_loss'} <= set(rows[0])
    vol, _ = blob(np.array(SHAPE) / 2 + (1, 1, 0))
    save_volfile(tmp_path / 'm.npz', vol)
    script('register.py', '--moving', tmp_path / 'm.npz', '--fixed', dataset / 'atlas.npz', '--model',
           run / '0001.h5', '--moved', tmp_path / 'moved.npz', '--warp', tmp_path / 'w.npz',
           '--inverse-warp', tmp_path / 'inv.npz')
    assert load_volfile(tmp_path / 'inv.npz').shape == SHAPE + (3,)
    err = user_error(script('register.py', '--moving', tmp_path / 'm.npz', '--fixed', dataset / 'atlas.npz',
                            '--model', dataset / 'run' / '0002.h5', '--moved', tmp_path / 'moved2.npz',
                            '--inverse-warp', tmp_path / 'inv2.npz', check=False))
    assert 'no inverse' in err and not os.path.exists(tmp_path / 'moved2.npz')
    proc = script('test.py', '--model', run / '0001.h5', '--data-dir', dataset / 'train', '--atlas', 'none',
                  '--labels', 17)
    assert 'Jacobian' in proc.stdout


def test_segmentation_supervised_training(dataset, tmp_path):
    run = tmp_path / 'run'
    proc = script('train.py', '--data-dir', dataset / 'train', '--atlas', 'none', '--model', 'vm1',
                  '--seg-weight', 1.0, '--epochs', 2, '--steps-per-epoch', 2, '--model-dir', run, '--seed', 1)
    assert 'auxiliary Dice loss (weight 1.0) on labels [17]' in proc.stdout
    rows = list(csv.DictReader(open(run / 'training_log.csv')))
    assert 'seg_transformer_loss' in rows[0] and float(rows[-1]['seg_transformer_loss']) < 0
    import vxm_keras
    model = vxm_keras.load_model(run / '0002.h5')
    assert len(model.inputs) == 2  # images only at test time
    # resumed with synthetic pairs mixed in (--synth-mix): label maps from a folder of .npz
    maps = tmp_path / 'maps'
    maps.mkdir()
    save_volfile(maps / 'm.npz', np.load(dataset / 'train' / 's0.npz')['seg'], key='seg')
    proc = script('train.py', '--data-dir', dataset / 'train', '--atlas', 'none', '--model', 'vm1',
                  '--seg-weight', 1.0, '--epochs', 3, '--steps-per-epoch', 4, '--model-dir', run,
                  '--load-model', run / '0002.h5', '--synth', maps, '--synth-mix', 0.5, '--seed', 1)
    assert 'synthesis: 1 label maps' in proc.stdout
    row = list(csv.DictReader(open(run / 'training_log.csv')))[-1]
    # wiring only (which step is which is tested in test_augment): it trains, logs and saves
    assert float(row['seg_transformer_loss']) < 0 and float(row['transformer_loss']) < 0
    assert vxm_keras.load_model(run / '0003.h5').count_params() == model.count_params()


def test_train_template_on_scans_with_attributes(dataset, tmp_path):
    files = sorted(os.listdir(dataset / 'train'))
    (tmp_path / 'attrs.csv').write_text('file,age\n' + ''.join(f'{f},{20 + 10 * i}\n' for i, f in enumerate(files)))
    run = tmp_path / 'run'
    script('train_template.py', '--data-dir', dataset / 'train', '--attributes', tmp_path / 'attrs.csv',
           '--epochs', 1, '--steps-per-epoch', 2, '--batch-size', 2, '--model-dir', run)
    out = np.load(run / 'template.npz')
    assert out['templates'].shape == (4, *SHAPE) and out['attributes'].shape == (4, 1)
    assert os.path.getsize(run / 'templates.png') > 1000
    run2 = tmp_path / 'run2'
    script('train_template.py', '--data-dir', dataset / 'train', '--downsize', 2, '--int-downsize', 1,
           '--epochs', 1, '--steps-per-epoch', 1, '--batch-size', 2, '--model-dir', run2)
    template, affine = load_volfile(run2 / 'template.nii.gz', ret_affine=True)
    assert template.shape == (16, 16, 16)
    template_seg = load_volfile(run2 / 'template.npz', key='seg')
    assert template_seg.shape == (16, 16, 16) and set(np.unique(template_seg)) <= {0, 17}
    # resumed from its checkpoint: epoch 2 follows epoch 1 in the same log
    proc = script('train_template.py', '--data-dir', dataset / 'train', '--downsize', 2, '--int-downsize', 1,
                  '--epochs', 2, '--steps-per-epoch', 1, '--batch-size', 2, '--model-dir', run2,
                  '--load-model', run2 / '0001.h5')
    assert 'resuming from' in proc.stdout and os.path.exists(run2 / '0002.h5')
    with open(run2 / 'training_log.csv') as f:
        assert [r['epoch'] for r in csv.DictReader(f)] == ['0', '1']
    err = user_error(script('train_template.py', '--data-dir', dataset / 'train', '--epochs', 3,
                            '--model-dir', run2, '--load-model', dataset / 'run' / '0002.h5', check=False))
    assert 'not a template model' in err
    (tmp_path / 'bad.csv').write_text('file,age\ns0.npz,30\n')
    err = user_error(script('train_template.py', '--data-dir', dataset / 'train', '--attributes',
                            tmp_path / 'bad.csv', '--model-dir', tmp_path / 'r3', check=False))
    assert 'bad.csv: no row for s1.npz' in err


def test_idx_reader(tmp_path):
    import gzip
    import struct
    from vxm_keras.io import VolumeError, load_idx
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    with gzip.open(tmp_path / 'img.gz', 'wb') as f:
        f.write(struct.pack('>HBB', 0, 8, 3) + struct.pack('>III', 2, 3, 4) + images.tobytes())
    np.testing.assert_array_equal(load_idx(tmp_path / 'img.gz'), images)
    (tmp_path / 'bad').write_bytes(b'\x00\x0d\x01\x00')
    with pytest.raises(VolumeError, match='bad: cannot read as IDX'):
        load_idx(tmp_path / 'bad')


def test_nan_loss_stops_training_keeping_good_checkpoints(dataset, tmp_path):
    run = tmp_path / 'run'
    import shutil
    run.mkdir()
    shutil.copy(dataset / 'run' / '0002.h5', run / '0002.h5')
    # an absurd learning rate blows the field up to Inf within a few steps
    proc = script('train.py', '--data-dir', dataset / 'train', '--atlas', dataset / 'atlas.npz', '--lr', 1e30,
                  '--epochs', 6, '--steps-per-epoch', 3, '--model-dir', run, '--load-model', run / '0002.h5',
                  check=False)
    err = user_error(proc)
    assert 'loss became NaN or Inf' in err and 'last good checkpoint' in err
    import vxm_keras
    for name in sorted(p for p in os.listdir(run) if p.endswith('.h5')):
        weights = vxm_keras.load_model(run / name).get_weights()
        assert all(np.isfinite(w).all() for w in weights), name


def test_evaluate_and_prepare_bad_inputs(dataset, tmp_path):
    model = dataset / 'run' / '0002.h5'
    save_volfile(tmp_path / 'noseg.npz', np.zeros(SHAPE, np.float32))
    (tmp_path / 'list.txt').write_text(f'{dataset / "train" / "s0.npz"}\n{tmp_path / "noseg.npz"}\n')
    err = user_error(script('test.py', '--model', model, '--test-list', tmp_path / 'list.txt', '--atlas', 'none',
                            check=False))
    assert "noseg.npz: no key 'seg'" in err
    (tmp_path / 'list2.txt').write_text(f'{tmp_path / "gone.npz"}\n')
    err = user_error(script('test.py', '--model', model, '--test-list', tmp_path / 'list2.txt', check=False))
    assert 'gone.npz: file not found' in err
    err = user_error(script('test.py', '--model', tmp_path / 'nomodel.h5', '--data-dir', dataset / 'train',
                            check=False))
    assert 'nomodel.h5' in err
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3')
    subject = tmp_path / 'fs' / 'sub-x'
    subject.mkdir(parents=True)
    (subject / 'brainmask.mgz').write_bytes(b'')
    for args, message in [([tmp_path / 'nowhere', tmp_path / 'out'], 'nowhere: not found'),
                          ([subject, tmp_path / 'x.npz'], 'no aseg.mgz'),
                          ([tmp_path / 'noseg.npz', tmp_path / 'y.npz'], 'noseg.npz: no voxel-to-world affine')]:
        proc = subprocess.run([sys.executable, '-m', 'vxm_keras.prepare', *map(str, args)], env=env,
                              capture_output=True, text=True)
        assert message in user_error(proc), proc.stderr


def test_train_init_weights_starts_vm2diff_from_a_vm1_checkpoint(dataset, tmp_path):
    run = tmp_path / 'run'
    proc = script('train.py', '--data-dir', dataset / 'train', '--atlas', dataset / 'atlas.npz',
                  '--model', 'vm2diff', '--init-weights', dataset / 'run' / '0002.h5',
                  '--epochs', 1, '--steps-per-epoch', 1, '--model-dir', run)
    assert '8 layers copied' in proc.stdout and '3 start fresh' in proc.stdout, proc.stdout
    assert os.path.isfile(run / '0001.h5')
    both = script('train.py', '--data-dir', dataset / 'train', '--init-weights', dataset / 'run' / '0002.h5',
                  '--load-model', dataset / 'run' / '0002.h5', '--model-dir', tmp_path / 'x', check=False)
    assert 'pass only one' in user_error(both)
    missing = script('train.py', '--data-dir', dataset / 'train', '--model', 'vm2diff',
                     '--init-weights', tmp_path / 'none.h5', '--model-dir', tmp_path / 'y', check=False)
    assert 'none.h5' in user_error(missing)


@pytest.mark.parametrize('name', ['train.py', 'train_template.py'])
@pytest.mark.parametrize('args, message', [
    (['--epochs', 0], '--epochs must be positive, got 0'),
    (['--steps-per-epoch', -3], '--steps-per-epoch must be positive, got -3'),
    (['--batch-size', 0], '--batch-size must be positive, got 0'),
    (['--load-model', 'missing/0004.h5'], 'missing/0004.h5: model file not found'),
])
def test_training_scripts_check_the_schedule_before_loading_tensorflow(name, args, message, tmp_path):
    proc = script(name, '--data-dir', tmp_path, '--model-dir', tmp_path / 'run', *args, check=False)
    assert message in user_error(proc)
    assert not os.path.exists(tmp_path / 'run')


def test_commands_run_in_process_and_report_user_errors(capsys, tmp_path):
    """A command is callable from Python: ``main(argv)`` returns the exit code, and a user error is
    one line on stderr with code 2, whichever command raised it."""
    from vxm_keras.cli import UserError, execute
    from vxm_keras.commands import evaluate, register, train

    def bad(args):
        raise UserError(f'{args}: not usable')
    assert execute(bad, 'x.npz') == 2
    assert capsys.readouterr().err == 'error: x.npz: not usable\n'
    assert register.main(['--moving', 'm.npz', '--cascade', '0']) == 2
    assert 'error: --optimize must be >= 0 and --cascade >= 1' in capsys.readouterr().err
    assert register.main(['--moving', 'm.npz', '--cross-contrast', '--optimize', '0']) == 2
    assert 'error: --cross-contrast refines from the affine alignment: it needs --optimize > 0' \
        in capsys.readouterr().err
    assert evaluate.main(['--model', 'm.h5', '--data-dir', str(tmp_path), '--synthetic', '-2']) == 2
    assert capsys.readouterr().err == 'error: --synthetic must be >= 0, got -2\n'
    args = train.build_parser().parse_args(['--data-dir', str(tmp_path), '--epochs', '0'])
    assert execute(train.run, args) == 2
    assert capsys.readouterr().err == 'error: --epochs must be positive, got 0\n'
    assert train.main(['--data-dir', str(tmp_path), '--synth', str(tmp_path), '--synth-mix', '1']) == 2
    assert capsys.readouterr().err == 'error: --synth-mix must be a fraction in [0, 1), got 1.0\n'
