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

import argparse
import os
import sys

import numpy as np
from scipy import ndimage

from .errors import UserError
from .grid import TARGET_AFFINE, TARGET_SHAPE  # noqa: F401  (re-exported: scripts import them from here)
from .io import VolumeError, load_volfile, save_volfile

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
    xfm = None if align else _talairach(folder)
    return prepare_volume(image, seg, xfm, align=xfm is None)


def _talairach(folder):
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
            save_volfile(_seg_path(path), prepared['seg'], affine=prepared['affine'], overwrite=overwrite)


def _seg_path(path):
    stem = path[:-7] if path.endswith('.nii.gz') else os.path.splitext(path)[0]
    return stem + '_seg.nii.gz'


def _outputs(dst, with_seg, nifti):
    """Every file :func:`write_prepared` writes for ``dst`` (and its NIfTI copy)."""
    outs = [dst]
    if with_seg and not dst.endswith('.npz'):
        outs.append(_seg_path(dst))
    if nifti and dst.endswith('.npz'):
        outs += [dst[:-4] + '.nii.gz'] + ([_seg_path(dst[:-4] + '.nii.gz')] if with_seg else [])
    return outs


def is_freesurfer_subject(folder):
    """Whether ``folder`` holds a FreeSurfer subject (``brainmask.mgz`` directly or under ``mri/``)."""
    return any(os.path.isfile(os.path.join(folder, p)) for p in ('brainmask.mgz', 'mri/brainmask.mgz'))


def build_parser():
    parser = argparse.ArgumentParser(
        prog='python -m vxm_keras.prepare',
        description='Prepare scans for vxm-keras: affine to MNI305, 1 mm, 160x192x224, [0, 1] intensities.')
    parser.add_argument('input', help='a FreeSurfer subject folder, a folder of subject folders, '
                        'or a NIfTI/MGZ scan already in MNI space')
    parser.add_argument('output', help='output .npz (or .nii.gz) for one scan, or a folder for many')
    parser.add_argument('--seg', help='label map for a single MNI-space scan')
    parser.add_argument('--affine', action='store_true',
                        help='align each scan to the default atlas (12-dof affine) instead of trusting its header '
                             '(scans not in MNI space) or talairach.xfm; subjects without talairach.xfm always are')
    parser.add_argument('--nifti', action='store_true', help='also write NIfTI copies next to the .npz files')
    parser.add_argument('--overwrite', action='store_true', help='replace existing outputs')
    return parser


def main(argv=None):
    from .cli import execute
    return execute(run, build_parser().parse_args(argv))


def run(args):
    """Prepare as the command line says (``args`` from :func:`build_parser`); returns the exit code."""
    from .cli import check_outputs, fail, progress, setup_device, start_tensorflow
    try:
        if os.path.isdir(args.input) and not is_freesurfer_subject(args.input):
            subjects = sorted(d for d in os.listdir(args.input)
                              if is_freesurfer_subject(os.path.join(args.input, d)))
            if not subjects:
                fail(f'{args.input}: no FreeSurfer subject folders (with brainmask.mgz) inside')
            os.makedirs(args.output, exist_ok=True)
            jobs = [(os.path.join(args.input, s), os.path.join(args.output, s + '.npz')) for s in subjects]
        else:
            if not os.path.exists(args.input):
                fail(f'{args.input}: not found')
            jobs = [(args.input, args.output)]
        # every output is checked before any is written
        for src, dst in jobs:
            outs = _outputs(dst, with_seg=os.path.isdir(src) or bool(args.seg), nifti=args.nifti)
            check_outputs(outs, {src: 'the scan or subject to prepare', args.seg: '--seg'}, args.overwrite)
            for out in outs:
                if os.path.isdir(src) and os.path.realpath(out).startswith(os.path.realpath(src) + os.sep):
                    fail(f'{out}: inside the input subject folder {src}; write the outputs elsewhere')
        if args.affine or any(os.path.isdir(src) and _talairach(src) is None for src, _ in jobs):
            # the alignment runs in TensorFlow: started as the other commands start it, quietly
            setup_device(None)
            start_tensorflow()
        for src, dst in progress(jobs, desc='prepare'):
            if os.path.isdir(src):
                prepared = prepare_freesurfer_subject(src, align=args.affine)
            else:
                prepared = prepare_volume(src, args.seg, align=args.affine)
            write_prepared(prepared, dst, overwrite=args.overwrite)
            if args.nifti and dst.endswith('.npz'):
                write_prepared(prepared, dst[:-4] + '.nii.gz', overwrite=args.overwrite)
    except (OSError, ValueError) as err:  # nibabel's and numpy's own errors about a file, too
        if isinstance(err, UserError):
            raise
        fail(str(err))
    return 0


if __name__ == '__main__':
    sys.exit(main())
