"""Losses against brute-force numpy implementations of the papers' formulas."""
import numpy as np
import pytest
import tensorflow as tf
from numpy.lib.stride_tricks import sliding_window_view

from vxm_keras import losses


def ncc_bruteforce(I, J, win, eps=1e-5):
    """cc map of (*S) arrays, windows zero-padded, every window counted in full."""
    pad = [(w // 2, w // 2) for w in win]
    Iw = sliding_window_view(np.pad(I.astype(np.float64), pad), win)
    Jw = sliding_window_view(np.pad(J.astype(np.float64), pad), win)
    axes = tuple(range(I.ndim, 2 * I.ndim))
    Ic = Iw - Iw.mean(axis=axes, keepdims=True)
    Jc = Jw - Jw.mean(axis=axes, keepdims=True)
    cross = (Ic * Jc).sum(axes)
    return cross ** 2 / ((Ic ** 2).sum(axes) * (Jc ** 2).sum(axes) + eps)


@pytest.mark.parametrize('shape,win', [((11, 13, 10), 9), ((11, 13, 10), 5), ((20, 17), 9)])
def test_ncc_matches_bruteforce(rng, shape, win):
    from scipy.ndimage import gaussian_filter
    # two correlated smooth-plus-noise images, as registration sees them
    base = gaussian_filter(rng.random(shape), 1.5)
    I = base + 0.05 * rng.random(shape)
    J = 0.7 * base + 0.1 * rng.random(shape) + 0.2
    loss = losses.NCC(win=win)
    cc = loss.ncc_map(tf.constant(I[None, ..., None], tf.float32), tf.constant(J[None, ..., None], tf.float32))
    ref = ncc_bruteforce(I, J, [win] * len(shape))
    np.testing.assert_allclose(cc.numpy()[0, ..., 0], ref, atol=2e-4)
    value = loss(tf.constant(I[None, ..., None], tf.float32), tf.constant(J[None, ..., None], tf.float32))
    assert float(value) == pytest.approx(-ref.mean(), abs=1e-5)


def test_ncc_prepared_fixed_image_reused_for_many_moving(rng):
    """One ``prepare`` of the fixed image (as the refinement does once per stage) serves every
    moving image: values equal the brute-force NCC, and the gradient with respect to the
    moving image equals central finite differences of the brute force."""
    from scipy.ndimage import gaussian_filter
    shape, win = (9, 10, 8), 5
    I = gaussian_filter(rng.random(shape), 1.0)
    loss = losses.NCC(win=win)
    prepared = loss.prepare(tf.constant(I[None, ..., None], tf.float32))
    for scale, offset in [(0.7, 0.2), (-1.3, 0.9)]:
        J = scale * I + 0.1 * gaussian_filter(rng.random(shape), 1.0) + offset
        Jt = tf.Variable(J[None, ..., None].astype(np.float32))
        with tf.GradientTape() as tape:
            value = loss.prepared_loss(prepared, Jt)
        grad = tape.gradient(value, Jt).numpy()[0, ..., 0]
        assert float(value[0]) == pytest.approx(-ncc_bruteforce(I, J, [win] * 3).mean(), abs=1e-5)
        h = 1e-4
        for idx in [(0, 0, 0), (4, 5, 3), (8, 9, 7), (2, 7, 4)]:
            Jp, Jm = J.copy(), J.copy()
            Jp[idx] += h
            Jm[idx] -= h
            fd = -(ncc_bruteforce(I, Jp, [win] * 3).mean() - ncc_bruteforce(I, Jm, [win] * 3).mean()) / (2 * h)
            assert grad[idx] == pytest.approx(fd, rel=2e-2, abs=2e-5)


@pytest.mark.parametrize('offset', [0.0, 100.0])
def test_ncc_gradients_of_both_images_match_finite_differences(rng, offset):
    """The written-out gradient of NCC (window sums recomputed, variances clamped at zero) with
    respect to the fixed and the moving image, at corners, edges and inside, against central
    finite differences of the float64 brute force; with raw-intensity offsets too, where the
    zero padding's correction terms are large."""
    from scipy.ndimage import gaussian_filter
    shape, win = (8, 9, 7), 5
    I = offset + gaussian_filter(rng.random(shape), 1.0)
    J = offset + 0.6 * I + 0.2 * gaussian_filter(rng.random(shape), 1.0)
    It, Jt = (tf.Variable(x[None, ..., None].astype(np.float32)) for x in (I, J))
    with tf.GradientTape(persistent=True) as tape:
        value = losses.NCC(win=win)(It, Jt)
    grads = [tape.gradient(value, x).numpy()[0, ..., 0] for x in (It, Jt)]

    def loss(I, J):
        return -ncc_bruteforce(I, J, [win] * 3).mean()

    h = 1e-3
    for which, grad in enumerate(grads):
        assert np.abs(grad).max() > 1e-4
        for idx in [(0, 0, 0), (7, 8, 6), (3, 4, 3), (0, 4, 6), (5, 1, 2)]:
            args = [I.copy(), J.copy()], [I.copy(), J.copy()]
            args[0][which][idx] += h
            args[1][which][idx] -= h
            fd = (loss(*args[0]) - loss(*args[1])) / (2 * h)
            assert grad[idx] == pytest.approx(fd, rel=2e-2, abs=2e-5), (which, idx)


def test_ncc_batch_and_channels_are_independent(rng):
    shape = (2, 10, 11, 9, 2)
    I, J = rng.random(shape), rng.random(shape)
    per_sample = losses.NCC(win=5).call(tf.constant(I, tf.float32), tf.constant(J, tf.float32)).numpy()
    for b in range(2):
        ref = np.mean([ncc_bruteforce(I[b, ..., c], J[b, ..., c], [5, 5, 5]).mean() for c in range(2)])
        assert per_sample[b] == pytest.approx(-ref, abs=1e-5)


def test_ncc_identical_images_is_one(rng):
    I = rng.random((1, 16, 16, 16, 1)).astype(np.float32)
    cc = losses.NCC().ncc_map(tf.constant(I), tf.constant(I)).numpy()
    assert cc.min() > 1 - 1e-3 and cc.max() < 1 + 1e-5


def test_ncc_constant_images_are_finite(rng):
    const = np.full((1, 16, 16, 16, 1), 0.7, np.float32)
    rand = rng.random(const.shape).astype(np.float32)
    interior = (0, slice(4, -4), slice(4, -4), slice(4, -4), 0)
    for a, b in [(const, const), (const, rand), (np.zeros_like(const), np.zeros_like(const))]:
        ta, tb = tf.constant(a), tf.constant(b)
        with tf.GradientTape() as tape:
            tape.watch(tb)
            value = losses.NCC()(ta, tb)
        grad = tape.gradient(value, tb).numpy()
        assert np.isfinite(float(value)) and np.all(np.isfinite(grad))
        # the zero padding makes border windows of a constant image vary: the formula's own value
        ref = ncc_bruteforce(a[0, ..., 0], b[0, ..., 0], [9, 9, 9])
        assert float(value) == pytest.approx(-ref.mean(), abs=1e-4)
        # windows inside a constant image carry no correlation at all
        assert np.abs(losses.NCC().ncc_map(ta, tb).numpy()[interior]).max() < 1e-6


def test_ncc_precise_on_large_offset_intensities(rng):
    # raw scanner-like intensities: the naive float32 sums would cancel badly here
    from scipy.ndimage import gaussian_filter
    shape = (12, 12, 12)
    I = 1000 + 50 * gaussian_filter(rng.random(shape), 2)
    J = 1000 + 50 * gaussian_filter(rng.random(shape), 2)
    cc = losses.NCC().ncc_map(tf.constant(I[None, ..., None], tf.float32),
                              tf.constant(J[None, ..., None], tf.float32)).numpy()[0, ..., 0]
    np.testing.assert_allclose(cc, ncc_bruteforce(I, J, [9, 9, 9]), atol=1e-3)


def test_grad_matches_numpy(rng):
    field = rng.standard_normal((2, 7, 8, 9, 3)).astype(np.float32)
    for penalty, f in [('l2', np.square), ('l1', np.abs)]:
        out = losses.Grad(penalty).call(None, tf.constant(field)).numpy()
        for b in range(2):
            ref = np.mean([f(np.diff(field[b], axis=ax)).mean() for ax in range(3)])
            assert out[b] == pytest.approx(ref, rel=1e-5)
    # 2-D, and a linear ramp whose forward difference is known exactly
    ramp = np.zeros((1, 6, 5, 2), np.float32)
    ramp[..., 0] = 0.5 * np.arange(6)[:, None]
    # only d/dx0 of component 0 is non-zero: 0.25 on half the components -> mean 0.125, averaged over 2 axes
    assert float(losses.Grad('l2')(np.zeros_like(ramp), tf.constant(ramp))) == pytest.approx(0.0625)


@pytest.mark.parametrize('penalty', ['l2', 'l1'])
def test_grad_gradient_matches_finite_differences(rng, penalty):
    """The smoothness term's gradient (a compiled backward pass that recomputes the forward
    differences) against central differences of the numpy definition in float64, at corners,
    edges and inside, 2-D and 3-D."""
    f = np.square if penalty == 'l2' else np.abs

    def numpy_grad_loss(u):  # (*spatial, channels) -> scalar, float64
        return np.mean([f(np.diff(u, axis=ax)).mean() for ax in range(u.ndim - 1)])

    for shape in [(5, 6, 4, 3), (7, 5, 2)]:
        # values away from 0: |x| has no derivative there
        field = rng.standard_normal(shape) + np.where(rng.random(shape) < 0.5, -0.2, 0.2)
        tf_field = tf.constant(field[None], tf.float32)
        with tf.GradientTape() as tape:
            tape.watch(tf_field)
            value = losses.Grad(penalty).call(None, tf_field)[0]
        grad = tape.gradient(value, tf_field).numpy()[0]
        assert float(value) == pytest.approx(numpy_grad_loss(field), rel=1e-5)
        h = 1e-6
        for idx in [(0,) * len(shape), tuple(n - 1 for n in shape), tuple(n // 2 for n in shape),
                    (0,) + tuple(n // 2 for n in shape[1:])]:
            plus, minus = field.copy(), field.copy()
            plus[idx] += h
            minus[idx] -= h
            numeric = (numpy_grad_loss(plus) - numpy_grad_loss(minus)) / (2 * h)
            assert grad[idx] == pytest.approx(numeric, rel=1e-3, abs=1e-6), (shape, idx)


def test_mse_and_image_sigma(rng):
    a, b = rng.random((2, 5, 6, 1)), rng.random((2, 5, 6, 1))
    ref = ((a - b) ** 2).reshape(2, -1).mean(1)
    np.testing.assert_allclose(losses.MSE().call(tf.constant(a), tf.constant(b)).numpy(), ref, rtol=1e-5)
    np.testing.assert_allclose(losses.MSE(image_sigma=0.1).call(tf.constant(a), tf.constant(b)).numpy(),
                               ref / 0.01, rtol=1e-5)


def test_dice_loss_hand_counts():
    # 1-D strips of 10 voxels, 2 labels: label A true 0..4, predicted 2..6; label B the complement
    t = np.zeros((1, 10, 1, 2), np.float32)
    p = np.zeros_like(t)
    t[0, :5, 0, 0] = 1
    t[0, 5:, 0, 1] = 1
    p[0, 2:7, 0, 0] = 1
    p[0, :2, 0, 1] = 1
    p[0, 7:, 0, 1] = 1
    # A: overlap 3, sizes 5 + 5 -> 0.6; B: overlap 3 (7,8,9), sizes 5 + 5 -> 0.6
    assert float(losses.Dice()(tf.constant(t), tf.constant(p))) == pytest.approx(-0.6)
    assert float(losses.Dice()(tf.constant(t), tf.constant(t))) == pytest.approx(-1.0)


def degree_bruteforce(shape):
    deg = np.zeros(shape)
    for idx in np.ndindex(*shape):
        for d in range(len(shape)):
            for step in (-1, 1):
                j = list(idx)
                j[d] += step
                if 0 <= j[d] < shape[d]:
                    deg[idx] += 1
    return deg


def test_kl_matches_numpy(rng):
    shape = (6, 7, 5)
    mu = rng.standard_normal((2,) + shape + (3,))
    log_sigma = rng.standard_normal((2,) + shape + (3,)) - 3
    lam = 25.0
    y_pred = np.concatenate([mu, log_sigma], -1).astype(np.float32)
    out = losses.KL(lam).call(None, tf.constant(y_pred)).numpy()
    deg = degree_bruteforce(shape)[..., None]
    for b in range(2):
        sigma_term = np.mean(lam * deg * np.exp(log_sigma[b]) - log_sigma[b])
        prec = sum(np.mean(np.diff(mu[b], axis=ax) ** 2) for ax in range(3))
        ref = 0.5 * 3 * (sigma_term + lam * 0.5 * prec / 3)
        assert out[b] == pytest.approx(ref, rel=1e-4)


def test_losses_in_compile_and_serialisation():
    import keras
    for loss in [losses.NCC(win=7, eps=1e-3), losses.Grad('l1', loss_mult=2), losses.MSE(0.02),
                 losses.Dice(), losses.KL(10)]:
        clone = keras.losses.deserialize(keras.losses.serialize(loss))
        assert type(clone) is type(loss) and clone.get_config() == loss.get_config()


def test_dice_from_integer_labels_equals_one_hot(rng):
    from vxm_keras.layers import OneHot
    seg_t = rng.integers(0, 6, (2, 9, 8, 7, 1))
    labels = [1, 3, 5]
    onehot_t = OneHot(labels)(tf.constant(seg_t, tf.float32)).numpy()
    assert onehot_t.shape == (2, 9, 8, 7, 3)
    np.testing.assert_array_equal(onehot_t[..., 1], (seg_t[..., 0] == 3))
    pred = rng.random((2, 9, 8, 7, 3)).astype(np.float32)
    a = losses.Dice(labels=labels).call(tf.constant(seg_t, tf.float32), tf.constant(pred)).numpy()
    b = losses.Dice().call(tf.constant(onehot_t), tf.constant(pred)).numpy()
    np.testing.assert_allclose(a, b, rtol=1e-6)
    # by hand for the first sample and label 3
    t = (seg_t[0, ..., 0] == 3)
    ref = 2 * (t * pred[0, ..., 1]).sum() / (t.sum() + pred[0, ..., 1].sum())
    per_label = [2 * ((seg_t[0, ..., 0] == lab) * pred[0, ..., i]).sum()
                 / ((seg_t[0, ..., 0] == lab).sum() + pred[0, ..., i].sum()) for i, lab in enumerate(labels)]
    assert per_label[1] == pytest.approx(ref) and a[0] == pytest.approx(-np.mean(per_label), rel=1e-5)


def test_fusion_off_gives_the_same_losses_and_gradients(tmp_path):
    """VXM_XLA_FUSION=0 (losses and field upsampling op by op, no XLA) in a fresh process: the
    same values and gradients as the XLA-compiled ones of this process."""
    import os
    import subprocess
    import sys
    rng = np.random.default_rng(5)
    a, b = rng.random((2, 2, 12, 10, 8, 1)).astype(np.float32)
    field = rng.standard_normal((2, 12, 10, 8, 6)).astype(np.float32)
    np.savez(tmp_path / 'in.npz', a=a, b=b, field=field)
    script = '''
import sys
import numpy as np
import tensorflow as tf
from vxm_keras import losses, spatial
d = np.load(sys.argv[1])
a, b, field = (tf.constant(d[k]) for k in ('a', 'b', 'field'))
out = {}
for name, fn, x, y in [('ncc', losses.NCC(), a, b), ('mse', losses.MSE(0.1), a, b),
                       ('grad', losses.Grad('l2'), a, field[..., :3]), ('kl', losses.KL(25.0), a, field)]:
    with tf.GradientTape() as tape:
        tape.watch(y)
        value = fn(x, y)
    out[name] = value.numpy()
    out[name + '_grad'] = tape.gradient(value, y).numpy()
with tf.GradientTape() as tape:
    tape.watch(field)
    up = spatial.upsample_linear(field, 2)
    value = tf.reduce_sum(up * up)
out['upsample'], out['upsample_grad'] = up.numpy(), tape.gradient(value, field).numpy()
out['compiled'] = np.array(hasattr(losses._grad.forward, 'compiled'))
np.savez(sys.argv[2], **out)
'''
    results = []
    for flag in ('1', '0'):
        path = tmp_path / f'out{flag}.npz'
        env = dict(os.environ, VXM_XLA_FUSION=flag, TF_CPP_MIN_LOG_LEVEL='3')
        proc = subprocess.run([sys.executable, '-c', script, str(tmp_path / 'in.npz'), str(path)],
                              env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        results.append(dict(np.load(path)))
    fused, plain = results
    assert bool(fused.pop('compiled')) and not bool(plain.pop('compiled'))
    for key in fused:
        assert np.abs(fused[key]).max() > 0, key
        np.testing.assert_allclose(fused[key], plain[key], rtol=1e-4, atol=1e-6, err_msg=key)


def test_degree_counts_face_neighbours_inside_the_volume():
    from vxm_keras.losses import _degree_terms, degree_matrix
    for shape in [(4, 5, 6), (3, 7), (1, 4, 2)]:
        brute = np.zeros(shape, np.float32)
        for idx in np.ndindex(*shape):
            for d in range(len(shape)):
                for step in (-1, 1):
                    brute[idx] += 0 <= idx[d] + step < shape[d]
        np.testing.assert_array_equal(degree_matrix(shape), brute)
        np.testing.assert_array_equal(sum(_degree_terms(shape)).numpy()[..., 0], brute)


def _mind_numpy(image, radius=1, dilation=2):
    """MIND-SSC of one ``(*spatial)`` image by hand: symmetric-padded shifts, scipy's box mean
    with zeros outside, normalised over the pairs (float64)."""
    from scipy.ndimage import uniform_filter
    ndim, d = image.ndim, dilation
    padded = np.pad(image.astype(np.float64), d, mode='symmetric')

    def at(offset):
        return padded[tuple(slice(d + o * d, d + o * d + n) for o, n in zip(offset, image.shape))]
    dist = np.stack([uniform_filter((at(a) - at(b)) ** 2, 2 * radius + 1, mode='constant')
                     for a, b in losses.mind_pairs(ndim)], -1)
    dist -= dist.min(-1, keepdims=True)
    var = dist.mean(-1, keepdims=True)
    var = np.clip(var, 1e-3 * var.mean(), 1e3 * var.mean())
    return np.exp(-dist / var)


def test_mind_pairs_are_the_edges_of_the_neighbourhood():
    assert len(losses.mind_pairs(3)) == 12 and len(losses.mind_pairs(2)) == 4
    for a, b in losses.mind_pairs(3):
        assert sum(abs(v) for v in a) == 1 and sum(abs(v) for v in b) == 1 and np.dot(a, b) == 0


@pytest.mark.parametrize('shape, radius, dilation', [((12, 10, 9), 1, 2), ((11, 13), 2, 1), ((9, 8, 10), 0, 3)])
def test_mind_matches_bruteforce(rng, shape, radius, dilation):
    image = rng.random(shape).astype(np.float32)
    got = losses.mind_ssc(image[None, ..., None], radius, dilation).numpy()[0]
    np.testing.assert_allclose(got, _mind_numpy(image, radius, dilation), rtol=1e-4, atol=1e-5)
    other = rng.random(shape).astype(np.float32)
    loss = losses.MIND(radius, dilation)(image[None, ..., None], other[None, ..., None]).numpy()
    np.testing.assert_allclose(loss, np.mean((_mind_numpy(image, radius, dilation)
                                              - _mind_numpy(other, radius, dilation)) ** 2), rtol=1e-4)


def test_mind_ignores_contrast_inversion_and_gain(rng):
    """A linear intensity map (here inverted, scaled and offset: T1 against a crude 'T2')
    leaves the descriptors unchanged, so the loss is 0, where MSE is large."""
    from scipy.ndimage import gaussian_filter
    image = gaussian_filter(rng.random((20, 18, 16)), 1.5).astype(np.float32)[None, ..., None]
    inverted = 0.8 - 3.0 * image
    assert float(losses.MIND()(image, inverted)) < 1e-9
    assert float(losses.MSE()(image, inverted)) > 1.0
    shifted = np.roll(image, 2, axis=1)
    assert float(losses.MIND()(image, shifted)) > 1e-3


def test_mind_gradient_matches_finite_differences(rng):
    from scipy.ndimage import gaussian_filter
    fixed = gaussian_filter(rng.random((10, 9, 8)), 1.0)[None, ..., None]
    moving = tf.Variable(gaussian_filter(rng.random((10, 9, 8)), 1.0)[None, ..., None].astype(np.float32))
    loss_fn = losses.MIND()
    with tf.GradientTape() as tape:
        loss = loss_fn(fixed, moving)
    grad = tape.gradient(loss, moving).numpy()
    base = moving.numpy().astype(np.float64)
    # interior and face voxels (at a corner the symmetric padding makes pairs tie in the minimum:
    # a kink where finite differences do not apply)
    for idx in [(0, 5, 4, 4, 0), (0, 3, 2, 5, 0), (0, 9, 3, 7, 0)]:
        step = 1e-3
        up, down = base.copy(), base.copy()
        up[idx] += step
        down[idx] -= step
        numeric = (np.mean((_mind_numpy(fixed[0, ..., 0]) - _mind_numpy(up[0, ..., 0])) ** 2)
                   - np.mean((_mind_numpy(fixed[0, ..., 0]) - _mind_numpy(down[0, ..., 0])) ** 2)) / (2 * step)
        np.testing.assert_allclose(grad[idx], numeric, rtol=0.05, atol=1e-6)  # float32 against float64


def test_mind_serialises():
    import keras
    loss = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(losses.MIND(2, 3)))
    assert isinstance(loss, losses.MIND) and (loss.radius, loss.dilation) == (2, 3)


def _ngf_numpy(fixed, moving, eta):
    """NGF of two ``(*spatial)`` images by hand (float64): central differences with the edge
    voxel repeated, ``eps = eta * mean |grad|`` of each image, mean of ``1 - (n_F . n_M)^2``."""
    def normalised(image):
        padded = np.pad(image.astype(np.float64), 1, mode='edge')
        inner = [slice(1, -1)] * image.ndim
        grad = []
        for d in range(image.ndim):
            ahead, behind = list(inner), list(inner)
            ahead[d], behind[d] = slice(2, None), slice(None, -2)
            grad.append((padded[tuple(ahead)] - padded[tuple(behind)]) / 2)
        grad = np.stack(grad, -1)
        norm2 = (grad ** 2).sum(-1, keepdims=True)
        eps = eta * np.sqrt(norm2).mean()
        return grad / np.sqrt(norm2 + eps ** 2)
    return np.mean(1 - (normalised(fixed) * normalised(moving)).sum(-1) ** 2)


@pytest.mark.parametrize('shape, eta', [((12, 10, 9), 0.5), ((11, 13), 0.1), ((7, 9, 8), 2.0)])
def test_ngf_matches_bruteforce(rng, shape, eta):
    fixed, moving = (rng.random((2,) + shape + (1,)).astype(np.float32) for _ in range(2))
    got = losses.NGF(eta).call(fixed, moving).numpy()  # per batch element
    want = [_ngf_numpy(fixed[b, ..., 0], moving[b, ..., 0], eta) for b in range(2)]
    np.testing.assert_allclose(got, want, rtol=1e-5)
    # the refinement's form: the fixed image's part made once
    loss = losses.NGF(eta)
    np.testing.assert_allclose(loss.prepared_loss(loss.prepare(fixed), moving).numpy(), want, rtol=1e-5)


def test_ngf_ignores_contrast_inversion_and_gain(rng):
    """Edges, not intensities: an inverted, scaled and offset copy scores as the image itself;
    a shifted copy worse."""
    from scipy.ndimage import gaussian_filter
    image = gaussian_filter(rng.random((20, 18, 16)), 1.5).astype(np.float32)[None, ..., None]
    same = float(losses.NGF()(image, image))
    np.testing.assert_allclose(float(losses.NGF()(image, 0.8 - 3.0 * image)), same, rtol=1e-5)
    # the agreement 1 - loss: 0.060 for the image itself, 0.025 shifted (measured)
    assert 1 - float(losses.NGF()(image, np.roll(image, 2, axis=1))) < 0.5 * (1 - same)


def test_ngf_gradient_matches_finite_differences(rng):
    """Corners, edges (the replicated padding) and inside, in 3-D and 2-D."""
    from scipy.ndimage import gaussian_filter
    for shape, points in [((8, 7, 6), [(0, 0, 0), (7, 3, 0), (4, 3, 2)]), ((9, 8), [(0, 7), (8, 3), (4, 4)])]:
        fixed = gaussian_filter(rng.random(shape), 1.0)
        moving = tf.Variable(gaussian_filter(rng.random(shape), 1.0)[None, ..., None].astype(np.float32))
        with tf.GradientTape() as tape:
            loss = losses.NGF(0.5)(fixed[None, ..., None], moving)
        grad = tape.gradient(loss, moving).numpy()[0, ..., 0]
        base = moving.numpy()[0, ..., 0].astype(np.float64)
        for idx in points:
            step = 1e-4
            up, down = base.copy(), base.copy()
            up[idx] += step
            down[idx] -= step
            numeric = (_ngf_numpy(fixed, up, 0.5) - _ngf_numpy(fixed, down, 0.5)) / (2 * step)
            np.testing.assert_allclose(grad[idx], numeric, rtol=0.02, atol=1e-6)  # float32 against float64


def test_ngf_serialises():
    import keras
    loss = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(losses.NGF(0.25)))
    assert isinstance(loss, losses.NGF) and loss.eta == 0.25
    with pytest.raises(ValueError, match='eta'):
        losses.NGF(0.0)
