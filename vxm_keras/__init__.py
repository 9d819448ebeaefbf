"""vxm_keras: unsupervised deformable image registration (VoxelMorph) in Keras 3.

Importing the package registers its layers, losses and models with Keras, so
saved models load with ``keras.models.load_model(path, compile=False)``.

The command-line scripts set ``VXM_KERAS_DEFER_IMPORTS=1`` before importing
the package, so ``--help`` and argument errors answer without loading
TensorFlow; their code imports the Keras modules once it needs them.
"""

import importlib
import os
import sys

from .device import prefer_onednn, prefer_pooled_allocator

# before TensorFlow loads: its oneDNN kernels on x86 unless TF_ENABLE_ONEDNN_OPTS says otherwise
# (vxm_keras/device.py: Eigen's convolutions made a training step 10x slower), and its pooling CPU
# allocator unless TF_CPU_ALLOCATOR_USE_BFC does (without oneDNN, malloc made the refinement 1.3x slower)
prefer_onednn()
prefer_pooled_allocator()

__version__ = '0.1.0'

_LAZY = {'load_model': 'modelio', 'save_model': 'modelio', 'vm1': 'networks', 'vm2': 'networks',
         'vm2diff': 'networks', 'vxm_net': 'networks', 'register': 'pipeline', 'Registrar': 'pipeline',
         'Registration': 'registration'}
_SUBMODULES = ('layers', 'losses', 'networks', 'modelio', 'unet', 'affine', 'native', 'registration', 'pipeline',
               'settings', 'grid')

# commands that load TensorFlow only when they need it (prepare never, the benchmark in its workers)
_ARGV = getattr(sys, 'orig_argv', [])
_TF_FREE = '-m' in _ARGV[:-1] and _ARGV[_ARGV.index('-m') + 1] in ('vxm_keras.prepare', 'vxm_keras.bench',
                                                                         'vxm_keras.bench.frontier',
                                                                         'vxm_keras.bench.cpu')

if os.environ.get('VXM_KERAS_DEFER_IMPORTS') != '1' and not _TF_FREE:
    from . import layers, losses, networks  # noqa: F401  (registers Keras objects)
    from .modelio import load_model, save_model  # noqa: F401
    from .networks import vm1, vm2, vm2diff, vxm_net  # noqa: F401
    from .pipeline import Registrar, register  # noqa: F401
    from .registration import Registration  # noqa: F401


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f'.{name}', __name__)
    if name in _LAZY:
        return getattr(importlib.import_module(f'.{_LAZY[name]}', __name__), name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
