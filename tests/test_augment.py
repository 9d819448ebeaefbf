"""Training-time augmentation and label-driven synthesis, against scipy and statistics."""
import numpy as np
import tensorflow as tf

from conftest import scipy_warp
from vxm_keras import augment, synth


def labelled_volume(shape=(32, 32, 32)):
    """Nested spheres, left/right halves labelled as aseg hemispheres (2/41, 3/42, 17/53)."""
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing='ij'), -1)
    r = np.linalg.norm(grid - (np.array(shape) - 1) / 2, axis=-1)
    seg = np.zeros(shape, np.int32)
    left = grid[..., 0] >= shape[0] / 2
    for radius, (lab_l, lab_r) in ((13, (3, 42)), (9, (2, 41)), (4, (17, 53))):
        seg[r < radius] = np.where(left, lab_l, lab_r)[r < radius]
    image = np.select([seg == lab for lab in (3, 42, 2, 41, 17, 53)], [0.5, 0.55, 0.9, 0.85, 0.3, 0.35], 0.0)
    return image.astype(np.float32), seg


def test_image_and_labels_stay_aligned():
    """The augmented image and labels equal the originals warped separately by the returned
    field (scipy, linear and nearest), then flipped with the hemispheres swapped."""
    image, seg = labelled_volume()
    aug = augment.Augmentation(warp_std=2.0, warp_spacing=8)
    flips = []
    for k in range(8):
        out, out_seg, disp, flip = augment.augment_spatial(
            tf.constant([3, k], tf.int64), image[None, ..., None], seg[None, ..., None], aug)
        disp, flip = disp.numpy()[0], bool(flip.numpy()[0])
        ref = scipy_warp(image[..., None], disp, order=1)[..., 0]
        ref_seg = scipy_warp(seg[..., None].astype(np.float32), disp, order=0)[..., 0]
        if flip:
            ref, ref_seg = ref[::-1], ref_seg[::-1]
            swapped = ref_seg.copy()
            for a, b in augment.LEFT_RIGHT:
                swapped[ref_seg == a], swapped[ref_seg == b] = b, a
            ref_seg = swapped
        flips.append(flip)
        assert np.abs(disp).max() > 1.0  # a real deformation
        np.testing.assert_allclose(out.numpy()[0, ..., 0], ref, atol=1e-4)
        assert np.mean(out_seg.numpy()[0, ..., 0] == ref_seg) > 0.999
    assert len(set(flips)) == 2, 'eight draws should include a flip and a non-flip'


def test_flip_keeps_anatomy_and_labels_together():
    """After a flip, each hemisphere label still sits on the intensities of the same tissue."""
    image, seg = labelled_volume()
    aug = augment.Augmentation(rotation=0, scaling=0, shear=0, translation=0, warp_std=0)
    for k in range(6):
        out, out_seg, _, flip = augment.augment_spatial(tf.constant([1, k], tf.int64), image[None, ..., None],
                                                        seg[None, ..., None], aug)
        out, out_seg = out.numpy()[0, ..., 0], out_seg.numpy()[0, ..., 0]
        # the right hemisphere's labels (41, 42, 53) are always on the low-index half
        for lab in (41, 42, 53):
            assert np.argwhere(out_seg == lab)[:, 0].max() < 16
        if flip.numpy()[0]:
            np.testing.assert_allclose(out, image[::-1], atol=1e-5)


def test_affine_displacement_matches_numpy():
    shape = (12, 10, 8)
    matrix = augment.affine_matrix(tf.constant([0, 1], tf.int64), 1, 3, augment.Augmentation(rotation=20))
    disp = augment.affine_displacement(matrix, shape).numpy()[0]
    m = matrix.numpy()[0]
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing='ij'), -1).astype(np.float64)
    c = (np.array(shape) - 1) / 2
    ref = (grid - c) @ m[:, :3].T + c + m[:, 3] - grid
    np.testing.assert_allclose(disp, ref, atol=1e-4)
    rot = m[:, :3]
    assert 0.8 < np.linalg.det(rot) < 1.2


def test_intensity_augmentation_keeps_background_and_range():
    image, _ = labelled_volume()
    out = augment.augment_intensity(tf.constant([5, 5], tf.int64), image[None, ..., None],
                                    augment.Augmentation()).numpy()[0, ..., 0]
    assert np.all(out[image == 0] == 0)
    assert out.min() >= 0 and out.max() == 1.0
    assert np.abs(out - image).max() > 0.01


def test_pair_augmenter_is_seeded_by_step():
    image, seg = labelled_volume()
    batch = ((image[None, ..., None], image[None, ..., None], seg[None, ..., None].astype(np.float32)),
             (image[None, ..., None], np.zeros((1, 32, 32, 32, 3), np.float32), seg[None, ..., None].astype(np.float32)))
    fn = augment.pair_augmenter(7)
    a = fn(tf.constant(3, tf.int64), batch)
    b = fn(tf.constant(3, tf.int64), batch)
    c = fn(tf.constant(4, tf.int64), batch)
    np.testing.assert_array_equal(a[0][0].numpy(), b[0][0].numpy())
    assert np.abs(a[0][0].numpy() - c[0][0].numpy()).max() > 0.01
    # the fixed target is the augmented fixed input
    np.testing.assert_array_equal(a[0][1].numpy(), a[1][0].numpy())


def test_synthesis_label_statistics():
    """Each label gets one Gaussian intensity: within a label the spread stays below the
    requested maximum, between labels the means cover [0, 1]; background stays 0; two draws
    give unrelated contrasts."""
    _, seg = labelled_volume((48, 48, 48))
    params = synth.Synthesis(std_max=0.05, blur_max=0.0, bias_std=0.0, gamma_std=0.0)
    stats = []
    for k in range(2):
        image = synth.synth_image(tf.constant([k, 0], tf.int64), seg[None, ..., None], params).numpy()[0, ..., 0]
        assert np.all(image[seg == 0] == 0) and 0 <= image.min() and image.max() == 1.0
        s = synth.label_statistics(image, seg)
        top = max(m for m, _ in s.values())
        for lab, (mean, std) in s.items():
            if lab:
                # the image is divided by its maximum, std_max with it (and 4 sigma of noise)
                assert std <= params.std_max / (top - 4 * params.std_max) + 1e-3, (lab, mean, std)
        stats.append([s[lab][0] for lab in sorted(s) if lab])
    assert np.ptp(stats[0]) > 0.2 and np.ptp(stats[1]) > 0.2
    assert abs(np.corrcoef(stats[0], stats[1])[0, 1]) < 0.9


def test_fit_to_grid_centres_the_labels():
    seg = np.zeros((40, 40, 40), np.int32)
    seg[5:15, 20:30, 25:35] = 17
    seg[0, 0, 0] = 600  # extra-cerebral: removed
    out = synth.fit_to_grid(synth.brain_only(seg), (16, 16, 16))
    assert out.shape == (16, 16, 16) and set(np.unique(out)) == {0, 17}
    np.testing.assert_allclose(np.argwhere(out == 17).mean(0), [7.5, 7.5, 7.5], atol=1.0)


def test_mixed_pairs_pick_real_or_synthetic_batches_by_a_resumable_coin():
    """--synth-mix: a step trains on the real batch as it is (weights 1, 1, 0 on image, field,
    labels) or on a synthetic one (0, 1, 1); the share of real steps follows the fraction, and
    the same step always picks the same way and draws the same images."""
    rng = np.random.default_rng(3)
    _, seg = labelled_volume((16, 16, 16))
    seg = seg[None, ..., None].astype(np.float32)
    zeros = np.zeros((1, 16, 16, 16, 3), np.float32)
    real_m, real_f = rng.random(seg.shape, np.float32), rng.random(seg.shape, np.float32)
    real = ((real_m, real_f, seg), (real_f, zeros, seg))
    synthetic = ((seg, seg, seg), (seg, zeros, seg))
    fn = tf.function(synth.mixed_pairs(5, 0.3))  # as tf.data runs it: traced once
    picks = []
    for step in range(200):
        inputs, targets, weights = tf.nest.map_structure(np.asarray, fn(tf.constant(step, tf.int64), (synthetic, real)))
        is_real = weights[0][0] == 1.0
        picks.append(is_real)
        if step < 6:
            if is_real:
                np.testing.assert_array_equal(inputs[0], real_m)
                np.testing.assert_array_equal(targets[0], real_f)
                assert [w.tolist() for w in weights] == [[1.0], [1.0], [0.0]]
            else:
                image = inputs[0]
                assert not np.array_equal(image, real_m) and 0 <= image.min() and image.max() == 1.0
                assert np.all(image[inputs[2] == 0] == 0)  # background of its warped labels
                np.testing.assert_array_equal(targets[0], inputs[1])
                assert [w.tolist() for w in weights] == [[0.0], [1.0], [1.0]]
    assert 0.2 < np.mean(picks) < 0.4  # 200 draws at p = 0.3: 3 standard deviations is 0.1
    again = tf.nest.map_structure(np.asarray, fn(tf.constant(7, tf.int64), (synthetic, real)))
    first = tf.nest.map_structure(np.asarray, fn(tf.constant(7, tf.int64), (synthetic, real)))
    np.testing.assert_array_equal(again[0][0], first[0][0])
