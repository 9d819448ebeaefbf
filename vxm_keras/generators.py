"""Training data: volume lists, pair generators and their tf.data wrapper.

Generators yield ``([moving, fixed], [fixed, zeros])`` as the original release
did: ``moving`` and ``fixed`` are ``(batch, *spatial, 1)`` float32, ``zeros``
is ``(batch, *flow_spatial, ndim)``, the dummy target of the smoothness loss.
"""

import glob
import os

import numpy as np

from .io import VolumeError, load_volfile

__all__ = ['list_volumes', 'load_volumes', 'Sampler', 'scan_to_atlas', 'scan_to_scan', 'zeros_shape',
           'as_dataset', 'fashion_mnist']


def list_volumes(data_dir=None, train_list=None, pattern='*.npz'):
    """Training files from a folder (``pattern`` inside it) or a text file with one path per line.

    Relative paths in a list are taken relative to the list's folder.
    """
    if (data_dir is None) == (train_list is None):
        raise ValueError('give exactly one of data_dir and train_list')
    if data_dir is not None:
        if not os.path.isdir(data_dir):
            raise FileNotFoundError(f'{data_dir}: data folder not found')
        files = sorted(glob.glob(os.path.join(data_dir, pattern)))
        if not files:
            raise VolumeError(f'{data_dir}: no {pattern} files inside')
        return files
    if not os.path.isfile(train_list):
        raise FileNotFoundError(f'{train_list}: list file not found')
    base = os.path.dirname(os.path.abspath(train_list))
    try:
        with open(train_list, encoding='utf-8') as f:
            files = [line.strip() for line in f if line.strip() and not line.startswith('#')]
    except UnicodeDecodeError:
        raise VolumeError(f'{train_list}: not a text file of paths (not UTF-8 text)') from None
    if not files:
        raise VolumeError(f'{train_list}: the list is empty')
    return [p if os.path.isabs(p) else os.path.join(base, p) for p in files]


def load_volumes(files, key=None, shape=None):
    """Load 3-D (or 2-D) volumes into one float32 array ``(n, *spatial)``.

    Every file must be finite and of the same shape (``shape`` if given).
    """
    vols = []
    for path in files:
        vol = load_volfile(path, key=key, check_finite=True)
        if vol.ndim not in (2, 3):
            raise VolumeError(f'{path}: an array of shape {vol.shape}, expected one 2-D or 3-D scan')
        if shape is None:
            shape = vol.shape
        if vol.shape != tuple(shape):
            raise VolumeError(f'{path}: shape {vol.shape} differs from {tuple(shape)} '
                              f'(the atlas or the first training volume)')
        vols.append(vol.astype(np.float32))
    return np.stack(vols)


def _batch(vols, idx):
    return vols[idx][..., None]


class Sampler:
    """Where every training batch's randomness comes from, for all the training commands.

    Batch ``k`` (counted over the whole run, from ``start``) draws from
    ``numpy.random.default_rng([seed, worker, k])``, so a run resumed at step ``start`` draws
    exactly the batches an uninterrupted run would have drawn there, and each worker of a
    multi-worker run draws its own. Without ``seed`` one is drawn once from the OS: still one
    generator per batch, just not reproducible across processes.
    """

    def __init__(self, seed=None, start=0, worker=0):
        self.seed = int(np.random.SeedSequence().entropy % 2**31) if seed is None else int(seed)
        self.start, self.worker = int(start), int(worker)

    def rngs(self):
        """Endless ``numpy.random.Generator`` per batch, from batch ``start`` on."""
        step = self.start
        while True:
            yield np.random.default_rng([self.seed, self.worker, step])
            step += 1

    def indices(self, n, batch_size):
        """Endless ``(batch_size,)`` int arrays of items drawn from ``range(n)`` with replacement."""
        for rng in self.rngs():
            yield rng.integers(0, n, batch_size)

    @property
    def map_seed(self):
        """Integer seed of the per-batch TensorFlow maps (augmentation, synthesis), which key it with
        the batch index: the same batch gets the same draw when resumed."""
        return self.seed + 7919 * self.worker


def _batch_rngs(rng, sampler):
    """One generator per batch: the ``sampler``'s (resumable), else ``rng`` every time."""
    if sampler is not None:
        return sampler.rngs()
    rng = np.random.default_rng() if rng is None else rng
    return iter(lambda: rng, None)


def scan_to_atlas(vols, atlas, batch_size=1, flow_shape=None, rng=None, sampler=None, segs=None,
                  atlas_seg=None, flow_channels=None):
    """Endless generator pairing random scans (moving) with the atlas (fixed).

    Args:
        vols: ``(n, *spatial)`` float32 training volumes.
        atlas: ``(*spatial)`` atlas volume.
        flow_shape, flow_channels: spatial shape and channels of the output the smoothness
            loss sees (default ``spatial`` and ``ndim``): the dummy zeros get that shape, so a
            trainer passes its model's (:func:`zeros_shape`) and uses the batches as they are.
        rng: ``numpy.random.Generator`` for every batch (ignored with ``sampler``).
        sampler: a :class:`Sampler`: batch ``k`` reproducible, and resumable mid-run.
        segs, atlas_seg: ``(n, *spatial)`` and ``(*spatial)`` label maps for
            segmentation-supervised training: batches become
            ``([moving, fixed, moving_seg], [fixed, zeros, fixed_seg])`` with
            label maps ``(batch, *spatial, 1)`` float32.
    """
    rngs = _batch_rngs(rng, sampler)
    spatial = vols.shape[1:]
    flow_shape = tuple(spatial if flow_shape is None else flow_shape)
    fixed = np.repeat(atlas[None, ..., None].astype(np.float32), batch_size, axis=0)
    zeros = np.zeros((batch_size, *flow_shape, flow_channels or len(spatial)), np.float32)
    if segs is not None:
        fixed_seg = np.repeat(atlas_seg[None, ..., None].astype(np.float32), batch_size, axis=0)
    for rng in rngs:
        idx = rng.integers(0, len(vols), batch_size)
        if segs is None:
            yield [_batch(vols, idx), fixed], [fixed, zeros]
        else:
            yield [_batch(vols, idx), fixed, _batch(segs, idx).astype(np.float32)], [fixed, zeros, fixed_seg]


def scan_to_scan(vols, batch_size=1, flow_shape=None, rng=None, sampler=None, segs=None, flow_channels=None,
                 self_pairs=False):
    """Endless generator of random pairs of distinct scans ``(moving, fixed)``; arguments as
    in :func:`scan_to_atlas` (``segs`` adds ``moving_seg`` and ``fixed_seg``). ``self_pairs``:
    a single scan is paired with itself (for training that augments the two sides of a pair
    independently, so the copies differ)."""
    if len(vols) < 2 and not (self_pairs and len(vols) == 1):
        raise ValueError('scan-to-scan training needs at least 2 volumes')
    rngs = _batch_rngs(rng, sampler)
    spatial = vols.shape[1:]
    flow_shape = tuple(spatial if flow_shape is None else flow_shape)
    zeros = np.zeros((batch_size, *flow_shape, flow_channels or len(spatial)), np.float32)
    for rng in rngs:
        pairs = np.array([rng.choice(len(vols), 2, replace=len(vols) == 1) for _ in range(batch_size)])
        moving, fixed = _batch(vols, pairs[:, 0]), _batch(vols, pairs[:, 1])
        if segs is None:
            yield [moving, fixed], [fixed, zeros]
        else:
            seg_m, seg_f = (_batch(segs, pairs[:, k]).astype(np.float32) for k in (0, 1))
            yield [moving, fixed, seg_m], [fixed, zeros, seg_f]


def zeros_shape(model):
    """``dict(flow_shape=..., flow_channels=...)`` of ``model``'s last output (the field or the
    velocity parameters its regulariser sees), for the generators' dummy targets."""
    shape = tuple(model.outputs[-1].shape[1:])
    return dict(flow_shape=shape[:-1], flow_channels=shape[-1])


def as_dataset(generator, prefetch=2):
    """Wrap a pair generator in a prefetching ``tf.data.Dataset`` of ``(inputs, targets)``
    tuples, so the next batch is assembled while the model trains on the current one."""
    import tensorflow as tf
    first_inputs, first_targets = next(generator)

    def spec(a):
        return tf.TensorSpec((None,) + a.shape[1:], tf.float32)

    def gen():
        yield tuple(first_inputs), tuple(first_targets)
        yield from ((tuple(x), tuple(y)) for x, y in generator)

    signature = (tuple(spec(a) for a in first_inputs), tuple(spec(a) for a in first_targets))
    return tf.data.Dataset.from_generator(gen, output_signature=signature).prefetch(prefetch)


def fashion_mnist(folder, condition, n_images, scale_range, rng):
    """Images ``(n, 32, 32)`` in [0, 1] (28x28 padded by 2) and attributes ``(n, a)``:
    one-hot class, plus the zoom factor (centred and scaled to about [-1, 1]) when asked."""
    from scipy import ndimage

    from .io import load_idx
    images = load_idx(os.path.join(folder, 'train-images-idx3-ubyte.gz'))[:n_images]
    labels = load_idx(os.path.join(folder, 'train-labels-idx1-ubyte.gz'))[:n_images]
    images = np.pad(images.astype(np.float32) / 255.0, ((0, 0), (2, 2), (2, 2)))
    attributes = None
    if condition in ('class', 'class+scale'):
        attributes = np.eye(10, dtype=np.float32)[labels]
    if condition == 'class+scale':
        lo, hi = scale_range
        scales = rng.uniform(lo, hi, len(images)).astype(np.float32)
        centre = (np.array(images.shape[1:]) - 1) / 2
        for i, s in enumerate(scales):
            # output voxel x samples the input at centre + (x - centre) / s: a zoom by s about the centre
            images[i] = ndimage.affine_transform(images[i], np.eye(2) / s, offset=centre - centre / s, order=1)
        mid, half = (lo + hi) / 2, (hi - lo) / 2
        attributes = np.concatenate([attributes, ((scales - mid) / half)[:, None]], 1)
    return images, labels, attributes
