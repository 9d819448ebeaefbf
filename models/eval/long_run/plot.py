"""Validation Dice and folding against training steps for the long run (run.sh): writes
dice_vs_steps.png and RESULTS.md next to this file. Step 0 (ckpt_0000) is the shipped
vm2_scan2scan.h5 the run started from, scored the same way."""

import glob
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(HERE))))
from vxm_keras.evaluation import read_scores  # noqa: E402
STEPS_PER_EPOCH = 100


def main():
    points = []
    for folder in sorted(glob.glob(os.path.join(HERE, 'ckpt_*'))):
        epoch = int(os.path.basename(folder)[5:])
        points.append((epoch * STEPS_PER_EPOCH, *read_scores(folder)))
    from vxm_keras.plot import dice_and_folding_figure
    dice_and_folding_figure(os.path.join(HERE, 'dice_vs_steps.png'), [p[0] for p in points], [p[1] for p in points],
                            [p[3] for p in points], 'extra training steps from vm2_scan2scan.h5 (batch 1, lr 1e-4, lambda 1)',
                            'VM-2 scan to scan: validation Dice (sub-07 <-> sub-08) against training steps')
    lines = ['| extra steps | Dice (2 validation pairs, network alone) | folding |', '|---|---|---|']
    lines += [f'| {s} | {d:.3f} ({sd:.3f}) | {fo:.3f} % |' for s, d, sd, fo in points]
    with open(os.path.join(HERE, 'RESULTS.md'), 'w') as f:
        f.write('\n'.join(lines) + '\n')
    print('\n'.join(lines))


if __name__ == '__main__':
    main()
