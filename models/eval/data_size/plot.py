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
# suffix of a run's name (n<subjects><suffix>) -> how its training pairs were made
KINDS = {'': 'real pairs', 'aug': 'the scan with itself, each side augmented',
         'synth': 'images synthesised from label maps (+ 20 SynthSeg maps)'}
# one colour per kind of pairs in both panels (the real-pair runs take the default cycle on the left)
COLORS = {'': 'k', 'aug': 'C3', 'synth': 'C4'}


def main():
    curves = {}
    for folder in sorted(glob.glob(os.path.join(HERE, 'n*_[0-9][0-9][0-9][0-9]'))):
        n, kind, epoch = re.fullmatch(r'n(\d+)(aug|synth|)_(\d{4})', os.path.basename(folder)).groups()
        curves.setdefault((kind, int(n)), []).append((int(epoch) * STEPS_PER_EPOCH, *read_scores(folder)))
    affine = read_scores(folder, method='affine')[0]  # the pairs as prepared (any run): the dotted line
    from vxm_keras.plot import _backend
    plt = _backend()
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for (kind, n), points in sorted(curves.items()):
        label = f'{n} subjects ({n * (n - 1)} pairs)' if not kind else f'{n} subject{"s" * (n > 1)}: {KINDS[kind]}'
        ax.plot([p[0] for p in points], [p[1] for p in points], 'o-' if not kind else 's--', label=label,
                **({'color': COLORS[kind]} if kind else {}))
    ax.set_xlabel('training steps from scratch (batch 1, lr 5e-4, lambda 1)')
    ax.set_ylabel('Dice, sub-07 <-> sub-08 (network alone)')
    ax.axhline(affine, color='gray', lw=0.8, ls=':')
    ax2.axhline(affine, color='gray', lw=0.8, ls=':')
    ax.legend(fontsize=7)
    # compared at the longest training every run has reached
    common = min(points[-1][0] for points in curves.values())
    for kind in sorted({k for k, _ in curves}):
        last = {n: next(p for p in points if p[0] == common) for (k, n), points in sorted(curves.items()) if k == kind}
        ax2.errorbar(list(last), [p[1] for p in last.values()], yerr=[p[2] for p in last.values()],
                     fmt='o-' if not kind else 's', color=COLORS[kind], label=KINDS[kind], capsize=3)
    ax2.set_xticks(sorted({n for _, n in curves}))
    ax2.set_xlabel(f'training subjects (Dice after {common} steps; bars: std over the 2 pairs)')
    ax2.legend(fontsize=7)
    fig.suptitle('VM-2 scan to scan trained from scratch, same steps and seed (dotted: affine only)', fontsize=9)
    fig.tight_layout()
    fig.savefig(os.path.join(HERE, 'dice_vs_subjects.png'), dpi=110)
    lines = ['| training subjects | pairs | steps | Dice (2 validation pairs, network alone) | folding |',
             '|---|---|---|---|---|']
    lines += [f'| {n} | {KINDS[kind]} | {s} | {d:.3f} ({sd:.3f}) | {fo:.3f} % |'
              for (kind, n), points in sorted(curves.items(), key=lambda kv: (kv[0][0] != '', kv[0]))
              for s, d, sd, fo in points]
    with open(os.path.join(HERE, 'RESULTS.md'), 'w') as f:
        f.write('\n'.join(lines) + '\n')
    print('\n'.join(lines))


if __name__ == '__main__':
    main()
