"""Dice and Jacobian determinant against hand counts and analytic fields."""
import numpy as np
import pytest

from vxm_keras.metrics import dice, folding_fraction, jacobian_determinant


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
