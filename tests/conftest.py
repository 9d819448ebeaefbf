import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

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
