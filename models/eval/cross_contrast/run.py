"""Cross-contrast experiment (models/README.md, "Other contrasts") on ../shared/data/multicontrast
(MNI152 T1/T2 + wmparc labels): known smooth deformations applied to the moving scan and labels, registered back to the
undeformed other contrast; Dice over the paper's structures present, folding, seconds."""
import json, os, sys, time
import numpy as np
import tensorflow as tf
import vxm_keras
import vxm_keras.shipped
from vxm_keras import augment, spatial, metrics
from vxm_keras.io import load_volfile
from vxm_keras.prepare import resample, normalise
from vxm_keras.registration import Registration

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
D = os.path.join(REPO, '..', 'shared', 'data', 'multicontrast')
cache = os.environ.get('CACHE', '/tmp/vxm_multicontrast.npz')  # the T1, T2, labels on the model grid
if not os.path.exists(cache):
    t1, aff = load_volfile(f'{D}/MNI152_T1_1mm_brain.nii.gz', ret_affine=True)
    t2 = load_volfile(f'{D}/MNI152_T2_1mm_brain.nii.gz')
    lab = metrics.wmparc_to_aseg(np.rint(load_volfile(f'{D}/Avgwmparc.nii.gz')))
    v1 = normalise(resample(t1.astype(np.float32), aff))
    v2 = normalise(resample(t2.astype(np.float32), aff))
    seg = resample(lab, aff, order=0)
    np.savez_compressed(cache, t1=v1, t2=v2, seg=seg)
d = np.load(cache)
vols = {'T1': d['t1'], 'T2': d['t2']}
seg = d['seg']
labels = [l for l in metrics.PAPER_LABELS if np.any(seg == l)]

aug = augment.Augmentation(rotation=0, scaling=0, shear=0, translation=0, warp_std=4.0, warp_spacing=24, flip_axis=None)
def deform(k, vol, s):
    disp = augment.random_deformation(tf.constant([5, k], tf.int64), 1, vol.shape, aug)
    mv = spatial.transform(vol[None, ..., None], disp, 'linear').numpy()[0, ..., 0]
    ms = spatial.transform(s[None, ..., None].astype(np.float32), disp, 'nearest').numpy()[0, ..., 0]
    return mv, np.rint(ms).astype(np.int32)

reg = Registration.load(vxm_keras.shipped.shipped_file('models/vm2_scan2scan.h5')) if hasattr(Registration, 'load') else None
reg = Registration(vxm_keras.shipped.shipped_file('models/vm2_scan2scan.h5'))

def run(method, moving, fixed):
    """method: ('cross',) for settings.CROSS_CONTRAST (--cross-contrast), else (image_loss, start[, fine
    steps]) with start 'net' or 'zero'; returns the Result."""
    if method == ('cross',):
        from vxm_keras.settings import CROSS_CONTRAST
        return reg.register(moving, fixed, **CROSS_CONTRAST.as_kwargs())
    loss, start = method[:2]
    fine = int(method[2]) if len(method) > 2 else None
    return reg.register(moving, fixed, optimize=20, image_loss=loss, network=start == 'net', fine=fine)


pairs = []
for k in range(int(os.environ.get("NDEF", 1))):
    for mc, fc in [('T2', 'T1'), ('T1', 'T2'), ('T1', 'T1')]:
        mv, ms = deform(k, vols[mc], seg)
        pairs.append((f'{mc}->{fc} #{k}', mv, ms, vols[fc]))
methods = [tuple(m.split(':')) for m in sys.argv[1:]]
for name, mv, ms, fixed in pairs:
    before = np.nanmean(metrics.dice(ms, seg, labels)[1])
    row = {'pair': name, 'before': round(float(before), 4)}
    for m in methods:
        if m == ('syn',):
            from vxm_keras.evaluation import ants_syn
            moved, sec = ants_syn(mv, fixed, ms)
            row['syn'] = (round(float(np.nanmean(metrics.dice(moved, seg, labels)[1])), 4), None, round(sec, 1))
            continue
        run(m, mv, fixed)  # trace
        t = time.perf_counter()
        warp = run(m, mv, fixed).warp
        sec = time.perf_counter() - t
        dsc = metrics.dice(reg.warp_labels(ms, warp), seg, labels)
        dsc = np.nanmean(dsc[1])
        fold = metrics.folding_fraction(warp)
        row[':'.join(m)] = (round(float(dsc), 4), round(100 * float(fold), 3), round(sec, 1))
    print(json.dumps(row), flush=True)

# usage: NDEF=2 python models/eval/cross_contrast/run.py ncc:net mind:zero mind:zero:0 cross syn
#   (one JSON line per pair: Dice over the paper's structures present, folding %, seconds)
