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
import sys
import time

from ..cli import check_output, fail, run, setup_device

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_FIXED = os.path.join(REPO, 'data', 'atlas.npz')
DEFAULT_MODEL = os.path.join(REPO, 'models', 'vm2_atlas.h5')


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
    p.add_argument('--xla', action='store_true',
                   help='compile the prediction with XLA (slower on CPUs, see bench/RESULTS.md; try it on GPUs)')
    p.add_argument('--gpu', default=None, help="GPU id ('-1' or absent: CPU)")
    return p


def _split_ext(path):
    from ..io import volume_extension
    ext = volume_extension(path)
    return os.path.basename(path)[:-len(ext)], ext


def _load_seg(path):
    from ..io import load_volfile, volume_extension
    key = 'seg' if volume_extension(path) == '.npz' else None
    return load_volfile(path, key=key)


class Registrar:
    """A loaded model and fixed scan; registers moving arrays of the model's shape."""

    def __init__(self, model_path, fixed_path, fixed=None, fixed_affine=None, xla=False):
        import numpy as np

        from .. import networks
        from ..io import load_volfile
        if fixed is None:
            fixed, fixed_affine = load_volfile(fixed_path, ret_affine=True, check_finite=True)
        self.fixed, self.fixed_affine = fixed, fixed_affine
        self.fixed_path = fixed_path
        model = networks.load_model(model_path)
        self.inshape = tuple(model.inputs[0].shape[1:-1])
        self._check_model_shape(fixed_path, self.fixed)
        self.model = model
        self.net = model.warp_model() if hasattr(model, 'warp_model') else model
        if xla:  # predict_on_batch follows the compiled jit_compile setting
            self.net.compile(jit_compile=True)
        self.nn = networks.nn_transformer(self.inshape)
        self._fixed_batch = self.fixed[None, ..., None].astype(np.float32)

    def _check_model_shape(self, path, vol):
        if vol.ndim != len(self.inshape):
            raise _InputError(f'{path}: a {vol.ndim}-D scan, but the model registers '
                              f'{len(self.inshape)}-D volumes {self.inshape}')
        if vol.shape != self.inshape:
            raise _InputError(f'{path}: shape {vol.shape}, but the model takes {self.inshape}')

    def check(self, path, vol):
        """Raise ``_InputError`` unless ``vol`` (from ``path``) fits the model and the fixed scan."""
        if vol.ndim != len(self.inshape):
            self._check_model_shape(path, vol)
        if vol.shape != self.fixed.shape:
            raise _InputError(f'{path}: shape {vol.shape} differs from the fixed scan {self.fixed_path} '
                              f'{self.fixed.shape}')

    def register(self, moving):
        """``moving`` ``(*inshape)`` -> ``(moved (*inshape), warp (*inshape, ndim))``."""
        import numpy as np
        moved, warp = self.net.predict_on_batch([moving[None, ..., None].astype(np.float32), self._fixed_batch])
        return np.asarray(moved)[0, ..., 0], np.asarray(warp)[0]

    def inverse(self, moving, model_path):
        """The inverse displacement ``(*inshape, ndim)`` of the registration of ``moving``."""
        import numpy as np

        from ..networks import VxmDenseProb
        if not isinstance(self.model, VxmDenseProb):
            raise _InputError(f'{model_path}: this model has no inverse; a diffeomorphic model '
                              '(train.py --model vm2diff) does')
        net = self.model.warp_model(inverse=True)
        out = net.predict_on_batch([moving[None, ..., None].astype(np.float32), self._fixed_batch])
        return np.asarray(out[2])[0]

    def warp_labels(self, seg, warp):
        import numpy as np
        out = self.nn.predict_on_batch([seg[None, ..., None].astype(np.float32), warp[None]])
        return np.rint(np.asarray(out)[0, ..., 0]).astype(np.int32)


class _InputError(ValueError):
    pass


def _warn_range(name, vol):
    if vol.max() > 1.5 or vol.min() < -0.5:
        print(f'warning: {name} has intensities in [{vol.min():.3g}, {vol.max():.3g}]; '
              'models expect [0, 1] (python -m vxm_keras.prepare)', file=sys.stderr)


def _single(args):
    from concurrent.futures import ThreadPoolExecutor

    from ..io import load_volfile, save_volfile, volume_extension

    if args.moved_seg and not args.moving_seg:
        fail('--moved-seg needs --moving-seg')
    if args.moved is None:
        stem, ext = _split_ext(args.moving)
        args.moved = stem + '_moved' + ext
    outputs = [o for o in (args.moved, args.warp, args.inverse_warp, args.moved_seg, args.png) if o]
    for out in outputs:
        check_output(out, args.overwrite)
    if len({os.path.abspath(o) for o in outputs}) != len(outputs):
        fail('two outputs have the same path')

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
    if args.png and fixed_seg is None and volume_extension(args.fixed) == '.npz':
        try:
            fixed_seg = load_volfile(args.fixed, key='seg')
        except ValueError:
            fixed_seg = None
    _warn_range(args.moving, moving)
    _warn_range(args.fixed, fixed)
    reg = Registrar(args.model, args.fixed, fixed, fixed_affine, xla=args.xla)
    reg.check(args.moving, moving)
    t_load = time.perf_counter() - t0

    t1 = time.perf_counter()
    moved, warp = reg.register(moving)
    moved_seg = reg.warp_labels(moving_seg, warp) if moving_seg is not None else None
    inverse = reg.inverse(moving, args.model) if args.inverse_warp else None
    t_pred = time.perf_counter() - t1

    t2 = time.perf_counter()
    out_affine = affine if affine is not None else reg.fixed_affine
    arrays = [(args.moved, moved), (args.warp, warp), (args.inverse_warp, inverse), (args.moved_seg, moved_seg)]
    # outputs are compressed and written side by side; each is atomic on its own
    with ThreadPoolExecutor(3) as pool:
        writes = [pool.submit(save_volfile, path, array, affine=out_affine, overwrite=args.overwrite)
                  for path, array in arrays if path]
        if args.png:
            from ..plot import save_figure_atomic, slices_figure
            save_figure_atomic(args.png, slices_figure, [moving, fixed, moved], ['moving', 'fixed', 'moved'],
                               segs=[moving_seg, fixed_seg, moved_seg], overwrite=args.overwrite)
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


def _batch(args):
    """Register many scans: a reader thread loads ahead, a writer thread saves behind."""
    from concurrent.futures import ThreadPoolExecutor

    import keras

    from ..io import load_volfile, save_volfile

    if args.out_dir is None:
        fail('batch mode (a folder or --moving-list) needs --out-dir')
    for opt in ('moved', 'warp', 'inverse_warp', 'moving_seg', 'moved_seg', 'png'):
        if getattr(args, opt):
            fail(f'--{opt.replace("_", "-")} is for a single scan; batch mode writes into --out-dir')
    os.makedirs(args.out_dir, exist_ok=True)
    if not os.access(args.out_dir, os.W_OK):
        fail(f'{args.out_dir}: folder is not writable')

    jobs, skipped = [], 0
    for path in _batch_inputs(args):
        try:
            stem, ext = _split_ext(path)
        except ValueError as err:
            print(f'error: {err}', file=sys.stderr)
            continue
        outs = [os.path.join(args.out_dir, f'{stem}_moved{ext}')]
        if args.save_warp:
            outs.append(os.path.join(args.out_dir, f'{stem}_warp{ext}'))
        if all(os.path.exists(o) for o in outs) and args.resume:
            skipped += 1
            continue
        if any(os.path.exists(o) for o in outs) and not (args.overwrite or args.resume):
            fail(f'{next(o for o in outs if os.path.exists(o))}: exists (use --resume to skip finished '
                 'scans or --overwrite to replace them)')
        jobs.append((path, outs))
    total = len(jobs) + skipped
    failed = []
    t0 = time.perf_counter()
    reg = Registrar(args.model, args.fixed, xla=args.xla)

    def read(path):
        vol, affine = load_volfile(path, ret_affine=True, check_finite=True)
        reg.check(path, vol)
        return vol, affine

    def write(outs, moved, warp, affine):
        affine = affine if affine is not None else reg.fixed_affine
        save_volfile(outs[0], moved, affine=affine, overwrite=True)
        if len(outs) > 1:
            save_volfile(outs[1], warp, affine=affine, overwrite=True)

    bar = keras.utils.Progbar(len(jobs), unit_name='scan')
    with ThreadPoolExecutor(1) as reader, ThreadPoolExecutor(1) as writer:
        pending_reads = [reader.submit(read, path) for path, _ in jobs[:2]]
        pending_writes = []
        for n, (path, outs) in enumerate(jobs):
            if n + 2 < len(jobs):
                pending_reads.append(reader.submit(read, jobs[n + 2][0]))
            try:
                vol, affine = pending_reads[n].result()
                moved, warp = reg.register(vol)
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
    setup_device(args.gpu)
    batch = args.moving_list is not None or (args.moving is not None and os.path.isdir(args.moving))

    def body():
        try:
            return _batch(args) if batch else _single(args)
        except _InputError as err:
            fail(str(err))

    return run(body)


if __name__ == '__main__':
    sys.exit(main())
