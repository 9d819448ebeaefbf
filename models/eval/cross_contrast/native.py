"""Cross-contrast registration from the scans' own grid (models/README.md, "Other contrasts"): the
MNI152 T2 (or T1) of ../shared/data/multicontrast on its own 182x218x182 grid, deformed with its
wmparc labels by known smooth fields, registered to the undeformed T1 by the whole pipeline
(vxm_keras.register: affine to the model grid, refinement, back to the T1's grid). Dice over the
paper's structures present, between the moved labels and the T1's.

    python models/eval/cross_contrast/native.py [NDEF]    # one JSON line per pair and method
"""
import json
import os
import sys
import time

import numpy as np
import tensorflow as tf

import vxm_keras
from vxm_keras import augment, metrics, spatial
from vxm_keras.io import load_volfile
from vxm_keras.settings import CROSS_CONTRAST, DEFAULT

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
FOLDER = os.path.join(REPO, '..', 'shared', 'data', 'multicontrast')
MODEL = os.path.join(REPO, 'models', 'vm2_scan2scan.h5')

t1, affine = load_volfile(f'{FOLDER}/MNI152_T1_1mm_brain.nii.gz', ret_affine=True)
t2 = load_volfile(f'{FOLDER}/MNI152_T2_1mm_brain.nii.gz')
lab = metrics.wmparc_to_aseg(np.rint(load_volfile(f'{FOLDER}/Avgwmparc.nii.gz')))
labels = [k for k in metrics.PAPER_LABELS if np.any(lab == k)]
aug = augment.Augmentation(rotation=0, scaling=0, shear=0, translation=0, warp_std=4.0, warp_spacing=24,
                           flip_axis=None)


def deform(k, vol):
    disp = augment.random_deformation(tf.constant([5, k], tf.int64), 1, vol.shape, aug)
    moved = spatial.transform(vol[None, ..., None].astype(np.float32), disp, 'linear').numpy()[0, ..., 0]
    seg = spatial.transform(lab[None, ..., None].astype(np.float32), disp, 'nearest').numpy()[0, ..., 0]
    return moved, np.rint(seg).astype(np.int32)


METHODS = {'T2 cross-contrast, MI affine': ('T2', CROSS_CONTRAST, 'mi'),
           'T2 cross-contrast, NCC affine': ('T2', CROSS_CONTRAST, 'ncc'),
           'T2 default': ('T2', DEFAULT, None),
           'T1 default (same contrast)': ('T1', DEFAULT, None)}
registrar = vxm_keras.Registrar(MODEL, (t1, affine))
for k in range(int(sys.argv[1]) if len(sys.argv) > 1 else 1):
    for name, (contrast, settings, alignment) in METHODS.items():
        moving, moving_seg = deform(k, {'T1': t1, 'T2': t2}[contrast])
        before = float(np.nanmean(metrics.dice(moving_seg, lab, labels)[1]))
        t = time.perf_counter()
        result = registrar.register((moving, affine), settings=settings, alignment=alignment)
        seconds = time.perf_counter() - t
        moved_seg = result.forward.resample(moving_seg, order=0)
        dice = float(np.nanmean(metrics.dice(moved_seg, lab, labels)[1]))
        print(json.dumps({'deformation': k, 'method': name, 'before': round(before, 4), 'dice': round(dice, 4),
                          'folding_pct': round(100 * float(metrics.folding_fraction(result.warp)), 3),
                          'seconds': round(seconds, 1)}), flush=True)
