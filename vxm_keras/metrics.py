"""Evaluation metrics on numpy arrays: Dice overlap and Jacobian determinants.

Displacement fields are ``(*spatial, ndim)`` arrays in voxel units with ``ij``
indexing (component ``d`` moves along axis ``d``); the transform they describe
is ``x -> x + u(x)``.
"""

import numpy as np

__all__ = ['PAPER_LABELS', 'ASEG_TISSUE', 'TISSUE_NAMES', 'STRUCTURES', 'aseg_to_tissue', 'wmparc_to_aseg', 'dice',
           'jacobian_determinant', 'folding_fraction']

# the 30 aseg structures evaluated in the VoxelMorph papers
PAPER_LABELS = (2, 3, 4, 7, 8, 10, 11, 12, 13, 14, 15, 16, 17, 18, 24, 28, 31,
                41, 42, 43, 46, 47, 49, 50, 51, 52, 53, 54, 60, 63)


# FreeSurfer aseg label -> tissue class of the default atlas (1 CSF, 2 GM, 3 WM)
ASEG_TISSUE = {
    **{k: 1 for k in (4, 5, 14, 15, 24, 43, 44)},
    **{k: 2 for k in (3, 8, 10, 11, 12, 13, 17, 18, 26, 42, 47, 49, 50, 51, 52, 53, 54, 58)},
    **{k: 3 for k in (2, 7, 16, 28, 41, 46, 60, 77, 85, 251, 252, 253, 254, 255)},
}
TISSUE_NAMES = {1: 'CSF', 2: 'grey matter', 3: 'white matter'}
# FreeSurferColorLUT names of the 30 structures
STRUCTURES = {2: 'L cerebral WM', 3: 'L cortex', 4: 'L lat. ventricle', 7: 'L cerebellum WM',
              8: 'L cerebellum cortex', 10: 'L thalamus', 11: 'L caudate', 12: 'L putamen',
              13: 'L pallidum', 14: '3rd ventricle', 15: '4th ventricle', 16: 'brainstem',
              17: 'L hippocampus', 18: 'L amygdala', 24: 'CSF', 28: 'L ventral DC', 31: 'L choroid plexus',
              41: 'R cerebral WM', 42: 'R cortex', 43: 'R lat. ventricle', 46: 'R cerebellum WM',
              47: 'R cerebellum cortex', 49: 'R thalamus', 50: 'R caudate', 51: 'R putamen',
              52: 'R pallidum', 53: 'R hippocampus', 54: 'R amygdala', 60: 'R ventral DC',
              63: 'R choroid plexus'}


def aseg_to_tissue(seg):
    """Map a FreeSurfer aseg ``(*spatial)`` to tissue classes (0 elsewhere)."""
    lut = np.zeros(max(ASEG_TISSUE) + 1, np.int32)
    for k, v in ASEG_TISSUE.items():
        lut[k] = v
    seg = np.asarray(seg)
    out = np.zeros(seg.shape, np.int32)
    inside = (seg >= 0) & (seg < len(lut))
    out[inside] = lut[seg[inside]]
    return out


def wmparc_to_aseg(seg):
    """A FreeSurfer wmparc ``(*spatial)`` in aseg numbering: cortical parcels (1000s left, 2000s
    right) to cortex 3 / 42, white-matter parcels (3000s left, 4000s right) and unsegmented white
    matter (5001 / 5002) to white matter 2 / 41; the subcortical labels stay. int32."""
    seg = np.asarray(seg).astype(np.int32)
    out = seg.copy()
    for low, value in ((1000, 3), (2000, 42), (3000, 2), (4000, 41)):
        out[(seg >= low) & (seg < low + 1000)] = value
    out[seg == 5001] = 2
    out[seg == 5002] = 41
    return out


def dice(seg1: np.ndarray, seg2: np.ndarray, labels=None) -> tuple:
    """Dice overlap per label of two integer label maps of the same shape.

    Args:
        seg1, seg2: integer arrays ``(*spatial)``.
        labels: labels to score; by default every non-zero label present in
            either map (sorted).

    Returns:
        ``(labels, scores)``: int array of labels and float array of Dice
        ``2 |A & B| / (|A| + |B|)``; a label absent from both maps scores NaN.
    """
    seg1, seg2 = np.asarray(seg1), np.asarray(seg2)
    if seg1.shape != seg2.shape:
        raise ValueError(f'label maps differ in shape: {seg1.shape} vs {seg2.shape}')
    if labels is None:
        labels = np.union1d(np.unique(seg1), np.unique(seg2))
        labels = labels[labels != 0]
    labels = np.asarray(labels).astype(np.int64).ravel()
    scores = np.empty(len(labels), dtype=np.float64)
    for i, lab in enumerate(labels):
        a, b = seg1 == lab, seg2 == lab
        total = a.sum() + b.sum()
        scores[i] = 2.0 * np.logical_and(a, b).sum() / total if total else np.nan
    return labels, scores


def jacobian_determinant(disp: np.ndarray) -> np.ndarray:
    """Determinant of the Jacobian of ``x -> x + disp(x)`` at every voxel.

    Derivatives are central differences (one-sided at the borders), as
    ``np.gradient`` computes them, so the result is exact for affine fields.

    Args:
        disp: ``(*spatial, ndim)`` displacement, ``ndim`` 2 or 3, voxel units.

    Returns:
        ``(*spatial)`` array of determinants (1 for the identity).
    """
    disp = np.asarray(disp, dtype=np.float64)
    ndim = disp.ndim - 1
    if ndim not in (2, 3) or disp.shape[-1] != ndim:
        raise ValueError(f'expected a (*spatial, ndim) field with ndim 2 or 3, got shape {disp.shape}')
    # jac[..., i, j] = d(x_i + u_i) / d x_j
    jac = np.empty(disp.shape[:-1] + (ndim, ndim))
    for i in range(ndim):
        grads = np.gradient(disp[..., i])
        for j in range(ndim):
            jac[..., i, j] = grads[j] + (1.0 if i == j else 0.0)
    return np.linalg.det(jac)


def folding_fraction(disp: np.ndarray) -> float:
    """Fraction of voxels where the Jacobian determinant is ``<= 0`` (folding).

    ``disp`` is ``(*spatial, ndim)``, see :func:`jacobian_determinant`.
    """
    return float(np.mean(jacobian_determinant(disp) <= 0))
