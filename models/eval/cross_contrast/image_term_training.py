"""Choosing the image term of --cross-contrast on training subjects only (models/README.md,
"Other contrasts"): sub-01, 03, 05 (prepared, ../prepared) made T2-like from their labels
(evaluation.t2_like), each registered to the other two's real T1 with settings.CROSS_CONTRAST
and the image term, weight and (NGF) edge threshold of each variant; Dice over the 30
structures, mean over the 6 pairs, seconds the median a pair.

    python models/eval/cross_contrast/image_term_training.py mind:2.5 ngf:1:0.5 ngf:2:0.5 ...

A variant is ``term:weight[:eta]``; ``...+fine=N`` etc. change a refinement setting; ``same``
registers the real T1 of each moving subject instead with register.py's defaults (the same pairs
in one contrast, the reference; ``same+network=False`` from the affine).
"""
import itertools, json, sys, time
import numpy as np
from vxm_keras import losses, metrics, settings
from vxm_keras.evaluation import load_scans, t2_like
from vxm_keras.registration import Registration

scans = load_scans([f'../prepared/sub-0{i}.npz' for i in (1, 3, 5)])
reg = Registration('models/vm2_scan2scan.h5')
pairs = [(f'{a[0]}->{b[0]}', t2_like(a[1], a[2], seed=k), a[2], b[1], b[2], a[1])
         for k, (a, b) in enumerate(itertools.permutations(scans, 2))]
for variant in sys.argv[1:]:
    same = variant.split('+')[0] == 'same'
    chosen = [(p[0], p[5]) + p[2:5] for p in pairs] if same else [p[:5] for p in pairs]
    spec, *changes = variant.replace('same', 'ncc:1', 1).split('+')
    term, weight, *eta = spec.split(':')
    settings.IMAGE_LOSS_WEIGHTS[term] = float(weight)
    if term == 'ngf':
        losses.IMAGE_LOSSES['ngf'] = lambda eta=float(eta[0]) if eta else 0.5: losses.NGF(eta)
    reg._steps = {}  # the weight and the loss are captured when a step is traced
    changed = {k: (v == 'True') if isinstance(getattr(settings.DEFAULT, k), bool) else type(getattr(settings.DEFAULT, k))(v)
               for k, v in (c.split('=') for c in changes)}
    s = (settings.DEFAULT if same else settings.CROSS_CONTRAST.replace(image_loss=term)).replace(**changed)
    dices, folds, secs = [], [], []
    for pname, mv, ms, fv, fs in chosen:
        labels = [l for l in metrics.PAPER_LABELS if np.any(ms == l) and np.any(fs == l)]
        t = time.perf_counter()
        r = reg.register(mv, fv, **s.as_kwargs())
        secs.append(time.perf_counter() - t)
        dices.append(float(np.nanmean(metrics.dice(reg.warp_labels(ms, r.warp), fs, labels)[1])))
        folds.append(float(metrics.folding_fraction(r.warp)))
    print(json.dumps({'variant': variant, 'dice': round(np.mean(dices), 4), 'per_pair': [round(d, 3) for d in dices],
                      'folding_pct': round(100 * np.mean(folds), 3), 'sec_median': round(float(np.median(secs)), 1)}),
          flush=True)
