"""Affine alignment of two scans in world coordinates, in TensorFlow.

VoxelMorph's networks register scans that are already affinely aligned to
their grid. This module brings any scan there: it finds the affine map
``T`` from the fixed scan's world (RAS, mm) to the moving scan's world, so
that the moving scan resampled at ``T(x)`` matches the fixed scan at ``x``.

* 6 (rigid), 9 (rigid + scaling along the fixed axes) or 12 (general
  affine) degrees of freedom;
* started from the centres of mass (``init='moments'``) or from the scanner
  headers (``init='header'``: both scans already in one world, as MNI-space
  scans are);
* coarse to fine: Adam on the pair at 4 mm, then at 2 mm (each level
  average-pooled from the scan, so any voxel size works), with trilinear
  sampling and gradients from :func:`vxm_keras.spatial.interpn`;
* normalised cross-correlation (any linear intensity relation), mutual
  information (any relation: scans of different contrasts) or MSE of the
  robustly scaled intensities, over the fixed scan's foreground grown by
  three voxels of the level (the empty background of a raw scan costs time
  and says nothing).

Conventions: volumes are single ``(*spatial)`` arrays with a 4x4
voxel-to-world matrix (as nibabel gives); every transform here is a 4x4
matrix in world millimetres mapping *fixed* points to *moving* points, the
direction in which images are resampled (ITK and ANTs store them so too,
in LPS; :mod:`vxm_keras.native` converts).
"""

import dataclasses
import time

import numpy as np
import tensorflow as tf

from . import spatial
from .optim import adam_update

__all__ = ['RADIUS', 'DEFAULT_LEVELS', 'LOSSES', 'AffineResult', 'voxel_sizes', 'robust_scale', 'center_of_mass',
           'pooled', 'linear_part', 'params_to_matrix', 'MI_BINS', 'mutual_information', 'align']

# the scale (mm) that turns rotations, scalings and shears into displacements: a unit step of
# any parameter moves points at this distance from the centre by about 1 mm, so one Adam step
# size suits all of them
RADIUS = 50.0
DEFAULT_LEVELS = ((4.0, 80, 2.0), (2.0, 30, 0.5))  # (mm, Adam steps, step size in mm)
LOSSES = ('ncc', 'mse', 'mi')


@dataclasses.dataclass
class AffineResult:
    """An affine alignment: ``matrix`` (4x4) maps fixed world points (mm) to moving world
    points; ``dof`` its degrees of freedom; ``loss`` the final loss at the finest level;
    ``seconds`` the time taken."""
    matrix: np.ndarray
    dof: int
    loss: float
    seconds: float


def voxel_sizes(affine):
    """Voxel edge lengths (mm) of a 4x4 voxel-to-world matrix."""
    return np.sqrt((np.asarray(affine, np.float64)[:3, :3] ** 2).sum(axis=0))


def robust_scale(vol, percentile=99.5):
    """``vol`` divided by the given percentile of its positive voxels and clipped to [0, 1]
    (float32); the scaling of :func:`vxm_keras.prepare.normalise`."""
    vol = np.asarray(vol, np.float32)
    positive = vol[vol > 0]
    if positive.size == 0:
        raise ValueError('the scan has no positive intensity')
    return np.clip(vol / np.percentile(positive, percentile), 0, 1).astype(np.float32)


def center_of_mass(vol, affine):
    """Intensity-weighted centre (world mm) of the positive part of ``vol`` ``(*spatial)``."""
    vol = np.clip(np.asarray(vol, np.float64), 0, None)
    total = vol.sum()
    if total <= 0:
        raise ValueError('the scan has no positive intensity')
    idx = [np.arange(n, dtype=np.float64) for n in vol.shape]
    centre = [np.tensordot(vol.sum(axis=tuple(a for a in range(3) if a != d)), idx[d], axes=1) / total
              for d in range(3)]
    return (np.asarray(affine, np.float64) @ np.append(centre, 1.0))[:3]


def pooled(vol, affine, level_mm):
    """``vol`` average-pooled to about ``level_mm`` voxels and its matching affine: pooled
    voxel ``i`` is the mean of source voxels ``f*i .. f*i + f - 1`` (centre ``f*i + (f-1)/2``)."""
    factors = [max(1, int(round(level_mm / s))) for s in voxel_sizes(affine)]
    vol = np.asarray(vol, np.float32)
    if any(f > 1 for f in factors):
        x = tf.constant(vol[None, ..., None])
        # whole blocks only; a partial block at the far edge is dropped
        x = tf.nn.avg_pool3d(x, factors, factors, 'VALID')
        vol = x.numpy()[0, ..., 0]
    scale = np.diag([*factors, 1.0])
    scale[:3, 3] = [(f - 1) / 2 for f in factors]
    return vol, np.asarray(affine, np.float64) @ scale


def _rotation(angles):
    """3x3 rotation ``Rz @ Ry @ Rx`` from three angles (radians), as a tensor."""
    a, b, c = tf.unstack(angles)
    one, zero = tf.ones((), angles.dtype), tf.zeros((), angles.dtype)
    rx = tf.stack([[one, zero, zero], [zero, tf.cos(a), -tf.sin(a)], [zero, tf.sin(a), tf.cos(a)]])
    ry = tf.stack([[tf.cos(b), zero, tf.sin(b)], [zero, one, zero], [-tf.sin(b), zero, tf.cos(b)]])
    rz = tf.stack([[tf.cos(c), -tf.sin(c), zero], [tf.sin(c), tf.cos(c), zero], [zero, zero, one]])
    return rz @ ry @ rx


def linear_part(params, dof):
    """The 3x3 linear part from the 12 parameters ``[translation (3), rest (9)]``
    (parameters in mm at :data:`RADIUS`); 6 and 9 dof ignore the parameters they do not use."""
    rest = params[3:] / RADIUS
    if dof == 12:
        return tf.eye(3, dtype=params.dtype) + tf.reshape(rest, (3, 3))
    rot = _rotation(rest[:3])
    if dof == 6:
        return rot
    return rot @ tf.linalg.diag(tf.exp(rest[3:6]))


def params_to_matrix(params, dof, fixed_centre, moving_centre):
    """4x4 world map ``x -> L (x - c_f) + c_m + t`` (tensor) from the parameters."""
    lin = linear_part(params, dof)
    fixed_centre = tf.constant(fixed_centre, params.dtype)
    offset = tf.constant(moving_centre, params.dtype) + params[:3] - tf.linalg.matvec(lin, fixed_centre)
    top = tf.concat([lin, offset[:, None]], axis=1)
    return tf.concat([top, tf.constant([[0, 0, 0, 1]], params.dtype)], axis=0)


def _ncc(a, b):
    a = a - tf.reduce_mean(a)
    b = b - tf.reduce_mean(b)
    return tf.reduce_sum(a * b) / tf.sqrt(tf.reduce_sum(a * a) * tf.reduce_sum(b * b) + 1e-12)


# Parzen-window mutual information: intensities in [0, 1] spread over this many bins by a Gaussian
# window one bin wide (antspyx's default affine metric, Mattes MI, uses 32 bins too)
MI_BINS = 32


def _parzen_weights(values, bins):
    """``(N, bins)``: each value's Gaussian window over the bin centres, rows summing to 1."""
    centres = (tf.range(bins, dtype=values.dtype) + 0.5) / bins
    sigma = 1.0 / bins
    weights = tf.exp(-0.5 * tf.square((values[:, None] - centres[None, :]) / sigma))
    return weights / (tf.reduce_sum(weights, axis=1, keepdims=True) + 1e-12)


def mutual_information(a, b, bins=MI_BINS):
    """Mutual information (nats) of two sets of paired intensities ``a``, ``b`` ``(N,)`` in [0, 1]
    (values beyond are clipped), from a joint histogram with Gaussian Parzen windows of one bin
    width: any relation between the contrasts counts, not only a linear one. Differentiable."""
    a = tf.clip_by_value(tf.cast(a, tf.float32), 0.0, 1.0)
    b = tf.clip_by_value(tf.cast(b, tf.float32), 0.0, 1.0)
    joint = tf.matmul(_parzen_weights(a, bins), _parzen_weights(b, bins), transpose_a=True)
    joint = joint / tf.reduce_sum(joint)
    pa = tf.reduce_sum(joint, axis=1, keepdims=True)
    pb = tf.reduce_sum(joint, axis=0, keepdims=True)
    eps = 1e-10
    return tf.reduce_sum(joint * (tf.math.log(joint + eps) - tf.math.log(pa * pb + eps)))


def _level_step(fixed, fixed_affine, moving, moving_affine, dof, centres, loss):
    """A compiled Adam step on one pyramid level."""
    # the loss is taken over the fixed scan's foreground and a margin of 3 voxels around it: the wide
    # empty background of a scan costs time and says nothing about the alignment
    from scipy import ndimage
    region = ndimage.binary_dilation(fixed > 0.01, iterations=3)
    if region.sum() < 64:
        region = np.ones_like(region)
    points = np.argwhere(region).astype(np.float64)
    world = points @ fixed_affine[:3, :3].T + fixed_affine[:3, 3]
    world = tf.constant(world, tf.float32)
    to_moving_vox = tf.constant(np.linalg.inv(moving_affine), tf.float32)
    moving_t = tf.constant(moving[None, ..., None])
    fixed_t = tf.constant(fixed[region])
    fixed_centre, moving_centre = centres
    count = len(points)

    def loss_of(params):
        mat = to_moving_vox @ params_to_matrix(params, dof, fixed_centre, moving_centre)
        loc = world @ tf.transpose(mat[:3, :3]) + mat[:3, 3]
        sampled = spatial.interpn(moving_t, tf.reshape(loc, (1, count, 3)), 'linear', fill_value=0.0)
        sampled = tf.reshape(sampled, [-1])
        if loss == 'ncc':
            return -_ncc(fixed_t, sampled)
        if loss == 'mi':
            return -mutual_information(fixed_t, sampled)
        return tf.reduce_mean(tf.square(fixed_t - sampled))

    def step(params, m, v, lr, t):
        with tf.GradientTape() as tape:
            value = loss_of(params)
        adam_update(params, m, v, tape.gradient(value, params), lr, t)
        return value

    return tf.function(step, autograph=False)


def align(moving, moving_affine, fixed, fixed_affine, dof=12, init='moments', loss='ncc',
          levels=DEFAULT_LEVELS):
    """Affinely align ``moving`` to ``fixed``.

    Args:
        moving, fixed: 3-D ``(*spatial)`` arrays of any shape and voxel size.
        moving_affine, fixed_affine: their 4x4 voxel-to-world matrices.
        dof: 6, 9 or 12.
        init: ``'moments'`` (centres of mass brought together), ``'header'``
            (the identity: the headers already put both scans in one world)
            or a 4x4 fixed-to-moving world matrix to start from (its linear part
            is kept fixed for 6/9 dof only up to the parameters those allow).
        loss: ``'ncc'`` (normalised cross-correlation over the fixed foreground), ``'mse'``, or
            ``'mi'`` (:func:`mutual_information`: for scans of different contrasts, T2 to T1).
        levels: ``(resolution_mm, steps, step_mm)`` from coarse to fine.

    Returns:
        :class:`AffineResult`.
    """
    if dof not in (6, 9, 12):
        raise ValueError(f'dof must be 6, 9 or 12, got {dof}')
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")
    t0 = time.perf_counter()
    moving_affine = np.asarray(moving_affine, np.float64)
    fixed_affine = np.asarray(fixed_affine, np.float64)
    moving = robust_scale(moving)
    fixed = robust_scale(fixed)
    fixed_centre = center_of_mass(fixed, fixed_affine)
    params0 = np.zeros(12)
    if isinstance(init, str) and init == 'moments':
        moving_centre = center_of_mass(moving, moving_affine)
    elif isinstance(init, str) and init == 'header':
        moving_centre = fixed_centre
    elif not isinstance(init, str):
        init = np.asarray(init, np.float64)
        moving_centre = init[:3, :3] @ fixed_centre + init[:3, 3]
        if dof != 12:
            raise ValueError('a matrix as init needs dof=12')
        params0[3:] = ((init[:3, :3] - np.eye(3)) * RADIUS).ravel()
    else:
        raise ValueError(f"init must be 'moments', 'header' or a 4x4 matrix, got {init!r}")
    params = tf.Variable(params0.astype(np.float32))
    m = tf.Variable(tf.zeros(12))
    v = tf.Variable(tf.zeros(12))
    value = np.nan
    for level_mm, steps, step_mm in levels:
        f, fa = pooled(fixed, fixed_affine, level_mm)
        mv, ma = pooled(moving, moving_affine, level_mm)
        step = _level_step(f, fa, mv, ma, dof, (fixed_centre, moving_centre), loss)
        m.assign(tf.zeros(12))
        v.assign(tf.zeros(12))
        for t in range(1, int(steps) + 1):
            # step size decays to a tenth over the level: large moves first, then settling
            lr = step_mm * 0.1 ** ((t - 1) / max(int(steps) - 1, 1))
            value = float(step(params, m, v, tf.constant(lr, tf.float32), tf.constant(float(t))))
    matrix = params_to_matrix(tf.constant(params.numpy(), tf.float64), dof, fixed_centre, moving_centre).numpy()
    return AffineResult(matrix=matrix, dof=dof, loss=value, seconds=time.perf_counter() - t0)
