"""Dice and Jacobian determinant against hand counts and analytic fields."""
import numpy as np
import pytest

from vxm_keras.metrics import dice, folding_fraction, jacobian_determinant, wmparc_to_aseg


def test_dice_hand_counts():
    a = np.zeros((4, 5), int)
    b = np.zeros((4, 5), int)
    a[0, :4] = 1          # 4 voxels
    b[0, 2:] = 1          # 3 voxels, overlap 2
    a[2, :] = 3           # label 3 only in a
    b[3, :2] = 7          # label 7 only in b
    labels, scores = dice(a, b)
    assert list(labels) == [1, 3, 7]
    np.testing.assert_allclose(scores, [2 * 2 / 7, 0.0, 0.0])
    labels, scores = dice(a, b, labels=[1, 5])
    assert scores[0] == pytest.approx(4 / 7) and np.isnan(scores[1])
    assert dice(a, a)[1].tolist() == [1.0, 1.0]


@pytest.mark.parametrize('ndim', [2, 3])
def test_jacobian_of_affine_is_its_determinant(rng, ndim):
    shape = (7, 8, 9)[:ndim]
    A = np.eye(ndim) + 0.3 * rng.standard_normal((ndim, ndim))
    t = rng.standard_normal(ndim)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing='ij'), -1).astype(float)
    disp = grid @ A.T + t - grid  # x -> A x + t
    det = jacobian_determinant(disp)
    assert det.shape == shape
    np.testing.assert_allclose(det, np.linalg.det(A), rtol=1e-10)


def test_identity_and_folding_detected():
    shape = (10, 10, 10)
    assert folding_fraction(np.zeros(shape + (3,))) == 0.0
    # a reflection along axis 0 inside a slab: x0 -> -x0 there, det -1
    x0 = np.arange(10, dtype=float)[:, None, None] * np.ones(shape)
    disp = np.zeros(shape + (3,))
    disp[..., 0] = np.where((x0 >= 3) & (x0 <= 6), -2 * x0 + 9, 0.0)
    det = jacobian_determinant(disp)
    assert np.all(det[4:6] < 0)
    frac = folding_fraction(disp)
    assert 0.2 <= frac <= 0.6
    assert frac == pytest.approx(np.mean(det <= 0))


def test_jacobian_rejects_bad_shapes():
    with pytest.raises(ValueError, match='ndim'):
        jacobian_determinant(np.zeros((5, 5, 5, 2)))


def test_wmparc_to_aseg_voxel_by_voxel(rng):
    """Against FreeSurfer's numbering, one voxel at a time: ctx-lh-* 1000-1035 -> 3, ctx-rh-*
    2000-2035 -> 42, wm-lh-* 3000-3035 -> 2, wm-rh-* 4000-4035 -> 41, Left/Right-UnsegmentedWhiteMatter
    5001/5002 -> 2/41, subcortical labels as they are."""
    def by_hand(label):
        if 1000 <= label < 2000:
            return 3
        if 2000 <= label < 3000:
            return 42
        if 3000 <= label < 4000 or label == 5001:
            return 2
        if 4000 <= label < 5000 or label == 5002:
            return 41
        return label
    values = np.array([0, 2, 4, 10, 17, 41, 53, 77, 999, 1000, 1035, 2000, 2035, 3001, 3999, 4000, 4035, 5001,
                       5002, 5003])
    seg = rng.choice(values, size=(6, 7, 5))
    mapped = wmparc_to_aseg(seg.astype(np.float32))
    assert mapped.dtype == np.int32
    np.testing.assert_array_equal(mapped, np.vectorize(by_hand)(seg))
