"""Table and Dice-versus-seconds figure of models/eval/accuracy/* (the runs of test.py listed in
models/README.md). Run from the repository root: python models/eval/accuracy/make_table.py"""
import csv
import os
import re
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(HERE))))
from vxm_keras.plot import frontier_figure  # noqa: E402
KINDS = ('pairs', 'inverted', 'synthetic')


def kind(pair):
    return 'inverted' if '(inverted)' in pair else 'synthetic' if '(warped' in pair else 'pairs'


def summarize(folder):
    rows = list(csv.DictReader(open(os.path.join(folder, 'dice.csv'))))
    out = {}
    for k in KINDS:
        for method in ('affine', 'model', 'ants'):
            per = {}
            for r in rows:
                if kind(r['pair']) == k and r['method'] == method:
                    per.setdefault(r['pair'], []).append(float(r['dice']))
            if per:
                means = [np.mean(v) for v in per.values()]
                out[k, method] = (float(np.mean(means)), float(np.std(means)))
    text = open(os.path.join(folder, 'summary.txt')).read()
    out['seconds'] = float(re.search(r'; ([\d.]+) s per pair', text).group(1))
    out['folding'] = float(re.search(r'<= 0: ([\d.]+) %', text).group(1))
    ants = re.search(r'ANTs SyN: ([\d.]+) s', text)
    out['ants_seconds'] = float(ants.group(1)) if ants else None
    return out


def main(names):
    results = {n: summarize(os.path.join(HERE, n)) for n in names}
    fmt = lambda v: f'{v[0]:.3f} ({v[1]:.3f})'  # noqa: E731
    print('| method | Dice, sub-07 <-> sub-08 (2 pairs) | moving contrast inverted (2) | known deformations (4) '
          '| folding | seconds a pair |')
    print('|---|---|---|---|---|---|')
    first = results[names[0]]
    print('| affine only | ' + ' | '.join(fmt(first[k, 'affine']) for k in KINDS) + ' | | |')
    for n, r in results.items():
        if r['ants_seconds']:
            print('| ANTs SyN (antspyx defaults) | ' + ' | '.join(fmt(r[k, 'ants']) for k in KINDS)
                  + f' | | {r["ants_seconds"]:.1f} |')
    for n, r in results.items():
        print(f'| {n} | ' + ' | '.join(fmt(r[k, 'model']) for k in KINDS)
              + f' | {r["folding"]:.3f} % | {r["seconds"]:.1f} |')
    points = [(n.replace('vm2_scan2scan', 'VM-2').replace('vm2diff', 'diff'), r['seconds'],
               {k: r[k, 'model'][0] for k in KINDS}, False) for n, r in results.items()]
    points += [('ANTs SyN', r['ants_seconds'], {k: r[k, 'ants'][0] for k in KINDS}, True)
               for r in results.values() if r['ants_seconds']]
    frontier_figure(os.path.join(HERE, 'dice_vs_seconds.png'), points, {k: first[k, 'affine'][0] for k in KINDS},
                    {'pairs': 'sub-07 <-> sub-08', 'inverted': 'moving contrast inverted',
                     'synthetic': 'known random deformations'})




def boxplot(model_run, peer_run, out='dice_boxplot_vs_syn.png'):
    """Per-structure box plot on the real pairs: affine, ``model_run``'s model, SyN of ``peer_run``."""
    from vxm_keras.metrics import PAPER_LABELS, STRUCTURES
    from vxm_keras.plot import dice_boxplot

    def rows(run, methods):
        return [dict(r, label=int(r['label']), dice=float(r['dice']))
                for r in csv.DictReader(open(os.path.join(HERE, run, 'dice.csv')))
                if kind(r['pair']) == 'pairs' and r['method'] in methods]
    dice_boxplot(os.path.join(HERE, out), rows(model_run, ('affine', 'model')) + rows(peer_run, ('ants',)),
                 PAPER_LABELS, STRUCTURES)


if __name__ == '__main__':
    main(sys.argv[1:] or sorted(d for d in os.listdir(HERE) if os.path.isdir(os.path.join(HERE, d))))
    boxplot('vm2_scan2scan_opt25', 'vm2_scan2scan_opt0')
