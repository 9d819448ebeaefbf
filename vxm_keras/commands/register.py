"""``register.py``: register moving scans to a fixed scan (the atlas by default).

One scan:

    python register.py --moving data/example_moving.npz
    python register.py --moving m.nii.gz --fixed f.nii.gz --model models/vm2_scan2scan.h5 \\
        --moved moved.nii.gz --warp warp.nii.gz --moving-seg m_seg.nii.gz --moved-seg moved_seg.nii.gz --png fig.png

Many scans (a folder, or a text file with one path per line): reading,
prediction and writing overlap; an unreadable or mis-shaped input is reported
and skipped, and the exit code is 1 if any failed:

    python register.py --moving scans/ --out-dir moved/ [--save-warp] [--resume]
    python register.py --moving-list scans.txt --out-dir moved/

Inputs must be prepared like the training data (1 mm, 160x192x224 in the
MNI305 grid, intensities in [0, 1]; see ``python -m vxm_keras.prepare``).
Outputs take their format from the extension (.npz, .npy, .nii, .nii.gz,
.mgz); NIfTI/MGZ outputs carry the moving image's affine. The warp is the
displacement field ``(*spatial, ndim)`` in voxel units, ``ij`` indexing.
"""

import argparse
import os
import re
import sys
import time

from ..cli import check_outputs, fail, run, same_path, setup_device

from ..shipped import DEFAULT_ATLAS as DEFAULT_FIXED, DEFAULT_MODEL


FIGURE_EXTENSIONS = ('.png', '.pdf', '.svg', '.jpg', '.jpeg')
# refinement steps by default: on brains the models never saw, 25 steps lift the scan-to-scan
# VM-2 from 0.725 to 0.771 Dice, past ANTs SyN (0.760), in a tenth of its time (models/README.md)
DEFAULT_OPTIMIZE = 25


def build_parser():
    p = argparse.ArgumentParser(prog='register.py', description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument('--moving', help='moving scan (.npz/.npy/.nii/.nii.gz/.mgz), or a folder of scans')
    src.add_argument('--moving-list', dest='moving_list', help='text file, one moving scan per line')
    p.add_argument('--fixed', default=DEFAULT_FIXED, help='fixed scan (default data/atlas.npz)')
    p.add_argument('--model', default=DEFAULT_MODEL, help='trained model (default models/vm2_atlas.h5)')
    p.add_argument('--moved', default=None, help='output: warped moving scan (default <moving>_moved.<ext> here)')
    p.add_argument('--warp', default=None, help='output: displacement field')
    p.add_argument('--inverse-warp', dest='inverse_warp', default=None,
                   help='output: inverse displacement field (diffeomorphic vm2diff models)')
    p.add_argument('--moving-seg', '--moving_seg', dest='moving_seg', default=None,
                   help="label map of the moving scan (an .npz: its 'seg' key)")
    p.add_argument('--moved-seg', '--moved_seg', dest='moved_seg', default=None,
                   help='output: moving labels warped with nearest-neighbour interpolation')
    p.add_argument('--fixed-seg', dest='fixed_seg', default=None,
                   help="label map of the fixed scan, for the figure (an .npz: its 'seg' key)")
    p.add_argument('--png', default=None, help='output: figure of moving, fixed and moved slices')
    p.add_argument('--out-dir', dest='out_dir', default=None,
                   help='batch mode: folder for <name>_moved.<ext> (and <name>_warp.<ext>) outputs')
    p.add_argument('--save-warp', dest='save_warp', action='store_true', help='batch mode: also write the warps')
    p.add_argument('--resume', action='store_true', help='batch mode: skip scans whose outputs exist')
    p.add_argument('--overwrite', action='store_true', help='replace existing outputs')
    p.add_argument('--optimize', type=int, default=DEFAULT_OPTIMIZE, metavar='N',
                   help='refine the predicted field on the pair with N Adam steps of the training loss '
                        '(instance-specific optimisation, TMI 2019) on the pair at half resolution; default '
                        f'{DEFAULT_OPTIMIZE} (about 4 s on 2 CPU cores at 160x192x224), 0 for the network alone. '
                        'Dice and seconds against N: models/README.md')
    p.add_argument('--optimize-lambda', dest='optimize_lambda', type=float, default=None,
                   help='smoothness weight of that refinement (default 4: folding stays far below 0.5 %%)')
    p.add_argument('--cascade', type=int, default=1, metavar='K',
                   help='apply the network K times, each on the previous result, composing the fields')
    p.add_argument('--xla', action='store_true',
                   help='compile the prediction with XLA (slower on CPUs, see bench/RESULTS.md; try it on GPUs)')
    p.add_argument('--verbose', action='store_true', help="show TensorFlow's start-up messages")
    p.add_argument('--gpu', default=None, help="GPU id ('-1' or absent: CPU)")
    return p




def _inputs(args):
    """The command's input files by flag: outputs may never be one of them."""
    return {args.moving: '--moving', args.fixed: '--fixed', args.model: '--model',
            args.moving_seg: '--moving-seg', args.fixed_seg: '--fixed-seg',
            args.moving_list: '--moving-list'}


def _split_ext(path):
    from ..io import volume_extension
    ext = volume_extension(path)
    return os.path.basename(path)[:-len(ext)], ext


def _load_seg(path):
    from ..io import load_volfile, volume_extension
    import numpy as np

    from ..io import VolumeError
    key = 'seg' if volume_extension(path) == '.npz' else None
    seg = load_volfile(path, key=key, check_finite=True)
    if np.issubdtype(seg.dtype, np.floating) and np.any(seg != np.round(seg)):
        raise VolumeError(f'{path}: a label map must hold whole numbers (found fractional values)')
    if seg.size and (seg.min() < 0 or seg.max() >= 2 ** 24):
        raise VolumeError(f'{path}: labels in [{seg.min()}, {seg.max()}]; labels must lie in [0, 2**24)')
    return seg


def _engine(args, fixed_path, fixed):
    """The registration engine for ``--model``, checked against the fixed scan."""
    from ..cli import UserError, start_tensorflow
    start_tensorflow()
    from ..registration import Registration
    reg = Registration(args.model, xla=args.xla)
    try:
        reg.check(fixed, fixed_path)
    except ValueError as err:
        raise UserError(f'{err} (the model {args.model} was trained on that grid)') from None
    if args.inverse_warp and not reg.model.diffeomorphic:
        raise UserError(f'{args.model}: this model has no inverse; a diffeomorphic model '
                        '(train.py --model vm2diff) does')
    return reg


def _check_pair(reg, path, vol, fixed_path, fixed):
    from ..cli import UserError
    if vol.ndim == fixed.ndim and vol.shape != fixed.shape:
        raise UserError(f'{path}: shape {vol.shape} differs from the fixed scan {fixed_path} {fixed.shape}')
    try:
        reg.check(vol, path)
    except ValueError as err:
        raise UserError(str(err)) from None


def _options(args):
    """Keyword arguments of :meth:`Registration.register` from the command line."""
    options = dict(optimize=args.optimize, cascade=args.cascade)
    if args.optimize_lambda is not None:
        options['lam'] = args.optimize_lambda
    return options


def _warn_range(name, vol):
    if vol.max() > 1.5 or vol.min() < -0.5:
        print(f'warning: {name} has intensities in [{vol.min():.3g}, {vol.max():.3g}]; '
              'models expect [0, 1] (python -m vxm_keras.prepare)', file=sys.stderr)


def _single(args):
    from concurrent.futures import ThreadPoolExecutor

    from ..io import atomic_paths, load_volfile, save_volfile, volume_extension

    if args.moved_seg and not args.moving_seg:
        fail('--moved-seg needs --moving-seg')
    if args.moved is None:
        stem, ext = _split_ext(args.moving)
        args.moved = stem + '_moved' + ext
    outputs = [o for o in (args.moved, args.warp, args.inverse_warp, args.moved_seg, args.png) if o]
    check_outputs(outputs, _inputs(args), args.overwrite)
    if args.png and not args.png.lower().endswith(FIGURE_EXTENSIONS):
        fail(f'{args.png}: a figure needs one of the extensions {", ".join(FIGURE_EXTENSIONS)}')

    t0 = time.perf_counter()
    # the inputs are read side by side (zlib and file reads release the GIL)
    with ThreadPoolExecutor(3) as pool:
        reads = {'moving': pool.submit(load_volfile, args.moving, ret_affine=True, check_finite=True),
                 'fixed': pool.submit(load_volfile, args.fixed, ret_affine=True, check_finite=True)}
        if args.moving_seg:
            reads['moving_seg'] = pool.submit(_load_seg, args.moving_seg)
        if args.fixed_seg:
            reads['fixed_seg'] = pool.submit(_load_seg, args.fixed_seg)
        moving, affine = reads['moving'].result()
        fixed, fixed_affine = reads['fixed'].result()
        moving_seg = reads['moving_seg'].result() if args.moving_seg else None
        fixed_seg = reads['fixed_seg'].result() if args.fixed_seg else None
    # the pair is checked before the model loads, so a bad input fails without waiting for TensorFlow
    if moving.ndim not in (2, 3):
        fail(f'{args.moving}: expected a 2-D or 3-D scan, got shape {moving.shape}')
    if moving.shape != fixed.shape:
        fail(f'{args.moving}: shape {moving.shape} differs from the fixed scan {args.fixed} {fixed.shape}')
    if moving_seg is not None and moving_seg.shape != moving.shape:
        fail(f'{args.moving_seg}: shape {moving_seg.shape} differs from the moving scan {moving.shape}')
    if fixed_seg is not None and fixed_seg.shape != fixed.shape:
        fail(f'{args.fixed_seg}: shape {fixed_seg.shape} differs from the fixed scan {fixed.shape}')
    if args.png and fixed_seg is None and volume_extension(args.fixed) == '.npz':
        try:
            fixed_seg = load_volfile(args.fixed, key='seg')
        except ValueError:
            fixed_seg = None
    _warn_range(args.moving, moving)
    _warn_range(args.fixed, fixed)
    reg = _engine(args, args.fixed, fixed)
    _check_pair(reg, args.moving, moving, args.fixed, fixed)
    t_load = time.perf_counter() - t0

    t1 = time.perf_counter()
    result = reg.register(moving, fixed, inverse=bool(args.inverse_warp), **_options(args))
    moved, warp, inverse = result.moved, result.warp, result.inverse
    moved_seg = reg.warp_labels(moving_seg, warp) if moving_seg is not None else None
    t_pred = time.perf_counter() - t1

    t2 = time.perf_counter()
    out_affine = affine if affine is not None else fixed_affine
    arrays = [(args.moved, moved), (args.warp, warp), (args.inverse_warp, inverse), (args.moved_seg, moved_seg)]
    arrays = [(path, array) for path, array in arrays if path]
    # written side by side under temporary names, renamed together: all outputs or none
    with atomic_paths([path for path, _ in arrays] + ([args.png] if args.png else []),
                      overwrite=args.overwrite) as tmps, ThreadPoolExecutor(3) as pool:
        writes = [pool.submit(save_volfile, tmps[path], array, affine=out_affine, overwrite=True)
                  for path, array in arrays]
        if args.png:
            from ..plot import slices_figure
            slices_figure(tmps[args.png], [moving, fixed, moved], ['moving', 'fixed', 'moved'],
                          segs=[moving_seg, fixed_seg, moved_seg])
        for w in writes:
            w.result()
    t_write = time.perf_counter() - t2
    print(f'load {t_load:.2f} s, predict {t_pred:.2f} s, write {t_write:.2f} s')
    for out in outputs:
        print(f'wrote {out}')
    return 0


def _batch_inputs(args):
    from ..generators import list_volumes
    from ..io import EXTENSIONS
    if args.moving_list:
        return list_volumes(train_list=args.moving_list)
    files = sorted(os.path.join(args.moving, f) for f in os.listdir(args.moving)
                   if f.lower().endswith(EXTENSIONS) and not f.startswith('.'))
    if not files:
        fail(f'{args.moving}: no scans ({", ".join(EXTENSIONS)}) inside')
    return files


def _remove_partial_outputs(folder):
    """Delete the hidden temporary files a killed run left in ``folder`` (see ``io.atomic_path``)."""
    from ..io import TEMP_PATTERN
    for name in os.listdir(folder):
        if re.fullmatch(TEMP_PATTERN, name):
            try:
                os.unlink(os.path.join(folder, name))
            except OSError:
                pass


def _batch(args):
    """Register many scans: a reader thread loads ahead, a writer thread saves behind."""
    from concurrent.futures import ThreadPoolExecutor

    from ..io import load_volfile, save_volfile

    if args.out_dir is None:
        fail('batch mode (a folder or --moving-list) needs --out-dir')
    for opt in ('moved', 'warp', 'inverse_warp', 'moving_seg', 'moved_seg', 'png'):
        if getattr(args, opt):
            fail(f'--{opt.replace("_", "-")} is for a single scan; batch mode writes into --out-dir')
    parent = os.path.dirname(os.path.abspath(args.out_dir))
    if not os.path.isdir(args.out_dir) and not os.path.isdir(parent):
        fail(f'{args.out_dir}: its folder {parent} does not exist')
    if os.path.exists(args.out_dir) and not os.path.isdir(args.out_dir):
        fail(f'{args.out_dir}: exists and is not a folder')

    inputs = _batch_inputs(args)
    if args.moving and os.path.isdir(args.moving) and same_path(args.moving, args.out_dir):
        # the folder holds earlier outputs too: never register those again
        ours = [p for p in inputs if re.search(r'_(moved|warp)$', _split_ext(p)[0])]
        if ours:
            print(f'note: {len(ours)} files in {args.out_dir} are outputs of earlier runs (*_moved, *_warp) '
                  'and are not registered', file=sys.stderr)
        inputs = [p for p in inputs if p not in ours]
    jobs, skipped, claimed = [], 0, {}
    for path in inputs:
        try:
            stem, ext = _split_ext(path)
        except ValueError as err:
            print(f'error: {err}', file=sys.stderr)
            continue
        outs = [os.path.join(args.out_dir, f'{stem}_moved{ext}')]
        if args.save_warp:
            outs.append(os.path.join(args.out_dir, f'{stem}_warp{ext}'))
        for out in outs:
            key = os.path.realpath(out)
            if key in claimed:
                fail(f'{claimed[key]} and {path} would both be written to {out}: give the scans different '
                     'names, or register them in separate runs')
            claimed[key] = path
        jobs.append((path, outs))
    for path, outs in jobs:
        for out in outs:
            for other, flag in [(p, 'a moving scan') for p in inputs] + list(_inputs(args).items()):
                if other and same_path(out, other):
                    fail(f'{out}: is also an input ({flag}); outputs never replace inputs, even with --overwrite')
    pending = []
    for path, outs in jobs:
        if all(os.path.exists(o) for o in outs) and args.resume:
            skipped += 1
            continue
        if any(os.path.exists(o) for o in outs) and not (args.overwrite or args.resume):
            fail(f'{next(o for o in outs if os.path.exists(o))}: exists (use --resume to skip finished '
                 'scans or --overwrite to replace them)')
        pending.append((path, outs))
    jobs = pending
    os.makedirs(args.out_dir, exist_ok=True)
    if not os.access(args.out_dir, os.W_OK):
        fail(f'{args.out_dir}: folder is not writable')
    _remove_partial_outputs(args.out_dir)
    total = len(jobs) + skipped
    failed = []
    t0 = time.perf_counter()
    fixed, fixed_affine = load_volfile(args.fixed, ret_affine=True, check_finite=True)
    _warn_range(args.fixed, fixed)
    reg = _engine(args, args.fixed, fixed)

    def read(path):
        from ..cli import UserError
        vol, affine = load_volfile(path, ret_affine=True, check_finite=True)
        try:
            _check_pair(reg, path, vol, args.fixed, fixed)
        except UserError as err:
            raise ValueError(str(err)) from None
        _warn_range(path, vol)
        return vol, affine

    def write(outs, moved, warp, affine):
        affine = affine if affine is not None else fixed_affine
        save_volfile(outs[0], moved, affine=affine, overwrite=True)
        if len(outs) > 1:
            save_volfile(outs[1], warp, affine=affine, overwrite=True)

    import keras
    bar = keras.utils.Progbar(len(jobs), unit_name='scan')
    with ThreadPoolExecutor(1) as reader, ThreadPoolExecutor(1) as writer:
        pending_reads = [reader.submit(read, path) for path, _ in jobs[:2]]
        pending_writes = []
        for n, (path, outs) in enumerate(jobs):
            if n + 2 < len(jobs):
                pending_reads.append(reader.submit(read, jobs[n + 2][0]))
            try:
                vol, affine = pending_reads[n].result()
                result = reg.register(vol, fixed, **_options(args))
                moved, warp = result.moved, result.warp
                pending_writes.append((path, writer.submit(write, outs, moved, warp, affine)))
            except (ValueError, OSError) as err:
                failed.append(path)
                print(f'\nerror: {err}', file=sys.stderr)
            bar.update(n + 1)
        for path, fut in pending_writes:
            try:
                fut.result()
            except (ValueError, OSError) as err:
                failed.append(path)
                print(f'error: {err}', file=sys.stderr)
    seconds = time.perf_counter() - t0
    done = len(jobs) - len(failed)
    print(f'{done} registered, {skipped} already done, {len(failed)} failed of {total} scans '
          f'in {seconds:.1f} s ({60 * done / max(seconds, 1e-9):.1f} scans per minute)')
    return 1 if failed else 0


def main(argv=None):
    args = build_parser().parse_args(argv)
    setup_device(args.gpu, args.verbose)
    batch = args.moving_list is not None or (args.moving is not None and os.path.isdir(args.moving))

    if args.optimize < 0 or args.cascade < 1:
        fail(f'--optimize must be >= 0 and --cascade >= 1, got {args.optimize} and {args.cascade}')
    if args.optimize_lambda is not None and not args.optimize_lambda >= 0:
        fail(f'--optimize-lambda must be >= 0, got {args.optimize_lambda}')

    def body():
        return _batch(args) if batch else _single(args)

    return run(body)


if __name__ == '__main__':
    sys.exit(main())
