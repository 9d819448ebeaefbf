"""Label-driven synthesis of training pairs, in the manner of SynthMorph (Hoffmann et al.,
IEEE TMI 2022): images drawn from label maps alone, with random contrasts, so a model trained
on them registers scans of any contrast.

From a label map, one training image is drawn as: a random smooth deformation of the map
(affine jitter and a stationary velocity field, :mod:`vxm_keras.augment`), then per label a
Gaussian intensity (random mean and spread), a Gaussian blur of random width, a smooth
multiplicative bias field, a random gamma, and intensities rescaled to [0, 1] with the
background (label 0) at 0, as in the skull-stripped scans the models see. The two images
of a pair get independent deformations and contrasts; the loss compares their warped label
maps (Dice), not their intensities.

Shapes: label maps ``(batch, *spatial, 1)`` (float32 holding integers, or int), images
``(batch, *spatial, 1)`` float32.
"""

import dataclasses

import numpy as np
import tensorflow as tf

from . import augment

__all__ = ['BRAIN_LABEL_LIMIT', 'LUT_SIZE', 'Synthesis', 'brain_only', 'fit_to_grid', 'load_label_maps',
           'synth_image', 'synth_scan', 'pair_synthesizer', 'label_statistics', 'mixed_pairs']

# labels at or above this are extra-cerebral in whole-head maps (SynthSeg's 5xx, and the
# optic chiasm, vessels, ... of 8x-16x): removed, as skull stripping removes them from scans
BRAIN_LABEL_LIMIT = 80
# size of the per-label intensity tables (labels must lie below it)
LUT_SIZE = 1024


@dataclasses.dataclass(frozen=True)
class Synthesis:
    """Ranges of the random draws; the defaults follow SynthMorph's, scaled to [0, 1] images.

    Attributes:
        deformation: spatial part (:class:`vxm_keras.augment.Augmentation`); its intensity
            fields are not used. Flips are off: a pair's labels must keep their sides.
        std_max: per-label standard deviation, uniform in ``[0, std_max]``.
        blur_max: Gaussian blur sigma, voxels, uniform in ``[0, blur_max]``.
        bias_std, gamma_std: as in :class:`vxm_keras.augment.Augmentation`.
    """
    deformation: augment.Augmentation = augment.Augmentation(warp_std=3.0, flip_axis=None)
    std_max: float = 0.08
    blur_max: float = 1.0
    bias_std: float = 0.3
    gamma_std: float = 0.25


def brain_only(seg):
    """A whole-head label map reduced to the brain: labels ``>= BRAIN_LABEL_LIMIT`` set to 0."""
    seg = np.asarray(seg).astype(np.int32)
    return np.where(seg < BRAIN_LABEL_LIMIT, seg, 0)


def fit_to_grid(seg, shape):
    """Crop or zero-pad a label map to ``shape``, centred on the centroid of its labels (the
    maps share the models' LIA axis layout but not their MNI placement)."""
    seg = np.asarray(seg)
    centre = np.round(np.argwhere(seg > 0).mean(0)).astype(int) if np.any(seg > 0) \
        else np.array(seg.shape) // 2
    out = np.zeros(shape, seg.dtype)
    src, dst = [], []
    for c, n, m in zip(centre, seg.shape, shape):
        start = c - m // 2
        lo, hi = max(start, 0), min(start + m, n)
        src.append(slice(lo, hi))
        dst.append(slice(lo - start, hi - start))
    out[tuple(dst)] = seg[tuple(src)]
    return out


def load_label_maps(folder, shape):
    """Every label map in ``folder`` (``.nii.gz``, ``.nii``, ``.mgz``, or ``.npz`` with a
    ``seg``), reduced to the brain (:func:`brain_only`) and fitted to ``shape``
    (:func:`fit_to_grid`): int32 ``(n, *shape)``."""
    import os

    from .io import EXTENSIONS, VolumeError, load_volfile, volume_extension
    if not os.path.isdir(folder):
        raise FileNotFoundError(f'{folder}: label map folder not found')
    files = sorted(os.path.join(folder, f) for f in os.listdir(folder)
                   if f.lower().endswith(EXTENSIONS) and not f.startswith('.'))
    if not files:
        raise VolumeError(f'{folder}: no label maps ({", ".join(EXTENSIONS)}) inside')
    maps = []
    for path in files:
        seg = load_volfile(path, key='seg' if volume_extension(path) == '.npz' else None, check_finite=True)
        if seg.ndim != len(shape):
            raise VolumeError(f'{path}: a {seg.ndim}-D label map, the training scans are {len(shape)}-D')
        if np.any(seg != np.round(seg)) or seg.min() < 0 or seg.max() >= LUT_SIZE:
            raise VolumeError(f'{path}: not a label map (labels must be whole numbers in [0, {LUT_SIZE}))')
        maps.append(fit_to_grid(brain_only(seg), shape))
    return np.stack(maps)


def _blur(image, sigma):
    """Separable Gaussian blur of ``(batch, *spatial, 1)`` with one scalar ``sigma`` (tensor)."""
    radius = 3
    x = tf.range(-radius, radius + 1, dtype=tf.float32)
    kernel = tf.exp(-0.5 * (x / tf.maximum(sigma, 1e-3)) ** 2)
    kernel = kernel / tf.reduce_sum(kernel)
    ndim = len(image.shape) - 2
    conv = tf.nn.conv3d if ndim == 3 else tf.nn.conv2d
    for d in range(ndim):
        shape = [1] * ndim + [1, 1]
        shape[d] = 2 * radius + 1
        k = tf.reshape(kernel, shape)
        image = conv(image, k, strides=[1] * (ndim + 2), padding='SAME')
    return image


def synth_image(seed, seg, params=Synthesis()):
    """One random-contrast image of a label map ``(batch, *spatial, 1)`` (one contrast per
    batch element); returns ``(batch, *spatial, 1)`` float32 in [0, 1], 0 where the label is 0."""
    s_mean, s_std, s_noise, s_blur, s_int = augment._seeds(seed, 5)
    batch = tf.shape(seg)[0]
    labels = tf.cast(tf.round(tf.cast(seg, tf.float32)), tf.int32)[..., 0]
    means = tf.random.stateless_uniform(tf.stack([batch, LUT_SIZE]), s_mean)
    stds = tf.random.stateless_uniform(tf.stack([batch, LUT_SIZE]), s_std, 0, params.std_max)
    mean = tf.gather(means, labels, batch_dims=1)
    std = tf.gather(stds, labels, batch_dims=1)
    image = (mean + std * tf.random.stateless_normal(tf.shape(mean), s_noise))[..., None]
    sigma = tf.random.stateless_uniform([], s_blur, 0, params.blur_max)
    image = _blur(image, sigma)
    image = tf.where(labels[..., None] > 0, tf.maximum(image, 1e-3), 0.0)
    image = image / tf.reduce_max(image, axis=list(range(1, len(image.shape))), keepdims=True)
    intensity = augment.Augmentation(gamma_std=params.gamma_std, bias_std=params.bias_std, noise_std=0.0,
                                      warp_spacing=params.deformation.warp_spacing)
    return augment.augment_intensity(s_int, image, intensity)


def synth_scan(seed, seg, params=Synthesis()):
    """A label map deformed at random and an image drawn from it: ``(image, seg)``, both
    ``(batch, *spatial, 1)`` float32."""
    s_space, s_image = augment._seeds(seed, 2)
    _, warped, _, _ = augment.augment_spatial(s_space, tf.zeros_like(tf.cast(seg, tf.float32)), seg,
                                              params.deformation)
    return synth_image(s_image, warped, params), warped


def pair_synthesizer(seed, params=Synthesis()):
    """A ``tf.data`` map function like :func:`vxm_keras.augment.pair_augmenter`: takes
    ``(step, (inputs, targets))`` with label maps as ``inputs[2]`` (moving) and ``targets[2]``
    (fixed) and replaces both images by synthetic ones drawn from their (independently
    deformed) label maps; the labels are replaced by the deformed ones."""
    seed = int(seed)

    def fn(step, batch):
        inputs, targets = batch
        base = tf.stack([tf.constant(seed, tf.int64), tf.cast(step, tf.int64)])
        s_m, s_f = augment._seeds(base, 2)
        moving, moving_seg = synth_scan(s_m, inputs[2], params)
        fixed, fixed_seg = synth_scan(s_f, targets[2], params)
        return (moving, fixed, moving_seg), (fixed, targets[1], fixed_seg)
    return fn


def label_statistics(image, seg):
    """Mean and standard deviation of ``image`` per label of ``seg`` (numpy arrays of one
    shape): ``{label: (mean, std)}``, for checking synthesised images."""
    image, seg = np.asarray(image), np.asarray(seg).astype(int)
    return {int(lab): (float(image[seg == lab].mean()), float(image[seg == lab].std()))
            for lab in np.unique(seg)}


def mixed_pairs(seed, real_fraction, params=Synthesis()):
    """A ``tf.data`` map function mixing synthetic and real training pairs (SynthMorph trained
    on synthesis alone, which on a small CPU budget shrinks a pretrained network's fields to
    nothing: real pairs keep it registering real anatomy while synthetic ones teach contrast).

    Takes ``(step, (synthetic_batch, real_batch))``, both batches ``(inputs, targets)`` as in
    :func:`pair_synthesizer` (the synthetic one holds label maps as images), and returns
    ``(inputs, targets, sample_weights)``: with probability ``real_fraction`` (a coin keyed by
    ``(seed, step)``, so resumed runs repeat it) the real batch with weights ``(1, 1, 0)`` on
    the outputs (image, field, labels): the image similarity and smoothness the real scans were
    trained with; otherwise a synthetic batch with weights ``(0, 1, 1)``: labels and
    smoothness, as contrasts differ by design. Weights are ``(batch,)`` float32.
    """
    synthesize = pair_synthesizer(seed, params)
    coin_seed = int(seed) + 104729

    def fn(step, batches):
        synthetic, real = batches
        coin = tf.random.stateless_uniform(
            [], tf.stack([tf.constant(coin_seed, tf.int64), tf.cast(step, tf.int64)]))
        batch = tf.shape(real[0][0])[:1]

        def weighted(inputs, targets, image, labels):
            ones = tf.ones(batch)
            return tuple(inputs), tuple(targets), (image * ones, ones, labels * ones)

        return tf.cond(coin < real_fraction,
                       lambda: weighted(*real, 1.0, 0.0),
                       lambda: weighted(*synthesize(step, synthetic), 0.0, 1.0))
    return fn
