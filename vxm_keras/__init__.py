"""vxm_keras: unsupervised deformable image registration (VoxelMorph) in Keras 3.

Importing the package registers its layers, losses and models with Keras, so
saved models load with ``keras.models.load_model(path, compile=False)``.
"""

__version__ = '0.1.0'

from . import layers, losses, networks  # noqa: F401  (registers Keras objects)
from .networks import load_model, save_model, vm1, vm2, vm2diff, vxm_net  # noqa: F401
