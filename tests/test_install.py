"""A plain (non-editable) install finds the shipped atlas and models (setup.py data_files,
vxm_keras.shipped), so the commands' defaults work outside a source checkout."""
import os
import shutil
import subprocess
import sys

import pytest

from conftest import REPO


def test_plain_install_in_a_fresh_venv_finds_the_shipped_files(tmp_path):
    venv = tmp_path / 'venv'
    # an empty venv: vxm_keras.shipped needs nothing but the standard library, and this
    # environment's editable install must not be the one imported
    subprocess.run([sys.executable, '-m', 'venv', str(venv)], check=True)
    python = str(venv / 'bin' / 'python')
    # a copy of the working tree: pip builds in the source folder, which must not be the repository
    source = tmp_path / 'src'
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns('.git', 'runs', 'build', '*.egg-info', '__pycache__',
                                                                '.pytest_cache', 'tests', 'bench'))
    proc = subprocess.run([python, '-m', 'pip', 'install', '-q', '--no-deps', str(source)],
                          capture_output=True, text=True)
    if proc.returncode and ('NewConnectionError' in proc.stderr or 'No matching distribution' in proc.stderr):
        pytest.skip('no package index reachable for the build requirements (setuptools, wheel)')
    assert proc.returncode == 0, proc.stderr[-2000:]
    env = {k: v for k, v in os.environ.items() if k not in ('VXM_KERAS_HOME', 'PYTHONPATH')}
    code = ('import os, vxm_keras.shipped as s; '
            'print(os.path.dirname(s.__file__)); print(s.DEFAULT_ATLAS); print(s.DEFAULT_MODEL)')
    out = subprocess.run([python, '-c', code], cwd=tmp_path, env=env,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    package, atlas, model = out.stdout.split()
    assert package.startswith(str(venv)), f'imported {package}, not the venv copy'
    for path in (atlas, model):
        assert path.startswith(str(venv)) and os.path.isfile(path), path


@pytest.mark.parametrize('given,expected', [(None, 'true'), ('false', 'false')])
def test_importing_the_package_asks_for_the_pooled_allocator_unless_told(given, expected):
    """Importing vxm_keras before TensorFlow sets TF_CPU_ALLOCATOR_USE_BFC=true unless the user set
    it; after TensorFlow it changes nothing (the variable is read as TensorFlow starts)."""
    env = {k: v for k, v in os.environ.items() if k != 'TF_CPU_ALLOCATOR_USE_BFC'}
    if given is not None:
        env['TF_CPU_ALLOCATOR_USE_BFC'] = given
    env['TF_CPP_MIN_LOG_LEVEL'] = '3'
    for order in ('vxm_keras, tensorflow', 'tensorflow, vxm_keras'):
        code = f'import os, {order}\nprint(os.environ.get("TF_CPU_ALLOCATOR_USE_BFC"))'
        proc = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True, check=True)
        late = order.startswith('tensorflow') and given is None
        assert proc.stdout.split() == (['None'] if late else [expected]), order


@pytest.mark.parametrize('given,expected', [(None, '1'), ('0', '0'), ('1', '1')])
def test_importing_the_package_asks_for_onednn_unless_told(given, expected):
    """On x86, importing vxm_keras before TensorFlow sets TF_ENABLE_ONEDNN_OPTS=1 when the user
    has not set it, and never overrides the user's value; TensorFlow then reports that setting."""
    import platform
    if platform.machine().lower() not in ('x86_64', 'amd64'):
        pytest.skip('TensorFlow decides on non-x86 machines')
    env = {k: v for k, v in os.environ.items() if k != 'TF_ENABLE_ONEDNN_OPTS'}
    if given is not None:
        env['TF_ENABLE_ONEDNN_OPTS'] = given
    env['TF_CPP_MIN_LOG_LEVEL'] = '3'
    code = ('import os, vxm_keras, tensorflow\n'
            'from tensorflow.python.util import _pywrap_util_port\n'
            'print(os.environ.get("TF_ENABLE_ONEDNN_OPTS"), _pywrap_util_port.IsMklEnabled())')
    proc = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True, check=True)
    assert proc.stdout.split() == [expected, str(expected == '1')]


def test_commands_start_keras_without_its_unused_extras():
    """The commands start TensorFlow with matplotlib, scipy.sparse, pandas and scikit-learn hidden
    from its and Keras's own import (vxm_keras.device.KERAS_EXTRAS): none of them is loaded by it,
    each imports again afterwards (matplotlib and scipy are dependencies, so they always can), and
    Keras works."""
    code = ('import sys, os\n'
            'from vxm_keras.device import KERAS_EXTRAS, setup_device, start_tensorflow\n'
            'setup_device(None)\n'
            'start_tensorflow()\n'
            'import keras, tensorflow\n'
            'print(*[name in sys.modules for name in KERAS_EXTRAS])\n'
            'import matplotlib.pyplot, scipy.sparse\n'
            'print(type(matplotlib.pyplot.figure).__name__)\n'
            'print(float(keras.ops.sum(keras.ops.ones((2, 3)))))\n')
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', MPLBACKEND='Agg')
    proc = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    loaded, figure, total = proc.stdout.split('\n')[:3]
    from vxm_keras.device import KERAS_EXTRAS
    assert loaded.split() == ['False'] * len(KERAS_EXTRAS) and 'matplotlib' in KERAS_EXTRAS
    assert figure == 'function' and float(total) == 6.0


def test_hidden_modules_raise_import_error_inside_the_block_only():
    from vxm_keras.device import _hidden
    sys.modules.pop('colorsys', None)
    with _hidden(['colorsys', 'os']):  # 'os' is loaded already: left alone
        with pytest.raises(ImportError):
            import colorsys  # noqa: F401
        import os as again
        assert again is os
    import colorsys  # noqa: F401, F811
    assert sys.modules['colorsys'] is not None


@pytest.mark.parametrize('order', ['vxm_keras', 'vxm_keras, keras', 'vxm_keras, tensorflow', 'keras, vxm_keras',
                                   'tensorflow, vxm_keras'])
def test_the_package_imports_without_tensorflow_and_saved_models_load_by_name_in_any_order(order):
    """``import vxm_keras`` loads neither TensorFlow nor Keras (no environment switch, no look at
    the command line), and a saved model loads with plain ``keras.models.load_model`` whichever of
    the package, Keras and TensorFlow is imported first (vxm_keras.registry); the watched modules
    get their own loaders back."""
    from conftest import REPO
    code = ('import sys\n'
            'import vxm_keras\n'
            'print("tensorflow" in sys.modules, "keras" in sys.modules)\n'
            f'import {order}\n'
            'import keras\n'
            f'model = keras.models.load_model({os.path.join(REPO, "models", "vm2_atlas.h5")!r}, compile=False)\n'
            'print(type(model).__name__, sorted({type(layer).__module__.split(".")[0] for layer in model.layers}))\n'
            'print(type(sys.modules["keras"].__loader__).__name__,'
            ' type(sys.modules["tensorflow"].__spec__.loader).__name__)\n')
    if not order.startswith('vxm_keras'):  # the other one first
        code = code.replace('import vxm_keras\nprint(', f'import {order.split(",")[0]}\nimport vxm_keras\nprint(', 1)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3')
    proc = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True, cwd=str(REPO))
    assert proc.returncode == 0, proc.stderr[-2000:]
    loaded, model, loaders = proc.stdout.strip().splitlines()[-3:]
    if order.startswith('vxm_keras'):
        assert loaded == 'False False'
    assert model.split()[0] == 'VxmDense' and 'vxm_keras' in model
    assert 'Loader' in loaders and '_Loader' not in loaders.split()
