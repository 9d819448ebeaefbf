"""Transform files: the warp formats register.py writes, and ITK/ANTs transforms.

One table, :data:`WARP_FORMATS`, names each warp format with the file extensions it writes and
its writer; ``register.py --warp-format`` takes its choices, help and checks from it, so a new
format is one entry here (and its test).

Conventions: a warp is written from a chain (:class:`vxm_keras.native.Chain`: fixed-scan points
to moving-scan points through the model grid) and the field on the model grid ``(*grid_shape,
ndim)`` in voxel units, ``ij`` indexing. Affines are 4x4 voxel-to-world RAS matrices as nibabel
gives them; ITK files are in LPS millimetres; transforms map *fixed* points to *moving* points.
"""

import dataclasses
from typing import Callable, Tuple

import numpy as np

__all__ = ['WarpFormat', 'WARP_FORMATS', 'help_text', 'warp_format_problem', 'write_warp', 'save_itk_warp', 'load_itk_warp',
           'save_ras_warp', 'save_itk_affine', 'load_itk_affine']

# LPS <-> RAS: the sign of the first two world axes
_FLIP = np.diag([-1.0, -1.0, 1.0, 1.0])


def save_itk_warp(path, displacement_lps, target_affine, overwrite=False):
    """Write an ANTs/ITK displacement field: 5-D NIfTI ``(*spatial, 1, 3)``, intent vector,
    LPS millimetre components, the target grid's affine (what ``antsApplyTransforms -t``
    and ``ants.apply_transforms`` read)."""
    import nibabel as nib

    from .io import atomic_path
    data = np.asarray(displacement_lps, np.float32)[:, :, :, None, :]
    img = nib.Nifti1Image(data, np.asarray(target_affine, np.float64))
    img.header.set_intent('vector')
    img.header.set_xyzt_units('mm')
    with atomic_path(path, overwrite=overwrite) as tmp:
        nib.save(img, tmp)


def load_itk_warp(path):
    """Read a displacement field written by :func:`save_itk_warp` (or by ANTs): returns
    ``(displacement_lps (*spatial, 3), affine)``."""
    import nibabel as nib
    img = nib.load(path)
    data = np.asarray(img.dataobj, np.float32)
    if data.ndim != 5 or data.shape[3] != 1 or data.shape[4] != 3:
        raise ValueError(f'{path}: not an ITK displacement field (shape {data.shape}, expected (X, Y, Z, 1, 3))')
    return data[:, :, :, 0, :], np.asarray(img.affine, np.float64)


def save_ras_warp(path, displacement_ras, target_affine, overwrite=False):
    """Write a displacement field in RAS millimetres: 4-D NIfTI/MGZ ``(*spatial, 3)`` on the
    target grid (the world convention of FreeSurfer and nibabel)."""
    from .io import save_volfile
    save_volfile(path, np.asarray(displacement_ras, np.float32), affine=target_affine, overwrite=overwrite)


def save_itk_affine(path, world_affine_ras, overwrite=False):
    """Write the affine part as an ITK text transform (``#Insight Transform File V1.0``,
    ``AffineTransform_double_3_3``, LPS, fixed to moving points), which ANTs, ITK and Slicer read."""
    from .io import atomic_path
    lps = _FLIP @ np.asarray(world_affine_ras, np.float64) @ _FLIP
    params = list(lps[:3, :3].ravel()) + list(lps[:3, 3])
    text = ('#Insight Transform File V1.0\n#Transform 0\nTransform: AffineTransform_double_3_3\n'
            f'Parameters: {" ".join(repr(float(p)) for p in params)}\nFixedParameters: 0 0 0\n')
    with atomic_path(path, overwrite=overwrite) as tmp:
        with open(tmp, 'w') as f:
            f.write(text)


def load_itk_affine(path):
    """Read an ITK text affine transform (as :func:`save_itk_affine` writes): returns the 4x4 RAS
    map from fixed to moving world points (a centre in ``FixedParameters`` is folded in)."""
    params = fixed = None
    with open(path) as f:
        for line in f:
            if line.startswith('Parameters:'):
                params = np.array(line.split(':', 1)[1].split(), np.float64)
            elif line.startswith('FixedParameters:'):
                fixed = np.array(line.split(':', 1)[1].split(), np.float64)
    if params is None or params.size != 12:
        raise ValueError(f'{path}: not a 3-D ITK affine transform (no 12 Parameters)')
    centre = np.zeros(3) if fixed is None else fixed
    lin, trans = params[:9].reshape(3, 3), params[9:]
    lps = np.eye(4)
    lps[:3, :3] = lin
    lps[:3, 3] = trans + centre - lin @ centre
    return _FLIP @ lps @ _FLIP


def _write_voxel(path, chain, grid_field, overwrite):
    from .io import save_volfile
    affine = chain.target.scan.affine if chain.identity else chain.grid_affine
    save_volfile(path, grid_field, affine=affine, overwrite=overwrite)


def _write_itk(path, chain, grid_field, overwrite):
    save_itk_warp(path, chain.displacement_mm(lps=True), chain.target.scan.affine, overwrite=overwrite)


def _write_ras(path, chain, grid_field, overwrite):
    save_ras_warp(path, chain.displacement_mm(lps=False), chain.target.scan.affine, overwrite=overwrite)


@dataclasses.dataclass(frozen=True)
class WarpFormat:
    """One way to write a warp.

    Attributes:
        name: the ``--warp-format`` value.
        help: what the file holds, for ``--help``.
        extensions: the file extensions it writes (lower case); empty: any volume format.
        world: a field in world millimetres on the target scan's grid (3-D only), not the
            model grid's voxel displacement.
        write: ``write(path, chain, grid_field, overwrite)``.
    """
    name: str
    help: str
    extensions: Tuple[str, ...]
    world: bool
    write: Callable


WARP_FORMATS = {f.name: f for f in (
    WarpFormat('voxel', 'the model grid, voxel units; default', (), False, _write_voxel),
    WarpFormat('itk', 'ANTs/ITK displacement field on the fixed grid, LPS mm, affine included',
               ('.nii', '.nii.gz'), True, _write_itk),
    WarpFormat('ras', 'RAS mm on the fixed grid', ('.nii', '.nii.gz', '.mgz'), True, _write_ras),
)}


def help_text() -> str:
    """``--warp-format``'s help, one clause per format."""
    return '--warp and --inverse-warp as: ' + ', '.join(f'{f.name} ({f.help})' for f in WARP_FORMATS.values())


def warp_format_problem(name: str, path=None, ndim: int = 3):
    """Why warp format ``name`` cannot write ``path`` (``None``: any path) for ``ndim``-D scans,
    or ``None``."""
    fmt = WARP_FORMATS[name]
    if fmt.world and ndim != 3:
        return f'a {ndim}-D scan; --warp-format {name} writes 3-D world-space fields (use --warp-format voxel)'
    if path is not None and fmt.extensions and not str(path).lower().endswith(fmt.extensions):
        kinds = ' or '.join(sorted({'MGZ' if ext == '.mgz' else 'NIfTI' for ext in fmt.extensions}, reverse=True))
        return f'--warp-format {name} writes {kinds} ({", ".join(fmt.extensions)})'
    return None


def write_warp(name: str, path, chain, grid_field, overwrite: bool = False):
    """Write the warp of ``chain`` (its field ``grid_field`` on the model grid) to ``path`` in
    format ``name`` (a key of :data:`WARP_FORMATS`)."""
    WARP_FORMATS[name].write(path, chain, grid_field, overwrite)
