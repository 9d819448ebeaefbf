"""Random augmentation of training scans, in TensorFlow, image and labels together.

Each scan of a training pair is given its own random spatial transform (an
affine jitter composed with a smooth diffeomorphic deformation, and a
left-right flip with the hemisphere labels swapped) and its own intensity
changes (gamma, a smooth multiplicative bias field, Gaussian noise). From six
subjects this draws a new pair of plausible brains at every step, which is
what lets a model trained on few subjects generalise to brains it never saw.

Everything is drawn from stateless random ops seeded by ``(seed, step)``, so
a run resumed at step ``k`` sees the same augmentations as one that never
stopped. Shapes: images and label maps ``(batch, *spatial, 1)``; fields
``(batch, *spatial, ndim)`` displacements in voxel units, ``ij`` indexing.
"""

import dataclasses
import math

import numpy as np
import tensorflow as tf

from . import spatial

__all__ = ['LEFT_RIGHT', 'Augmentation', 'affine_matrix', 'affine_displacement', 'random_deformation',
           'swap_hemispheres', 'augment_intensity', 'augment_spatial', 'augment_scan', 'pair_augmenter']

# FreeSurfer aseg left labels and their right counterparts (cortex, white matter, ventricles,
# cerebellum, thalamus, caudate, putamen, pallidum, hippocampus, amygdala, accumbens,
# ventral DC, vessel, choroid plexus)
LEFT_RIGHT = ((2, 41), (3, 42), (4, 43), (5, 44), (7, 46), (8, 47), (10, 49), (11, 50), (12, 51),
              (13, 52), (17, 53), (18, 54), (26, 58), (28, 60), (30, 62), (31, 63))


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """How strongly to augment; the defaults suit affinely pre-aligned 1 mm brains.

    Attributes:
        rotation: maximum rotation about each axis, degrees (uniform).
        scaling: maximum relative scaling per axis (uniform in ``1 +- scaling``).
        shear: maximum shear per axis pair (uniform).
        translation: maximum translation per axis, voxels (uniform).
        warp_std: standard deviation of the random velocity, voxels, drawn on a grid
            ``warp_spacing`` times coarser and integrated (scaling and squaring), so the
            deformation is smooth and invertible.
        warp_spacing: spacing of that control grid, voxels.
        flip_axis: array axis running left-right (0 in the prepared LIA grid); ``None``
            for no flips. Flips happen with probability 1/2 and swap ``LEFT_RIGHT`` labels.
        gamma_std: intensities are raised to ``exp(N(0, gamma_std))``.
        bias_std: log of a smooth multiplicative field, std (control grid as the warp).
        noise_std: additive Gaussian noise, std, drawn uniformly up to this value.
    """
    rotation: float = 3.0
    scaling: float = 0.04
    shear: float = 0.02
    translation: float = 3.0
    warp_std: float = 2.0
    warp_spacing: int = 16
    flip_axis: int = 0
    gamma_std: float = 0.2
    bias_std: float = 0.2
    noise_std: float = 0.02


def _seeds(seed, n):
    """``n`` independent stateless seeds ``(2,)`` from one."""
    return tf.unstack(tf.random.experimental.stateless_split(seed, n))


def _coarse_field(seed, batch, shape, spacing, channels, std):
    """Gaussian noise on a grid ``spacing`` times coarser, upsampled linearly to ``shape``;
    ``batch`` may be a tensor."""
    low = [max(2, math.ceil(n / spacing)) for n in shape]
    noise = tf.random.stateless_normal(tf.stack([batch, *low, channels]), seed, stddev=std)
    factor = max(1, min(n // m for n, m in zip(shape, low)))
    up = spatial.upsample_linear(noise, factor)
    # pad (mirrored) or crop to the exact shape
    pads = [[0, 0]] + [[0, max(0, n - u)] for n, u in zip(shape, up.shape[1:-1])] + [[0, 0]]
    up = tf.pad(up, pads, mode='SYMMETRIC')
    return up[(slice(None), *[slice(0, n) for n in shape])]


def affine_matrix(seed, batch, ndim, aug):
    """Random ``(batch, ndim, ndim + 1)`` matrices ``[A | t]`` (about the volume centre, see
    :func:`affine_displacement`): rotations, scaling and shear within the bounds of
    ``aug`` (:class:`Augmentation`), translation in voxels. ``batch`` may be a tensor."""
    s_rot, s_scale, s_shear, s_trans = _seeds(seed, 4)
    planes = [(0, 1), (0, 2), (1, 2)] if ndim == 3 else [(0, 1)]
    angles = tf.random.stateless_uniform(tf.stack([batch, len(planes)]), s_rot, -1, 1) * math.radians(aug.rotation)
    eye = np.eye(ndim, dtype=np.float32)
    mat = tf.eye(ndim, batch_shape=tf.reshape(batch, [1]))
    for k, (i, j) in enumerate(planes):
        c = tf.reshape(tf.cos(angles[:, k]), [-1, 1, 1])
        s = tf.reshape(tf.sin(angles[:, k]), [-1, 1, 1])
        e_ii, e_jj = np.outer(eye[i], eye[i]), np.outer(eye[j], eye[j])
        e_ji, e_ij = np.outer(eye[j], eye[i]), np.outer(eye[i], eye[j])
        mat = tf.matmul(mat, eye + (c - 1) * (e_ii + e_jj) + s * (e_ji - e_ij))
    scale = 1 + tf.random.stateless_uniform(tf.stack([batch, ndim]), s_scale, -1, 1) * aug.scaling
    shear = tf.random.stateless_uniform(tf.stack([batch, ndim, ndim]), s_shear, -1, 1) * aug.shear
    shear = shear * (1 - eye) + eye
    mat = tf.matmul(mat, tf.matmul(tf.linalg.diag(scale), shear))
    trans = tf.random.stateless_uniform(tf.stack([batch, ndim, 1]), s_trans, -1, 1) * aug.translation
    return tf.concat([mat, trans], axis=-1)


def affine_displacement(matrix, shape, factor=1):
    """Displacement ``(batch, *shape, ndim)`` of ``x -> A (x - c) + c + t`` on a grid ``factor``
    times coarser than ``shape``, in voxels of that coarse grid (:func:`spatial.rescale_field`
    by ``factor`` brings it back to ``shape``; exact, the map is linear); ``c`` is the
    centre of ``shape``; ``matrix`` ``(batch, ndim, ndim + 1)`` as ``[A | t]``."""
    ndim = len(shape)
    low = [n // factor for n in shape]
    centre = np.array([(n - 1) / 2 for n in shape], np.float32)
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) * factor for n in low], indexing='ij'), -1)
    grid = tf.constant((grid - centre).reshape(-1, ndim))
    lin = matrix[:, :, :ndim] - np.eye(ndim, dtype=np.float32)
    disp = (tf.einsum('nj,bij->bni', grid, lin) + matrix[:, None, :, ndim]) / factor
    return tf.reshape(disp, tf.concat([tf.shape(matrix)[:1], low, [ndim]], 0))


def random_deformation(seed, batch, shape, aug, factor=4):
    """Random displacement ``(batch, *shape, ndim)``, voxel units: the smooth diffeomorphic
    warp composed with the affine jitter (sample by the warp, then by the affine). Both are
    built and composed on a grid ``factor`` times coarser, then upsampled once."""
    s_aff, s_vel = _seeds(seed, 2)
    ndim = len(shape)
    factor = factor if all(n % factor == 0 for n in shape) else 1
    disp = affine_displacement(affine_matrix(s_aff, batch, ndim, aug), shape, factor)
    if aug.warp_std > 0:
        low = [n // factor for n in shape]
        vel = _coarse_field(s_vel, batch, low, max(1, aug.warp_spacing // factor), ndim, aug.warp_std / factor)
        warp = spatial.integrate_velocity(vel, 5)
        disp = warp + spatial.transform(disp, warp, 'linear')
    return spatial.rescale_field(disp, float(factor))


def swap_hemispheres(seg):
    """Label map with every ``LEFT_RIGHT`` pair exchanged (for left-right flips)."""
    seg = tf.cast(seg, tf.int32)
    table = np.arange(max(max(p) for p in LEFT_RIGHT) + 1, dtype=np.int32)
    for a, b in LEFT_RIGHT:
        table[a], table[b] = b, a
    inside = seg < len(table)
    swapped = tf.gather(tf.constant(table), tf.where(inside, seg, 0))
    return tf.where(inside, swapped, seg)


def augment_intensity(seed, image, aug):
    """Gamma, smooth bias field and noise on ``(batch, *spatial, 1)`` images in [0, 1]; the
    background (zeros) stays zero."""
    s_gamma, s_bias, s_noise, s_level = _seeds(seed, 4)
    batch = tf.shape(image)[0]
    shape = image.shape[1:-1]
    ndim = len(shape)
    ones = [1] * (ndim + 1)
    gamma = tf.exp(tf.random.stateless_normal(tf.stack([batch] + ones), s_gamma, stddev=aug.gamma_std))
    out = tf.pow(tf.clip_by_value(image, 0.0, 1.0), gamma)
    if aug.bias_std > 0:
        out = out * tf.exp(_coarse_field(s_bias, batch, shape, aug.warp_spacing * 2, 1, aug.bias_std))
    if aug.noise_std > 0:
        level = tf.random.stateless_uniform(tf.stack([batch] + ones), s_level, 0, aug.noise_std)
        out = out + level * tf.random.stateless_normal(tf.shape(image), s_noise)
    out = tf.where(image > 0, out, 0.0)
    return tf.clip_by_value(out / tf.reduce_max(out, axis=list(range(1, ndim + 2)), keepdims=True), 0.0, 1.0)


def augment_spatial(seed, image, seg=None, aug=Augmentation()):
    """One random spatial transform (:func:`random_deformation`, then a left-right flip with
    probability 1/2) applied to an image (linear) and its labels (nearest, hemispheres swapped
    when flipped).

    Args:
        seed: ``(2,)`` int stateless seed.
        image: ``(batch, *spatial, 1)`` float32.
        seg: ``(batch, *spatial, 1)`` label map (float32 or int), or ``None``.
        aug: :class:`Augmentation`.

    Returns:
        ``(image, seg, disp, flip)``: the warped image and labels (``seg`` float32, or
        ``None``), the displacement ``(batch, *spatial, ndim)`` they were sampled with, and
        the boolean ``(batch,)`` flips applied after it.
    """
    s_def, s_flip = _seeds(seed, 2)
    shape = image.shape[1:-1]
    batch = tf.shape(image)[0]
    disp = random_deformation(s_def, batch, shape, aug)
    image = spatial.transform(image, disp, 'linear')
    if seg is not None:
        seg = spatial.transform(tf.cast(seg, tf.float32), disp, 'nearest')
    flip = tf.zeros(tf.reshape(batch, [1]), tf.bool)
    if aug.flip_axis is not None:
        flip = tf.random.stateless_uniform(tf.reshape(batch, [1]), s_flip) < 0.5
        where = tf.reshape(flip, [-1] + [1] * (len(shape) + 1))
        image = tf.where(where, tf.reverse(image, [aug.flip_axis + 1]), image)
        if seg is not None:
            flipped = tf.cast(swap_hemispheres(tf.reverse(seg, [aug.flip_axis + 1])), tf.float32)
            seg = tf.where(where, flipped, seg)
    return image, seg, disp, flip


def augment_scan(seed, image, seg=None, aug=Augmentation()):
    """:func:`augment_spatial`, then :func:`augment_intensity` on the image; returns
    ``(image, seg)`` with the shapes of the inputs (``seg`` float32, or ``None``)."""
    s_space, s_int = _seeds(seed, 2)
    image, seg, _, _ = augment_spatial(s_space, image, seg, aug)
    return augment_intensity(s_int, image, aug), seg


def pair_augmenter(seed, aug=Augmentation()):
    """A ``tf.data`` map function for the training batches of :mod:`vxm_keras.generators`.

    Takes ``(step, (inputs, targets))`` (from ``Dataset.enumerate``) with ``inputs``
    ``[moving, fixed(, moving_seg)]`` and ``targets`` ``[fixed, zeros(, fixed_seg)]`` and
    returns them with the moving scan (and its labels) and the fixed scan (and its labels)
    augmented independently; the fixed target is the augmented fixed input.
    """
    seed = int(seed)

    def fn(step, batch):
        inputs, targets = batch
        base = tf.stack([tf.constant(seed, tf.int64), tf.cast(step, tf.int64)])
        s_m, s_f = _seeds(tf.cast(base, tf.int64), 2)
        has_seg = len(inputs) == 3
        moving, moving_seg = augment_scan(s_m, inputs[0], inputs[2] if has_seg else None, aug)
        fixed, fixed_seg = augment_scan(s_f, inputs[1], targets[2] if has_seg else None, aug)
        if has_seg:
            return (moving, fixed, moving_seg), (fixed, targets[1], fixed_seg)
        return (moving, fixed), (fixed, targets[1])
    return fn
