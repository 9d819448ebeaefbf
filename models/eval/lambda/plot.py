"""Dice and folding against the smoothness weight lambda from models/eval/lambda/lam_*/ (run.sh):
writes dice_vs_lambda.png and RESULTS.md next to this file."""

import csv
import glob
import os
import re

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    rows = []
    for folder in glob.glob(os.path.join(HERE, 'lam_*')):
        lam = float(os.path.basename(folder)[4:])
        with open(os.path.join(folder, 'dice.csv')) as f:
            dice = [float(r['dice']) for r in csv.DictReader(f) if r['method'] == 'model']
        with open(os.path.join(folder, 'summary.txt')) as f:
            fold = float(re.search(r'Jacobian determinant <= 0: ([0-9.]+) %', f.read()).group(1))
        rows.append((lam, float(np.mean(dice)), fold))
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
