"""Losses of VoxelMorph as ``keras.losses.Loss`` subclasses.

Each loss returns one value per batch element (Keras then averages over the
batch), so they plug straight into
``model.compile(loss=[NCC(), Grad('l2')], loss_weights=[1, lam])`` for a model
with outputs ``[moved, flow]``. Images are ``(batch, *spatial, channels)``;
fields are ``(batch, *spatial, ndim)`` displacements (or velocities) in voxel
units.
"""

import keras
import numpy as np
import tensorflow as tf

from .fusion import fused as _fused
from .fusion import fused_with_recomputed_gradient, recomputed_gradient
from .spatial import box_sum

__all__ = ['NCC', 'mind_pairs', 'mind_ssc', 'MIND', 'NGF', 'MSE', 'forward_differences', 'Grad', 'Dice',
           'DisplacementPenalty', 'degree_matrix', 'KL', 'IMAGE_LOSSES']

_register = keras.saving.register_keras_serializable(package='vxm_keras')


def _spatial_axes(x):
    return list(range(1, len(x.shape) - 1))


def _per_sample_mean(x):
    return tf.reduce_mean(tf.reshape(x, [tf.shape(x)[0], -1]), axis=-1)


def _window_counts(volshape, win):
    """Per-axis counts of in-volume voxels in the window centred on each voxel: one tensor per
    axis, shaped to broadcast against ``(1, *volshape, 1)``; their product is the count. Passed
    to the compiled functions as arguments: built inside them, XLA folds the product into a
    volume-sized constant (a 34 MB executable at 160x192x224)."""
    counts = []
    for d, (n, w) in enumerate(zip(volshape, win)):
        idx = np.arange(n)
        c = np.minimum(idx + w // 2, n - 1) - np.maximum(idx - w // 2, 0) + 1
        shape = [1] * (len(volshape) + 2)
        shape[d + 1] = n
        counts.append(tf.constant(c.astype(np.float32).reshape(shape)))
    return tuple(counts)


@_register
class NCC(keras.losses.Loss):
    """Local (windowed) normalised cross-correlation; the loss is ``-NCC``.

    For every voxel, over the ``win``-sized window centred on it (zeros
    outside the volume, the window size always counted in full as in the
    original code), with ``n = prod(win)`` and window sums ``S``::

        cross = S[IJ] - S[I] S[J] / n
        var_I = S[I^2] - S[I]^2 / n,   var_J likewise
        cc    = cross^2 / (var_I var_J + eps)

    and NCC is the mean of ``cc`` over voxels (and channels, each channel on
    its own). Window sums use a separable box filter: ``3 * win`` operations
    per voxel instead of ``win^3``, the same numbers. Each image is first
    shifted by its own mean and the zero padding accounted for exactly, so
    float32 sums do not cancel catastrophically in flat regions; variances
    are clamped at zero, so constant regions give finite values. The gradient is written out
    (window sums of the upstream gradient, elementwise terms recomputed), not kept from the
    forward pass: NCC forward + backward at 160x192x224 peaks at 316 MiB instead of 1017 MiB.

    Args:
        win: window size, an odd int or one per spatial axis (default 9).
        eps: stabiliser in the denominator.
    """

    def __init__(self, win=9, eps=1e-5, name='ncc', **kwargs):
        super().__init__(name=name, **kwargs)
        self.win = win
        self.eps = float(eps)

    def _window(self, ndim):
        win = [int(self.win)] * ndim if np.isscalar(self.win) else [int(w) for w in self.win]
        if len(win) != ndim or any(w < 1 or w % 2 == 0 for w in win):
            raise ValueError(f'NCC window must be odd and have {ndim} entries, got {self.win}')
        return win

    def ncc_map(self, y_true, y_pred):
        """Per-voxel ``cc``, shape ``(batch, *spatial, channels)``."""
        return self._cc(self.prepare(y_true), y_pred)

    def prepare(self, y_true):
        """The fixed image's share of the work, done once for any number of ``y_pred``
        (an optimisation against one fixed image): pass the result to :meth:`prepared_loss`.
        Returns a tuple of tensors ``(y_true, window sums of its centred terms, its mean)``."""
        y_true = tf.cast(y_true, tf.float32)
        true_terms, a = _ncc_fixed_terms(y_true)
        return y_true, box_sum(true_terms, self._window(len(y_true.shape) - 2)), a

    def prepared_loss(self, prepared, y_pred):
        """``-NCC`` per batch element, as :meth:`call`, with the fixed image's part from
        :meth:`prepare`; the same numbers."""
        return -_per_sample_mean(self._cc(prepared, y_pred))

    def _cc(self, prepared, y_pred):
        y_true, true_sums, a = prepared
        y_pred = tf.cast(y_pred, tf.float32)
        win = self._window(len(y_pred.shape) - 2)
        # the fixed and moving terms are box-summed apart: in training only y_pred has a
        # gradient, and the backward pass then needs the box sums of 3 channels instead of 5
        pred_terms, b = _ncc_moving_terms(y_true, a, y_pred)
        return _ncc_combine(true_sums, box_sum(pred_terms, win), a, b, tuple(win), self.eps)

    def call(self, y_true, y_pred):
        return -_per_sample_mean(self.ncc_map(y_true, y_pred))

    def get_config(self):
        config = super().get_config()
        config.update(win=self.win, eps=self.eps)
        return config


@_fused
def _ncc_fixed_terms(y_true):
    """The centred fixed image and its square, ``[I', I'^2]``, and its mean ``a``."""
    a = tf.stop_gradient(tf.reduce_mean(y_true, _spatial_axes(y_true), keepdims=True))
    i = y_true - a
    return tf.concat([i, i * i], -1), a


def _ncc_moving_terms(y_true, a, y_pred):
    """``[J', J'^2, I'J']`` and the mean ``b`` of the moved image, ``J' = y_pred - b`` and
    ``I' = y_true - a`` (``a``, ``b`` held constant). The gradient is written out, so the
    backward pass keeps nothing beyond the two images."""
    b = tf.stop_gradient(tf.reduce_mean(y_pred, _spatial_axes(y_pred), keepdims=True))

    @tf.custom_gradient
    def terms(y_true, y_pred):
        def grad(upstream):
            return _ncc_terms_grad_true(y_true, a, y_pred, b, upstream), \
                _ncc_terms_grad_pred(y_true, a, y_pred, b, upstream)
        return _ncc_terms(y_true, a, y_pred, b), grad

    return terms(y_true, y_pred), b


@_fused
def _ncc_terms(y_true, a, y_pred, b):
    j = y_pred - b
    return tf.concat([j, j * j, (y_true - a) * j], -1)


@_fused
def _ncc_terms_grad_pred(y_true, a, y_pred, b, upstream):
    g_j, g_jj, g_ij = tf.split(upstream, 3, axis=-1)
    return g_j + 2.0 * (y_pred - b) * g_jj + (y_true - a) * g_ij


@_fused
def _ncc_terms_grad_true(y_true, a, y_pred, b, upstream):
    return tf.split(upstream, 3, axis=-1)[2] * (y_pred - b)


def _ncc_combine(true_sums, pred_sums, a, b, win, eps):
    """``cc`` from the window sums of the terms above (see :class:`NCC`), its gradient written
    out: the backward pass recomputes the few elementwise terms from the window sums in one
    compiled loop instead of keeping a dozen volume-sized intermediates (NCC forward + backward
    at 160x192x224 peaked at 1017 MiB through automatic differentiation)."""
    counts = _window_counts(pred_sums.shape[1:-1], win)

    @tf.custom_gradient
    def combine(true_sums, pred_sums):
        def grad(upstream):
            # the fixed image's gradient has its own function: unused (the usual case), it is pruned
            return _ncc_combine_grad(true_sums, pred_sums, a, b, counts, upstream, win, eps, True), \
                _ncc_combine_grad(true_sums, pred_sums, a, b, counts, upstream, win, eps, False)
        return _ncc_combine_forward(true_sums, pred_sums, a, b, counts, win, eps), grad

    return combine(true_sums, pred_sums)


def _ncc_combine_terms(true_sums, pred_sums, a, b, counts, win, eps):
    # I = I' + a inside the volume, 0 outside (the padding). With m the
    # in-volume count of a window and r = 1 - m / n, exactly:
    #   cross = S[I'J'] - S[I']S[J']/n + r (a S[J'] + b S[I'] + a b m)
    #   var_I = S[I'^2] - S[I']^2/n   + r (2 a S[I'] + a^2 m)
    # so interior windows (r = 0) only ever sum centred values.
    s_i, s_ii = tf.split(true_sums, 2, axis=-1)
    s_j, s_jj, s_ij = tf.split(pred_sums, 3, axis=-1)
    n = float(np.prod(win))
    m = counts[0]
    for c in counts[1:]:
        m = m * c
    # n - m, not 1 - m / n: XLA divides by multiplying with 1 / n, and 1 - m * (1 / n) is 6e-8
    # rather than 0 inside the volume, where it multiplies a * b * m (7e8 for raw intensities)
    r = (n - m) / n
    cross = s_ij - s_i * s_j / n + r * (a * s_j + b * s_i + a * b * m)
    raw_i = s_ii - s_i * s_i / n + r * (2.0 * a * s_i + a * a * m)
    raw_j = s_jj - s_j * s_j / n + r * (2.0 * b * s_j + b * b * m)
    var_i, var_j = tf.maximum(raw_i, 0.0), tf.maximum(raw_j, 0.0)
    denominator = var_i * var_j + eps
    return cross * cross / denominator, (s_i, s_j, r, n, cross, raw_i, raw_j, var_i, var_j, denominator)


@_fused
def _ncc_combine_forward(true_sums, pred_sums, a, b, counts, win, eps):
    return _ncc_combine_terms(true_sums, pred_sums, a, b, counts, win, eps)[0]


@_fused
def _ncc_combine_grad(true_sums, pred_sums, a, b, counts, upstream, win, eps, of_fixed):
    """The gradient of ``cc`` with respect to the fixed image's window sums ``[S[I'], S[I'^2]]``
    (``of_fixed``) or the moved image's ``[S[J'], S[J'^2], S[I'J']]``; the variances' clamp at
    zero passes the gradient where the variance is >= 0, as ``tf.maximum`` does."""
    _, (s_i, s_j, r, n, cross, raw_i, raw_j, var_i, var_j, denominator) = _ncc_combine_terms(
        true_sums, pred_sums, a, b, counts, win, eps)
    d_cross = upstream * 2.0 * cross / denominator
    d_square = upstream * cross * cross / (denominator * denominator)
    if of_fixed:
        d_var = tf.where(raw_i >= 0.0, -d_square * var_j, 0.0)
        return tf.concat([d_cross * (r * b - s_j / n) + d_var * 2.0 * (r * a - s_i / n), d_var], -1)
    d_var = tf.where(raw_j >= 0.0, -d_square * var_i, 0.0)
    return tf.concat([d_cross * (r * a - s_i / n) + d_var * 2.0 * (r * b - s_j / n), d_var, d_cross], -1)


def mind_pairs(ndim):
    """The neighbour pairs of MIND-SSC: unit offsets ``(a, b)`` of the ``2 * ndim`` face
    neighbours at squared distance 2 from each other (the 12 edges of the 3-D
    six-neighbourhood's octahedron; 4 pairs in 2-D), each an ``ndim``-tuple."""
    units = []
    for d in range(ndim):
        for sign in (1, -1):
            units.append(tuple(sign if k == d else 0 for k in range(ndim)))
    return [(a, b) for i, a in enumerate(units) for b in units[i + 1:]
            if sum((x - y) ** 2 for x, y in zip(a, b)) == 2]


def _shift(padded, offset, pad, shape):
    """``x(p + offset)`` for every voxel ``p`` of ``x``, from ``x`` padded by ``pad`` per side."""
    begin = [0] + [pad + o for o in offset] + [0]
    return tf.slice(padded, begin, tf.concat([[-1], shape, [-1]], 0))


def mind_ssc(image, radius=1, dilation=2):
    """MIND-SSC descriptors (Heinrich et al., MICCAI 2013): for each neighbour pair ``(a, b)`` of
    :func:`mind_pairs` scaled by ``dilation`` voxels, the patch distance
    ``D = mean over the (2 radius + 1)-box of (I(x + a) - I(x + b))^2`` (symmetric padding at
    the edges for the shifts, zeros outside the volume in the box mean, as NCC's windows),
    then ``exp(-(D - min_pairs D) / V)`` with ``V`` the mean over pairs of ``D - min D``,
    clamped to [0.001, 1000] times its mean over the image.

    Args:
        image: ``(batch, *spatial, 1)``.

    Returns:
        ``(batch, *spatial, pairs)`` float32 in (0, 1]: alike for two images of one anatomy
        whatever their contrasts, as they describe local self-similarity, not intensity.
    """
    image = tf.cast(image, tf.float32)
    return _mind_normalise(_mind_distances(image, int(radius), int(dilation)))


def _mind_differences(image, dilation):
    """``(I(x + a) - I(x + b))^2`` for each neighbour pair, ``(batch, *spatial, pairs)``."""
    ndim = len(image.shape) - 2
    shape = tf.shape(image)[1:-1]
    pad = int(dilation)
    padded = tf.pad(image, [[0, 0]] + [[pad, pad]] * ndim + [[0, 0]], mode='SYMMETRIC')
    shifted = {}

    def at(offset):
        if offset not in shifted:
            shifted[offset] = _shift(padded, [o * pad for o in offset], pad, shape)
        return shifted[offset]
    return tf.concat([tf.square(at(a) - at(b)) for a, b in mind_pairs(ndim)], -1)


def _mind_distances(image, radius, dilation):
    """The patch distances ``D`` of :func:`mind_ssc`, ``(batch, *spatial, pairs)``."""
    win = [2 * radius + 1] * (len(image.shape) - 2)
    return box_sum(_mind_differences(image, dilation), win) / float(np.prod(win))


def _mind_normalise(dist):
    """Patch distances ``(batch, *spatial, pairs)`` to descriptors, as :func:`mind_ssc` says."""
    dist = dist - tf.reduce_min(dist, -1, keepdims=True)
    var = tf.reduce_mean(dist, -1, keepdims=True)
    level = tf.reduce_mean(var, _spatial_axes(var), keepdims=True)
    var = tf.clip_by_value(var, 1e-3 * level, 1e3 * level)
    return tf.exp(-dist / tf.maximum(var, 1e-12))


def _mind_loss(prepared, image, radius, dilation):
    """Per-sample mean of ``(prepared - mind_ssc(image))^2``, its gradient written out as
    compiled pieces that recompute what they need: the descriptors' from the patch distances
    (the one volume kept), the box mean's by its adjoint (the same box), the shifted
    differences' from the image. Through automatic differentiation, forward + backward at
    160x192x224 peaked at 2.5 GiB."""
    win = [2 * radius + 1] * (len(image.shape) - 2)

    @tf.custom_gradient
    def loss(image):
        dist = _mind_distances(image, radius, dilation)

        def grad(upstream):
            d_dist = _mind_squared_error_grad(prepared, dist, upstream)
            d_differences = box_sum(d_dist, win) / float(np.prod(win))
            return _mind_differences_grad(image, d_differences, dilation)
        return _mind_squared_error(prepared, dist), grad

    return loss(image)


def _mind_squared_error_of(prepared, dist):
    return _per_sample_mean(tf.square(prepared - _mind_normalise(dist)))


_mind_squared_error = _fused(_mind_squared_error_of)


@_fused
def _mind_squared_error_grad(prepared, dist, upstream):
    return recomputed_gradient(lambda d: _mind_squared_error_of(prepared, d), dist, upstream)


@_fused
def _mind_differences_grad(image, upstream, dilation):
    return recomputed_gradient(lambda x: _mind_differences(x, dilation), image, upstream)


@_register
class MIND(keras.losses.Loss):
    """Mean squared difference of MIND-SSC descriptors (:func:`mind_ssc`) per batch element: an
    image term for pairs of different contrasts (T2 or FLAIR to T1), where intensities are not
    comparable but local self-similarity is (ConvexAdam's multimodal term, Siebert et al. 2021).

    Args:
        radius: half-size of the patch box (default 1: 3 voxels).
        dilation: distance of the neighbours, voxels (default 2).
    """

    def __init__(self, radius=1, dilation=2, name='mind', **kwargs):
        super().__init__(name=name, **kwargs)
        self.radius, self.dilation = int(radius), int(dilation)
        if self.radius < 0 or self.dilation < 1:
            raise ValueError(f'MIND needs radius >= 0 and dilation >= 1, got {radius} and {dilation}')

    def call(self, y_true, y_pred):
        return self.prepared_loss(self.prepare(y_true), y_pred)

    def prepare(self, y_true):
        """The fixed image's descriptors, made once for any number of ``y_pred``."""
        return tf.stop_gradient(mind_ssc(y_true, self.radius, self.dilation))

    def prepared_loss(self, prepared, y_pred):
        """:meth:`call` with the fixed image's descriptors from :meth:`prepare`."""
        return _mind_loss(prepared, tf.cast(y_pred, tf.float32), self.radius, self.dilation)

    def get_config(self):
        config = super().get_config()
        config.update(radius=self.radius, dilation=self.dilation)
        return config


def _central_differences(image):
    """``(I(x + e_d) - I(x - e_d)) / 2`` along each spatial axis ``d`` (edges replicated),
    ``(batch, *spatial, ndim)`` for a ``(batch, *spatial, 1)`` image."""
    ndim = len(image.shape) - 2
    shape = tf.shape(image)[1:-1]
    padded = tf.pad(image, [[0, 0]] + [[1, 1]] * ndim + [[0, 0]], mode='SYMMETRIC')
    unit = [tuple(int(k == d) for k in range(ndim)) for d in range(ndim)]
    return tf.concat([(_shift(padded, u, 1, shape) - _shift(padded, [-o for o in u], 1, shape)) * 0.5
                      for u in unit], -1)


def _normalised_gradient(image, eta):
    """``grad I / sqrt(|grad I|^2 + eps^2)`` with ``eps = eta * mean |grad I|`` over the image
    (per sample), ``(batch, *spatial, ndim)``."""
    grad = _central_differences(image)
    norm2 = tf.reduce_sum(grad * grad, -1, keepdims=True)
    eps = eta * tf.reduce_mean(tf.sqrt(norm2 + 1e-20), _spatial_axes(norm2), keepdims=True)
    return grad * tf.math.rsqrt(norm2 + eps * eps + 1e-12)


@fused_with_recomputed_gradient
def _ngf_error(image, prepared, eta):
    """Per-sample mean of ``1 - (n_F . n_M)^2``, ``prepared`` the fixed image's ``n_F``."""
    dot = tf.reduce_sum(prepared * _normalised_gradient(image, eta), -1)
    return _per_sample_mean(1.0 - dot * dot)


_ngf_prepare = _fused(_normalised_gradient)


@_register
class NGF(keras.losses.Loss):
    """Normalised gradient fields (Haber and Modersitzki, 2006): per batch element the mean over
    voxels of ``1 - (n_F . n_M)^2``, ``n = grad I / sqrt(|grad I|^2 + eps^2)`` (central
    differences, edges replicated; ``eps = eta * mean |grad I|`` of each image, so that noise and
    flat regions count less than edges). Compares where edges are and which way they run, not
    which side is brighter: for pairs of different contrasts. Images ``(batch, *spatial, 1)``.

    Args:
        eta: edge threshold relative to the image's mean gradient magnitude (2, measured on
            training subjects made T2-like: 0.2 / 0.5 / 1 / 2 / 4 / 8 gave Dice 0.732 / 0.737 /
            0.748 / 0.755 / 0.740 / 0.714 at weight 1; models/README.md).
    """

    def __init__(self, eta=2.0, name='ngf', **kwargs):
        super().__init__(name=name, **kwargs)
        self.eta = float(eta)
        if self.eta <= 0:
            raise ValueError(f'NGF needs eta > 0, got {eta}')

    def call(self, y_true, y_pred):
        return self.prepared_loss(self.prepare(y_true), y_pred)

    def prepare(self, y_true):
        """The fixed image's normalised gradient, made once for any number of ``y_pred``."""
        return tf.stop_gradient(_ngf_prepare(tf.cast(y_true, tf.float32), self.eta))

    def prepared_loss(self, prepared, y_pred):
        """:meth:`call` with the fixed image's part from :meth:`prepare`."""
        return _ngf_error(tf.cast(y_pred, tf.float32), prepared, self.eta)

    def get_config(self):
        config = super().get_config()
        config.update(eta=self.eta)
        return config


@_fused
def _mse(y_true, y_pred):
    return _per_sample_mean(tf.square(tf.cast(y_true, tf.float32) - tf.cast(y_pred, tf.float32)))


@_register
class MSE(keras.losses.Loss):
    """Mean squared intensity difference per batch element.

    Args:
        image_sigma: if given, the result is divided by ``image_sigma**2``
            (the Gaussian image likelihood of the probabilistic model).
    """

    def __init__(self, image_sigma=None, name='mse', **kwargs):
        super().__init__(name=name, **kwargs)
        self.image_sigma = None if image_sigma is None else float(image_sigma)

    def call(self, y_true, y_pred):
        mse = _mse(y_true, y_pred)
        if self.image_sigma is not None:
            mse = mse / (self.image_sigma ** 2)
        return mse

    def prepare(self, y_true):
        """The fixed image for :meth:`prepared_loss` (the interface of :meth:`NCC.prepare`;
        nothing to precompute here)."""
        return tf.cast(y_true, tf.float32)

    def prepared_loss(self, prepared, y_pred):
        """:meth:`call` with the fixed image from :meth:`prepare`."""
        return self.call(prepared, y_pred)

    def get_config(self):
        config = super().get_config()
        config.update(image_sigma=self.image_sigma)
        return config


def forward_differences(field):
    """Forward differences of ``(batch, *spatial, channels)`` along each spatial axis.

    Returns a list with, for axis ``d``, ``field[x + e_d] - field[x]`` of shape
    ``(batch, *spatial with spatial[d] - 1, channels)``.
    """
    diffs = []
    for axis in _spatial_axes(field):
        head = [slice(None)] * len(field.shape)
        tail = list(head)
        head[axis] = slice(1, None)
        tail[axis] = slice(None, -1)
        diffs.append(field[tuple(head)] - field[tuple(tail)])
    return diffs


@fused_with_recomputed_gradient
def _grad(field, penalty):
    """Per-sample ``(1/ndim) sum_d mean(|D_d u|^p)``, ``p`` 1 or 2."""
    diffs = forward_differences(field)
    if penalty == 'l1':
        terms = [_per_sample_mean(tf.abs(d)) for d in diffs]
    else:
        terms = [_per_sample_mean(d * d) for d in diffs]
    return tf.add_n(terms) / len(terms)


@_register
class Grad(keras.losses.Loss):
    """Smoothness penalty on a field: mean squared (``'l2'``) or absolute
    (``'l1'``) forward differences, averaged over the spatial dimensions.

    ``y_true`` is ignored (pass zeros). For a field ``u`` of ``ndim`` spatial
    dims: ``(1/ndim) * sum_d mean(|D_d u|^p)`` per batch element.

    Args:
        penalty: ``'l1'`` or ``'l2'``.
        loss_mult: optional factor (VoxelMorph used it for downsampled fields).
    """

    def __init__(self, penalty='l2', loss_mult=None, name='grad', **kwargs):
        if penalty not in ('l1', 'l2'):
            raise ValueError(f"penalty must be 'l1' or 'l2', got {penalty!r}")
        super().__init__(name=name, **kwargs)
        self.penalty = penalty
        self.loss_mult = None if loss_mult is None else float(loss_mult)

    def call(self, y_true, y_pred):
        grad = _grad(tf.cast(y_pred, tf.float32), self.penalty)
        if self.loss_mult is not None:
            grad = grad * self.loss_mult
        return grad

    def get_config(self):
        config = super().get_config()
        config.update(penalty=self.penalty, loss_mult=self.loss_mult)
        return config


@_fused
def _dice(y_true, y_pred, labels):
    """Per-sample ``-mean_label Dice`` of :class:`Dice`."""
    if labels is not None:
        y_true = tf.cast(tf.round(tf.cast(y_true, tf.float32)), tf.int32)
        y_true = tf.equal(y_true, tf.constant(labels, tf.int32))
    y_true = tf.cast(y_true, tf.float32)
    y_pred = tf.cast(y_pred, tf.float32)
    axes = _spatial_axes(y_pred)
    top = 2.0 * tf.reduce_sum(y_true * y_pred, axes)
    bottom = tf.maximum(tf.reduce_sum(y_true + y_pred, axes), 1e-5)
    return -tf.reduce_mean(top / bottom, axis=-1)


@_register
class Dice(keras.losses.Loss):
    """Soft Dice loss on one-hot (or probabilistic) label maps; the loss is ``-Dice``.

    ``y_true`` and ``y_pred`` are ``(batch, *spatial, labels)``; per label
    ``2 sum(t p) / max(sum(t + p), 1e-5)``, averaged over labels.

    Args:
        labels: if given, ``y_true`` is an integer label map ``(batch,
            *spatial, 1)`` and is one-hot encoded over these values (saves
            feeding a many-channel array).
    """

    def __init__(self, labels=None, name='dice', **kwargs):
        super().__init__(name=name, **kwargs)
        self.labels = None if labels is None else [int(v) for v in labels]

    def call(self, y_true, y_pred):
        return _dice(y_true, y_pred, None if self.labels is None else tuple(self.labels))

    def get_config(self):
        config = super().get_config()
        config.update(labels=self.labels)
        return config


@_register
class DisplacementPenalty(keras.losses.Loss):
    """``lambda_d * mean(u^2) + lambda_a * Grad('l2')(u)`` of a field ``u`` ``(batch, *spatial, ndim)``:
    the magnitude and smoothness terms of the template model (NeurIPS 2019). ``y_true`` is ignored."""

    def __init__(self, lambda_d=0.01, lambda_a=1.0, name='displacement_penalty', **kwargs):
        super().__init__(name=name, **kwargs)
        self.lambda_d = float(lambda_d)
        self.lambda_a = float(lambda_a)
        self._grad = Grad('l2')

    def call(self, y_true, y_pred):
        y_pred = tf.cast(y_pred, tf.float32)
        return self.lambda_d * _mse(0.0, y_pred) + self.lambda_a * self._grad.call(y_true, y_pred)

    def get_config(self):
        config = super().get_config()
        config.update(lambda_d=self.lambda_d, lambda_a=self.lambda_a)
        return config


def _axis_degrees(volshape):
    """Per axis, each voxel's face neighbours along that axis inside the volume (2, 1 at the
    ends), shaped to broadcast against ``(*volshape)``."""
    for d, n in enumerate(volshape):
        count = np.full(n, 2.0, dtype=np.float32)
        count[0] -= 1
        count[-1] -= 1
        shape = [1] * len(volshape)
        shape[d] = n
        yield count.reshape(shape)


def degree_matrix(volshape):
    """Number of face neighbours inside the volume of every voxel, ``(*volshape,)`` numpy.

    This is the diagonal of the degree matrix ``D`` of the grid graph whose
    Laplacian is the precision of the probabilistic model's prior.
    """
    return sum(_axis_degrees(volshape), np.zeros(volshape, dtype=np.float32))


def _degree_terms(volshape):
    """The per-axis counts of :func:`_axis_degrees` as tensors shaped to broadcast against
    ``(*volshape, 1)``: the graph holds vectors of the axis lengths, not a volume-sized constant."""
    return tuple(tf.constant(count[..., None]) for count in _axis_degrees(volshape))


@_fused
def _kl(params, degree_terms, prior_lambda):
    """Per-sample KL of :class:`KL` from ``params = concat([mu, log_sigma], -1)`` and the
    grid's :func:`_degree_terms` (arguments, so that one trace serves every grid size)."""
    ndim = len(params.shape) - 2
    mean = params[..., :ndim]
    log_sigma = params[..., ndim:]
    deg = sum(degree_terms)
    sigma_term = _per_sample_mean(prior_lambda * deg * tf.exp(log_sigma) - log_sigma)
    prec = tf.add_n([_per_sample_mean(d * d) for d in forward_differences(mean)])
    prec_term = prior_lambda * 0.5 * prec / ndim
    return 0.5 * ndim * (sigma_term + prec_term)


@_register
class KL(keras.losses.Loss):
    """KL divergence of the probabilistic diffeomorphic model (MICCAI 2018, MedIA 2019).

    ``y_pred`` is ``concat([mu, log_sigma], -1)`` of shape
    ``(batch, *spatial, 2 * ndim)``, the mean and log-variance of the
    velocity field's Gaussian posterior. The prior has precision
    ``prior_lambda * L`` with ``L = D - A`` the grid Laplacian. Per batch
    element::

        0.5 * ndim * ( mean(prior_lambda * D * exp(log_sigma) - log_sigma)
                       + prior_lambda * 0.5 / ndim * sum_d mean((D_d mu)^2) )

    with ``D`` the degree of each voxel (:func:`degree_matrix`). ``y_true`` is
    ignored.
    """

    def __init__(self, prior_lambda=25.0, name='kl', **kwargs):
        super().__init__(name=name, **kwargs)
        self.prior_lambda = float(prior_lambda)

    def call(self, y_true, y_pred):
        y_pred = tf.cast(y_pred, tf.float32)
        return _kl(y_pred, _degree_terms(tuple(y_pred.shape[1:-1])), self.prior_lambda)

    def get_config(self):
        config = super().get_config()
        config.update(prior_lambda=self.prior_lambda)
        return config


# The image terms by name, for training, the refinement and the command line: adding one is a class
# here, an entry here and its weights in vxm_keras.settings (IMAGE_LOSS_WEIGHTS, TRAINING_LAMBDA)
IMAGE_LOSSES = {'ncc': NCC, 'mse': MSE, 'mind': MIND, 'ngf': NGF}
