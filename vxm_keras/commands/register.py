"""``register.py``: register a moving scan to a fixed scan (the atlas by default).

    python register.py --moving data/example_moving.npz
    python register.py --moving m.nii.gz --fixed f.nii.gz --model models/vm2_scan2scan.h5 \\
        --moved moved.nii.gz --warp warp.nii.gz --moving-seg m_seg.nii.gz --moved-seg moved_seg.nii.gz --png fig.png

Inputs must be prepared like the training data (1 mm, 160x192x224 in the
MNI305 grid, intensities in [0, 1]; see ``python -m vxm_keras.prepare``).
Outputs take their format from the extension (.npz, .npy, .nii, .nii.gz,
.mgz); NIfTI/MGZ outputs carry the moving image's affine. The warp is the
displacement field ``(*spatial, ndim)`` in voxel units, ``ij`` indexing.
"""

import argparse
import os
import sys
import time

from ..cli import check_output, fail, run, setup_device

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_FIXED = os.path.join(REPO, 'data', 'atlas.npz')
DEFAULT_MODEL = os.path.join(REPO, 'models', 'vm2_atlas.h5')


def build_parser():
    p = argparse.ArgumentParser(prog='register.py', description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--moving', required=True, help='moving scan (.npz/.npy/.nii/.nii.gz/.mgz)')
    p.add_argument('--fixed', default=DEFAULT_FIXED, help='fixed scan (default data/atlas.npz)')
    p.add_argument('--model', default=DEFAULT_MODEL, help='trained model (default models/vm2_atlas.h5)')
    p.add_argument('--moved', default=None, help='output: warped moving scan (default <moving>_moved.<ext> here)')
    p.add_argument('--warp', default=None, help='output: displacement field')
    p.add_argument('--moving-seg', '--moving_seg', dest='moving_seg', default=None,
                   help="label map of the moving scan (an .npz: its 'seg' key)")
    p.add_argument('--moved-seg', '--moved_seg', dest='moved_seg', default=None,
                   help='output: moving labels warped with nearest-neighbour interpolation')
    p.add_argument('--fixed-seg', dest='fixed_seg', default=None,
                   help="label map of the fixed scan, for the figure (an .npz: its 'seg' key)")
    p.add_argument('--png', default=None, help='output: figure of moving, fixed and moved slices')
    p.add_argument('--overwrite', action='store_true', help='replace existing outputs')
    p.add_argument('--gpu', default=None, help="GPU id ('-1' or absent: CPU)")
    return p


def _default_moved(moving):
    from ..io import volume_extension
    ext = volume_extension(moving)
    return os.path.basename(moving)[:-len(ext)] + '_moved' + ext


def _load_seg(path):
    from ..io import load_volfile, volume_extension
    key = 'seg' if volume_extension(path) == '.npz' else None
    return load_volfile(path, key=key)


def main(argv=None):
    args = build_parser().parse_args(argv)
    setup_device(args.gpu)
    if args.moved_seg and not args.moving_seg:
        fail('--moved-seg needs --moving-seg')
    if args.moved is None:
        args.moved = _default_moved(args.moving)
    outputs = [args.moved, args.warp, args.moved_seg, args.png]
    for out in outputs:
        check_output(out, args.overwrite)
    if len({os.path.abspath(o) for o in outputs if o}) != len([o for o in outputs if o]):
        fail('two outputs have the same path')

    def body():
        import numpy as np

        from ..io import load_volfile, save_volfile, volume_extension

        t0 = time.perf_counter()
        moving, affine = load_volfile(args.moving, ret_affine=True, check_finite=True)
        fixed, fixed_affine = load_volfile(args.fixed, ret_affine=True, check_finite=True)
        if moving.ndim not in (2, 3):
            fail(f'{args.moving}: expected a 2-D or 3-D scan, got shape {moving.shape}')
        if moving.shape != fixed.shape:
            fail(f'{args.moving}: shape {moving.shape} differs from the fixed scan {args.fixed} {fixed.shape}')
        moving_seg = _load_seg(args.moving_seg) if args.moving_seg else None
        if moving_seg is not None and moving_seg.shape != moving.shape:
            fail(f'{args.moving_seg}: shape {moving_seg.shape} differs from the moving scan {moving.shape}')
        fixed_seg = _load_seg(args.fixed_seg) if args.fixed_seg else None
        if args.png and fixed_seg is None and volume_extension(args.fixed) == '.npz':
            try:
                fixed_seg = load_volfile(args.fixed, key='seg')
            except ValueError:
                fixed_seg = None
        for name, vol in (('moving', moving), ('fixed', fixed)):
            if vol.max() > 1.5 or vol.min() < -0.5:
                print(f'warning: the {name} scan has intensities in [{vol.min():.3g}, {vol.max():.3g}]; '
                      'models expect [0, 1] (python -m vxm_keras.prepare)', file=sys.stderr)

        from .. import networks
        model = networks.load_model(args.model)
        inshape = tuple(model.inputs[0].shape[1:-1])
        if len(inshape) != moving.ndim:
            fail(f'{args.moving}: a {moving.ndim}-D scan, but the model registers {len(inshape)}-D volumes {inshape}')
        if inshape != moving.shape:
            fail(f'{args.model}: the model takes {inshape} volumes, the scans are {moving.shape}')
        t_load = time.perf_counter() - t0

        t1 = time.perf_counter()
        net = model.warp_model() if hasattr(model, 'warp_model') else model
        moved, warp = net.predict([moving[None, ..., None].astype(np.float32),
                                   fixed[None, ..., None].astype(np.float32)], verbose=0)
        moved_seg = None
        if moving_seg is not None:
            nn = networks.nn_transformer(inshape)
            moved_seg = nn.predict([moving_seg[None, ..., None].astype(np.float32), warp], verbose=0)
            moved_seg = np.rint(moved_seg[0, ..., 0]).astype(np.int32)
        t_pred = time.perf_counter() - t1

        t2 = time.perf_counter()
        out_affine = affine if affine is not None else fixed_affine
        save_volfile(args.moved, moved[0, ..., 0], affine=out_affine, overwrite=args.overwrite)
        if args.warp:
            save_volfile(args.warp, warp[0], affine=out_affine, overwrite=args.overwrite)
        if moved_seg is not None and args.moved_seg:
            save_volfile(args.moved_seg, moved_seg, affine=out_affine, overwrite=args.overwrite)
        if args.png:
            from ..plot import save_figure_atomic, slices_figure
            save_figure_atomic(args.png, slices_figure, [moving, fixed, moved[0, ..., 0]],
                               ['moving', 'fixed', 'moved'], segs=[moving_seg, fixed_seg, moved_seg])
        t_write = time.perf_counter() - t2
        print(f'load {t_load:.2f} s, predict {t_pred:.2f} s, write {t_write:.2f} s')
        for out in (args.moved, args.warp, args.moved_seg, args.png):
            if out:
                print(f'wrote {out}')
        return 0

    return run(body)


if __name__ == '__main__':
    sys.exit(main())
