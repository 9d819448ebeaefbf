"""Evaluation sets and the classical peer, shared by ``test.py`` and the benchmark.

* :func:`load_scans`: test scans with their labels, prepared files or FreeSurfer folders;
* :func:`scan_pairs`: every ordered pair of test scans, the same with the moving scan's contrast
  inverted (:func:`invert_contrast`) or made T2-like from its labels (:func:`t2_like`), and each
  scan warped by known random deformations;
* :func:`ants_syn`: ANTs SyN with antspyx's defaults on one pair, labels carried along;
* :func:`score_rows` / :func:`summarise`: Dice rows per pair, method and label, and their mean
  (std over pairs).

Volumes are single arrays ``(*spatial)`` without batch or channel axes, intensities in [0, 1];
label maps are integer arrays of the same shape.
"""

import itertools
import os
import time

import numpy as np

from .errors import UserError

__all__ = ['load_scans', 'invert_contrast', 'T2_LIKE', 't2_like', 'scan_pairs', 'ants_syn', 'score_rows', 'summarise', 'read_scores']


def load_scans(files):
    """Test scans ``[(name, vol, seg)]`` (float32, int32) from prepared ``.npz`` files (``vol``,
    ``seg``) or FreeSurfer subject folders as FreeSurfer wrote them (``brainmask.mgz``,
    ``aseg.mgz``, ``talairach.xfm`` if there is one), prepared here as ``python -m
    vxm_keras.prepare`` would. A file that is not such a scan raises :class:`UserError` naming it."""
    from .io import load_volfile
    scans = []
    for f in files:
        if os.path.isdir(f):
            from .prepare import is_freesurfer_subject, prepare_freesurfer_subject
            if not is_freesurfer_subject(f):
                raise UserError(f'{f}: a folder, but not a FreeSurfer subject (no brainmask.mgz inside)')
            prepared = prepare_freesurfer_subject(f)
            vol, seg = prepared['vol'], prepared['seg']
            name = os.path.basename(os.path.normpath(f))
        else:
            vol = load_volfile(f, check_finite=True)
            seg = load_volfile(f, key='seg')
            name = os.path.splitext(os.path.basename(f))[0]
        if seg.shape != vol.shape:
            raise UserError(f'{f}: seg shape {seg.shape} differs from vol {vol.shape}')
        scans.append((name, vol.astype(np.float32), seg.astype(np.int32)))
    return scans


def invert_contrast(vol):
    """``1 - vol`` inside the brain (``vol > 0``), zero outside: a T1 scan made to look like
    a T2-like contrast, to test a model's independence of contrast."""
    return np.where(vol > 0, 1.0 - vol, 0.0).astype(np.float32)


# T2-weighted order of the tissue classes of metrics.ASEG_TISSUE: CSF brightest, then grey matter,
# white matter darkest (the reverse of T1's order except for the grey/white contrast's size)
T2_LIKE = {1: 0.95, 2: 0.55, 3: 0.3}


def t2_like(vol, seg, seed=0, noise=0.02, bias_std=0.1, blur=0.7):
    """A T2-like scan of the anatomy of a T1 scan ``vol`` with aseg labels ``seg``: each labelled
    tissue class takes its :data:`T2_LIKE` intensity, brain voxels without a label (sulcal CSF,
    remnants of dura) the inverted T1 intensity; then a Gaussian blur of ``blur`` voxels (partial
    volume), a smooth multiplicative bias field (log std ``bias_std``, control points every 32
    voxels), Gaussian noise of std ``noise``, clipped to [0, 1] and zero outside the brain
    (``vol == 0``). Not a monotone map of the T1: local NCC cannot undo it, as it can undo
    :func:`invert_contrast`. ``seed`` makes it repeatable."""
    from scipy import ndimage

    from .metrics import aseg_to_tissue
    vol = np.asarray(vol, np.float32)
    rng = np.random.default_rng(seed)
    lut = np.zeros(4, np.float32)
    for tissue, value in T2_LIKE.items():
        lut[tissue] = value
    tissue = aseg_to_tissue(seg)
    image = np.where(tissue > 0, lut[tissue], 1.0 - vol).astype(np.float32)
    image = ndimage.gaussian_filter(image, blur)
    coarse = rng.normal(0.0, bias_std, [max(2, n // 32 + 2) for n in vol.shape])
    bias = np.exp(ndimage.zoom(coarse, [n / c for n, c in zip(vol.shape, coarse.shape)], order=3))
    image = image * bias[tuple(slice(0, n) for n in vol.shape)] + rng.normal(0.0, noise, vol.shape)
    return np.where(vol > 0, np.clip(image, 0.0, 1.0), 0.0).astype(np.float32)


def scan_pairs(scans, invert=False, synthetic=0, seed=0, t2=False):
    """Evaluation pairs ``(name, set, (moving, moving_seg), (fixed, fixed_seg))``.

    ``scans`` are ``(name, vol, seg)``. Every ordered pair of scans (set ``pairs``), then
    (``invert``) the same with the moving contrast inverted (``inverted``), then (``t2``) the same
    with the moving scan made T2-like from its labels (:func:`t2_like`, set ``t2like``), then (``synthetic``)
    per scan that many copies warped with their labels by known random smooth deformations
    (:mod:`vxm_keras.augment`, seeded by ``seed``, the scan's index and the copy: up to about
    10 voxels), each registered back to its scan (``synthetic``).
    """
    for (na, va, sa), (nb, vb, sb) in itertools.permutations(scans, 2):
        yield f'{na}->{nb}', 'pairs', (va, sa), (vb, sb)
    if invert:
        for (na, va, sa), (nb, vb, sb) in itertools.permutations(scans, 2):
            yield f'{na}(inverted)->{nb}', 'inverted', (invert_contrast(va), sa), (vb, sb)
    if t2:
        for k, ((na, va, sa), (nb, vb, sb)) in enumerate(itertools.permutations(scans, 2)):
            yield f'{na}(T2-like)->{nb}', 't2like', (t2_like(va, sa, seed=1000 * seed + k), sa), (vb, sb)
    if synthetic:
        import tensorflow as tf

        from . import augment, spatial
        aug = augment.Augmentation(rotation=0, scaling=0, shear=0, translation=0, warp_std=4.0,
                                   warp_spacing=24, flip_axis=None)
        for i, (name, vol, seg) in enumerate(scans):
            for k in range(synthetic):
                disp = augment.random_deformation(tf.constant([seed, 1000 * i + k], tf.int64), 1, vol.shape, aug)
                moving = spatial.transform(vol[None, ..., None], disp, 'linear').numpy()[0, ..., 0]
                moving_seg = spatial.transform(seg[None, ..., None].astype(np.float32), disp,
                                               'nearest').numpy()[0, ..., 0]
                yield (f'{name}(warped {k + 1})->{name}', 'synthetic', (moving, np.rint(moving_seg).astype(np.int32)),
                       (vol, seg))


def ants_syn(moving, fixed, moving_seg):
    """ANTs SyN with antspyx's defaults (``type_of_transform='SyN'``: its affine stage, then
    SyN), 1 mm spacing, on ``(*spatial)`` arrays. Returns the moving labels carried to the
    fixed scan (nearest neighbour) and the seconds of the registration and that label warp
    (what a model's seconds cover too)."""
    import ants
    t = time.perf_counter()
    f = ants.from_numpy(np.asarray(fixed, np.float32))
    m = ants.from_numpy(np.asarray(moving, np.float32))
    out = ants.registration(f, m, type_of_transform='SyN')
    moved = ants.apply_transforms(f, ants.from_numpy(np.asarray(moving_seg, np.float32)), out['fwdtransforms'],
                                  interpolator='nearestNeighbor')
    moved = np.rint(moved.numpy()).astype(np.int32)
    return moved, time.perf_counter() - t


def score_rows(pair, kind, method, seg_a, seg_b, labels):
    """Dice rows ``{'pair', 'set', 'method', 'label', 'dice'}`` of ``seg_a`` against ``seg_b``,
    one per label. The affine baseline (``method='affine'``) scores the labels of ``labels``
    present in both maps; other methods are scored on ``labels`` as given (those of the
    baseline), so a structure a method loses counts as 0. ``kind``: the pair's set (``pairs``,
    ``inverted``, ``synthetic`` or ``tissue``)."""
    from .metrics import dice
    present = [lab for lab in labels if np.any(seg_a == lab) and np.any(seg_b == lab)] \
        if method == 'affine' else labels
    labs_out, d = dice(seg_a, seg_b, labels=present)
    return [{'pair': pair, 'set': kind, 'method': method, 'label': int(lab), 'dice': float(v)}
            for lab, v in zip(labs_out, d)]


def summarise(rows, method, labels=None):
    """Mean and std over pairs of each pair's mean Dice for ``method`` (over ``labels``, default
    all of them); ``(nan, nan)`` when there is no such row."""
    per_pair = {}
    for r in rows:
        if r['method'] == method and (labels is None or r['label'] in labels) and np.isfinite(r['dice']):
            per_pair.setdefault(r['pair'], []).append(r['dice'])
    means = [np.mean(v) for v in per_pair.values()]
    return (float(np.mean(means)), float(np.std(means))) if means else (float('nan'), float('nan'))


def read_scores(folder, method='model', kind=None):
    """Mean and std over pairs of ``method``'s Dice, and the folding in %, from a ``test.py
    --out-dir`` folder (its ``dice.csv`` and ``summary.txt``); ``kind`` keeps one set's pairs
    (``pairs``, ``inverted``, ``synthetic``; folders written before the ``set`` column: all)."""
    import csv
    import re
    with open(os.path.join(folder, 'dice.csv'), newline='') as f:
        rows = [dict(r, dice=float(r['dice']), label=int(r['label'])) for r in csv.DictReader(f)]
    if kind is not None:
        rows = [r for r in rows if r.get('set', kind) == kind]
    with open(os.path.join(folder, 'summary.txt')) as f:
        fold = re.search(r'Jacobian determinant <= 0: ([0-9.]+) %', f.read())
    return (*summarise(rows, method), float(fold.group(1)) if fold else float('nan'))
