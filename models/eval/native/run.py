"""A new user's brains, as FreeSurfer wrote them: both validation subjects' raw brainmask.mgz (256^3,
scanner space, no talairach.xfm) registered to each other by register.py in one command (affine step
included), against ANTs SyN (antspyx defaults: its own affine stage, then SyN) on the same files.
Dice of the moved aseg.mgz with the fixed one on the fixed scan's own grid, over the papers' 30
structures; seconds of the whole command (register.py) or of ants.registration + apply_transforms.

    python models/eval/native/run.py ../shared/data/freesurfer models/eval/native [--optimize 25]
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from vxm_keras.io import load_volfile
from vxm_keras.metrics import dice, folding_fraction

LABELS = [2, 3, 4, 7, 8, 10, 11, 12, 13, 14, 15, 16, 17, 18, 24, 28, 31, 41, 42, 43, 46, 47, 49, 50, 51, 52,
          53, 54, 60, 63]
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def score(moved_seg, fixed_seg):
    return float(np.nanmean(dice(moved_seg, fixed_seg, LABELS)[1]))


def main():
    p = argparse.ArgumentParser()
    p.add_argument('folder')
    p.add_argument('out')
    p.add_argument('--pairs', default='sub-07:sub-08,sub-08:sub-07')
    p.add_argument('--optimize', type=int, nargs='+', default=[0, 25])
    p.add_argument('--model', default=os.path.join(REPO, 'models', 'vm2_scan2scan.h5'))
    p.add_argument('--no-ants', action='store_true')
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for pair in args.pairs.split(','):
            m, f = pair.split(':')
            mov, fix = (os.path.join(args.folder, s, 'brainmask.mgz') for s in (m, f))
            mov_seg, fix_seg = (os.path.join(args.folder, s, 'aseg.mgz') for s in (m, f))
            fixed_seg = load_volfile(fix_seg)
            for n in args.optimize:
                out = os.path.join(tmp, f'{m}_{f}_{n}')
                t = time.perf_counter()
                subprocess.run([sys.executable, os.path.join(REPO, 'register.py'), '--moving', mov, '--fixed', fix,
                                '--model', args.model, '--moving-seg', mov_seg, '--moved-seg', out + '_seg.mgz',
                                '--moved', out + '.mgz', '--warp', out + '_warp.npz', '--optimize', str(n)],
                               check=True)
                seconds = time.perf_counter() - t
                d = score(load_volfile(out + '_seg.mgz'), fixed_seg)
                fold = folding_fraction(load_volfile(out + '_warp.npz'))
                rows.append((f'register.py --optimize {n}', pair, d, fold, seconds))
                print(rows[-1], flush=True)
            if args.no_ants:
                continue
            import ants
            t = time.perf_counter()
            fixed_img, moving_img = ants.image_read(fix), ants.image_read(mov)
            reg = ants.registration(fixed=fixed_img, moving=moving_img, type_of_transform='SyN')
            moved_seg = ants.apply_transforms(fixed_img, ants.image_read(mov_seg), reg['fwdtransforms'],
                                              interpolator='nearestNeighbor').numpy()
            seconds = time.perf_counter() - t
            rows.append(('ANTs SyN', pair, score(np.rint(moved_seg).astype(np.int32), fixed_seg), np.nan, seconds))
            print(rows[-1], flush=True)
    lines = ['| method | pair | Dice | folding | seconds |', '|---|---|---|---|---|']
    lines += [f'| {m} | {p} | {d:.3f} | {"" if np.isnan(fo) else f"{100 * fo:.3f} %"} | {s:.1f} |'
              for m, p, d, fo, s in rows]
    for method in dict.fromkeys(r[0] for r in rows):
        sel = [r for r in rows if r[0] == method]
        lines.append(f'| **{method}** | mean of {len(sel)} | **{np.mean([r[2] for r in sel]):.3f}** | | '
                     f'{np.mean([r[4] for r in sel]):.1f} |')
    text = '\n'.join(lines) + '\n'
    print(text)
    with open(os.path.join(args.out, 'RESULTS.md'), 'w') as f:
        f.write(text)


if __name__ == '__main__':
    main()
