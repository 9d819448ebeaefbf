"""vxm_keras: unsupervised deformable image registration (VoxelMorph) in Keras 3.

Importing the package does not load TensorFlow; its layers, losses and models are registered
with Keras as soon as Keras and TensorFlow are loaded (before or after it), so saved models load
with ``keras.models.load_model(path, compile=False)`` after ``import vxm_keras``. The names below
(``vxm_keras.register``, ``vxm_keras.vm2``, ``vxm_keras.layers``, ...) load on first use.
"""

import importlib

from .device import prefer_onednn, prefer_pooled_allocator
from .registry import register_when_loaded

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

# the Keras objects registered once Keras and TensorFlow are loaded, not before (vxm_keras/registry.py)
register_when_loaded()


__all__ = ['__version__', *_LAZY, *_SUBMODULES]


def __dir__():
    return sorted(set(globals()) | set(__all__))


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f'.{name}', __name__)
    if name in _LAZY:
        return getattr(importlib.import_module(f'.{_LAZY[name]}', __name__), name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
