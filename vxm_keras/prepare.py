"""Turn FreeSurfer subjects or MNI-space NIfTI scans into VoxelMorph training data.

The common space is MNI305 (FreeSurfer's ``talairach.xfm`` target) sampled at
1 mm on a 160x192x224 grid with FreeSurfer's LIA axis layout, the layout of
the original VoxelMorph data: array axis 0 runs right to left, axis 1
superior to inferior, axis 2 posterior to anterior. :data:`TARGET_AFFINE`
maps voxel ``(i, j, k)`` to MNI RAS millimetres; voxel (80, 96, 112) sits at
(0, -17, 6), the centre of the MNI brain's bounding box.

Each prepared subject is an ``.npz`` with ``vol`` (float32 in [0, 1]),
``seg`` (int32 labels, nearest-neighbour) when a label map is given, and
``affine`` (:data:`TARGET_AFFINE`). Usage::

    python -m vxm_keras.prepare ../shared/data/freesurfer out_dir/
    python -m vxm_keras.prepare scan_in_mni.nii.gz out.npz --seg labels.nii.gz
    python -m vxm_keras.prepare any_t1.nii.gz out.npz --affine       # any space: aligned to the atlas

A FreeSurfer subject without ``talairach.xfm``, and any scan given with
``--affine``, is aligned to the default atlas by :mod:`vxm_keras.affine`
(12 degrees of freedom; this loads TensorFlow, the rest does not).
"""

import os
import sys

import numpy as np
from scipy import ndimage

from .grid import TARGET_AFFINE, TARGET_SHAPE  # noqa: F401  (re-exported: scripts import them from here)
from .io import VolumeError, load_volfile, save_volfile

__all__ = ['NORM_PERCENTILE', 'read_xfm', 'resample', 'normalise', 'prepare_volume', 'prepare_freesurfer_subject',
           'talairach_file', 'write_prepared', 'seg_path', 'is_freesurfer_subject']

# intensities are divided by this percentile of the non-zero voxels, then clipped
NORM_PERCENTILE = 99.5


def read_xfm(path):
    """Read the 3x4 linear transform of an MNI ``.xfm`` file (e.g. ``talairach.xfm``).

    Returns the 4x4 matrix mapping scanner RAS (mm) to MNI305 RAS (mm).
    """
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError as err:
        raise VolumeError(f'{path}: cannot read transform ({err})') from err
    for n, line in enumerate(lines):
        if line.strip().startswith('Linear_Transform'):
            rows = ' '.join(lines[n + 1:n + 4]).replace(';', ' ').split()
            try:
                mat = np.array([float(v) for v in rows], dtype=np.float64).reshape(3, 4)
            except ValueError as err:
                raise VolumeError(f'{path}: malformed Linear_Transform ({err})') from err
            return np.vstack([mat, [0, 0, 0, 1]])
    raise VolumeError(f'{path}: no Linear_Transform found (not an MNI .xfm file?)')


def resample(vol, vox2world, world2target=np.eye(4), shape=TARGET_SHAPE,
             target_affine=TARGET_AFFINE, order=1):
    """Resample ``vol`` onto the target grid.

    Args:
        vol: ``(*spatial)`` source array.
        vox2world: 4x4 source voxel-to-world affine.
        world2target: 4x4 map from the source world to the target world
            (``talairach.xfm`` for a FreeSurfer subject, identity for an
            image already in MNI space).
        order: 1 for intensities, 0 for label maps.

    Returns:
        ``shape`` array; zero outside the source.
    """
    # target voxel -> target world -> source world -> source voxel
    mat = np.linalg.inv(vox2world) @ np.linalg.inv(world2target) @ target_affine
    out_dtype = np.float32 if order > 0 else vol.dtype
    return ndimage.affine_transform(vol, mat[:3, :3], offset=mat[:3, 3], output_shape=shape,
                                    order=order, mode='constant', cval=0, output=out_dtype)


def normalise(vol):
    """Scale intensities to [0, 1] by a robust maximum of the non-zero voxels."""
    vol = np.asarray(vol, dtype=np.float32)
    nonzero = vol[vol > 0]
    if nonzero.size == 0:
        raise ValueError('volume has no positive intensity')
    return np.clip(vol / np.percentile(nonzero, NORM_PERCENTILE), 0, 1).astype(np.float32)


def prepare_volume(image, seg=None, xfm=None, align=False):
    """Prepare one scan (and its label map) given as file paths.

    Args:
        image: intensity volume (``.mgz``, ``.nii``, ``.nii.gz``).
        seg: optional label map on the same grid as ``image``.
        xfm: optional ``.xfm`` from the scanner space to MNI305; without it
            ``image`` must already be in MNI space, unless ``align``.
        align: find the map to the grid by affine alignment to the default
            atlas (:func:`vxm_keras.native.align_to`) instead.

    Returns:
        dict with ``vol`` (float32, :data:`TARGET_SHAPE`, [0, 1]), ``seg``
        (int32, when given) and ``affine``.
    """
    vol, affine = load_volfile(image, ret_affine=True, ndim=3, check_finite=True)
    if vol.ndim != 3:
        raise VolumeError(f'{image}: expected a single 3-D volume, got shape {vol.shape}')
    if affine is None:
        raise VolumeError(f'{image}: no voxel-to-world affine (give a NIfTI or MGZ image, or an .npz '
                          "with an 'affine' key)")
    if align:
        world = _aligned_world(vol, affine, image)
    else:
        world = np.eye(4) if xfm is None else read_xfm(xfm)
    out = {'vol': normalise(resample(vol.astype(np.float32), affine, world, order=1)),
           'affine': TARGET_AFFINE.copy()}
    if seg is not None:
        labels, seg_affine = load_volfile(seg, ret_affine=True, ndim=3)
        if labels.shape != vol.shape or not np.allclose(seg_affine, affine, atol=1e-3):
            raise VolumeError(f'{seg}: label map grid {labels.shape} does not match the image {vol.shape}')
        out['seg'] = resample(labels.astype(np.int32), affine, world, order=0)
    return out


def _aligned_world(vol, affine, name):
    """The map from the scan's world to the grid's world found by affine alignment to the atlas."""
    from .io import load_volfile
    from .native import Scan, align_to
    from .shipped import DEFAULT_ATLAS
    atlas, atlas_affine = load_volfile(DEFAULT_ATLAS, ret_affine=True)
    placement = align_to(Scan(np.asarray(vol, np.float32), affine, name), atlas, atlas_affine, TARGET_SHAPE,
                         TARGET_AFFINE, reference_name='the atlas')
    return np.linalg.inv(placement.world_map)


def prepare_freesurfer_subject(folder, align=False):
    """Prepare a FreeSurfer subject folder holding ``brainmask.mgz``,
    ``aseg.mgz`` and ``talairach.xfm`` (directly or under ``mri/`` and
    ``mri/transforms/``); without ``talairach.xfm``, or with ``align``, the
    affine alignment of :func:`prepare_volume` replaces it. Returns the dict
    of :func:`prepare_volume`."""
    def find(*candidates):
        for c in candidates:
            p = os.path.join(folder, c)
            if os.path.isfile(p):
                return p
        raise FileNotFoundError(f'{folder}: no {candidates[0]} (looked for {", ".join(candidates)})')
    image = find('brainmask.mgz', 'mri/brainmask.mgz')
    seg = find('aseg.mgz', 'mri/aseg.mgz')
    xfm = None if align else talairach_file(folder)
    return prepare_volume(image, seg, xfm, align=xfm is None)


def talairach_file(folder):
    """A FreeSurfer subject's ``talairach.xfm``, or ``None``."""
    for candidate in ('talairach.xfm', 'mri/transforms/talairach.xfm'):
        if os.path.isfile(os.path.join(folder, candidate)):
            return os.path.join(folder, candidate)
    return None


def write_prepared(prepared, path, overwrite=False):
    """Write a prepared subject: ``.npz`` (vol, seg, affine) or NIfTI (vol only;
    the seg goes next to it as ``<name>_seg.nii.gz``)."""
    if path.endswith('.npz'):
        extra = {'seg': prepared['seg']} if 'seg' in prepared else None
        save_volfile(path, prepared['vol'], affine=prepared['affine'], overwrite=overwrite, extra=extra)
    else:
        save_volfile(path, prepared['vol'], affine=prepared['affine'], overwrite=overwrite)
        if 'seg' in prepared:
            save_volfile(seg_path(path), prepared['seg'], affine=prepared['affine'], overwrite=overwrite)


def seg_path(path):
    """Where :func:`write_prepared` puts the label map of a NIfTI output ``path``."""
    stem = path[:-7] if path.endswith('.nii.gz') else os.path.splitext(path)[0]
    return stem + '_seg.nii.gz'


def is_freesurfer_subject(folder):
    """Whether ``folder`` holds a FreeSurfer subject (``brainmask.mgz`` directly or under ``mri/``)."""
    return any(os.path.isfile(os.path.join(folder, p)) for p in ('brainmask.mgz', 'mri/brainmask.mgz'))


if __name__ == '__main__':  # the command lives with the others; python -m vxm_keras.prepare still runs it
    from .commands.prepare import main
    sys.exit(main())
