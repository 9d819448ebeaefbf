"""The model grid: the one space the shipped networks register scans in.

160x192x224 voxels of 1 mm in MNI305 (FreeSurfer's talairach space), LIA
orientation as ``mri_convert --conform`` gives, the brain centred: what
``python -m vxm_keras.prepare`` writes and the atlas in ``data/`` is on. No
TensorFlow here, so the data tools and the library share it without a cycle.
"""

import numpy as np

__all__ = ['TARGET_SHAPE', 'TARGET_AFFINE', 'is_model_grid']

TARGET_SHAPE = (160, 192, 224)
# voxel (i, j, k) -> RAS mm
TARGET_AFFINE = np.array([[-1.0, 0.0, 0.0, 80.0],
                          [0.0, 0.0, 1.0, -129.0],
                          [0.0, -1.0, 0.0, 102.0],
                          [0.0, 0.0, 0.0, 1.0]])


def is_model_grid(shape) -> bool:
    """Whether a model taking ``shape`` (spatial) works on the vxm-keras model grid, so scans of
    any other grid can be aligned and resampled onto it."""
    return tuple(shape) == TARGET_SHAPE
