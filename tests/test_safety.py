"""What the tools promise (README, 'What the tools promise'): nothing a user has is lost,
outputs are whole or absent, and user errors end in one line, not a traceback.
One test per class of defect, each run through the scripts as a user runs them."""
import csv
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, blob, script, user_error
from vxm_keras.io import VolumeError, atomic_path, load_volfile, save_volfile


def _model(dataset):
    return dataset / 'run' / '0002.h5'


def test_outputs_never_replace_inputs(dataset, tmp_path):
    """--overwrite replaces old outputs, never inputs: same path, or a symlink to an input."""
    moving = tmp_path / 'm.npz'
    shutil.copy(dataset / 'train' / 's0.npz', moving)
    before = load_volfile(moving, key='seg')
    common = ['--moving', moving, '--fixed', dataset / 'atlas.npz', '--model', _model(dataset), '--overwrite']
    err = user_error(script('register.py', *common, '--moved', moving, check=False))
    assert 'is also an input (--moving)' in err
    os.symlink(dataset / 'atlas.npz', tmp_path / 'link.npz')
    err = user_error(script('register.py', *common, '--warp', tmp_path / 'link.npz', check=False))
    assert 'is also an input (--fixed)' in err
    np.testing.assert_array_equal(load_volfile(moving, key='seg'), before)
    # prepare: an output that is the input
    proc = subprocess.run([sys.executable, '-m', 'vxm_keras.prepare', str(moving), str(moving), '--overwrite'],
                          capture_output=True, text=True)
    err = user_error(proc)
    assert 'is also an input' in err
    np.testing.assert_array_equal(load_volfile(moving, key='seg'), before)


def test_batch_mode_never_maps_two_scans_to_one_output(dataset, tmp_path):
    for sub in ('dupA', 'dupB'):
        (tmp_path / sub).mkdir()
        shutil.copy(dataset / 'train' / 's0.npz', tmp_path / sub / 'scan.npz')
    listing = tmp_path / 'dup.txt'
    listing.write_text('dupA/scan.npz\ndupB/scan.npz\n')
    out = tmp_path / 'out'
    err = user_error(script('register.py', '--moving-list', listing, '--fixed', dataset / 'atlas.npz',
                            '--model', _model(dataset), '--out-dir', out, check=False))
    assert 'dupA/scan.npz' in err and 'dupB/scan.npz' in err
    assert not out.exists(), 'a refused run leaves no folder behind'


def test_batch_mode_into_its_input_folder_skips_earlier_outputs(dataset, tmp_path):
    folder = tmp_path / 'scans'
    folder.mkdir()
    shutil.copy(dataset / 'train' / 's0.npz', folder / 's0.npz')
    args = ['--moving', folder, '--fixed', dataset / 'atlas.npz', '--model', _model(dataset), '--out-dir', folder]
    script('register.py', *args)
    (folder / '.tmp999-s0_moved.npz').write_bytes(b'partial')  # what a SIGKILL leaves
    proc = script('register.py', *args, '--resume')
    assert sorted(os.listdir(folder)) == ['s0.npz', 's0_moved.npz']
    assert 'outputs of an earlier run' in proc.stderr


def test_training_never_clobbers_a_run(dataset, tmp_path):
    run = tmp_path / 'run'
    shutil.copytree(dataset / 'run', run)
    data = ['--data-dir', dataset / 'train', '--atlas', dataset / 'atlas.npz', '--steps-per-epoch', 1]
    before = (run / '0001.h5').read_bytes()
    # a new run into a run's folder
    err = user_error(script('train.py', *data, '--epochs', 3, '--model-dir', run, check=False))
    assert 'holds a training run' in err and '--load-model' in err
    # resuming from an earlier checkpoint would overwrite the later one
    err = user_error(script('train.py', *data, '--epochs', 3, '--model-dir', run, '--load-model', run / '0001.h5',
                            check=False))
    assert '0002.h5' in err
    assert (run / '0001.h5').read_bytes() == before
    # a renamed checkpoint resumes where it ended (epoch 2), not at 0
    shutil.copy(run / '0002.h5', tmp_path / 'best.h5')
    script('train.py', *data, '--epochs', 3, '--model-dir', run, '--load-model', tmp_path / 'best.h5')
    assert (run / '0001.h5').read_bytes() == before
    # --overwrite: resume from 0001 replacing the later ones; the log reads each epoch once
    script('train.py', *data, '--epochs', 2, '--model-dir', run, '--load-model', run / '0001.h5', '--overwrite')
    assert sorted(p for p in os.listdir(run) if p.endswith('.h5')) == ['0001.h5', '0002.h5']
    rows = list(csv.DictReader(open(run / 'training_log.csv')))
    assert [r['epoch'] for r in rows] == ['0', '1']


@pytest.mark.parametrize('args,message', [
    (['--lr', '-0.01'], '--lr must be positive'),
    (['--lr', '0'], '--lr must be positive'),
    (['--lambda', '-5'], '--lambda must be >= 0'),
])
def test_training_refuses_meaningless_hyperparameters(dataset, tmp_path, args, message):
    err = user_error(script('train.py', '--data-dir', dataset / 'train', *args, '--model-dir', tmp_path / 'r',
                            check=False))
    assert message in err
    assert not (tmp_path / 'r').exists()


def test_user_errors_are_one_line(dataset, tmp_path):
    model = _model(dataset)
    common = ['--fixed', dataset / 'atlas.npz', '--model', model]
    # a figure with a data extension: refused before anything is written
    err = user_error(script('register.py', '--moving', dataset / 'train' / 's0.npz', *common,
                            '--moved', tmp_path / 'moved.npz', '--png', tmp_path / 'fig.npz', check=False))
    assert 'fig.npz' in err and not (tmp_path / 'moved.npz').exists()
    # a list that is not text
    bad_list = tmp_path / 'list.txt'
    bad_list.write_bytes(b'\xff\xfe\x00binary\x80\x81')
    err = user_error(script('register.py', '--moving-list', bad_list, *common, '--out-dir', tmp_path / 'o',
                            check=False))
    assert 'list.txt' in err and 'UTF-8' in err
    # NaN in a label map
    nan_seg = tmp_path / 'nanseg.npz'
    seg = blob((16, 16, 16))[1].astype(np.float32)
    seg[0, 0, 0] = np.nan
    save_volfile(nan_seg, seg, extra={'seg': seg})
    err = user_error(script('register.py', '--moving', dataset / 'train' / 's0.npz', *common, '--moving-seg',
                            nan_seg, '--moved-seg', tmp_path / 'ms.npz', '--moved', tmp_path / 'm.npz', check=False))
    assert 'nanseg.npz' in err and 'NaN' in err
    # GPUs that are not there
    err = user_error(script('register.py', '--moving', dataset / 'train' / 's0.npz', *common, '--gpu', '5',
                            '--moved', tmp_path / 'm2.npz', check=False))
    assert '--gpu 5' in err
    # test.py on labels no scan has
    err = user_error(script('test.py', '--model', model, '--data-dir', dataset / 'train', '--atlas', 'none',
                            '--labels', '9999', check=False))
    assert '9999' in err
    # a foreign Keras model
    import keras
    x = keras.Input((32, 32, 32, 1))
    foreign = tmp_path / 'foreign.h5'
    keras.Model(x, keras.layers.Conv3D(1, 3, padding='same')(x)).save(foreign)
    err = user_error(script('register.py', '--moving', dataset / 'train' / 's0.npz', '--fixed',
                            dataset / 'atlas.npz', '--model', foreign, '--moved', tmp_path / 'm3.npz', check=False))
    assert 'foreign.h5' in err and 'not a vxm_keras registration model' in err


def test_tensorflow_start_up_is_quiet(dataset, tmp_path):
    """No TensorFlow chatter (or a GPU-less machine's 'failed call to cuInit') unless asked."""
    env = {k: v for k, v in os.environ.items() if k != 'TF_CPP_MIN_LOG_LEVEL'}
    proc = subprocess.run([sys.executable, os.path.join(REPO, 'register.py'), '--moving',
                           str(dataset / 'train' / 's0.npz'), '--fixed', str(dataset / 'atlas.npz'),
                           '--model', str(_model(dataset)), '--moved', str(tmp_path / 'm.npz')],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == '', proc.stderr
    # prepare needs no TensorFlow at all
    code = ('import subprocess, sys; out = subprocess.run([sys.executable, "-X", "importtime", "-m", '
            '"vxm_keras.prepare", "--help"], capture_output=True, text=True); '
            'print("tensorflow" in out.stderr)')
    assert subprocess.run([sys.executable, '-c', code], capture_output=True, text=True).stdout.strip() == 'False'


def test_a_terminated_command_leaves_no_temporary_files(tmp_path):
    """kill (SIGTERM, what job schedulers send at a time limit) unwinds a command as Ctrl-C does:
    its temporary outputs are removed, not left hidden beside the user's files (a killed register.py
    left 80 MB of them), and the exit code says so."""
    code = f"""
import os, signal, sys, time
from vxm_keras.cli import execute
from vxm_keras.io import atomic_paths

def command(args):
    with atomic_paths([{str(tmp_path / 'moved.npz')!r}, {str(tmp_path / 'warp.nii.gz')!r}]) as tmps:
        for tmp in tmps.values():
            open(tmp, 'w').write('partial')
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)

sys.exit(execute(command, None))
"""
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 143, (proc.returncode, proc.stderr)
    assert proc.stderr.strip().splitlines()[-1] == 'terminated'
    assert os.listdir(tmp_path) == []


def test_atomic_writes_name_the_users_file_and_never_race(tmp_path):
    target = tmp_path / 'out.npz'
    with pytest.raises(OSError) as info:
        with atomic_path(target) as tmp:
            raise OSError(28, 'No space left on device', tmp)
    assert str(target) in str(info.value) and '.tmp' not in str(info.value)
    assert os.listdir(tmp_path) == []
    # another writer gets there first: without overwrite, its file stays
    with pytest.raises(FileExistsError, match='meanwhile'):
        with atomic_path(target, overwrite=False) as tmp:
            open(tmp, 'w').write('mine')
            open(target, 'w').write('theirs')
    assert target.read_text() == 'theirs' and os.listdir(tmp_path) == ['out.npz']


def test_volume_files_that_lie(tmp_path):
    # a header claiming a huge array is refused before allocating
    huge = tmp_path / 'huge.npy'
    with open(huge, 'wb') as f:
        np.lib.format.write_array_header_1_0(f, {'descr': '<f4', 'fortran_order': False,
                                                 'shape': (40000, 40000, 40000)})
        f.write(b'\0' * 64)
    with pytest.raises(VolumeError, match='GiB'):
        load_volfile(huge)
    # random bytes: no advice to unpickle
    junk = tmp_path / 'junk.npz'
    junk.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(VolumeError) as info:
        load_volfile(junk)
    assert 'allow_pickle' not in str(info.value)
    # integers that a header format cannot hold are refused, not wrapped
    for ext, value in (('.nii.gz', 2 ** 31 + 5), ('.mgz', 2 ** 40)):
        with pytest.raises(VolumeError, match='32-bit'):
            save_volfile(tmp_path / f'big{ext}', np.full((4, 4, 4), value, np.int64 if ext != '.mgz' else np.uint64))
        assert not (tmp_path / f'big{ext}').exists()


def test_a_set_of_outputs_is_written_whole_or_not_at_all(tmp_path):
    from vxm_keras.io import atomic_paths
    paths = [tmp_path / 'moved.npz', tmp_path / 'warp.npz']
    with pytest.raises(OSError) as info:
        with atomic_paths(paths) as tmps:
            save_volfile(tmps[str(paths[0])], np.zeros((4, 4), np.float32), overwrite=True)
            raise OSError(28, 'No space left on device', tmps[str(paths[1])])
    assert str(paths[1]) in str(info.value)
    assert os.listdir(tmp_path) == [], 'neither output, and no temporary file'
    with atomic_paths(paths) as tmps:
        for p in paths:
            save_volfile(tmps[str(p)], np.ones((4, 4), np.float32), overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ['moved.npz', 'warp.npz']


def test_attribute_tables_that_are_not_tables(dataset, tmp_path):
    ragged = tmp_path / 'ragged.csv'
    ragged.write_text('file,age,sex\ns0.npz,30,1\ns1.npz,40\n')
    binary = tmp_path / 'binary.csv'
    binary.write_bytes(b'\xff\xfe,\x80\n\x81,\x82\n')
    for table, message in ((ragged, 'line 3 has 2 fields'), (binary, 'UTF-8')):
        err = user_error(script('train_template.py', '--data-dir', dataset / 'train', '--attributes', table,
                                '--model-dir', tmp_path / 'r', '--epochs', 1, '--steps-per-epoch', 1, check=False))
        assert table.name in err and message in err


def _usage_error(proc):
    """argparse's refusal: exit 2, usage and one '<prog>: error: ...' line, no traceback."""
    assert proc.returncode == 2, proc.stderr
    assert 'Traceback' not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if ': error: ' in line]
    assert len(errors) == 1, proc.stderr
    return errors[0]


@pytest.mark.parametrize('name, args, message', [
    ('train.py', ['--lr', 'inf'], "argument --lr: must be a finite number, got 'inf'"),
    ('train.py', ['--lambda', 'nan'], "argument --lambda/--reg_param: must be a finite number, got 'nan'"),
    ('train.py', ['--int-steps', '-1'], 'argument --int-steps/--int_steps: must be >= 0, got -1'),
    ('train_template.py', ['--downsize', '0'], 'argument --downsize: must be >= 1, got 0'),
    ('register.py', ['--optimize-lambda=-inf'], "argument --optimize-lambda: must be a finite number"),
])
def test_flags_are_checked_as_they_are_read(dataset, tmp_path, name, args, message):
    proc = script(name, '--data-dir' if name != 'register.py' else '--moving', dataset / 'train', *args,
                  '--model-dir' if name != 'register.py' else '--out-dir', tmp_path / 'r', check=False)
    assert message in _usage_error(proc)
    assert not (tmp_path / 'r').exists()


def test_bench_sizes_are_checked_as_they_are_read():
    from vxm_keras.bench.run import build_parser
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(['--sizes', 'abc'])
    assert info.value.code == 2
    assert build_parser().parse_args(['--sizes', '32x32x32', '64X64']).sizes == [(32, 32, 32), (64, 64)]


def test_two_runs_cannot_share_a_run_folder(dataset, tmp_path):
    """A running training holds its folder: a second run into it stops at once, before
    touching anything; once the first ends, the folder is free again."""
    from vxm_keras import runs
    run = tmp_path / 'run'
    held = runs.held_locks()
    runs.lock_run_dir(str(run))  # what a running train.py holds
    try:
        data = ['--data-dir', dataset / 'train', '--atlas', dataset / 'atlas.npz', '--steps-per-epoch', 1]
        err = user_error(script('train.py', *data, '--epochs', 1, '--model-dir', run, check=False))
        assert 'another training run is writing to this folder' in err and str(run) in err
        # and from another process, as two users' runs would be
        proc = script('train.py', *data, '--epochs', 1, '--model-dir', run, '--model', 'vm1', isolated=True,
                      check=False)
        assert 'another training run' in user_error(proc)
        assert os.listdir(run) == []
    finally:
        runs.release_run_dirs(held)
    assert not run.exists(), 'a folder the lock made and nothing wrote to is removed'
    script('train.py', '--data-dir', dataset / 'train', '--atlas', dataset / 'atlas.npz', '--steps-per-epoch', 1,
           '--epochs', 1, '--model', 'vm1', '--model-dir', run)
    assert sorted(os.listdir(run)) == ['0001.h5', 'training_log.csv']


def test_single_scan_outputs_go_to_out_dir_and_batches_skip_earlier_outputs(dataset, tmp_path):
    common = ['--fixed', dataset / 'atlas.npz', '--model', _model(dataset), '--optimize', 0]
    scans = tmp_path / 'a'
    scans.mkdir()
    shutil.copy(dataset / 'train' / 's0.npz', scans / 'scan.npz')
    script('register.py', '--moving', scans / 'scan.npz', *common, '--out-dir', tmp_path / 'out')
    assert os.listdir(tmp_path / 'out') == ['scan_moved.npz']
    # a batch that wrote beside its inputs, then run into another folder: its outputs are not scans
    script('register.py', '--moving', scans, *common, '--out-dir', scans)
    assert sorted(os.listdir(scans)) == ['scan.npz', 'scan_moved.npz']
    proc = script('register.py', '--moving', scans, *common, '--out-dir', tmp_path / 'other')
    assert os.listdir(tmp_path / 'other') == ['scan_moved.npz']
    assert 'outputs of an earlier run' in proc.stderr and '1 registered' in proc.stdout
    # a list naming a folder: counted as a failed scan, and the batch exits non-zero
    listing = tmp_path / 'list.txt'
    listing.write_text(f'{scans / "scan.npz"}\n{scans}\n')
    proc = script('register.py', '--moving-list', listing, *common, '--out-dir', tmp_path / 'o2', check=False)
    assert proc.returncode == 1
    assert 'a folder, not a scan' in proc.stderr and '1 registered, 0 already done, 1 failed of 2 scans' in proc.stdout


def test_bad_outputs_and_inputs_are_named_before_any_work(dataset, tmp_path):
    model = _model(dataset)
    moving = dataset / 'train' / 's0.npz'
    common = ['--fixed', dataset / 'atlas.npz', '--model', model]
    for moved, message in ((tmp_path / 'moved.txt', 'writes a volume'), (tmp_path / 'moved', 'writes a volume')):
        err = user_error(script('register.py', '--moving', moving, *common, '--moved', moved, check=False))
        assert message in err and '.tmp' not in err
    os.symlink(tmp_path / 'nowhere' / 'x.npz', tmp_path / 'dangling.npz')
    err = user_error(script('register.py', '--moving', moving, *common, '--moved', tmp_path / 'dangling.npz',
                            check=False))
    assert 'dangling.npz: a broken symbolic link' in err
    if os.path.isdir('/proc'):  # a folder os.access calls writable for root, where no file can be made
        err = user_error(script('register.py', '--moving', moving, *common, '--moved', '/proc/vxm_out.npz',
                                check=False))
        assert err == 'error: /proc/vxm_out.npz: folder /proc is not writable'
        with pytest.raises(OSError, match=r'^\[Errno \d+\] /proc/vxm_out\.npz: cannot create a file in /proc'):
            with atomic_path('/proc/vxm_out.npz'):
                pass
    # a folder as a model
    err = user_error(script('register.py', '--moving', moving, '--fixed', dataset / 'atlas.npz', '--model',
                            tmp_path, '--moved', tmp_path / 'm.npz', check=False))
    assert 'a folder, not a model file' in err
    # test.py --out-dir naming a file: refused before registering anything
    (tmp_path / 'report').write_text('mine')
    err = user_error(script('test.py', '--model', model, '--data-dir', dataset / 'train', '--atlas', 'none',
                            '--out-dir', tmp_path / 'report', check=False))
    assert 'report: exists and is not a folder' in err and (tmp_path / 'report').read_text() == 'mine'
    # a 2-D scan with a world-space warp format
    flat = tmp_path / 'flat.npz'
    save_volfile(flat, np.zeros((32, 32), np.float32))
    err = user_error(script('register.py', '--moving', flat, '--fixed', flat, '--model', model, '--warp',
                            tmp_path / 'w.nii.gz', '--warp-format', 'itk', '--moved', tmp_path / 'fm.npz',
                            check=False))
    assert 'flat.npz: a 2-D scan; --warp-format itk' in err


def test_volumes_that_are_not_images(tmp_path):
    only_seg = tmp_path / 'seg_only.npz'
    np.savez(only_seg, seg=np.ones((4, 4, 4), np.int32))
    with pytest.raises(VolumeError, match=r"seg_only\.npz: holds only a label map \('seg'\), no image"):
        load_volfile(only_seg)
    assert load_volfile(only_seg, key='seg').shape == (4, 4, 4)
    cplx = tmp_path / 'complex.npy'
    np.save(cplx, np.ones((4, 4, 4), np.complex64))
    with pytest.raises(VolumeError, match=r'complex\.npy: complex values \(complex64\)'):
        load_volfile(cplx)
    from vxm_keras.generators import load_volumes
    four = tmp_path / 'four.npz'
    np.savez(four, vol=np.zeros((4, 4, 4, 2, 2), np.float32))
    with pytest.raises(VolumeError, match=r'four\.npz: an array of shape \(4, 4, 4, 2, 2\)'):
        load_volumes([four])


def test_an_attribute_table_without_header_is_refused(dataset, tmp_path):
    table = tmp_path / 'noheader.csv'
    table.write_text(''.join(f'{f},{i}\n' for i, f in enumerate(sorted(os.listdir(dataset / 'train')))))
    err = user_error(script('train_template.py', '--data-dir', dataset / 'train', '--attributes', table,
                            '--model-dir', tmp_path / 'r', '--epochs', 1, '--steps-per-epoch', 1, check=False))
    assert 'noheader.csv: the first line is the row of s0.npz, not a header' in err


def test_training_prints_no_library_noise(dataset, tmp_path):
    """No grappler 'remapper failed' line and no HDF5 'legacy' warning per checkpoint: a training
    run's stderr is empty (a real process: those lines come from TensorFlow's C++ and absl)."""
    proc = script('train.py', '--data-dir', dataset / 'train', '--atlas', dataset / 'atlas.npz', '--model',
                      'vm1', '--epochs', 2, '--steps-per-epoch', 1, '--model-dir', tmp_path / 'r', isolated=True)
    assert proc.stderr.strip() == '', proc.stderr


def test_a_scan_without_affine_beside_an_oblique_nifti_says_which_grid_it_assumes(dataset, tmp_path):
    """An .npz fixed scan has no orientation: the oblique NIfTI moving scan is placed by its
    affine in the space the npz is taken to be in, and the user is told so; with --affine off the
    refusal says the affine, not the shape, is off the grid."""
    import nibabel as nib
    from conftest import AFFINE
    from vxm_keras.native import Scan, assumed_grid_note
    fixed_vol = load_volfile(dataset / 'atlas.npz')
    save_volfile(tmp_path / 'fixed.npz', fixed_vol)  # no affine
    turn = np.eye(4)
    turn[:2, :2] = [[np.cos(0.3), -np.sin(0.3)], [np.sin(0.3), np.cos(0.3)]]
    nib.save(nib.Nifti1Image(load_volfile(dataset / 'train' / 's0.npz'), turn @ AFFINE), tmp_path / 'oblique.nii.gz')
    common = ['--moving', tmp_path / 'oblique.nii.gz', '--fixed', tmp_path / 'fixed.npz', '--model', _model(dataset)]
    proc = script('register.py', *common, '--moved', tmp_path / 'moved.nii.gz')
    assert 'fixed.npz carries no voxel-to-world affine' in proc.stderr
    assert 'identity affine' in proc.stderr and 'oblique.nii.gz is placed in that space' in proc.stderr
    moved = nib.load(tmp_path / 'moved.nii.gz')
    np.testing.assert_array_equal(moved.affine, np.eye(4))  # the grid the note names
    assert np.corrcoef(moved.get_fdata().ravel(), fixed_vol.ravel())[0, 1] > 0.9
    err = user_error(script('register.py', *common, '--affine', 'off', check=False))
    assert 'its affine' in err and 'not the model grid' in err and 'carries no' not in err
    # a prepared npz on the 160x192x224 model grid: named as that grid; nothing to say when both lack affines
    grid = np.diag([2.0, 1.0, 1.0, 1.0])
    notes = assumed_grid_note([Scan(np.zeros((4, 4, 4)), grid, 'm.nii'), Scan(np.zeros((4, 4, 4)), None, 'f.npz')],
                              (4, 4, 4), np.eye(4), 'on the model grid')
    assert notes == ['note: f.npz carries no voxel-to-world affine: it is taken to be on the model grid, and '
                     'm.nii is placed in that space by its own affine']
    assert assumed_grid_note([Scan(np.zeros((4, 4, 4)), np.eye(4), 'm.nii'), Scan(np.zeros((4, 4, 4)), None, 'f')],
                             (4, 4, 4), np.eye(4), 'g') == []
