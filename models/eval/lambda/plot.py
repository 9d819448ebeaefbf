"""Dice and folding against the smoothness weight lambda from models/eval/lambda/lam_*/ (run.sh):
writes dice_vs_lambda.png and RESULTS.md next to this file."""

import glob
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(HERE))))
from vxm_keras.evaluation import read_scores  # noqa: E402


def main():
    rows = []
    for folder in glob.glob(os.path.join(HERE, 'lam_*')):
        lam = float(os.path.basename(folder)[4:])
        dice, _, fold = read_scores(folder)
        rows.append((lam, dice, fold))
    rows.sort()
    from vxm_keras.plot import dice_and_folding_figure
    dice_and_folding_figure(os.path.join(HERE, 'dice_vs_lambda.png'), np.arange(len(rows)), [r[1] for r in rows],
                            [r[2] for r in rows], 'lambda (smoothness weight, NCC loss)',
                            'VM-2 scan to scan, fine-tuned 200 steps from vm2_scan2scan.h5 (lambda 1)',
                            xticklabels=[f'{r[0]:g}' for r in rows])
    lines = ['| lambda | Dice (2 validation pairs, network alone) | folding |', '|---|---|---|']
    lines += [f'| {lam:g} | {d:.3f} | {fo:.3f} % |' for lam, d, fo in rows]
    with open(os.path.join(HERE, 'RESULTS.md'), 'w') as f:
        f.write('\n'.join(lines) + '\n')
    print('\n'.join(lines))


if __name__ == '__main__':
    main()
