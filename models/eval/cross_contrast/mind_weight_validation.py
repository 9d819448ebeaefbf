"""The MIND weights chosen on training subjects, checked on the validation subjects (sub-07, 08
made T2-like, to the other's real T1) and the MNI152 T2 -> T1 with 2 known deformations on the
model grid (the cache models/eval/cross_contrast/run.py writes).

    python models/eval/cross_contrast/mind_weight_validation.py 5 2.5 10
"""
import itertools, json, sys, time, os
import numpy as np
import tensorflow as tf
from vxm_keras import settings, metrics, augment, spatial
from vxm_keras.evaluation import load_scans, t2_like
from vxm_keras.registration import Registration
reg = Registration('models/vm2_scan2scan.h5')
scans = load_scans([f'../prepared/sub-0{i}.npz' for i in (7, 8)])
pairs = [(f'{a[0]}->{b[0]}', t2_like(a[1], a[2], seed=k), a[2], b[1], b[2]) for k, (a, b) in enumerate(itertools.permutations(scans, 2))]
# MNI152 T2 -> T1 on the model grid with 2 known deformations (as models/eval/cross_contrast/run.py)
d = np.load('/tmp/vxm_multicontrast.npz') if os.path.exists('/tmp/vxm_multicontrast.npz') else None
if d is not None:
    aug = augment.Augmentation(rotation=0, scaling=0, shear=0, translation=0, warp_std=4.0, warp_spacing=24, flip_axis=None)
    for k in range(2):
        disp = augment.random_deformation(tf.constant([5, k], tf.int64), 1, d['t2'].shape, aug)
        mv = spatial.transform(d['t2'][None, ..., None], disp, 'linear').numpy()[0, ..., 0]
        ms = np.rint(spatial.transform(d['seg'][None, ..., None].astype(np.float32), disp, 'nearest').numpy()[0, ..., 0]).astype(np.int32)
        pairs.append((f'MNI T2->T1 #{k}', mv, ms, d['t1'], d['seg']))
for w in map(float, sys.argv[1:]):
    settings.IMAGE_LOSS_WEIGHTS['mind'] = w
    reg._steps = {}
    for pname, mv, ms, fv, fs in pairs:
        labels = [l for l in metrics.PAPER_LABELS if np.any(ms == l) and np.any(fs == l)]
        r = reg.register(mv, fv, **settings.CROSS_CONTRAST.as_kwargs())
        dsc = float(np.nanmean(metrics.dice(reg.warp_labels(ms, r.warp), fs, labels)[1]))
        before = float(np.nanmean(metrics.dice(ms, fs, labels)[1]))
        print(json.dumps({'w': w, 'pair': pname, 'before': round(before, 4), 'dice': round(dsc, 4), 'folding_pct': round(100 * float(metrics.folding_fraction(r.warp)), 3)}), flush=True)
