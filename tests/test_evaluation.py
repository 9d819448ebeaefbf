"""Evaluation sets: the T2-like contrast made from labels, and the pairs test.py registers."""

import numpy as np

from vxm_keras.evaluation import T2_LIKE, scan_pairs, t2_like


def _phantom():
    """A T1-like brain: white matter (aseg 2) in a cortex shell (3) around a ventricle (4), an
    unlabelled rim (sulcal CSF), background 0; T1 intensities WM 0.9, cortex 0.6, CSF 0.2."""
    grid = np.stack(np.meshgrid(*[np.arange(24)] * 3, indexing='ij'), -1) - 11.5
    r = np.linalg.norm(grid, axis=-1)
    seg = np.select([r < 3, r < 7, r < 10], [4, 2, 3], 0).astype(np.int32)
    vol = np.select([r < 3, r < 7, r < 10, r < 11], [0.2, 0.9, 0.6, 0.15], 0.0).astype(np.float32)
    return vol, seg


def test_t2_like_takes_each_tissue_its_t2_intensity():
    vol, seg = _phantom()
    # without blur, bias and noise: exactly the table, the inverted T1 on the unlabelled rim
    exact = t2_like(vol, seg, noise=0, bias_std=0, blur=0)
    for label, tissue in ((4, 1), (3, 2), (2, 3)):
        np.testing.assert_allclose(exact[seg == label], T2_LIKE[tissue])
    rim = (seg == 0) & (vol > 0)
    np.testing.assert_allclose(exact[rim], 1 - vol[rim], atol=1e-6)
    assert np.all(exact[vol == 0] == 0)
    # with the defaults: CSF > grey > white matter in T2's order, against T1's, and seeded
    image = t2_like(vol, seg, seed=3)
    means = [image[seg == label].mean() for label in (4, 3, 2)]
    assert means[0] > means[1] + 0.2 and means[1] > means[2] + 0.1, means
    assert np.corrcoef(image[vol > 0], vol[vol > 0])[0, 1] < -0.5
    assert np.all(image[vol == 0] == 0) and image.min() >= 0 and image.max() <= 1
    np.testing.assert_array_equal(image, t2_like(vol, seg, seed=3))
    assert np.abs(image - t2_like(vol, seg, seed=4)).max() > 0.01


def test_scan_pairs_adds_a_t2_like_set():
    vol, seg = _phantom()
    scans = [('a', vol, seg), ('b', np.roll(vol, 1, 0), np.roll(seg, 1, 0))]
    pairs = list(scan_pairs(scans, t2=True))
    assert [(name, kind) for name, kind, _, _ in pairs] == [
        ('a->b', 'pairs'), ('b->a', 'pairs'), ('a(T2-like)->b', 't2like'), ('b(T2-like)->a', 't2like')]
    _, _, (moving, moving_seg), (fixed, fixed_seg) = pairs[2]
    np.testing.assert_array_equal(moving_seg, seg)
    np.testing.assert_array_equal(fixed, scans[1][1])
    assert moving[seg == 4].mean() > moving[seg == 2].mean()  # the moving scan is the T2-like one
