"""Validation Dice against training steps for each training-set size (run.sh): writes
dice_vs_subjects.png and RESULTS.md next to this file."""

import glob
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(HERE))))
from vxm_keras.evaluation import read_scores  # noqa: E402
STEPS_PER_EPOCH = 100


def main():
    curves = {}
    for folder in sorted(glob.glob(os.path.join(HERE, 'n*_[0-9][0-9][0-9][0-9]'))):
        n, epoch = re.fullmatch(r'n(\d+)_(\d{4})', os.path.basename(folder)).groups()
        curves.setdefault(int(n), []).append((int(epoch) * STEPS_PER_EPOCH, *read_scores(folder)))
    affine = read_scores(folder, method='affine')[0]  # the pairs as prepared (any run): the dotted line
    from vxm_keras.plot import _backend
    plt = _backend()
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for n, points in sorted(curves.items()):
        ax.plot([p[0] for p in points], [p[1] for p in points], 'o-', label=f'{n} subjects ({n * (n - 1)} pairs)')
    ax.set_xlabel('training steps from scratch (batch 1, lr 5e-4, lambda 1)')
    ax.set_ylabel('Dice, sub-07 <-> sub-08 (network alone)')
    ax.axhline(affine, color='gray', lw=0.8, ls=':')
    ax2.axhline(affine, color='gray', lw=0.8, ls=':')
    ax.legend(fontsize=8)
    # compared at the longest training every size has reached
    common = min(points[-1][0] for points in curves.values())
    last = {n: next(p for p in points if p[0] == common) for n, points in sorted(curves.items())}
    ax2.errorbar(list(last), [p[1] for p in last.values()], yerr=[p[2] for p in last.values()], fmt='o-')
    ax2.set_xticks(list(last))
    ax2.set_xlabel(f'training subjects (Dice after {common} steps; bars: std over the 2 pairs)')
    fig.suptitle('VM-2 scan to scan trained from scratch on 2, 4, 6 subjects, same steps (dotted: affine only)', fontsize=9)
    fig.tight_layout()
    fig.savefig(os.path.join(HERE, 'dice_vs_subjects.png'), dpi=110)
    lines = ['| training subjects | steps | Dice (2 validation pairs, network alone) | folding |', '|---|---|---|---|']
    lines += [f'| {n} | {s} | {d:.3f} ({sd:.3f}) | {fo:.3f} % |' for n, points in sorted(curves.items())
              for s, d, sd, fo in points]
    with open(os.path.join(HERE, 'RESULTS.md'), 'w') as f:
        f.write('\n'.join(lines) + '\n')
    print('\n'.join(lines))


if __name__ == '__main__':
    main()
