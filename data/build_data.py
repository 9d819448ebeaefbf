"""Rebuild data/atlas.npz and data/example_moving.npz from the MNI templates.

Usage (from the repository root, with ../shared/data present):

    python data/build_data.py [--templates ../shared/data/templates] [--overwrite]

atlas.npz: the ICBM 2009a nonlinear symmetric MNI152 T1, skull-stripped with a
mask from its grey+white matter probability maps, resampled to the vxm-keras
grid (vxm_keras.prepare.TARGET_SHAPE / TARGET_AFFINE) and scaled to [0, 1];
`seg` is a tissue map from the probability maps (1 CSF, 2 grey matter,
3 white matter, by the largest of p_gm, p_wm and 1 - p_gm - p_wm inside the
brain mask).
example_moving.npz: Colin27's skull-stripped ch2bet, prepared the same way.
example_native.nii.gz: ch2bet as distributed (its own 181x217x181 grid), for registration of a
scan that is not on the model grid.
"""
import argparse
import os
import sys

import numpy as np
from scipy import ndimage

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from vxm_keras.io import load_volfile, save_volfile  # noqa: E402
from vxm_keras.prepare import TARGET_AFFINE, normalise, prepare_volume, resample  # noqa: E402

TISSUE_LABELS = {1: 'CSF', 2: 'grey matter', 3: 'white matter'}


def brain_mask(p_brain):
    """Binary brain mask from p(gm) + p(wm): threshold, close, fill enclosed CSF."""
    mask = p_brain > 0.5
    ball = ndimage.generate_binary_structure(3, 1)
    mask = ndimage.binary_closing(mask, ball, iterations=3)
    mask = ndimage.binary_fill_holes(mask)
    # keep the largest component
    lab, n = ndimage.label(mask)
    if n > 1:
        sizes = ndimage.sum(mask, lab, range(1, n + 1))
        mask = lab == (1 + int(np.argmax(sizes)))
    return mask


def build_atlas(templates):
    folder = os.path.join(templates, 'mni_icbm152_2009a')
    t1, aff = load_volfile(os.path.join(folder, 'mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz'),
                           ret_affine=True)
    gm = load_volfile(os.path.join(folder, 'mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz')) / 255.0
    wm = load_volfile(os.path.join(folder, 'mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz')) / 255.0
    mask = brain_mask(gm + wm)
    vol = normalise(resample((t1 * mask).astype(np.float32), aff, order=1))
    gm_t = resample(gm.astype(np.float32), aff, order=1)
    wm_t = resample(wm.astype(np.float32), aff, order=1)
    mask_t = resample(mask.astype(np.uint8), aff, order=0) > 0
    probs = np.stack([1 - gm_t - wm_t, gm_t, wm_t], -1)
    seg = np.where(mask_t, 1 + np.argmax(probs, -1), 0).astype(np.int32)
    return vol, seg


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--templates', default=os.path.join(HERE, '..', '..', 'shared', 'data', 'templates'))
    parser.add_argument('--overwrite', action='store_true')
    args = parser.parse_args()
    vol, seg = build_atlas(args.templates)
    save_volfile(os.path.join(HERE, 'atlas.npz'), vol, affine=TARGET_AFFINE, extra={'seg': seg},
                 overwrite=args.overwrite)
    colin = prepare_volume(os.path.join(args.templates, 'colin27', 'ch2bet.nii.gz'))
    save_volfile(os.path.join(HERE, 'example_moving.npz'), colin['vol'], affine=TARGET_AFFINE,
                 overwrite=args.overwrite)
    native, native_affine = load_volfile(os.path.join(args.templates, 'colin27', 'ch2bet.nii.gz'), ret_affine=True)
    save_volfile(os.path.join(HERE, 'example_native.nii.gz'), native, affine=native_affine, overwrite=args.overwrite)
    print('wrote', os.path.join(HERE, 'atlas.npz'), 'and', os.path.join(HERE, 'example_moving.npz'))


if __name__ == '__main__':
    main()
