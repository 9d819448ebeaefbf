"""N-D sampling utilities on TensorFlow tensors: grids, interpolation, warping.

Conventions used throughout vxm_keras:

* tensors are channels-last: images ``(batch, *spatial, channels)``;
* coordinates and displacements are in voxel units with ``ij`` indexing:
  component ``d`` of a location or a displacement refers to spatial axis ``d``
  (axis ``d + 1`` of the batched tensor);
* a displacement field ``u`` maps voxel ``x`` to the sampling location
  ``x + u(x)``; it is not an absolute coordinate map.

These functions replace the parts of ``neurite`` that VoxelMorph used; they are
tested against ``scipy.ndimage.map_coordinates``.
"""

import itertools

import tensorflow as tf

from .fusion import fused, fused_with_recomputed_gradient, recomputed_gradient

__all__ = ['interpn', 'transform', 'integrate_velocity', 'rescale_field', 'upsample_linear', 'box_sum']


def interpn(vol: tf.Tensor, loc: tf.Tensor, interp_method: str = 'linear',
            fill_value: float | None = None) -> tf.Tensor:
    """Sample a batch of volumes at arbitrary (fractional) voxel locations.

    Args:
        vol: ``(batch, *spatial, channels)`` volume to sample from.
        loc: ``(batch, *out_spatial, ndim)`` absolute sampling locations in
            voxel units, ``ij`` indexing; ``ndim == len(spatial)``.
            ``out_spatial`` may differ from ``spatial``.
        interp_method: ``'linear'`` (bi/trilinear, differentiable with respect
            to both ``vol`` and ``loc``) or ``'nearest'`` (rounds half up, as
            ``scipy.ndimage.map_coordinates(order=0)`` does).
        fill_value: ``None`` to extend the volume by its nearest edge value
            (``scipy`` mode ``'nearest'``); a number to return that value at any
            location outside ``[0, size - 1]`` along some axis (``scipy`` mode
            ``'constant'``).

    Returns:
        ``(batch, *out_spatial, channels)`` tensor, float32.
    """
    loc = tf.cast(loc, tf.float32)
    ndim = len(vol.shape) - 2
    if loc.shape[-1] != ndim:
        raise ValueError(f'loc has {loc.shape[-1]} components, but the volume has {ndim} spatial dims')
    return _interp_components(vol, tf.unstack(loc, axis=-1), interp_method, fill_value)


def _interp_components(vol, comps, interp_method='linear', fill_value=None):
    """:func:`interpn` with the locations given as ``ndim`` tensors, one per axis, that
    broadcast to ``(batch, *out_spatial)``: :func:`transform` adds a 1-D index range to
    each displacement component and never builds the full identity grid, which TF's
    graph optimiser would otherwise fold into a constant of the volume's size (seconds
    and gigabytes on the first call)."""
    if interp_method not in ('linear', 'nearest'):
        raise ValueError(f"interp_method must be 'linear' or 'nearest', got {interp_method!r}")
    vol = tf.cast(vol, tf.float32)
    ndim = len(vol.shape) - 2
    # sizes as tensors: the compiled callers are traced once for any shape (fusion.fused)
    volshape = tf.shape(vol)[1:-1]
    comps = [tf.cast(c, tf.float32) for c in comps]
    out_shape = comps[0].shape
    for c in comps[1:]:
        out_shape = tf.broadcast_static_shape(out_shape, c.shape)
    dyn_shape = tf.shape(comps[0])
    for c in comps[1:]:
        dyn_shape = tf.broadcast_dynamic_shape(dyn_shape, tf.shape(c))
    comps = [tf.broadcast_to(c, dyn_shape) for c in comps]
    for c in comps:
        c.set_shape(out_shape)

    nvox = tf.reduce_prod(volshape)
    channels = tf.shape(vol)[-1]
    batch = tf.shape(vol)[0]
    # gather from a flat (batch * nvox, channels) table: one gather per corner
    flat = tf.reshape(vol, [-1, channels])
    strides = [tf.reduce_prod(volshape[d + 1:]) for d in range(ndim)]
    out_rank = len(out_shape)  # batch + out_spatial
    batch_offset = tf.reshape(tf.range(batch) * nvox, [-1] + [1] * (out_rank - 1))
    max_loc = [tf.cast(volshape[d] - 1, tf.float32) for d in range(ndim)]
    # a NaN location would become an out-of-range index (a crash on CPU): sample at 0
    # instead and return NaN there, so a diverging field still shows up in the loss
    nan = None
    for d in range(ndim):
        is_nan = tf.math.is_nan(comps[d])
        nan = is_nan if nan is None else tf.logical_or(nan, is_nan)
        comps[d] = tf.where(is_nan, tf.zeros_like(comps[d]), comps[d])

    if interp_method == 'nearest':
        idx = batch_offset
        for d in range(ndim):
            # floor(x + 0.5): scipy's rounding for order 0
            r = tf.clip_by_value(tf.floor(comps[d] + 0.5), 0.0, max_loc[d])
            idx = idx + tf.cast(r, tf.int32) * strides[d]
        out = tf.gather(flat, idx)
    else:
        lo, hi, frac = [], [], []
        for d in range(ndim):
            c = tf.clip_by_value(comps[d], 0.0, max_loc[d])
            c0 = tf.floor(c)
            c1 = tf.minimum(c0 + 1.0, max_loc[d])
            frac.append(tf.expand_dims(c - c0, -1))  # gradient w.r.t. loc flows through here
            lo.append(tf.cast(c0, tf.int32) * strides[d])
            hi.append(tf.cast(c1, tf.int32) * strides[d])
        # the 2**ndim corner values, then nested 1-D lerps, last axis first: fewer
        # elementwise ops (forward and backward) than weighting each corner by a product
        vals = {}
        for corner in itertools.product((0, 1), repeat=ndim):
            idx = batch_offset
            for d, bit in enumerate(corner):
                idx = idx + (hi[d] if bit else lo[d])
            vals[corner] = tf.gather(flat, idx)
        for d in reversed(range(ndim)):
            vals = {key[:-1]: vals[key] + frac[d] * (vals[key[:-1] + (1,)] - vals[key])
                    for key in vals if key[-1] == 0}
        out = vals[()]

    out = tf.where(tf.expand_dims(nan, -1), tf.constant(float('nan'), out.dtype), out)
    if fill_value is not None:
        outside = None
        for d in range(ndim):
            o = tf.logical_or(comps[d] < 0.0, comps[d] > max_loc[d])
            outside = o if outside is None else tf.logical_or(outside, o)
        out = tf.where(tf.expand_dims(outside, -1), tf.cast(fill_value, out.dtype), out)
    return out


def transform(vol: tf.Tensor, disp: tf.Tensor, interp_method: str = 'linear', indexing: str = 'ij',
              fill_value: float | None = None, vol_gradient: bool = True) -> tf.Tensor:
    """Warp a batch of volumes by a dense displacement field.

    The result at voxel ``x`` is ``vol`` sampled at ``x + disp(x)``.

    Args:
        vol: ``(batch, *spatial, channels)``.
        disp: ``(batch, *spatial, ndim)`` displacement in voxel units. With
            ``indexing='ij'`` component ``d`` moves along spatial axis ``d``;
            ``'xy'`` swaps the first two components (the 2018 code's layout).
        interp_method, fill_value: as in :func:`interpn`.
        vol_gradient: ``False`` when nothing needs the gradient with respect to ``vol`` (the
            moving image of a refinement, a warp without gradients): the sampling then runs
            as one XLA-compiled loop, gathers included, and gives ``vol`` no gradient
            (160x192x224 on 2 cores: forward 0.33 -> 0.04 s, forward and backward with respect
            to ``disp`` 0.47-0.56 -> 0.30 s, the backward recomputing the sampling so that nothing
            of the volume's size is kept between the two). With ``vol``'s gradient XLA gains
            nothing (its backward pass, a scatter, is computed whenever ``vol`` is an input):
            0.46 s either way.

    Returns:
        ``(batch, *spatial, channels)`` float32 tensor.
    """
    disp = tf.cast(disp, tf.float32)
    volshape = vol.shape[1:-1]
    if tuple(disp.shape[1:-1]) != tuple(volshape):
        raise ValueError(f'displacement spatial shape {tuple(disp.shape[1:-1])} does not match '
                         f'volume spatial shape {tuple(volshape)}')
    if disp.shape[-1] != len(volshape):
        raise ValueError(f'displacement has {disp.shape[-1]} components for a {len(volshape)}-D volume')
    if indexing == 'xy':
        comps = tf.unstack(disp, axis=-1)
        comps[0], comps[1] = comps[1], comps[0]
        disp = tf.stack(comps, axis=-1)
    elif indexing != 'ij':
        raise ValueError(f"indexing must be 'ij' or 'xy', got {indexing!r}")
    if not vol_gradient:
        return _transform_constant_volume(vol, disp, interp_method, fill_value)
    return _sample_at_displacement(vol, disp, interp_method, fill_value)


def _sample_at_displacement(vol, disp, interp_method, fill_value):
    """``vol`` sampled at ``x + disp(x)``, ``ij`` displacement (:func:`transform`'s work)."""
    volshape = tf.shape(vol)[1:-1]
    comps = [c + _axis_range(volshape, d, len(vol.shape) - 2) for d, c in enumerate(tf.unstack(disp, axis=-1))]
    return _interp_components(vol, comps, interp_method=interp_method, fill_value=fill_value)


@fused
def _sample_forward(vol, disp, interp_method, fill_value):
    return _sample_at_displacement(vol, disp, interp_method, fill_value)


@fused
def _sample_backward(vol, disp, upstream, interp_method, fill_value):
    """The gradient with respect to ``disp``, the sampling recomputed inside: nothing of the
    forward pass (8 corner values, indices and weights of the volume's size) is kept for it."""
    return recomputed_gradient(lambda d: _sample_at_displacement(vol, d, interp_method, fill_value), disp, upstream)


_CONSTANT_VOLUME = {}


def _transform_constant_volume(vol, disp, interp_method, fill_value):
    """:func:`transform` (``ij`` displacement) of a volume that gets no gradient, compiled whole."""
    key = (interp_method, fill_value)
    if key not in _CONSTANT_VOLUME:
        @tf.custom_gradient
        def sample(vol, disp):
            def grad(upstream):
                return None, _sample_backward(vol, disp, upstream, interp_method, fill_value)
            return _sample_forward(vol, disp, interp_method, fill_value), grad
        _CONSTANT_VOLUME[key] = sample
    return _CONSTANT_VOLUME[key](tf.cast(vol, tf.float32), disp)


def integrate_velocity(vel: tf.Tensor, int_steps: int, indexing: str = 'ij') -> tf.Tensor:
    """Displacement of the exponential of a stationary velocity, by scaling and squaring.

    Args:
        vel: ``(batch, *spatial, ndim)`` velocity in voxel units.
        int_steps: squaring steps (7 in the papers); 0 returns ``vel``.
        indexing: ``'ij'`` or ``'xy'``, as in :func:`transform`.

    Returns:
        ``(batch, *spatial, ndim)``: ``u = vel / 2**int_steps``, then ``int_steps`` times
        ``u <- u + u o (id + u)`` (linear interpolation, edge values outside).
    """
    disp = tf.cast(vel, tf.float32) * (1.0 / 2 ** int(int_steps))
    for _ in range(int(int_steps)):
        disp = disp + transform(disp, disp, 'linear', indexing=indexing)
    return disp


def _axis_range(volshape, axis, ndim=None):
    """``0 .. n-1`` along spatial ``axis``, shaped ``(1, *ones, n, *ones)`` to broadcast
    against ``(batch, *volshape)``; ``volshape`` a sequence of ints or a 1-D tensor (then
    ``ndim`` its length)."""
    ndim = len(volshape) if ndim is None else ndim
    shape = [1] * (ndim + 1)
    shape[axis + 1] = -1
    return tf.reshape(tf.range(volshape[axis], dtype=tf.float32), shape)


def rescale_field(disp: tf.Tensor, factor: float) -> tf.Tensor:
    """Resize a displacement field by ``factor`` and scale its values with it.

    Output voxel ``i`` samples the input at ``i / factor`` (linear
    interpolation, edge values beyond the border), so voxel 0 stays at 0, and
    the displacement (in voxel units of the new grid) is multiplied by
    ``factor``. This is how VoxelMorph maps a field computed at half resolution
    (``factor=2``) back to full resolution.

    Args:
        disp: ``(batch, *spatial, ndim)``.
        factor: positive float.

    Returns:
        ``(batch, *round(spatial * factor), ndim)`` float32 tensor.
    """
    if factor == 1:
        return tf.cast(disp, tf.float32)
    volshape = disp.shape[1:-1]
    if float(factor).is_integer() and factor > 1:
        return upsample_linear(disp, int(factor)) * float(factor)
    newshape = [int(round(n * factor)) for n in volshape]
    comps = [_axis_range(newshape, d) / float(factor) for d in range(len(volshape))]
    comps = [tf.broadcast_to(c, tf.concat([tf.shape(disp)[:1], newshape], 0)) for c in comps]
    return _interp_components(disp, comps, 'linear') * float(factor)


def upsample_linear(x: tf.Tensor, factor: int) -> tf.Tensor:
    """Linear upsampling by an integer ``factor`` along every spatial axis, separably.

    Output voxel ``i`` takes the input at ``i / factor`` (so voxel 0 stays at 0),
    interpolating linearly between neighbours and repeating the last input voxel
    beyond the border: the values of :func:`interpn` at those locations, computed
    with slices and lerps instead of gathers (no index tensors of the output's size).

    Args:
        x: ``(batch, *spatial, channels)``.
        factor: int >= 1.

    Returns:
        ``(batch, *spatial * factor, channels)`` float32 tensor.
    """
    y = tf.cast(x, tf.float32)
    if int(factor) == 1:
        return y
    return _upsample_linear(y, int(factor))


@fused_with_recomputed_gradient
def _upsample_linear(y, factor):
    # tf.slice, not gathers (a gather's gradient is a scatter) nor strided slices y[..., 1:]
    # (their gradient took 0.22 s against 0.11 s at 160x192x224 without XLA)
    ndim = len(y.shape) - 2
    for axis in range(1, ndim + 1):
        n = tf.shape(y)[axis]
        rest, last = [0] * (ndim + 2), [0] * (ndim + 2)
        rest[axis], last[axis] = 1, n - 1
        size = [-1] * (ndim + 2)
        size[axis] = 1
        nxt = tf.concat([tf.slice(y, rest, [-1] * (ndim + 2)), tf.slice(y, last, size)], axis=axis)
        step = nxt - y
        # output index factor * k + r samples k + r / factor
        y = tf.stack([y + (r / factor) * step for r in range(factor)], axis=axis + 1)
        y = tf.reshape(y, tf.concat([tf.shape(y)[:axis], [n * factor], tf.shape(y)[axis + 2:]], 0))
    return y


def box_sum(x: tf.Tensor, win) -> tf.Tensor:
    """Sum over a centred box window at every voxel, zeros outside the volume.

    Equals a 'SAME'-padded convolution with a ones kernel of size ``win``, for each channel
    independently, computed separably: one pass per axis of ``win[d]`` shifted slices of the
    zero-padded input, added in one XLA-compiled loop. Single-channel convolutions were the
    slowest operation of the refinement on CPUs without oneDNN (160x192x224, 3 channels,
    9^3, forward + backward on 2 cores: 13.0 s as ``conv3d`` passes on Eigen kernels, 0.8-1.0 s
    this way; 0.34 s this way with oneDNN on; ``bench/CPU.md``).

    Args:
        x: ``(batch, *spatial, channels)``.
        win: odd window size per spatial axis, sequence of ints.

    Returns:
        float32 tensor of the shape of ``x``.
    """
    ndim = len(x.shape) - 2
    win = [int(w) for w in win]
    if len(win) != ndim or any(w < 1 or w % 2 == 0 for w in win):
        raise ValueError(f'box_sum needs an odd window per spatial axis ({ndim}), got {win}')
    passes = [(d + 1, w) for d, w in enumerate(win) if w > 1]

    def summed(v):
        # one compiled function per axis: given all axes at once, XLA fuses them into one loop
        # that recomputes the inner sums for every outer tap (4.3 s against 0.8 s above)
        for axis, w in passes:
            v = _box_sum_axis(v, axis, w)
        return v

    @tf.custom_gradient
    def differentiable(v):
        # a centred, zero-padded box with an odd window is self-adjoint: the backward pass is the
        # forward's compiled functions again (no rewritten forward, nothing kept between them)
        return summed(v), summed

    return differentiable(tf.cast(x, tf.float32))


@fused
def _box_sum_axis(x, axis, win):
    """The window sum of ``x`` along ``axis`` alone (``win`` odd), zero padding."""
    rank = len(x.shape)
    radius = win // 2
    padding = [[0, 0]] * rank
    padding[axis] = [radius, radius]
    padded = tf.pad(x, padding)
    size = [-1] * rank
    size[axis] = tf.shape(x)[axis]
    total = None
    for shift in range(win):
        begin = [0] * rank
        begin[axis] = shift
        part = tf.slice(padded, begin, size)
        total = part if total is None else total + part
    return total
