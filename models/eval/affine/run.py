"""Affine alignment of the shared FreeSurfer subjects from the raw brainmask.mgz + aseg.mgz:
vxm_keras.affine (12 dof, to the default atlas) against FreeSurfer's talairach.xfm and ANTs
'Affine' (antspyx defaults, to the same atlas). Each subject's aseg is carried onto the model grid
by each method; the table gives the mean Dice over the 30 structures of the papers between every
pair of subjects (how well the method alone brings brains into correspondence) and the seconds a
scan.

    python models/eval/affine/run.py ../shared/data/freesurfer models/eval/affine
"""

import itertools
import os
import sys
import time

import numpy as np

from vxm_keras import native
from vxm_keras.io import load_volfile
from vxm_keras.metrics import dice
from vxm_keras.prepare import TARGET_AFFINE, TARGET_SHAPE, read_xfm, resample
from vxm_keras.shipped import DEFAULT_ATLAS

LABELS = [2, 3, 4, 7, 8, 10, 11, 12, 13, 14, 15, 16, 17, 18, 24, 28, 31, 41, 42, 43, 46, 47, 49, 50, 51, 52,
          53, 54, 60, 63]


def main(folder, out):
    atlas, atlas_affine = load_volfile(DEFAULT_ATLAS, ret_affine=True)
    subjects = sorted(d for d in os.listdir(folder) if d.startswith('sub-'))
    segs = {m: {} for m in ('talairach.xfm', 'vxm_keras.affine', 'ANTs Affine')}
    seconds = {m: [] for m in segs}
    for s in subjects:
        vol, aff = load_volfile(os.path.join(folder, s, 'brainmask.mgz'), ret_affine=True)
        aseg = load_volfile(os.path.join(folder, s, 'aseg.mgz')).astype(np.int32)
        vol = vol.astype(np.float32)
        t = time.perf_counter()
        xfm = read_xfm(os.path.join(folder, s, 'talairach.xfm'))
        segs['talairach.xfm'][s] = resample(aseg, aff, xfm, order=0)
        seconds['talairach.xfm'].append(time.perf_counter() - t)

        t = time.perf_counter()
        found = native.align_to(native.Scan(vol, aff, s), atlas, atlas_affine, TARGET_SHAPE, TARGET_AFFINE)
        seconds['vxm_keras.affine'].append(time.perf_counter() - t)
        segs['vxm_keras.affine'][s] = resample(aseg, aff, np.linalg.inv(found.world_map), order=0)

        try:
            import ants
        except ImportError:
            continue
        t = time.perf_counter()
        fixed = _ants_image(ants, atlas, atlas_affine)
        moving = _ants_image(ants, vol, aff)
        reg = ants.registration(fixed=fixed, moving=moving, type_of_transform='Affine')
        seconds['ANTs Affine'].append(time.perf_counter() - t)
        moved = ants.apply_transforms(fixed, _ants_image(ants, aseg.astype(np.float32), aff), reg['fwdtransforms'],
                                      interpolator='nearestNeighbor')
        segs['ANTs Affine'][s] = np.rint(moved.numpy()).astype(np.int32)
        print(s, {m: round(v[-1], 2) for m, v in seconds.items() if v}, flush=True)

    rows = []
    for method, by_subject in segs.items():
        if not by_subject:
            continue
        scores = [np.nanmean(dice(by_subject[a], by_subject[b], LABELS)[1]) for a, b in
                  itertools.combinations(sorted(by_subject), 2)]
        rows.append((method, np.mean(scores), np.std(scores), len(scores), np.mean(seconds[method])))
    lines = ['| method | Dice, mean (std) over subject pairs | pairs | seconds a scan |', '|---|---|---|---|']
    lines += [f'| {m} | {d:.3f} ({sd:.3f}) | {n} | {sec:.1f} |' for m, d, sd, n, sec in rows]
    text = '\n'.join(lines) + '\n'
    print(text)
    with open(os.path.join(out, 'RESULTS.md'), 'w') as f:
        f.write(text)


def _ants_image(ants, vol, affine):
    """An ANTs image with the voxel-to-world matrix of a nibabel affine (ANTs works in LPS)."""
    import nibabel as nib
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, 'x.nii.gz')
        nib.save(nib.Nifti1Image(np.asarray(vol, np.float32), affine), path)
        return ants.image_read(path)


if __name__ == '__main__':
    main(*sys.argv[1:3])
