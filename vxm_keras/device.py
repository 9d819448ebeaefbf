"""TensorFlow's CPU kernels: oneDNN wherever TensorFlow has it, chosen before TensorFlow loads.

TensorFlow's x86 packages hold two sets of CPU kernels, oneDNN's and Eigen's, and turn oneDNN on
by default only on CPUs with AVX512-VNNI, AVX512-BF16 or AMX; on other x86 CPUs (AMD Zen 2/3,
older Intel, and Windows packages) the Eigen kernels run, and some of the operations this
package uses are several times slower there (``bench/CPU.md``; a VM-2 training step at 32^3 on
an AVX2-only AMD EPYC: 2.2 s with Eigen, 0.2 s with oneDNN). Importing :mod:`vxm_keras` therefore
asks for oneDNN on x86 unless ``TF_ENABLE_ONEDNN_OPTS`` is set either way, and for TensorFlow's
pooling CPU allocator unless ``TF_CPU_ALLOCATOR_USE_BFC`` is set (:func:`prefer_pooled_allocator`);
both take effect only if TensorFlow is not loaded yet (import vxm_keras first, or set the
variables yourself).
"""

import contextlib
import os
import platform
import re
import sys

from .compile_cache import enable as enable_compile_cache
from .errors import fail

__all__ = ['ONEDNN_VARIABLE', 'ALLOCATOR_VARIABLE', 'prefer_onednn', 'prefer_pooled_allocator', 'setup_device',
           'start_tensorflow', 'start_training_tensorflow', 'KERAS_EXTRAS']

ONEDNN_VARIABLE = 'TF_ENABLE_ONEDNN_OPTS'
ALLOCATOR_VARIABLE = 'TF_CPU_ALLOCATOR_USE_BFC'
_X86 = ('x86_64', 'amd64', 'i386', 'i686', 'x86')


def prefer_onednn():
    """Set ``TF_ENABLE_ONEDNN_OPTS=1`` on x86 machines unless it is set already or TensorFlow
    is already imported (the variable is read once, at import). Returns the value in force
    afterwards (``None``: TensorFlow decides)."""
    if ONEDNN_VARIABLE not in os.environ and 'tensorflow' not in sys.modules \
            and platform.machine().lower() in _X86:
        os.environ[ONEDNN_VARIABLE] = '1'
    return os.environ.get(ONEDNN_VARIABLE)


def prefer_pooled_allocator():
    """Set ``TF_CPU_ALLOCATOR_USE_BFC=true`` unless it is set already or TensorFlow is already
    imported; returns the value in force afterwards.

    With oneDNN on, TensorFlow's CPU memory comes from oneDNN's pooling allocator; with oneDNN
    off (Eigen kernels) from ``malloc``, which hands every full-size temporary back to the system
    and faults it in again at the next step: measured at 160x192x224 on 2 cores with oneDNN off,
    NCC forward + backward 0.77 s, 0.31 s pooled (0.32 s with oneDNN on), a compiled box sum of 3
    channels 0.25 -> 0.06 s, ``register.py`` on the example scan 19.5 -> 15.3-16.2 s (oneDNN on:
    15.3-16.5 s), a VM-2 training step 6.9 -> 4.5 s. With oneDNN on it changes nothing measurable
    (training step 1.45 s both, ``register.py`` peak 2.6 GB both); with oneDNN off the training step's
    peak rises from 5.0 to 6.5 GB, the pool keeping what the step once needed."""
    if ALLOCATOR_VARIABLE not in os.environ and 'tensorflow' not in sys.modules:
        os.environ[ALLOCATOR_VARIABLE] = 'true'
    return os.environ.get(ALLOCATOR_VARIABLE)


# what setup_device asked for, checked once TensorFlow starts (in run)
_DEVICE = {}

# Keras and TensorFlow import these at their own import whenever they are installed, each guarded
# as optional, for what the commands never use: pandas and scikit-learn data adapters and wrappers,
# Keras's image-gallery plots (matplotlib, pyplot), TensorFlow's legacy Keras engine (scipy.sparse).
# Measured by `python -X importtime`: scikit-learn 0.49 s, pyplot 0.35 s, pandas 0.29 s,
# scipy.sparse 0.23 s. Hidden while the commands import them, importable again right after
# (register.py's --png figure imports pyplot itself).
KERAS_EXTRAS = ('pandas', 'sklearn', 'matplotlib', 'scipy.sparse')


@contextlib.contextmanager
def _hidden(modules):
    """Within the block, ``import`` of each of ``modules`` not yet imported raises ImportError
    (a ``None`` in ``sys.modules``), as if it were not installed; afterwards they import again."""
    hidden = [name for name in modules if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None
    try:
        yield
    finally:
        for name in hidden:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]

# TensorFlow's start-up lines that say nothing to a user (kept with --verbose)
_NOISE = re.compile(r'^(WARNING: All log messages before absl::InitializeLog|[IW]\d{4} |E\d{4} .*(cuInit|cuda|CUDA)|'
                    r'To enable the following instructions|.*(oneDNN custom operations|cudart_stub|'
                    r'cpu_feature_guard|Unable to register cu|computation placer already registered))')


def setup_device(gpu, verbose=False, compile_cache=False):
    """Select devices before TensorFlow starts: ``None``/``'-1'`` = CPU, else ids like ``'0'`` or ``'0,1'``.

    Returns the number of GPUs requested (0 for CPU). Unless ``verbose``, TensorFlow's
    start-up chatter (which on a machine without a GPU includes an alarming ``failed call
    to cuInit``) is filtered out when :func:`start_tensorflow` starts it; real errors still show.
    ``compile_cache``: keep XLA's compiled kernels on disk for the next process
    (:mod:`vxm_keras.compile_cache`; the registration commands, which compile the same kernels
    in every run).
    """
    if compile_cache:
        enable_compile_cache(verbose)
    os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '0' if verbose else '2')
    _DEVICE.update(verbose=verbose, gpus=[])
    if gpu is None or str(gpu).strip() in ('', '-1'):
        os.environ['CUDA_VISIBLE_DEVICES'] = '-1'
        return 0
    ids = [g.strip() for g in str(gpu).split(',') if g.strip()]
    if not all(g.isdigit() for g in ids):
        fail(f'--gpu: expected an id or a comma-separated list of ids, got {gpu!r}')
    os.environ['CUDA_VISIBLE_DEVICES'] = ','.join(ids)
    _DEVICE['gpus'] = ids
    return len(ids)


def start_tensorflow():
    """Import TensorFlow and let it find its devices, filtering its start-up noise (see
    :func:`setup_device`); fail if GPUs were asked for and are not there. Commands call it
    once their cheap checks have passed, so a bad argument answers without waiting for it."""
    import tempfile
    if not _DEVICE:
        return
    capture = None
    # already imported (a command called from Python): nothing to filter, the devices still checked
    if not _DEVICE.get('verbose') and 'tensorflow' not in sys.modules:
        sys.stderr.flush()
        saved = os.dup(2)
        capture = tempfile.TemporaryFile()
        os.dup2(capture.fileno(), 2)
    try:
        with _hidden(KERAS_EXTRAS):
            import keras  # noqa: F401
            import tensorflow as tf
        found = tf.config.list_physical_devices('GPU')
    finally:
        if capture is not None:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            for line in capture.read().decode(errors='replace').splitlines():
                if line.strip() and not _NOISE.match(line):
                    print(line, file=sys.stderr)
            capture.close()
    wanted = _DEVICE.get('gpus') or []
    if len(found) < len(wanted):
        fail(f'--gpu {",".join(wanted)}: {len(found)} GPU(s) usable by TensorFlow on this machine'
             f'{"" if found else " (none: drop --gpu to run on the CPU)"}')


def start_training_tensorflow():
    """:func:`start_tensorflow` for the training commands, with Grappler's remapper off: on the
    training step's graph it fails (a LeakyRelu gradient's fusion) and logs an error line at the
    first step, having fused nothing; the step takes the same time without it (measured on a
    32^3 VM-2: 282-304 against 322-342 ms a step)."""
    start_tensorflow()
    import tensorflow as tf
    tf.config.optimizer.set_experimental_options({'remapping': False})
