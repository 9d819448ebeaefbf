"""The benchmark's orchestration: fixtures, the measurements (each in its own process, see
:mod:`.workers`), the results as a dict and JSON, and the report (:mod:`.report`).

    python -m vxm_keras.bench                       # 80x96x112 and 160x192x224, writes bench/RESULTS.md
    python -m vxm_keras.bench --sizes 80x96x112 --repeats 3
    python -m vxm_keras.bench --quick               # tiny shapes: a smoke test of this script
"""

import argparse
import json
import os
import shlex
import sys
import tempfile

from .report import machine_description, render
from ..shipped import REPO, shipped_file
from .workers import _model, run_worker

SHARED_FREESURFER = os.path.join(os.path.dirname(REPO), 'shared', 'data', 'freesurfer')
SHORT_BATCH = 2  # scans in the short batch run that the long one is compared with


def _shipped_scans(shape):
    """The shipped example scan, atlas and atlas labels, resampled to ``shape``.

    Real brains rather than noise, so reading and writing cost what they cost on
    scans (noise does not compress: it takes 10x longer to write).
    """
    import numpy as np
    from scipy import ndimage

    from vxm_keras.io import load_volfile
    moving = load_volfile(shipped_file('data/example_moving.npz')).astype(np.float32)
    fixed = load_volfile(shipped_file('data/atlas.npz')).astype(np.float32)
    seg = load_volfile(shipped_file('data/atlas.npz'), key='seg').astype(np.int32)
    if moving.shape != tuple(shape):
        factors = [n / m for n, m in zip(shape, moving.shape)]
        moving, fixed = (ndimage.zoom(v, factors, order=1, grid_mode=True, mode='nearest') for v in (moving, fixed))
        seg = ndimage.zoom(seg, factors, order=0, grid_mode=True, mode='nearest')
    return moving, fixed, seg


def _registration_rows(tmp, shape, models, repeats, batch_scans, xla=True):
    """Forward, training step and register.py end to end for each model at one size."""
    import vxm_keras
    from vxm_keras.io import save_volfile
    tag = 'x'.join(map(str, shape))
    moving_vol, fixed_vol, seg = _shipped_scans(shape)
    moving, fixed = os.path.join(tmp, f'm{tag}.npz'), os.path.join(tmp, f'f{tag}.npz')
    save_volfile(moving, moving_vol, extra={'seg': seg})
    save_volfile(fixed, fixed_vol)
    # a short and a long list: the difference of their wall times is the cost of one more scan
    # once start-up, imports and model loading are paid
    batch_dir, short_dir = os.path.join(tmp, f'batch{tag}'), os.path.join(tmp, f'short{tag}')
    os.makedirs(batch_dir)
    os.makedirs(short_dir)
    for i in range(batch_scans):
        vol = (moving_vol, fixed_vol)[i % 2]
        save_volfile(os.path.join(batch_dir, f's{i}.npz'), vol)
        if i < SHORT_BATCH:
            save_volfile(os.path.join(short_dir, f's{i}.npz'), vol)
    blocks = {'tag': tag, 'ncc': run_worker('ncc', {'shape': shape, 'repeats': repeats}),
              'warp': run_worker('warp', {'shape': shape, 'repeats': repeats})}
    rows = []
    for name in models:
        model_file = os.path.join(tmp, f'{name}{tag}.h5')
        vxm_keras.save_model(_model(name, shape), model_file, overwrite=True)
        train_repeats = max(1, repeats - 1)
        row = {'tag': tag, 'model': name,
               'forward': run_worker('forward', {'model': name, 'shape': shape, 'repeats': repeats, 'xla': xla}),
               'train': run_worker('train', {'model': name, 'shape': shape, 'repeats': train_repeats}),
               'train_xla': run_worker('train', {'model': name, 'shape': shape, 'repeats': train_repeats,
                                                  'jit': True}) if xla else {}}
        reg_params = {'moving': moving, 'fixed': fixed, 'model_file': model_file,
                      'moved': os.path.join(tmp, 'moved.npz'), 'moved_seg': os.path.join(tmp, 'ms.npz')}
        row['register'] = [run_worker('register', reg_params) for _ in range(repeats)]
        row['batch'] = run_worker('register', dict(reg_params, batch_dir=batch_dir,
                                                    out_dir=os.path.join(tmp, f'out{tag}{name}')))
        row['batch_short'] = (run_worker('register', dict(reg_params, batch_dir=short_dir,
                                                           out_dir=os.path.join(tmp, f'short{tag}{name}')))
                              if batch_scans > SHORT_BATCH else {})
        rows.append(row)
    return rows, blocks


def _prepared_pair(tmp, pair):
    """A real (moving, fixed) pair of prepared .npz scans: the given paths, or sub-07 and
    sub-08 of ``../shared/data/freesurfer`` prepared on the fly; None when there is none."""
    if pair:
        return pair
    subjects = [os.path.join(SHARED_FREESURFER, s) for s in ('sub-07', 'sub-08')]
    if not all(os.path.isdir(s) for s in subjects):
        return None
    from vxm_keras.prepare import prepare_freesurfer_subject, write_prepared
    out = []
    for s in subjects:
        path = os.path.join(tmp, os.path.basename(s) + '.npz')
        write_prepared(prepare_freesurfer_subject(s), path)
        out.append(path)
    return out


def _unet_downsize(model_file):
    """The ``unet_downsize`` a saved model was built with (1 when the file does not say)."""
    import h5py
    with h5py.File(model_file, 'r') as f:
        config = f.attrs.get('model_config')
    if config is None:
        return 1
    config = json.loads(config.decode() if isinstance(config, bytes) else config)
    return int(config.get('config', {}).get('unet_downsize', 1))


def _peer_rows(tmp, pair, model_file, repeats):
    """VM-2 (register.py end to end) and ANTs SyN on the same real pair: seconds and Dice."""
    import importlib.util

    import numpy as np

    from vxm_keras.io import load_volfile
    from vxm_keras.metrics import PAPER_LABELS, dice
    moving, fixed = pair
    moving_seg, fixed_seg = load_volfile(moving, key='seg'), load_volfile(fixed, key='seg')
    labels = [lab for lab in PAPER_LABELS if np.any(moving_seg == lab) and np.any(fixed_seg == lab)]

    def mean_dice(seg):
        return float(np.nanmean(dice(seg, fixed_seg, labels)[1]))

    rows = [{'method': 'affine only (prepared scans)', 'seconds': None, 'dice': mean_dice(moving_seg)}]
    moved_seg = os.path.join(tmp, 'peer_vxm_seg.npz')
    regs = [run_worker('register', {'moving': moving, 'fixed': fixed, 'model_file': model_file,
                                     'moved': os.path.join(tmp, 'peer_vxm.npz'), 'moved_seg': moved_seg})
            for _ in range(repeats)]
    walls = [r['wall'] for r in regs if 'wall' in r]
    downsize = _unet_downsize(model_file)
    where = 'U-Net at full resolution' if downsize == 1 else f'U-Net at 1/{downsize} resolution'
    rows.append({'method': f'VM-2 {os.path.basename(model_file)} ({where}), register.py end to end',
                 'seconds': min(walls) if walls else None,
                 'dice': mean_dice(load_volfile(moved_seg)) if walls else None,
                 'error': None if walls else regs[0].get('error')})
    if importlib.util.find_spec('ants') is None:
        rows.append({'method': 'ANTs SyN (antspyx)', 'seconds': None, 'dice': None,
                     'error': "antspyx is not installed: pip install -e '.[peers]'"})
        return rows, len(labels)
    ants_seg = os.path.join(tmp, 'peer_ants_seg.npy')
    res = run_worker('ants', {'moving': moving, 'fixed': fixed, 'moved_seg': ants_seg})
    rows.append({'method': "ANTs SyN (antspyx, type_of_transform='SyN', default settings)",
                 'seconds': res.get('seconds'), 'maxrss_mib': res.get('maxrss_mib'),
                 'dice': mean_dice(np.load(ants_seg)) if 'seconds' in res else None, 'error': res.get('error')})
    return rows, len(labels)


def collect(sizes, models, repeats, batch_scans, peers=False, pair=None,
            peer_model=shipped_file('models/vm2_scan2scan.h5'), note=None, xla=True, command=None):
    """Run every measurement; returns the results dict that :func:`.report.render` takes (plain
    JSON types: lists and dicts of numbers and strings)."""
    rows, blocks, peer = [], [], None
    with tempfile.TemporaryDirectory() as tmp:
        for shape in sizes:
            r, b = _registration_rows(tmp, shape, models, repeats, batch_scans, xla=xla)
            rows += r
            blocks.append(b)
        if peers:
            real = _prepared_pair(tmp, pair)
            if real:
                peer_rows, n_labels = _peer_rows(tmp, real, peer_model, repeats)
                peer = {'rows': peer_rows, 'n_labels': n_labels}
    return {'machine': machine_description(), 'command': command or shlex.join(['python', '-m', 'vxm_keras.bench']),
            'note': note, 'repeats': repeats, 'batch_scans': batch_scans, 'short_batch': SHORT_BATCH,
            'rows': rows, 'blocks': blocks, 'peers': peers, 'peer': peer, 'pair': pair,
            'shared_freesurfer': SHARED_FREESURFER}


def write_text(path, text):
    """Write ``text`` to ``path`` atomically (its folder made if missing)."""
    from vxm_keras.io import atomic_path
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, 'w') as f:
        f.write(text)


def _size(text):
    """argparse type of a shape like ``160x192x224`` (2 or 3 positive sizes)."""
    parts = text.lower().split('x')
    if len(parts) not in (2, 3) or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f'expected a shape like 160x192x224, got {text!r}')
    return tuple(int(p) for p in parts)


def _positive(text):
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f'expected a whole number >= 1, got {text!r}')
    return int(text)


def build_parser():
    parser = argparse.ArgumentParser(prog='python -m vxm_keras.bench', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--sizes', nargs='+', type=_size, default=[(80, 96, 112), (160, 192, 224)],
                        help='volume shapes, e.g. 80x96x112 (default 80x96x112 160x192x224)')
    parser.add_argument('--models', nargs='+', default=['vm1', 'vm2'], choices=['vm1', 'vm2'])
    parser.add_argument('--repeats', type=_positive, default=3)
    parser.add_argument('--batch-scans', type=_positive, default=10,
                        help=f'scans in the batch-throughput run (more than {SHORT_BATCH} for the added-scan cost)')
    parser.add_argument('--out', default=os.path.join(REPO, 'bench', 'RESULTS.md'),
                        help='the Markdown report; the results also go to the same name with .json')
    parser.add_argument('--quick', action='store_true', help='tiny shapes, 1 repeat: checks the script runs')
    parser.add_argument('--peers', action='store_true',
                        help="also ANTs SyN (pip install -e '.[peers]') and VM-2 on a real pair")
    parser.add_argument('--pair', nargs=2, metavar=('MOVING', 'FIXED'), default=None,
                        help='prepared .npz scans (vol, seg) for --peers (default: sub-07 to sub-08 of '
                             '../shared/data/freesurfer, prepared on the fly)')
    parser.add_argument('--peer-model', dest='peer_model', default=shipped_file('models/vm2_scan2scan.h5'),
                        help='the VM-2 model run on that pair (default models/vm2_scan2scan.h5)')
    parser.add_argument('--no-xla', dest='xla', action='store_false',
                        help='skip the XLA runs (on CPUs they take most of the benchmark time)')
    parser.add_argument('--note', default=None, help='a line for the report, e.g. what else ran on the machine')
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.quick:
        sizes, repeats, models = [(32, 32, 32)], 1, ['vm1']
    else:
        sizes = args.sizes
        repeats, models = args.repeats, args.models
    command = shlex.join(['python', '-m', 'vxm_keras.bench', *(sys.argv[1:] if argv is None else argv)])
    results = collect(sizes, models, repeats, args.batch_scans, peers=args.peers, pair=args.pair,
                      peer_model=args.peer_model, note=args.note, xla=args.xla, command=command)
    text = render(results)
    print(text)
    if args.out:
        write_text(os.path.splitext(args.out)[0] + '.json', json.dumps(results, indent=1) + '\n')
        write_text(args.out, text)
    return 0
