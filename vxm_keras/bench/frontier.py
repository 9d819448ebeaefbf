"""The registration frontier: Dice against seconds for trained models with and without test-time
refinement, beside ANTs SyN, on the same pairs in one process.

    python -m vxm_keras.bench.frontier                         # the validation subjects, 3 sets
    python -m vxm_keras.bench.frontier --sets pairs --methods models/vm2_scan2scan.h5:0,25 --no-peers

Pairs are those of ``test.py --atlas none --invert-contrast --synthetic N``
(:func:`vxm_keras.evaluation.scan_pairs`): every ordered pair of the test scans, the same with
the moving contrast inverted, and each scan warped by known random deformations. A method is
``MODEL:STEPS,...``: the model alone (``0``) or refined for that many half-resolution Adam steps
with the engine's default quarter- and full-resolution steps around them, as ``register.py``
(``20``), or with the counts given: ``25c0`` without quarter-resolution steps, ``25f0`` without
full-resolution ones, ``20c50f10``.

Seconds are per pair, model loaded and its steps traced (one untimed registration of the first
pair per method first): network, refinement and the label warp; SyN's registration and its label
warp. Writes the Markdown table, the results as JSON beside it and a PNG of Dice against seconds.
"""

import argparse
import json
import os
import re
import shlex
import sys
import time

from ..errors import UserError
from ..shipped import REPO, shipped_file

DEFAULT_METHODS = (shipped_file('models/vm2_scan2scan.h5') + ':0,25f0,20,100',
                   shipped_file('models/vm2diff.h5') + ':0,50')
SET_TITLES = {'pairs': 'real pairs', 'inverted': 'moving contrast inverted', 'synthetic': 'known deformations'}


def parse_method(spec):
    """``'MODEL:0,20,25f0,20c50f10'`` -> ``(MODEL, [(0, None, None), (20, None, None), (25, None, 0),
    (20, 50, 10)])``: half-, quarter- and full-resolution steps (``None``: the engine's default)."""
    model, _, steps = spec.rpartition(':')
    parts = [re.fullmatch(r'(\d+)(?:c(\d+))?(?:f(\d+))?', part) for part in steps.split(',')]
    if not model or not all(parts):
        raise UserError(f'--methods {spec}: expected MODEL:STEPS[,STEPS...] with STEPS like 20, 25c0, 25f0 '
                        'or 20c50f10')
    return model, [tuple(None if n is None else int(n) for n in part.groups()) for part in parts]


def method_name(model, optimize, coarse=None, fine=None):
    """The table's name of one configuration, e.g. ``vm2_scan2scan +20 steps (0 fine)``; a
    training checkpoint (``runs/vm1/0006.h5``) is named with its folder (``vm1/0006``)."""
    base = os.path.splitext(os.path.basename(model))[0]
    if base.isdigit():
        base = f'{os.path.basename(os.path.dirname(os.path.abspath(model)))}/{base}'
    if not optimize:
        return f'{base}, network alone'
    counts = [f'{n} {what}' for n, what in [(coarse, 'coarse'), (fine, 'fine')] if n is not None]
    return f'{base} +{optimize} steps' + (f' ({", ".join(counts)})' if counts else '')


def collect(scans, methods, sets=('pairs', 'inverted', 'synthetic'), synthetic=2, peers=True, log=print):
    """Register every pair with every configuration (and SyN); returns the results as plain JSON
    types: ``{'pairs': [{'name', 'set', 'affine'}], 'methods': [{'name', 'model', 'optimize',
    'coarse', 'fine', 'pairs': [{'name', 'dice', 'folding', 'seconds'}]}], ...}``, Dice the mean over
    the papers' structures present in both scans of a pair, folding the fraction of voxels with
    Jacobian determinant <= 0.

    ``scans``: ``[(name, vol, seg)]`` (:func:`vxm_keras.evaluation.load_scans`); ``methods``:
    ``[(model_path, [(optimize, coarse, fine), ...])]`` (:func:`parse_method`).
    """
    import numpy as np

    from ..evaluation import ants_syn, scan_pairs
    from ..metrics import PAPER_LABELS, dice, folding_fraction
    from ..registration import Registration

    pairs = [p for p in scan_pairs(scans, 'inverted' in sets, synthetic if 'synthetic' in sets else 0)
             if p[1] in sets]
    if not pairs:
        raise UserError('no pairs to register: give at least 2 scans, or --sets synthetic')
    labels = [[lab for lab in PAPER_LABELS if np.any(sa == lab) and np.any(sb == lab)]
              for _, _, (_, sa), (_, sb) in pairs]

    def dice_of(seg, k):
        return float(np.nanmean(dice(seg, pairs[k][3][1], labels[k])[1]))

    out = {'pairs': [{'name': name, 'set': kind, 'affine': dice_of(sa, k)}
                     for k, (name, kind, (_, sa), _) in enumerate(pairs)], 'methods': []}
    for model, configs in methods:
        try:
            reg = Registration(model)
        except (ValueError, OSError) as err:
            raise UserError(f'{model}: {err}') from None
        try:
            for name, vol, _ in scans:
                reg.check(vol, name)
        except ValueError as err:
            raise UserError(f'{err} ({model})') from None
        for optimize, coarse, fine in configs:
            options = dict(optimize=optimize, coarse=coarse, fine=fine)
            _, _, (va, _), (vb, _) = pairs[0]
            reg.register(va, vb, **options)  # traces this configuration's steps: not timed
            entry = {'name': method_name(model, optimize, coarse, fine), 'model': model, 'optimize': optimize,
                     'coarse': coarse, 'fine': fine, 'pairs': []}
            for k, (name, _, (va, sa), (vb, _)) in enumerate(pairs):
                t = time.perf_counter()
                result = reg.register(va, vb, **options)
                moved_seg = reg.warp_labels(sa, result.warp)
                seconds = time.perf_counter() - t
                entry['pairs'].append({'name': name, 'dice': dice_of(moved_seg, k),
                                       'folding': float(folding_fraction(result.warp)), 'seconds': seconds})
                log(f'{entry["name"]}: {name} Dice {entry["pairs"][-1]["dice"]:.3f}, {seconds:.1f} s')
            out['methods'].append(entry)
    if peers:
        entry = {'name': 'ANTs SyN (antspyx defaults)', 'model': None, 'optimize': None, 'coarse': None,
                 'fine': None, 'pairs': []}
        for k, (name, _, (va, sa), (vb, _)) in enumerate(pairs):
            moved_seg, seconds = ants_syn(va, vb, sa)
            entry['pairs'].append({'name': name, 'dice': dice_of(moved_seg, k), 'folding': None, 'seconds': seconds})
            log(f'{entry["name"]}: {name} Dice {entry["pairs"][-1]["dice"]:.3f}, {seconds:.1f} s')
        out['methods'].append(entry)
    return out


def summary(results):
    """Per method (and ``'affine only'``): ``{set: (mean, std) of Dice over its pairs}``, the
    mean folding in % (None for SyN and affine) and the median seconds a pair."""
    import numpy as np
    sets = [s for s in SET_TITLES if any(p['set'] == s for p in results['pairs'])]
    kinds = {p['name']: p['set'] for p in results['pairs']}

    def by_set(values):
        return {s: (float(np.mean(v)), float(np.std(v))) for s in sets
                for v in [[d for name, d in values if kinds[name] == s]]}

    rows = [{'name': 'affine only', 'dice': by_set([(p['name'], p['affine']) for p in results['pairs']]),
             'folding': None, 'seconds': None}]
    for m in results['methods']:
        folds = [p['folding'] for p in m['pairs'] if p['folding'] is not None]
        rows.append({'name': m['name'], 'dice': by_set([(p['name'], p['dice']) for p in m['pairs']]),
                     'folding': 100 * float(np.mean(folds)) if folds else None,
                     'seconds': float(np.median([p['seconds'] for p in m['pairs']]))})
    return sets, rows


def render(results):
    """The Markdown report of ``results`` (:func:`collect`'s dict plus ``machine`` and ``command``)."""
    sets, rows = summary(results)
    counts = {s: sum(p['set'] == s for p in results['pairs']) for s in sets}
    lines = ['# Registration frontier: Dice against seconds', '', f'Machine: {results["machine"]}', '',
             f'Command: `{results["command"]}`', '',
             'Dice: mean over the 30 structures of the papers present in both scans, then mean (std) over the '
             'pairs of each set. Seconds: median over the pairs, model loaded and traced; network, refinement '
             'and label warp (SyN: its registration and label warp). Folding: voxels with Jacobian '
             'determinant <= 0.', '',
             '| method | ' + ' | '.join(f'{SET_TITLES[s]} ({counts[s]})' for s in sets)
             + ' | folding | seconds a pair |',
             '|---|' + '---|' * (len(sets) + 2)]
    for r in rows:
        cells = [f'{r["dice"][s][0]:.3f} ({r["dice"][s][1]:.3f})' for s in sets]
        folding = '' if r['folding'] is None else f'{r["folding"]:.3f} %'
        seconds = '' if r['seconds'] is None else f'{r["seconds"]:.1f}'
        lines.append(f'| {r["name"]} | ' + ' | '.join(cells) + f' | {folding} | {seconds} |')
    return '\n'.join(lines) + '\n'


def figure(path, results):
    """Dice against seconds a pair (log scale), one panel per set; affine as a dotted line."""
    from ..plot import frontier_figure
    sets, rows = summary(results)
    def short(name):
        return re.sub(r'\s*\(antspyx defaults\)|, network alone', '', name).replace('vm2_scan2scan', 'VM-2')

    frontier_figure(path, [(short(r['name']), r['seconds'], {s: r['dice'][s][0] for s in sets},
                            r['name'].startswith('ANTs')) for r in rows[1:]],
                    {s: rows[0]['dice'][s][0] for s in sets}, {s: SET_TITLES[s] for s in sets})


def build_parser():
    from ..cli import device_options, overwrite_option
    p = argparse.ArgumentParser(prog='python -m vxm_keras.bench.frontier', description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                parents=[overwrite_option(), device_options()])
    p.add_argument('--test-list', default=os.path.join(REPO, 'models', 'splits', 'val.txt'),
                   help='prepared .npz scans (vol, seg) or FreeSurfer subject folders, one per line '
                        '(default models/splits/val.txt: sub-07, sub-08)')
    p.add_argument('--methods', nargs='+', default=list(DEFAULT_METHODS), metavar='MODEL:STEPS',
                   help='models and refinement steps, e.g. models/vm2diff.h5:0,50 (default: vm2_scan2scan '
                        '0, 25, 100 and vm2diff 0, 50)')
    p.add_argument('--sets', nargs='+', default=['pairs', 'inverted', 'synthetic'], choices=list(SET_TITLES))
    p.add_argument('--synthetic', type=int, default=2, help='known deformations per scan (default 2)')
    p.add_argument('--no-peers', dest='peers', action='store_false', help='skip ANTs SyN')
    p.add_argument('--from-json', dest='from_json', default=None, metavar='JSON',
                   help='no measuring: render the table and figure again from the results of an earlier run')
    p.add_argument('--out', default=os.path.join(REPO, 'bench', 'FRONTIER.md'),
                   help='the Markdown table; the results go to the same name with .json, the figure with .png')
    return p


def run(args):
    """Measure as the command line says; returns the exit code."""
    import importlib.util

    from ..device import setup_device, start_tensorflow
    setup_device(args.gpu, args.verbose)
    stem = os.path.splitext(args.out)[0]
    outputs = [args.out, stem + '.png'] + ([] if args.from_json else [stem + '.json'])
    for path in outputs:
        if os.path.exists(path) and not args.overwrite:
            raise FileExistsError(f'{path}: exists (use --overwrite to replace it)')
    if args.from_json:
        try:
            with open(args.from_json) as f:
                results = json.load(f)
            render(results)
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise UserError(f'{args.from_json}: not the JSON results of a frontier run ({err!r})') from None
        _write(args, stem, results, write_json=False)
        return 0
    methods = [parse_method(m) for m in args.methods]
    if args.synthetic < 1 and args.sets == ['synthetic']:
        raise UserError('--synthetic must be >= 1 for --sets synthetic')
    if args.peers and importlib.util.find_spec('ants') is None:
        raise UserError("ANTs SyN needs antspyx: pip install -e '.[peers]' (or --no-peers)")
    for model, _ in methods:
        if not os.path.isfile(model):
            raise FileNotFoundError(f'{model}: model file not found')
    from ..generators import list_volumes
    from ..evaluation import load_scans
    scans = load_scans(list_volumes(train_list=args.test_list))
    start_tensorflow()
    from .report import machine_description
    results = collect(scans, methods, args.sets, args.synthetic, args.peers)
    results.update(machine=machine_description(),
                   command=shlex.join(['python', '-m', 'vxm_keras.bench.frontier', *args.argv]))
    _write(args, stem, results)
    return 0


def _write(args, stem, results, write_json=True):
    from ..plot import save_figure_atomic
    from .run import write_text
    text = render(results)
    print(text)
    if write_json:
        write_text(stem + '.json', json.dumps(results, indent=1) + '\n')
    save_figure_atomic(stem + '.png', figure, results)
    write_text(args.out, text)


def main(argv=None):
    from ..cli import execute
    args = build_parser().parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)
    return execute(run, args)


if __name__ == '__main__':
    sys.exit(main())
