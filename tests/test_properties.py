"""Property-based tests (hypothesis) of the loaders and the spatial transformer."""
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy.ndimage import map_coordinates

from vxm_keras.io import load_volfile, save_volfile
from vxm_keras.layers import SpatialTransformer

SETTINGS = settings(max_examples=25, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

volume_shapes = st.lists(st.integers(2, 7), min_size=2, max_size=3).map(tuple)
dtypes = st.sampled_from([np.float32, np.int16, np.uint8, np.int32])


@SETTINGS
@given(data=st.data(), shape=volume_shapes, dtype=dtypes,
       ext=st.sampled_from(['.npz', '.npy', '.nii.gz', '.nii', '.mgz']))
def test_save_load_round_trip(tmp_path_factory, data, shape, dtype, ext):
    if ext == '.mgz' and len(shape) != 3:
        shape = shape + (3,) if len(shape) == 2 else shape
    elements = st.floats(-1e6, 1e6, width=32) if dtype == np.float32 else None
    vol = data.draw(arrays(dtype, shape, elements=elements))
    affine = np.eye(4)
    affine[:3, :3] = data.draw(arrays(np.float64, (3, 3), elements=st.floats(-3, 3))) + 4 * np.eye(3)
    affine[:3, 3] = data.draw(arrays(np.float64, 3, elements=st.floats(-100, 100)))
    path = tmp_path_factory.mktemp('rt') / ('v' + ext)
    save_volfile(path, vol, affine=affine)
    out, aff = load_volfile(path, ret_affine=True)
    np.testing.assert_array_equal(out, vol)
    if ext != '.npy':
        np.testing.assert_allclose(aff, affine, atol=1e-4)


fields = st.tuples(volume_shapes, st.floats(0.0, 10.0), st.integers(1, 3), st.integers(0, 2**31 - 1))


@SETTINGS
@given(params=fields)
def test_linear_warp_is_a_convex_combination_equal_to_scipy(params):
    shape, scale, channels, seed = params
    rng = np.random.default_rng(seed)
    vol = rng.standard_normal(shape + (channels,)).astype(np.float32)
    disp = (rng.uniform(-1, 1, shape + (len(shape),)) * scale).astype(np.float32)
    out = SpatialTransformer('linear')([tf.constant(vol[None]), tf.constant(disp[None])]).numpy()[0]
    assert out.min() >= vol.min() - 1e-5 and out.max() <= vol.max() + 1e-5
    grid = np.meshgrid(*[np.arange(n) for n in shape], indexing='ij')
    coords = [g + disp[..., d] for d, g in enumerate(grid)]
    for c in range(channels):
        ref = map_coordinates(vol[..., c].astype(np.float64), coords, order=1, mode='nearest')
        np.testing.assert_allclose(out[..., c], ref, atol=1e-4)


@SETTINGS
@given(params=fields)
def test_nearest_warp_only_copies_values(params):
    shape, scale, _, seed = params
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 60, shape + (1,)).astype(np.float32)
    disp = (rng.uniform(-1, 1, shape + (len(shape),)) * scale).astype(np.float32)
    out = SpatialTransformer('nearest')([tf.constant(labels[None]), tf.constant(disp[None])]).numpy()[0]
    assert set(np.unique(out)) <= set(np.unique(labels))
    # away from exact .5 ties, it is scipy's order-0 sampling
    grid = np.meshgrid(*[np.arange(n) for n in shape], indexing='ij')
    coords = [g + disp[..., d] for d, g in enumerate(grid)]
    ties = np.zeros(shape, bool)
    for c in coords:
        ties |= np.abs(c - np.floor(c) - 0.5) < 1e-4
    ref = map_coordinates(labels[..., 0], coords, order=0, mode='nearest')
    np.testing.assert_array_equal(out[..., 0][~ties], ref[~ties])


@pytest.mark.parametrize('key', [None, 'seg'])
@SETTINGS
@given(data=st.data())
def test_npz_missing_keys_are_named(tmp_path_factory, key, data):
    names = data.draw(st.lists(st.sampled_from(['image', 'label', 'mask', 'x']), min_size=2, max_size=4,
                               unique=True))
    path = tmp_path_factory.mktemp('keys') / 'f.npz'
    np.savez(path, **{n: np.zeros(3) for n in names})
    with pytest.raises(ValueError) as err:
        load_volfile(path, key=key)
    assert 'f.npz' in str(err.value) and all(n in str(err.value) for n in names)
