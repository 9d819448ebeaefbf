import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# the commands run in subprocesses keep no compiled kernels in the user's cache folder
# (tests/test_compile_cache.py turns it on where it checks it)
os.environ['VXM_XLA_CACHE'] = 'off'

# before any test module loads TensorFlow: importing vxm_keras picks TensorFlow's CPU kernels as
# the commands get them (oneDNN on x86 unless TF_ENABLE_ONEDNN_OPTS is set; vxm_keras/device.py)
import vxm_keras  # noqa: E402,F401

import subprocess  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(REPO, '..', 'shared', 'data')


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def smooth_field(rng, shape, scale, sigma=3.0):
    """Random smooth displacement (*shape, ndim), max magnitude about ``scale`` voxels."""
    from scipy.ndimage import gaussian_filter
    comps = []
    for _ in shape:
        c = gaussian_filter(rng.standard_normal(shape), sigma)
        comps.append(c / np.abs(c).max() * scale)
    return np.stack(comps, -1).astype(np.float32)


def scipy_warp(vol, disp, order, mode='nearest', cval=0.0):
    """Reference warp: ``vol`` ``(*S, C)`` sampled at ``x + disp(x)`` with scipy's map_coordinates."""
    from scipy.ndimage import map_coordinates
    shape = vol.shape[:-1]
    grid = np.meshgrid(*[np.arange(n) for n in shape], indexing='ij')
    coords = [g + disp[..., d] for d, g in enumerate(grid)]
    return np.stack([map_coordinates(vol[..., c].astype(np.float64), coords, order=order, mode=mode, cval=cval)
                     for c in range(vol.shape[-1])], -1)


def shared_pair(names=('sub-01', 'sub-02'), factor=2):
    """Two real FreeSurfer subjects from ../shared/data, prepared (talairach.xfm, 1 mm, 160x192x224)
    and block-averaged by ``factor`` (labels: every ``factor``-th voxel); skips when absent."""
    folder = os.path.join(SHARED_DATA, 'freesurfer')
    if not os.path.isdir(folder):
        pytest.skip(f'{folder} not found (the shared FreeSurfer subjects)')
    from vxm_keras.prepare import prepare_freesurfer_subject
    from vxm_keras.templates import downsize_images
    out = []
    for name in names:
        prepared = prepare_freesurfer_subject(os.path.join(folder, name))
        vol, seg = prepared['vol'], prepared['seg']
        out.append((downsize_images(vol[None], factor)[0].astype(np.float32),
                    seg[(slice(None, None, factor),) * seg.ndim].astype(np.int32)))
    return out


# --- the scripts run as a user runs them (test_cli, test_safety) ---

SHAPE = (32, 32, 32)
AFFINE = np.array([[-1.0, 0, 0, 16], [0, 0, 1, -16], [0, -1, 0, 16], [0, 0, 0, 1]])


# the flat scripts and the command each one runs
COMMANDS = {'train.py': 'vxm_keras.commands.train', 'register.py': 'vxm_keras.commands.register',
            'test.py': 'vxm_keras.commands.evaluate', 'train_template.py': 'vxm_keras.commands.train_template'}


def script(name, *args, check=True, isolated=False):
    """Run a flat script (``train.py``, ...) with ``args``: a ``CompletedProcess`` with its exit
    code, stdout and stderr.

    By default the script's ``main(argv)`` runs in this process (what the script does, minus a
    fresh Python and TensorFlow start: about 10 s each on a 2-core CPU, most of the suite's time
    when every call paid it), with stdout and stderr captured and the process-wide settings a
    command may change (environment, mixed precision, op determinism, Grappler's remapper) put back. An exception
    other than ``SystemExit`` propagates: in a subprocess it would be a traceback. ``isolated``
    runs a real subprocess, for what only a process shows: TensorFlow's own log lines on file
    descriptor 2, signals, start-up.
    """
    if isolated:
        # TensorFlow's log level as the command sets it for a user (warnings and errors show)
        env = {k: v for k, v in os.environ.items() if k != 'TF_CPP_MIN_LOG_LEVEL'}
        proc = subprocess.run([sys.executable, os.path.join(REPO, name), *map(str, args)],
                              capture_output=True, text=True, env=env)
    else:
        proc = _run_in_process(name, [str(a) for a in args])
    if check and proc.returncode != 0:
        raise AssertionError(f'{name} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}')
    return proc


def _run_in_process(name, argv):
    import contextlib
    import importlib
    import io

    module = importlib.import_module(COMMANDS[name])
    environ = dict(os.environ)
    remapping = None
    if 'tensorflow' in sys.modules:
        import tensorflow as tf
        remapping = tf.config.optimizer.get_experimental_options().get('remapping', True)
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = module.main(argv)
            except SystemExit as stop:  # argparse's usage errors
                code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    finally:
        os.environ.clear()
        os.environ.update(environ)
        if 'tensorflow' in sys.modules:
            import keras
            from tensorflow.python.framework import config  # no public switch back off
            keras.mixed_precision.set_global_policy('float32')
            import tensorflow as tf
            config.disable_op_determinism()
            tf.config.optimizer.set_experimental_options({'remapping': True if remapping is None else remapping})
            keras.backend.clear_session()
    return subprocess.CompletedProcess([name, *argv], code, out.getvalue(), err.getvalue())


def user_error(proc):
    """One 'error:' line, exit 2, no traceback."""
    assert proc.returncode == 2, proc.stderr
    assert 'Traceback' not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith('error:')]
    assert len(errors) == 1, proc.stderr
    return errors[0]


def blob(centre, radius=7.0):
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in SHAPE], indexing='ij'), -1)
    r = np.linalg.norm(grid - np.array(centre), axis=-1)
    return np.exp(-(r / radius) ** 2).astype(np.float32), (r < radius).astype(np.int32) * 17


@pytest.fixture(scope='session')
def dataset(tmp_path_factory):
    from vxm_keras.io import save_volfile
    root = tmp_path_factory.mktemp('data')
    train = root / 'train'
    train.mkdir()
    for i, shift in enumerate([(2, 0, -1), (-2, 1, 1), (1, -2, 0), (0, 2, 2)]):
        vol, seg = blob(np.array(SHAPE) / 2 + shift)
        save_volfile(train / f's{i}.npz', vol, affine=AFFINE, extra={'seg': seg})
    vol, seg = blob(np.array(SHAPE) / 2)
    save_volfile(root / 'atlas.npz', vol, affine=AFFINE, extra={'seg': seg})
    run = root / 'run'
    script('train.py', '--data-dir', train, '--atlas', root / 'atlas.npz', '--model', 'vm1',
           '--epochs', 2, '--steps-per-epoch', 3, '--lr', 1e-3, '--model-dir', run, '--seed', 0)
    return root
