"""Choosing the MIND weight of --cross-contrast on training subjects only (models/README.md,
"Other contrasts"): sub-01, 03, 05 (prepared, ../prepared) made T2-like from their labels
(evaluation.t2_like), each registered to the other two's real T1 with settings.CROSS_CONTRAST
and the MIND weight of each variant; Dice over the 30 structures, mean over the 6 pairs.

    python models/eval/cross_contrast/mind_weight_training.py w10 w20 w5 opt40 lam1 w2.5 w1.25
"""
import itertools, json, sys, time, os
import numpy as np
from vxm_keras import settings, metrics
from vxm_keras.evaluation import load_scans, t2_like
from vxm_keras.registration import Registration
scans = load_scans([f'../prepared/sub-0{i}.npz' for i in (1, 3, 5)])
reg = Registration('models/vm2_scan2scan.h5')
pairs = [(f'{a[0]}->{b[0]}', t2_like(a[1], a[2], seed=k), a[2], b[1], b[2]) for k, (a, b) in enumerate(itertools.permutations(scans, 2))]
variants = {'w10': {}, 'w20': {'_w': 20.0}, 'w5': {'_w': 5.0}, 'w2.5': {'_w': 2.5}, 'w1.25': {'_w': 1.25}, 'w3.5': {'_w': 3.5}, 'opt40': {'optimize': 40}, 'lam1': {'lam': 1.0}}
for name in sys.argv[1:]:
    v = dict(variants[name]); w = v.pop('_w', 10.0)
    settings.IMAGE_LOSS_WEIGHTS['mind'] = w
    reg._steps = {}  # the weight is captured when a step is traced
    s = settings.CROSS_CONTRAST.replace(**v)
    dices, folds, secs = [], [], []
    for pname, mv, ms, fv, fs in pairs:
        labels = [l for l in metrics.PAPER_LABELS if np.any(ms == l) and np.any(fs == l)]
        t = time.perf_counter(); r = reg.register(mv, fv, **s.as_kwargs()); secs.append(time.perf_counter() - t)
        dices.append(float(np.nanmean(metrics.dice(reg.warp_labels(ms, r.warp), fs, labels)[1])))
        folds.append(float(metrics.folding_fraction(r.warp)))
    before = [float(np.nanmean(metrics.dice(ms, fs, [l for l in metrics.PAPER_LABELS if np.any(ms == l) and np.any(fs == l)])[1])) for _, _, ms, _, fs in pairs]
    print(json.dumps({'variant': name, 'dice': round(np.mean(dices), 4), 'per_pair': [round(d, 3) for d in dices], 'before': round(np.mean(before), 4), 'folding_pct': round(100 * np.mean(folds), 3), 'sec_median': round(float(np.median(secs)), 1)}), flush=True)
