"""``python -m vxm_keras.prepare``: FreeSurfer subjects or MNI-space scans to the model grid
(the work is :mod:`vxm_keras.prepare`'s; this module parses, checks outputs and reports)."""

import argparse
import os

from ..cli import execute, fail, progress
from ..device import setup_device, start_tensorflow
from ..errors import UserError
from ..outputs import check_outputs
from ..prepare import (is_freesurfer_subject, prepare_freesurfer_subject, prepare_volume, seg_path, talairach_file,
                       write_prepared)


def _outputs(dst, with_seg, nifti):
    """Every file :func:`write_prepared` writes for ``dst`` (and its NIfTI copy)."""
    outs = [dst]
    if with_seg and not dst.endswith('.npz'):
        outs.append(seg_path(dst))
    if nifti and dst.endswith('.npz'):
        outs += [dst[:-4] + '.nii.gz'] + ([seg_path(dst[:-4] + '.nii.gz')] if with_seg else [])
    return outs


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
    return execute(run, build_parser().parse_args(argv))


def run(args):
    """Prepare as the command line says (``args`` from :func:`build_parser`); returns the exit code."""
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
        if args.affine or any(os.path.isdir(src) and talairach_file(src) is None for src, _ in jobs):
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
