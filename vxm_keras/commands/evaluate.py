"""``test.py``: Dice evaluation of a trained model, as in the papers.

    python test.py --model models/vm2_scan2scan.h5 --test-list models/splits/val.txt --atlas none
    python test.py --model models/vm2_atlas.h5 --test-list models/splits/val.txt

Test scans are prepared ``.npz`` files with ``vol`` and ``seg`` (aseg labels),
or FreeSurfer subject folders as FreeSurfer wrote them (``brainmask.mgz``,
``aseg.mgz``, ``talairach.xfm`` if there is one), prepared on the fly as
``python -m vxm_keras.prepare`` would (affine alignment without the ``.xfm``).

* ``--atlas none``: every ordered pair of test scans (moving -> fixed); Dice of
  the warped moving ``seg`` with the fixed ``seg`` on the papers' 30
  structures (those present in both).
* a learned template (a ``train_template.py`` model): the template's ``seg``
  (``--template``) is warped onto each test scan by the template-to-scan
  registration and scored against the scan's ``seg`` (30 structures, and
  tissue classes); scans larger than the template's grid are block-averaged
  to it (labels: the voxel nearest each block's centre), as in training.
* with an atlas (default ``data/atlas.npz``): each scan is registered to the
  atlas. Reported are (1) Dice in atlas space between the warped ``seg`` of
  every pair of test scans, on the 30 structures (how well the model brings
  different brains onto the same anatomy), and (2) Dice of the warped scan's
  tissue classes (CSF / grey / white matter, from its aseg) with the atlas's
  tissue ``seg``.

The affine-only baseline (the prepared scans as they are) is scored on the
same pairs. Writes ``dice.csv`` (one row per pair, method and label),
``dice_boxplot.png`` and ``summary.txt`` to ``--out-dir``, and prints a
table like the papers'.
"""

import argparse
import importlib.util
import itertools
import os
import sys
import time

from ..cli import check_registration, device_options, execute, fail, overwrite_option, registration_options
from ..device import setup_device, start_tensorflow
from ..evaluation import ants_syn, load_scans, scan_pairs, score_rows, summarise
from ..metrics import STRUCTURES, TISSUE_NAMES, aseg_to_tissue
from ..shipped import DEFAULT_ATLAS


def build_parser():
    p = argparse.ArgumentParser(prog='test.py', description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                parents=[registration_options(0), overwrite_option(), device_options()])
    p.add_argument('--model', required=True, help='trained model (.h5)')
    data = p.add_mutually_exclusive_group(required=True)
    data.add_argument('--test-list', '--test_list', dest='test_list',
                      help='text file, one prepared .npz (vol, seg) or FreeSurfer subject folder (brainmask.mgz, '
                           "aseg.mgz) per line (relative paths are taken from the list's folder)")
    data.add_argument('--data-dir', '--data_dir', dest='data_dir', help='folder of .npz test scans')
    p.add_argument('--atlas', default=DEFAULT_ATLAS,
                   help="atlas .npz (vol, seg), or 'none' for scan-to-scan pairs")
    p.add_argument('--labels', type=int, nargs='+', default=None,
                   help='labels to score (default: the 30 structures of the papers)')
    p.add_argument('--template', default=None,
                   help="learned-template models (train_template.py): the template .npz with its 'seg' "
                        '(default template.npz beside the model)')
    p.add_argument('--peers', action='store_true',
                   help="scan-to-scan: also run ANTs SyN (antspyx defaults, pip install -e '.[peers]') on the "
                        'same pairs and score it the same way')
    p.add_argument('--invert-contrast', dest='invert_contrast', action='store_true',
                   help='scan-to-scan: also register each moving scan with its contrast inverted '
                        '(1 - intensity inside the brain) to the normal fixed scan')
    p.add_argument('--t2-like', dest='t2_like', action='store_true',
                   help='scan-to-scan: also register each moving scan made T2-like from its labels (CSF bright, '
                        'white matter dark, blur, bias field, noise) to the normal fixed scan; with '
                        '--cross-contrast for the refinement made for such pairs')
    p.add_argument('--synthetic', type=int, default=0, metavar='N',
                   help='scan-to-scan: also N pairs per test scan made by warping it (and its labels) with '
                        'a known large random smooth deformation, registered back to the original')
    p.add_argument('--out-dir', dest='out_dir', default=None, help='where to write dice.csv and the plots')
    return p


def main(argv=None):
    return execute(run, build_parser().parse_args(argv))


def run(args):
    """Evaluate as the command line says (``args`` from :func:`build_parser`); returns the exit code."""
    setup_device(args.gpu, args.verbose, compile_cache=True)
    options = check_registration(args)
    if args.synthetic < 0:
        fail(f'--synthetic must be >= 0, got {args.synthetic}')
    if args.out_dir and os.path.exists(args.out_dir) and not os.path.isdir(args.out_dir):
        fail(f'{args.out_dir}: exists and is not a folder (--out-dir takes a folder)')
    if args.out_dir and os.path.exists(os.path.join(args.out_dir, 'dice.csv')) and not args.overwrite:
        fail(f'{os.path.join(args.out_dir, "dice.csv")}: exists (use --overwrite to replace it)')
    start_tensorflow()
    import numpy as np

    from .. import modelio, networks
    from ..generators import list_volumes
    from ..metrics import PAPER_LABELS
    from ..registration import COARSE_STEPS, FINE_STEPS

    files = list_volumes(args.data_dir, args.test_list)
    scans = load_scans(files)
    model = modelio.load_model(args.model)
    inshape = tuple(model.inputs[0].shape[1:-1])
    labels = list(args.labels or PAPER_LABELS)
    present = set().union(*(np.unique(seg).tolist() for _, _, seg in scans))
    if not present & set(labels):
        fail(f'none of the labels {" ".join(map(str, labels))} is in the test scans\' seg maps '
             f'(they hold {" ".join(map(str, sorted(present - {0})[:40]))})')
    if isinstance(model, networks.TemplateCreation):
        return _evaluate_template(args, model, inshape, scans, labels)
    atlas = _check_evaluation_set(args, inshape, scans)
    register = _registering(args, model, options)
    if atlas is not None:
        rows, folding, seconds, peer_seconds = _score_to_atlas(register, scans, labels, *atlas)
    else:
        rows, folding, seconds, peer_seconds = _score_pairs(args, register, scans, labels)
    title = '30 structures' + (' (atlas space, pairs of test scans)' if atlas is not None else '')
    report = _report(rows, labels, folding, seconds, title, args.model, peer_seconds=peer_seconds,
                     options=dict(options, coarse=options.get('coarse', COARSE_STEPS),
                                  fine=options.get('fine', FINE_STEPS)) if args.optimize else options)
    print(report)
    if args.out_dir:
        _write_outputs(args.out_dir, rows, report, labels)
    return 0


def _check_evaluation_set(args, inshape, scans):
    """The atlas ``(vol, seg)`` (``None`` for scan-to-scan pairs), checked with the test scans
    against the model's input shape and the options."""
    import numpy as np

    from ..io import load_volfile
    atlas = None
    if args.atlas.lower() != 'none':
        vol = load_volfile(args.atlas, check_finite=True).astype(np.float32)
        seg = load_volfile(args.atlas, key='seg').astype(np.int32)
        if vol.shape != inshape:
            fail(f'{args.atlas}: shape {vol.shape}, but the model {args.model} takes {inshape}; '
                 "pass the atlas it was trained with (--atlas), or --atlas none for scan-to-scan pairs")
        atlas = (vol, seg)
    elif len(scans) < 2:
        fail('scan-to-scan evaluation needs at least 2 test scans')
    for name, vol, _ in scans:
        if vol.shape != inshape:
            fail(f'{name}: shape {vol.shape}, the model takes {inshape}')
    if atlas is not None and (args.peers or args.invert_contrast or args.t2_like or args.synthetic):
        fail('--peers, --invert-contrast, --t2-like and --synthetic are for scan-to-scan evaluation (--atlas none)')
    if args.peers and importlib.util.find_spec('ants') is None:
        fail("--peers needs antspyx: pip install -e '.[peers]'")
    return atlas


def _registering(args, model, options):
    """``register(moving, fixed, seg) -> (moved_seg, warp, seconds)`` with ``options`` (the
    keyword arguments :func:`~vxm_keras.cli.check_registration` made of the flags)."""
    from ..registration import Registration
    try:
        reg = Registration(model)
    except ValueError as err:
        fail(f'{args.model}: {err}')

    def register(moving, fixed, seg):
        t = time.perf_counter()
        result = reg.register(moving, fixed, **options)
        moved_seg = reg.warp_labels(seg, result.warp)
        return moved_seg, result.warp, time.perf_counter() - t
    return register


def _score_to_atlas(register, scans, labels, atlas, atlas_seg):
    """Each scan to the atlas: tissue Dice against the atlas, and structure Dice between every two
    scans once both are in atlas space. Returns ``(rows, folding, seconds, peer_seconds)``."""
    import numpy as np

    from ..metrics import folding_fraction
    atlas_tissue_labels = sorted(set(np.unique(atlas_seg)) - {0})
    rows, folding, seconds, warped = [], [], [], {}
    for name, vol, seg in scans:
        moved_seg, warp, sec = register(vol, atlas, seg)
        seconds.append(sec)
        folding.append(folding_fraction(warp))
        warped[name] = (seg, moved_seg)
        tissue_pair = f'{name}->atlas (tissue)'
        rows += score_rows(tissue_pair, 'tissue', 'affine', aseg_to_tissue(seg), atlas_seg, atlas_tissue_labels)
        rows += score_rows(tissue_pair, 'tissue', 'model', aseg_to_tissue(moved_seg), atlas_seg,
                           atlas_tissue_labels)
    for a, b in itertools.combinations(warped, 2):
        common = [lab for lab in labels if np.any(warped[a][0] == lab) and np.any(warped[b][0] == lab)]
        rows += score_rows(f'{a}~{b} (atlas space)', 'pairs', 'affine', warped[a][0], warped[b][0], common)
        rows += score_rows(f'{a}~{b} (atlas space)', 'pairs', 'model', warped[a][1], warped[b][1], common)
    return rows, folding, seconds, []


def _score_pairs(args, register, scans, labels):
    """Scan-to-scan pairs (with inverted-contrast and known-deformation sets), and ANTs SyN on the
    same pairs with --peers. Returns ``(rows, folding, seconds, peer_seconds)``."""
    import numpy as np

    from ..metrics import folding_fraction
    rows, folding, seconds, peer_seconds = [], [], [], []
    for pair, kind, (va, sa), (vb, sb) in scan_pairs(scans, args.invert_contrast, args.synthetic, t2=args.t2_like):
        common = [lab for lab in labels if np.any(sa == lab) and np.any(sb == lab)]
        moved_seg, warp, sec = register(va, vb, sa)
        seconds.append(sec)
        folding.append(folding_fraction(warp))
        rows += score_rows(pair, kind, 'affine', sa, sb, common)
        rows += score_rows(pair, kind, 'model', moved_seg, sb, common)
        print(f'{pair}: model {_pair_mean(rows, pair, "model"):.3f} '
              f'(affine {_pair_mean(rows, pair, "affine"):.3f}), {sec:.1f} s', flush=True)
        if args.peers:
            peer_seg, peer_sec = ants_syn(va, vb, sa)
            rows += score_rows(pair, kind, 'ants', peer_seg, sb, common)
            peer_seconds.append(peer_sec)
            print(f'{pair}: ANTs SyN {_pair_mean(rows, pair, "ants"):.3f}, {peer_sec:.1f} s', flush=True)
    return rows, folding, seconds, peer_seconds


def _evaluate_template(args, model, inshape, scans, labels):
    """Dice of a learned template's labels warped onto each test scan (template mode)."""
    import numpy as np

    from ..io import load_volfile
    from ..metrics import folding_fraction
    from ..templates import downsize_images, downsize_labels, template_to_subjects

    if model.n_attributes:
        fail(f'{args.model}: a conditional template; evaluate it from Python with '
             'vxm_keras.templates.template_to_subjects(model, seg, images, attributes)')
    template_path = args.template or os.path.join(os.path.dirname(os.path.abspath(args.model)), 'template.npz')
    if not os.path.isfile(template_path):
        fail(f'{template_path}: no template file (pass --template, the template.npz of train_template.py)')
    tseg = load_volfile(template_path, key='seg').astype(np.int32)
    if tseg.shape != inshape:
        fail(f'{template_path}: seg shape {tseg.shape} differs from the model grid {inshape}')
    shape = scans[0][1].shape
    factors = {s // n for s, n in zip(shape, inshape)} if all(s % n == 0 for s, n in zip(shape, inshape)) else set()
    if len(factors) != 1 or any(s[1].shape != shape for s in scans):
        fail(f'test scans of shape {shape} do not reduce to the template grid {inshape} by one integer factor')
    factor = factors.pop()
    if factor > 1:
        print(f'test scans block-averaged by {factor} to the template grid {inshape}')
    images = downsize_images(np.stack([s[1] for s in scans]), factor)
    segs = downsize_labels(np.stack([s[2] for s in scans]), factor)
    t = time.perf_counter()
    warped, warps = template_to_subjects(model, tseg, images)
    seconds = [(time.perf_counter() - t) / len(scans)] * len(scans)
    rows = []
    for (name, _, _), seg, moved in zip(scans, segs, warped):
        common = [lab for lab in labels if np.any(tseg == lab) and np.any(seg == lab)]
        rows += score_rows(f'template->{name}', 'pairs', 'affine', tseg, seg, common)
        rows += score_rows(f'template->{name}', 'pairs', 'model', moved, seg, common)
        tissue = [1, 2, 3]
        seg_tissue = aseg_to_tissue(seg)
        rows += score_rows(f'template->{name} (tissue)', 'tissue', 'affine', aseg_to_tissue(tseg), seg_tissue, tissue)
        rows += score_rows(f'template->{name} (tissue)', 'tissue', 'model', aseg_to_tissue(moved), seg_tissue, tissue)
    folding = [folding_fraction(w) for w in warps]
    report = _report(rows, labels, folding, seconds, '30 structures (template labels warped to each test scan)',
                     args.model, tissue_title='tissue classes (template labels warped to each test scan)')
    print(report)
    if args.out_dir:
        _write_outputs(args.out_dir, rows, report, labels)
    return 0


def _pair_mean(rows, pair, method):
    return summarise([r for r in rows if r['pair'] == pair], method)[0]


METHOD_NAMES = {'affine': 'affine only', 'model': 'model', 'ants': 'ANTs SyN'}


def _report(rows, labels, folding, seconds, title, model_path, tissue_title='tissue classes vs atlas seg',
            peer_seconds=(), options=None):
    import numpy as np
    opts = ', '.join(f'{k} {v}' for k, v in (options or {}).items() if v not in (0, 1) or k == 'lam')
    lines = [f'model {model_path}{" (" + opts + ")" if opts else ""}; {len(seconds)} registrations; '
             f'{np.mean(seconds):.2f} s per pair (prediction, optimisation, label warp)']
    if len(peer_seconds):
        lines.append(f'ANTs SyN: {np.mean(peer_seconds):.1f} s per pair')
    titles = {'pairs': title, 'inverted': title + ', moving contrast inverted',
              't2like': title + ', moving scan made T2-like from its labels',
              'synthetic': title + ', scans warped by known random deformations, registered back',
              'tissue': tissue_title}
    for kind, kind_title in titles.items():
        sub = [r for r in rows if r['set'] == kind]
        if not sub:
            continue
        labs = [1, 2, 3] if kind == 'tissue' else labels
        methods = [m for m in METHOD_NAMES if any(r['method'] == m for r in sub)]
        n_pairs = len({r['pair'] for r in sub})
        lines.append(f'\n{kind_title} ({n_pairs} pairs)')
        lines.append(f'{"method":<12} {"Dice mean (std over pairs)":>28}')
        for method in methods:
            m, sd = summarise(sub, method, labs)
            lines.append(f'{METHOD_NAMES[method]:<12} {m:>19.3f} ({sd:.3f})')
        if kind not in ('pairs', 'tissue'):
            continue
        lines.append(f'{"label":<26} ' + ' '.join(f'{m:>8}' for m in methods))
        for lab in labs:
            vals = {meth: [r['dice'] for r in sub if r['method'] == meth and r['label'] == lab] for meth in methods}
            if not vals['model']:
                continue
            name = TISSUE_NAMES.get(lab, '') if kind == 'tissue' else STRUCTURES.get(lab, '')
            lines.append(f'{lab:>3} {name:<22} ' + ' '.join(f'{np.nanmean(vals[m]):>8.3f}' for m in methods))
    lines.append(f'\nvoxels with Jacobian determinant <= 0: {100 * np.mean(folding):.4f} % '
                 f'(std over registrations {100 * np.std(folding):.4f})')
    return '\n'.join(lines)


def _write_outputs(out_dir, rows, report, labels):
    import csv

    from ..io import atomic_path
    from ..plot import dice_boxplot, save_figure_atomic

    os.makedirs(out_dir, exist_ok=True)
    with atomic_path(os.path.join(out_dir, 'dice.csv')) as tmp, open(tmp, 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=['pair', 'set', 'method', 'label', 'structure', 'dice'])
        writer.writeheader()
        for r in rows:
            name = TISSUE_NAMES.get(r['label'], '') if r['set'] == 'tissue' else STRUCTURES.get(r['label'], '')
            writer.writerow(dict(r, structure=name))
    with atomic_path(os.path.join(out_dir, 'summary.txt')) as tmp, open(tmp, 'w') as f:
        f.write(report + '\n')
    struct_rows = [r for r in rows if r['set'] == 'pairs']
    save_figure_atomic(os.path.join(out_dir, 'dice_boxplot.png'), dice_boxplot, struct_rows,
                       labels, STRUCTURES)


if __name__ == '__main__':
    sys.exit(main())
