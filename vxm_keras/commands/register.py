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

Any 3-D scan that nibabel reads works (any orientation, voxel size and field
of view, skull-stripped like the training data): a scan that is not on the
model's grid (1 mm, 160x192x224 in MNI305, as ``python -m vxm_keras.prepare``
writes) is affinely aligned and resampled onto it (``--affine auto``), and
the outputs come back on the fixed scan's own grid in one interpolation:

    python register.py --moving t1.nii.gz --fixed other_t1.nii.gz --moved moved.nii.gz \\
        --warp warp.nii.gz --warp-format itk --save-affine affine.txt

Outputs take their format from the extension (.npz, .npy, .nii, .nii.gz,
.mgz). The warp is, by ``--warp-format``: ``voxel`` the network's
displacement ``(*spatial, ndim)`` on the model grid in voxel units, ``ij``
indexing; ``itk`` the whole transform (affine and deformation) as the
displacement field ANTs and ITK apply (5-D NIfTI, LPS mm, on the fixed
scan's grid: ``antsApplyTransforms -r fixed -i moving -t warp.nii.gz``);
``ras`` the same in RAS mm (4-D).
"""

import argparse
import os
import re
import sys
import time

import numpy as np

from .. import transforms
from ..cli import check_registration, device_options, execute, fail, overwrite_option, registration_options
from ..device import setup_device
from ..errors import UserError
from ..outputs import check_outputs, same_path
from ..shipped import DEFAULT_ATLAS as DEFAULT_FIXED, DEFAULT_MODEL


FIGURE_EXTENSIONS = ('.png', '.pdf', '.svg', '.jpg', '.jpeg')


def build_parser():
    p = argparse.ArgumentParser(prog='register.py', description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                parents=[registration_options(), overwrite_option(), device_options()])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument('--moving', help='moving scan (.npz/.npy/.nii/.nii.gz/.mgz), or a folder of scans')
    src.add_argument('--moving-list', dest='moving_list',
                     help="text file, one moving scan per line (relative paths are taken from the list's folder)")
    p.add_argument('--fixed', default=DEFAULT_FIXED, help='fixed scan (default data/atlas.npz)')
    p.add_argument('--model', default=DEFAULT_MODEL, help='trained model (default models/vm2_atlas.h5)')
    p.add_argument('--moved', default=None,
                   help='output: warped moving scan (default <moving name>_moved.<ext> in --out-dir, or in the '
                        'current folder)')
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
    p.add_argument('--uncertainty', default=None,
                   help='output: per-voxel standard deviation (mm) of the displacement, from the variance '
                        'a probabilistic model (vm2diff) predicts; shown in the --png figure too')
    p.add_argument('--uncertainty-samples', dest='uncertainty_samples', type=int, default=16,
                   help='velocities drawn for --uncertainty (default 16)')
    p.add_argument('--out-dir', dest='out_dir', default=None,
                   help='folder for <name>_moved.<ext> (and in batch mode <name>_warp.<ext>) outputs; created if '
                        'its parent exists')
    p.add_argument('--save-warp', dest='save_warp', action='store_true', help='batch mode: also write the warps')
    p.add_argument('--resume', action='store_true', help='batch mode: skip scans whose outputs exist')
    p.add_argument('--affine', choices=('auto', 'on', 'off'), default='auto',
                   help='affine alignment first: auto (default) for scans not on the model grid, on for every '
                        'scan, off never (scans must then be on the grid)')
    p.add_argument('--affine-dof', dest='affine_dof', type=int, choices=(6, 9, 12), default=12,
                   help='degrees of freedom of that alignment (default 12)')
    p.add_argument('--allow-poor-alignment', dest='allow_poor_alignment', action='store_true',
                   help='register even a scan whose alignment looks wrong (by default refused: a head with '
                        'its skull, another contrast)')
    p.add_argument('--moved-grid', dest='moved_grid', choices=('fixed', 'moving'), default='fixed',
                   help="grid of --moved, --moved-seg, --uncertainty: the fixed scan's (default), or the moving "
                        "scan's own voxel size and extent, carried into the fixed scan's space by the affine part")
    p.add_argument('--warp-format', dest='warp_format', choices=tuple(transforms.WARP_FORMATS), default='voxel',
                   help=transforms.help_text())
    p.add_argument('--save-affine', dest='save_affine', default=None,
                   help='output: the affine part alone as an ITK text transform (.txt), fixed to moving')
    p.add_argument('--xla', action='store_true',
                   help='compile the prediction with XLA (slower on CPUs, see bench/RESULTS.md; try it on GPUs)')
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
    import numpy as np

    from ..io import VolumeError, load_volfile, volume_extension
    key = 'seg' if volume_extension(path) == '.npz' else None
    seg = load_volfile(path, key=key, check_finite=True)
    if np.issubdtype(seg.dtype, np.floating) and np.any(seg != np.round(seg)):
        raise VolumeError(f'{path}: a label map must hold whole numbers (found fractional values)')
    if seg.size and (seg.min() < 0 or seg.max() >= 2 ** 24):
        raise VolumeError(f'{path}: labels in [{seg.min()}, {seg.max()}]; labels must lie in [0, 2**24)')
    return seg


def _registrar(args, fixed, fixed_affine):
    """The model and the fixed scan, ready for moving scans (:class:`vxm_keras.pipeline.Registrar`),
    checked against the command's options."""
    from ..device import start_tensorflow
    start_tensorflow()
    from ..native import Scan
    from ..pipeline import Registrar
    from ..registration import Registration
    engine = Registration(args.model, xla=args.xla)
    if getattr(args, 'uncertainty', None) and not hasattr(engine.model, 'variance_model'):
        raise UserError(f'{args.model}: this model predicts no variance; --uncertainty needs a probabilistic model '
                        '(train.py --model vm2diff, shipped as models/vm2diff.h5)')
    if args.inverse_warp and not engine.model.diffeomorphic:
        raise UserError(f'{args.model}: this model has no inverse; a diffeomorphic model '
                        '(train.py --model vm2diff) does')
    try:
        return Registrar(engine, Scan(fixed, fixed_affine, args.fixed), affine=args.affine, dof=args.affine_dof,
                         check=not args.allow_poor_alignment)
    except ValueError as err:
        text = str(err)
        hint = (' (--affine off)' if 'cannot align' in text
                else f' (the model {args.model} was trained on that grid)' if 'the model' in text else '')
        raise UserError(text + hint) from None


def _check_warp_format(args):
    for path in (args.warp, args.inverse_warp):
        problem = path and transforms.warp_format_problem(args.warp_format, path)
        if problem:
            fail(f'{path}: {problem}')
    if args.save_affine and not args.save_affine.lower().endswith('.txt'):
        fail(f'{args.save_affine}: --save-affine writes an ITK text transform (.txt)')


def _single(args, timings):
    """One moving scan: outputs checked, the pair read and checked, registered, products made,
    all outputs written together, times printed."""
    outputs = _single_outputs(args)
    t0 = time.perf_counter()
    pair = _read_pair(args)
    registrar = _registrar(args, pair.fixed, pair.fixed_affine)
    result = _register_one(args, registrar, pair.moving, pair.affine, args.moving)
    t_load = result.t_load - t0
    t_pred = time.perf_counter() - result.t_load
    t1 = time.perf_counter()
    products = _products(args, registrar.engine, result, pair)
    t_pred += time.perf_counter() - t1
    t2 = time.perf_counter()
    _write_single(args, registrar.engine, result, pair, products)
    t_write = time.perf_counter() - t2
    if result.moving.alignment is not None or result.fixed.alignment is not None:
        aligned = [p.alignment for p in (result.fixed, result.moving) if p.alignment is not None]
        print(f'affine alignment {sum(a.seconds for a in aligned):.2f} s ({len(aligned)} scan'
              f'{"s" if len(aligned) > 1 else ""}, {aligned[0].dof} dof)')
    timings.update(load=t_load, predict=t_pred, write=t_write)
    print(f'load {t_load:.2f} s, predict {t_pred:.2f} s, write {t_write:.2f} s')
    for out in outputs:
        print(f'wrote {out}')
    return 0


def _single_outputs(args):
    """Name the default ``--moved`` and check every output of one registration before any work;
    returns the output paths."""
    from ..io import EXTENSIONS
    if args.moved_seg and not args.moving_seg:
        fail('--moved-seg needs --moving-seg')
    if args.moved is None:
        stem, ext = _split_ext(args.moving)
        args.moved = os.path.join(args.out_dir or '', stem + '_moved' + ext)
        if args.out_dir:
            if os.path.exists(args.out_dir) and not os.path.isdir(args.out_dir):
                fail(f'{args.out_dir}: exists and is not a folder')
            parent = os.path.dirname(os.path.abspath(args.out_dir))
            if not os.path.isdir(parent):
                fail(f'{args.out_dir}: its folder {parent} does not exist')
            os.makedirs(args.out_dir, exist_ok=True)
    outputs = [o for o in (args.moved, args.warp, args.inverse_warp, args.moved_seg, args.save_affine,
                           args.uncertainty, args.png) if o]
    if args.uncertainty_samples < 2:
        fail(f'--uncertainty-samples must be >= 2, got {args.uncertainty_samples}')
    for flag in ('moved', 'warp', 'inverse_warp', 'moved_seg', 'uncertainty'):
        path = getattr(args, flag)
        if path is not None and not path.lower().endswith(EXTENSIONS):
            fail(f'{path!r}: --{flag.replace("_", "-")} writes a volume: give a file name ending in one of '
                 f'{", ".join(EXTENSIONS)}')
    check_outputs(outputs, _inputs(args), args.overwrite)
    if args.png and not args.png.lower().endswith(FIGURE_EXTENSIONS):
        fail(f'{args.png}: a figure needs one of the extensions {", ".join(FIGURE_EXTENSIONS)}')
    _check_warp_format(args)
    return outputs


def _read_pair(args):
    """The moving and fixed scans (with affines) and label maps, read side by side and checked
    against each other before the model loads, so a bad input fails without waiting for TensorFlow."""
    from concurrent.futures import ThreadPoolExecutor
    from types import SimpleNamespace

    from ..io import check_not_constant, load_volfile, volume_extension
    # zlib and file reads release the GIL
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
    if moving.ndim not in (2, 3):
        fail(f'{args.moving}: expected a 2-D or 3-D scan, got shape {moving.shape}')
    _refuse_2d_world_warps(args.moving, moving.ndim, args.warp or args.inverse_warp, args.warp_format)
    if moving.shape != fixed.shape and (args.affine == 'off' or moving.ndim != 3 or fixed.ndim != 3):
        fail(f'{args.moving}: shape {moving.shape} differs from the fixed scan {args.fixed} {fixed.shape}'
             + (' (--affine auto aligns 3-D scans of any grid)' if args.affine == 'off' else ''))
    if moving_seg is not None and moving_seg.shape != moving.shape:
        fail(f'{args.moving_seg}: shape {moving_seg.shape} differs from the moving scan {moving.shape}')
    if fixed_seg is not None and fixed_seg.shape != fixed.shape:
        fail(f'{args.fixed_seg}: shape {fixed_seg.shape} differs from the fixed scan {fixed.shape}')
    check_not_constant(moving, args.moving)
    check_not_constant(fixed, args.fixed)
    if args.png and fixed_seg is None and volume_extension(args.fixed) == '.npz':
        try:
            fixed_seg = load_volfile(args.fixed, key='seg')
        except ValueError:
            fixed_seg = None
    return SimpleNamespace(moving=moving, affine=affine, fixed=fixed, fixed_affine=fixed_affine,
                           moving_seg=moving_seg, fixed_seg=fixed_seg)


def _products(args, reg, result, pair):
    """What the outputs hold besides the warps: the moved image (on the grid ``--moved-grid``
    names), uncertainty and moved labels, and the chain they were sampled through."""
    from types import SimpleNamespace
    forward = result.forward
    # the chain the image outputs are sampled through: onto the fixed grid, or the moving scan's own
    chain = forward
    moved = result.moved
    if args.moved_grid == 'moving' and not forward.identity:
        from ..native import on_moving_grid
        chain = on_moving_grid(forward)
        moved = chain.resample()
    uncertainty = grid_uncertainty = None
    if args.uncertainty:
        grid_uncertainty = reg.uncertainty(result.moving.vol, result.fixed.vol, samples=args.uncertainty_samples)
        uncertainty = grid_uncertainty if forward.identity else chain.sample_on_target(grid_uncertainty)
    moved_seg = None
    if pair.moving_seg is not None:
        moved_seg = (reg.warp_labels(pair.moving_seg, result.grid.warp) if forward.identity
                     else chain.resample(pair.moving_seg, order=0))
    return SimpleNamespace(chain=chain, moved=moved, uncertainty=uncertainty, grid_uncertainty=grid_uncertainty,
                           moved_seg=moved_seg)


def _write_single(args, reg, result, pair, products):
    """Every output of one registration, written side by side under temporary names and renamed
    together: all outputs or none."""
    from concurrent.futures import ThreadPoolExecutor

    from ..io import atomic_paths, save_volfile
    forward = result.forward
    out_affine = _output_affine(products.chain, pair.affine, pair.fixed_affine)
    writers = [(args.moved, lambda tmp: save_volfile(tmp, products.moved, affine=out_affine, overwrite=True))]
    if args.moved_seg:
        writers.append((args.moved_seg,
                        lambda tmp: save_volfile(tmp, products.moved_seg, affine=out_affine, overwrite=True)))
    if args.uncertainty:
        writers.append((args.uncertainty,
                        lambda tmp: save_volfile(tmp, products.uncertainty, affine=out_affine, overwrite=True)))
    for path, chain, grid_field in ((args.warp, forward, result.grid.warp),
                                    (args.inverse_warp, result.inverse, result.grid.inverse)):
        if path:
            writers.append((path, _warp_writer(args.warp_format, chain, grid_field)))
    if args.save_affine:
        writers.append((args.save_affine,
                        lambda tmp: transforms.save_itk_affine(tmp, forward.world_affine, overwrite=True)))
    with atomic_paths([path for path, _ in writers] + ([args.png] if args.png else []),
                      overwrite=args.overwrite) as tmps, ThreadPoolExecutor(3) as pool:
        writes = [pool.submit(write, tmps[path]) for path, write in writers]
        if args.png:
            _figure(tmps[args.png], reg, result, pair.moving_seg, pair.fixed_seg, products.grid_uncertainty)
        for w in writes:
            w.result()


def _register_one(args, registrar, moving, affine, name):
    """Register one moving array (with its affine) to the fixed scan; prints the result's notes.
    Returns :class:`vxm_keras.native.NativeResult` with ``t_load`` (when the pair was ready)."""
    from ..native import AlignmentError, Scan
    t_load = time.perf_counter()
    try:
        result = registrar.register(Scan(moving, affine, name), inverse=bool(args.inverse_warp),
                                    **check_registration(args))
    except AlignmentError as err:
        raise UserError(f'{err}, or pass --allow-poor-alignment to register it anyway') from None
    except ValueError as err:
        raise UserError(str(err)) from None
    for note in result.notes:
        print(note, file=sys.stderr)
    result.t_load = t_load
    return result


def _output_affine(chain, moving_affine, fixed_affine):
    """The affine of image outputs sampled through ``chain``: its target grid's; on the model grid
    (scans unmoved) the moving scan's, as before scans of other grids were taken (both share it)."""
    if chain.identity:
        return moving_affine if moving_affine is not None else fixed_affine
    return chain.target.scan.affine


def _warp_writer(fmt, chain, grid_field):
    """A function writing one warp output (forward or inverse) in ``fmt`` to a path."""
    return lambda tmp: transforms.write_warp(fmt, tmp, chain, grid_field, overwrite=True)


def _figure(path, reg, result, moving_seg, fixed_seg, uncertainty=None):
    """Slices of moving, fixed and moved on the model grid, with label outlines when given (and the
    uncertainty map in colour)."""
    from ..native import sample
    from ..plot import slices_figure
    forward, shape = result.forward, tuple(reg.inshape)
    if forward.identity:
        segs = [moving_seg, fixed_seg, None if moving_seg is None else reg.warp_labels(moving_seg, result.grid.warp)]
    else:
        grid_moving_seg = None if moving_seg is None else sample(moving_seg, forward.post, shape, order=0)
        grid_fixed_seg = None if fixed_seg is None else sample(fixed_seg, np.linalg.inv(forward.pre), shape, order=0)
        segs = [grid_moving_seg, grid_fixed_seg,
                None if grid_moving_seg is None else reg.warp_labels(grid_moving_seg, result.grid.warp)]
    slices_figure(path, [result.moving.vol, result.fixed.vol, result.grid.moved], ['moving', 'fixed', 'moved'],
                  segs=segs, heat=None if uncertainty is None else (uncertainty, 'uncertainty (mm)'))


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


def _earlier_outputs(paths):
    """The ``<name>_moved`` / ``<name>_warp`` files among ``paths`` whose ``<name>`` scan is in
    the same folder among ``paths``: what an earlier batch run wrote beside its inputs."""
    named = []
    for p in paths:
        try:
            named.append((p, os.path.dirname(os.path.abspath(p)), _split_ext(p)[0]))
        except ValueError:  # not a volume name: the batch reports it
            pass
    scans = {(folder, stem) for _, folder, stem in named}
    return [p for p, folder, stem in named
            if (m := re.fullmatch(r'(.+)_(moved|warp)', stem)) and (folder, m.group(1)) in scans]


def _refuse_2d_world_warps(path, ndim, writes_warp, warp_format):
    """A 2-D scan cannot have a world-space warp: refused before any work."""
    problem = writes_warp and transforms.warp_format_problem(warp_format, None, ndim)
    if problem:
        fail(f'{path}: {problem}')


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
    from ..io import load_volfile
    jobs, skipped, failed = _batch_jobs(args)
    total = len(jobs) + skipped + len(failed)
    t0 = time.perf_counter()
    fixed, fixed_affine = load_volfile(args.fixed, ret_affine=True, check_finite=True)
    _refuse_2d_world_warps(args.fixed, fixed.ndim, args.save_warp, args.warp_format)
    registrar = _registrar(args, fixed, fixed_affine)
    failed += _register_jobs(args, registrar, jobs, fixed, fixed_affine)
    seconds = time.perf_counter() - t0
    done = total - skipped - len(failed)
    print(f'{done} registered, {skipped} already done, {len(failed)} failed of {total} scans '
          f'in {seconds:.1f} s ({60 * done / max(seconds, 1e-9):.1f} scans per minute)')
    return 1 if failed else 0


def _batch_jobs(args):
    """Plan a batch before any work: the scans to register with their outputs, checked (no two
    scans to one output, no output onto an input, existing outputs only with --resume or
    --overwrite). Returns ``(jobs, skipped, failed)``: ``[(scan, outputs)]``, the count skipped
    by --resume, and the entries that are not scans (reported)."""
    if args.out_dir is None:
        fail('batch mode (a folder or --moving-list) needs --out-dir')
    for opt in ('moved', 'warp', 'inverse_warp', 'moving_seg', 'moved_seg', 'png', 'save_affine', 'uncertainty'):
        if getattr(args, opt):
            fail(f'--{opt.replace("_", "-")} is for a single scan; batch mode writes into --out-dir')
    parent = os.path.dirname(os.path.abspath(args.out_dir))
    if not os.path.isdir(args.out_dir) and not os.path.isdir(parent):
        fail(f'{args.out_dir}: its folder {parent} does not exist')
    if os.path.exists(args.out_dir) and not os.path.isdir(args.out_dir):
        fail(f'{args.out_dir}: exists and is not a folder')

    inputs = _batch_inputs(args)
    ours = _earlier_outputs(inputs)
    if ours:
        print(f'note: {len(ours)} of the scans are outputs of an earlier run beside their scan '
              f'(e.g. {ours[0]}) and are not registered', file=sys.stderr)
    inputs = [p for p in inputs if p not in ours]
    jobs, skipped, claimed, failed = [], 0, {}, []
    for path in inputs:
        try:
            if os.path.isdir(path):
                raise ValueError(f'{path}: a folder, not a scan (a list names one scan per line)')
            stem, ext = _split_ext(path)
        except ValueError as err:  # counted: a batch with a bad entry does not end with exit 0
            failed.append(path)
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
    os.makedirs(args.out_dir, exist_ok=True)
    if not os.access(args.out_dir, os.W_OK):
        fail(f'{args.out_dir}: folder is not writable')
    _remove_partial_outputs(args.out_dir)
    return pending, skipped, failed


def _register_jobs(args, registrar, jobs, fixed, fixed_affine):
    """Register the planned scans, reading two ahead and writing behind on their own threads;
    a bad scan is reported and the batch goes on. Returns the scans that failed."""
    from concurrent.futures import ThreadPoolExecutor

    import keras

    from ..io import atomic_path, check_not_constant, load_volfile, save_volfile

    def read(path):
        vol, affine = load_volfile(path, ret_affine=True, check_finite=True)
        if vol.ndim != fixed.ndim or (vol.shape != fixed.shape and (args.affine == 'off' or vol.ndim != 3)):
            raise ValueError(f'{path}: shape {vol.shape} differs from the fixed scan {args.fixed} {fixed.shape}')
        check_not_constant(vol, path)
        return vol, affine

    def write(outs, result, affine):
        forward = result.forward
        save_volfile(outs[0], result.moved, affine=_output_affine(forward, affine, fixed_affine), overwrite=True)
        if len(outs) > 1:
            with atomic_path(outs[1]) as tmp:
                _warp_writer(args.warp_format, forward, result.grid.warp)(tmp)

    failed = []
    bar = keras.utils.Progbar(len(jobs), unit_name='scan')
    with ThreadPoolExecutor(1) as reader, ThreadPoolExecutor(1) as writer:
        pending_reads = [reader.submit(read, path) for path, _ in jobs[:2]]
        pending_writes = []
        for n, (path, outs) in enumerate(jobs):
            if n + 2 < len(jobs):
                pending_reads.append(reader.submit(read, jobs[n + 2][0]))
            try:
                vol, affine = pending_reads[n].result()
                result = _register_one(args, registrar, vol, affine, path)
                pending_writes.append((path, writer.submit(write, outs, result, affine)))
            except (ValueError, OSError) as err:  # UserError included: one bad scan does not stop the batch
                failed.append(path)
                print(f'\nerror: {err}', file=sys.stderr)
            bar.update(n + 1)
        for path, fut in pending_writes:
            try:
                fut.result()
            except (ValueError, OSError) as err:
                failed.append(path)
                print(f'error: {err}', file=sys.stderr)
    return failed


def main(argv=None):
    return execute(run, build_parser().parse_args(argv))


def run(args, timings=None):
    """Register as the command line says (``args`` from :func:`build_parser`); returns the exit
    code (batch mode: 1 if any scan failed). ``timings``: a dict that single-scan mode fills with
    the seconds of ``load`` (reading, model, alignment), ``predict`` (registration, label warp)
    and ``write`` (the benchmark reads them)."""
    setup_device(args.gpu, args.verbose, compile_cache=True)
    check_registration(args)
    batch = args.moving_list is not None or (args.moving is not None and os.path.isdir(args.moving))
    return _batch(args) if batch else _single(args, {} if timings is None else timings)


if __name__ == '__main__':
    sys.exit(main())
