"""SpatialTransformer, VecInt and RescaleTransform against scipy and analytic cases."""
import numpy as np
import pytest
import tensorflow as tf
from scipy.ndimage import map_coordinates

from conftest import scipy_warp, smooth_field
from vxm_keras.layers import RescaleTransform, SpatialTransformer, VecInt
from vxm_keras.spatial import upsample_linear

SHAPES = [(20, 23), (12, 14, 11)]


def run(layer, vol, disp):
    return layer([tf.constant(vol[None]), tf.constant(disp[None])]).numpy()[0]


@pytest.mark.parametrize('shape', SHAPES)
@pytest.mark.parametrize('method,order', [('linear', 1), ('nearest', 0)])
def test_matches_map_coordinates(rng, shape, method, order):
    vol = rng.random(shape + (3,)).astype(np.float32)
    # up to 6 voxels: many samples fall outside the volume, testing the border
    disp = smooth_field(rng, shape, 6.0)
    out = run(SpatialTransformer(method), vol, disp)
    ref = scipy_warp(vol, disp, order)
    assert out.shape == vol.shape
    np.testing.assert_allclose(out, ref, atol=1e-4)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing='ij'), -1)
    loc = grid + disp
    assert np.any(loc < 0) and np.any(loc > np.array(shape) - 1), 'field should reach outside'


@pytest.mark.parametrize('shape', SHAPES)
def test_fill_value_outside(rng, shape):
    vol = rng.random(shape + (2,)).astype(np.float32)
    disp = smooth_field(rng, shape, 5.0)
    out = run(SpatialTransformer('linear', fill_value=-3.0), vol, disp)
    ref = scipy_warp(vol, disp, 1, mode='constant', cval=-3.0)
    np.testing.assert_allclose(out, ref, atol=1e-4)
    assert np.sum(out == -3.0) > 0


@pytest.mark.parametrize('shape', SHAPES)
def test_zero_field_is_identity(rng, shape):
    vol = rng.random(shape + (2,)).astype(np.float32)
    for method in ('linear', 'nearest'):
        out = run(SpatialTransformer(method), vol, np.zeros(shape + (len(shape),), np.float32))
        np.testing.assert_array_equal(out, vol)


def test_integer_shift_is_exact(rng):
    shape = (10, 12, 9)
    vol = rng.random(shape + (1,)).astype(np.float32)
    disp = np.zeros(shape + (3,), np.float32)
    disp[..., 0], disp[..., 2] = 2.0, -1.0
    out = run(SpatialTransformer('linear'), vol, disp)
    # out[x] = vol[x0 + 2, x1, x2 - 1] where that lies inside
    np.testing.assert_array_equal(out[:-2, :, 1:], vol[2:, :, :-1])
    # beyond the border the edge value is repeated
    np.testing.assert_array_equal(out[-2:, :, 1:], np.repeat(vol[-1:, :, :-1], 2, axis=0))


def test_xy_indexing_swaps_first_two_components(rng):
    shape = (14, 16, 12)
    vol = rng.random(shape + (1,)).astype(np.float32)
    disp = smooth_field(rng, shape, 3.0)
    swapped = disp[..., [1, 0, 2]]
    a = run(SpatialTransformer(indexing='ij'), vol, disp)
    b = run(SpatialTransformer(indexing='xy'), vol, swapped)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize('shape', SHAPES)
def test_gradients_finite_and_nonzero(rng, shape):
    vol = tf.constant(rng.random((1,) + shape + (1,)).astype(np.float32))
    disp = tf.constant(smooth_field(rng, shape, 2.0)[None])
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([vol, disp])
        loss = tf.reduce_sum(SpatialTransformer('linear')([vol, disp]) ** 2)
    for g in tape.gradient(loss, [vol, disp]):
        g = g.numpy()
        assert np.all(np.isfinite(g)) and np.abs(g).max() > 0


def test_gradient_wrt_field_matches_finite_differences(rng):
    shape = (9, 10)
    vol = tf.constant(rng.random((1,) + shape + (1,)).astype(np.float64).astype(np.float32))
    disp0 = smooth_field(rng, shape, 1.5)
    # stay away from integer sample positions, where linear interpolation has kinks
    disp0 = disp0 + 0.25

    def f(d):
        return tf.reduce_sum(SpatialTransformer('linear')([vol, tf.constant(d[None])]) ** 2).numpy()

    d = tf.constant(disp0[None])
    with tf.GradientTape() as tape:
        tape.watch(d)
        loss = tf.reduce_sum(SpatialTransformer('linear')([vol, d]) ** 2)
    grad = tape.gradient(loss, d).numpy()[0]
    for idx in [(3, 4, 0), (5, 2, 1), (6, 6, 0)]:
        h = 1e-2
        plus, minus = disp0.copy(), disp0.copy()
        plus[idx] += h
        minus[idx] -= h
        fd = (f(plus) - f(minus)) / (2 * h)
        assert grad[idx] == pytest.approx(fd, rel=2e-2, abs=1e-3)


def test_vecint_zero_and_constant_fields():
    shape = (12, 12, 12)
    zero = np.zeros((1,) + shape + (3,), np.float32)
    np.testing.assert_array_equal(VecInt(int_steps=7)(tf.constant(zero)).numpy(), zero)
    # a constant velocity is a translation: exp(v) = v exactly
    const = np.zeros_like(zero)
    const[..., 0], const[..., 1] = 1.5, -0.75
    np.testing.assert_allclose(VecInt(int_steps=7)(tf.constant(const)).numpy(), const, atol=1e-5)


@pytest.mark.parametrize('shape', [(40, 40), (24, 24, 24)])
def test_vecint_inverse_composes_to_identity(rng, shape):
    vel = smooth_field(rng, shape, 2.0, sigma=4.0)
    integrate = VecInt(int_steps=7)
    fwd = integrate(tf.constant(vel[None])).numpy()[0]
    inv = integrate(tf.constant(-vel[None])).numpy()[0]
    # (id + inv) o (id + fwd) = id + fwd + inv(x + fwd(x))
    composed = fwd + scipy_warp(inv, fwd, 1)
    interior = tuple(slice(4, -4) for _ in shape)
    assert np.abs(fwd).max() > 1.0
    assert np.abs(composed[interior]).max() < 0.05


@pytest.mark.parametrize('factor', [2.0, 4.0, 0.5, 1.5])
def test_rescale_transform_matches_map_coordinates(rng, factor):
    shape = (8, 10, 12)
    disp = smooth_field(rng, shape, 2.0)
    out = RescaleTransform(factor)(tf.constant(disp[None])).numpy()[0]
    new = [int(round(n * factor)) for n in shape]
    assert out.shape == tuple(new) + (3,)
    grid = np.meshgrid(*[np.arange(n) / factor for n in new], indexing='ij')
    ref = np.stack([map_coordinates(disp[..., d].astype(np.float64), grid, order=1, mode='nearest')
                    for d in range(3)], -1) * factor
    np.testing.assert_allclose(out, ref, atol=1e-5)


@pytest.mark.parametrize('shape,factor', [((5, 7), 2), ((4, 5, 6), 3), ((3, 4, 5), 2)])
def test_upsample_linear_matches_map_coordinates_and_its_gradient_is_the_adjoint(rng, shape, factor):
    x = rng.standard_normal((2, *shape, 2)).astype(np.float32)
    out = upsample_linear(tf.constant(x), factor).numpy()
    new = [n * factor for n in shape]
    grid = np.meshgrid(*[np.arange(n) / factor for n in new], indexing='ij')
    ref = np.stack([np.stack([map_coordinates(x[b, ..., c].astype(np.float64), grid, order=1, mode='nearest')
                              for c in range(2)], -1) for b in range(2)])
    np.testing.assert_allclose(out, ref, atol=1e-5)
    # linear map: <U x, y> == <x, U^T y> with U^T from the gradient
    y = rng.standard_normal(out.shape).astype(np.float32)
    tx = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(tx)
        value = tf.reduce_sum(upsample_linear(tx, factor) * y)
    adjoint = tape.gradient(value, tx).numpy()
    np.testing.assert_allclose(float(value), float(np.sum(x * adjoint)), rtol=1e-4)
    np.testing.assert_allclose(float(value), float(np.sum(ref * y)), rtol=1e-4)


def test_transformer_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match='differ'):
        SpatialTransformer()([tf.zeros((1, 8, 8, 1)), tf.zeros((1, 8, 6, 2))])
    with pytest.raises(ValueError, match='components'):
        SpatialTransformer()([tf.zeros((1, 8, 8, 1)), tf.zeros((1, 8, 8, 3))])


def test_nan_displacement_gives_nan_not_a_crash(rng):
    shape = (8, 9, 7)
    vol = rng.random(shape + (1,)).astype(np.float32)
    disp = np.zeros(shape + (3,), np.float32)
    disp[2, 3, 4, 1] = np.nan
    disp[5, 5, 5, 0] = np.inf
    for method in ('linear', 'nearest'):
        out = run(SpatialTransformer(method), vol, disp)
        assert np.isnan(out[2, 3, 4, 0]) and np.isnan(out).sum() == 1
        assert out[5, 5, 5, 0] == vol[-1, 5, 5, 0]  # +Inf clamps to the edge
        np.testing.assert_array_equal(out[0], vol[0])


@pytest.mark.parametrize('shape,win', [((7, 9, 6), (9, 3, 5)), ((13, 11), (5, 9)), ((10,), (7,)),
                                       ((5, 4, 6), (1, 11, 3))])
def test_box_sum_matches_bruteforce_and_its_gradient_is_the_adjoint(rng, shape, win):
    """Window sums against numpy sums over zero-padded sliding windows, odd windows wider than
    the axis included (every voxel's window reaches both edges); the gradient of
    ``<box_sum(x), w>`` is ``box_sum(w)``, a centred zero-padded box being self-adjoint,
    checked against the brute-force sums of ``w``."""
    from numpy.lib.stride_tricks import sliding_window_view
    from vxm_keras.spatial import box_sum

    def brute(v):  # (*shape, channels), float64
        pad = [(w // 2, w // 2) for w in win] + [(0, 0)]
        windows = sliding_window_view(np.pad(v, pad), win, axis=tuple(range(len(shape))))
        return windows.sum(axis=tuple(range(-len(shape), 0)))

    x = rng.standard_normal((2,) + shape + (3,))
    weights = rng.standard_normal((2,) + shape + (3,))
    xt = tf.constant(x, tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        out = box_sum(xt, win)
        inner = tf.reduce_sum(out * tf.constant(weights, tf.float32))
    grad = tape.gradient(inner, xt).numpy()
    for b in range(2):
        np.testing.assert_allclose(out.numpy()[b], brute(x[b]), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(grad[b], brute(weights[b]), rtol=1e-5, atol=1e-5)


def test_the_refinements_compiled_functions_are_traced_once_for_every_size(rng):
    """The coarse-to-fine refinement calls the compiled warp and its gradient at three sizes:
    one trace serves them all (``fusion.fused``), each size gets scipy's values, and a caller's
    graph still sees the output's static shape."""
    from vxm_keras import spatial

    traces = [spatial._sample_forward.compiled, spatial._sample_backward.compiled]

    @tf.function(autograph=False)
    def warp_and_gradient(vol, disp):
        with tf.GradientTape() as tape:
            tape.watch(disp)
            moved = spatial.transform(vol, disp, vol_gradient=False)
            loss = tf.reduce_sum(moved * moved)
        assert moved.shape == vol.shape  # static inside the graph
        return moved, tape.gradient(loss, disp)

    counts = []
    for shape in [(6, 5, 7), (12, 10, 14), (9, 11, 8)]:
        vol = rng.random((1,) + shape + (1,)).astype(np.float32)
        disp = (rng.standard_normal((1,) + shape + (3,)) * 1.5).astype(np.float32)
        moved, grad = warp_and_gradient(tf.constant(vol), tf.constant(disp))
        np.testing.assert_allclose(moved.numpy()[0, ..., 0], scipy_warp(vol[0], disp[0], order=1)[..., 0],
                                   atol=1e-5)
        assert np.isfinite(grad.numpy()).all() and np.abs(grad.numpy()).max() > 0
        counts.append([fn.experimental_get_tracing_count() for fn in traces])
    assert counts[0] == counts[1] == counts[2], counts


def test_box_sum_rejects_even_or_missing_windows():
    from vxm_keras.spatial import box_sum
    x = tf.zeros((1, 5, 5, 1))
    for win in [(4, 3), (3,), (3, 3, 3), (0, 3)]:
        with pytest.raises(ValueError, match='odd window'):
            box_sum(x, win)


@pytest.mark.parametrize('shape', SHAPES)
@pytest.mark.parametrize('method,order,fill', [('linear', 1, None), ('nearest', 0, None), ('linear', 1, -2.0)])
def test_the_compiled_warp_of_a_constant_volume_matches_scipy_and_its_gradient(rng, shape, method, order, fill):
    """``transform(..., vol_gradient=False)`` (the refinement's warp, one XLA loop with the gradient
    recomputed): the values of scipy's map_coordinates, NaN handling included, the gradient with
    respect to the displacement of the differentiable path, and no gradient for the volume."""
    from vxm_keras.spatial import transform
    vol = rng.random(shape + (2,)).astype(np.float32)
    disp = smooth_field(rng, shape, 6.0) + 0.25
    disp[(1,) * len(shape) + (0,)] = np.nan
    weights = tf.constant(rng.standard_normal((1,) + shape + (2,)).astype(np.float32))
    outs, grads = [], []
    for vol_gradient in (True, False):
        v, d = tf.constant(vol[None]), tf.constant(disp[None])
        with tf.GradientTape(persistent=True) as tape:
            tape.watch([v, d])
            out = transform(v, d, method, fill_value=fill, vol_gradient=vol_gradient)
            loss = tf.reduce_sum(tf.where(tf.math.is_nan(out), 0.0, out) * weights)
        outs.append(out.numpy()[0])
        grads.append((tape.gradient(loss, v), tape.gradient(loss, d)))
    ref = scipy_warp(vol, np.nan_to_num(disp), order, mode='nearest' if fill is None else 'constant',
                     cval=0.0 if fill is None else fill)
    nan = np.isnan(disp).any(-1)
    assert not np.isnan(outs[1][~nan]).any()
    np.testing.assert_allclose(outs[1][~nan], ref[~nan], atol=1e-4)
    # at a NaN displacement, what the differentiable path gives (NaN; the fill value outside)
    np.testing.assert_allclose(outs[1], outs[0], atol=1e-5)
    assert grads[1][0] is None
    if method == 'linear':
        np.testing.assert_allclose(grads[1][1].numpy(), grads[0][1].numpy(), atol=1e-4)
        assert np.abs(grads[1][1].numpy()).max() > 0.1
