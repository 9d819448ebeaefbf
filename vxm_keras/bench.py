"""Benchmark: speed and memory of vxm-keras, alternatives side by side in one run.

    python -m vxm_keras.bench                       # 80x96x112 and 160x192x224, writes bench/RESULTS.md
    python -m vxm_keras.bench --sizes 80x96x112 --repeats 3
    python -m vxm_keras.bench --quick               # tiny shapes: a smoke test of this script

Every measurement runs in a fresh Python process, so its peak resident
memory (``ru_maxrss``) is its own. Times are the best and the median of
``--repeats`` runs after a warm-up. Ratios compare two things measured in the
same process, which is what to trust on a noisy machine.
"""

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _timeit(fn, repeats):
    fn()  # warm-up: tracing, allocation
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return {'best': min(times), 'median': statistics.median(times)}


def _maxrss_mib():
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _model(name, shape, **kwargs):
    import vxm_keras
    return (vxm_keras.vm1 if name == 'vm1' else vxm_keras.vm2)(shape, **kwargs)


def _inputs(shape, batch=1, seed=0):
    import numpy as np
    rng = np.random.default_rng(seed)
    return [rng.random((batch, *shape, 1)).astype(np.float32) for _ in range(2)]


def work_forward(p):
    """Model forward per pair (the network and the warp), plain and with XLA."""
    import tensorflow as tf
    model = _model(p['model'], p['shape'])
    x = [tf.constant(a) for a in _inputs(p['shape'])]
    out = {}
    for jit in (False, True) if p.get('xla', True) else (False,):
        fn = tf.function(lambda a, b: model([a, b], training=False), jit_compile=jit)
        try:
            out['xla' if jit else 'plain'] = _timeit(lambda: [t.numpy() for t in fn(*x)], p['repeats'])
        except Exception as err:  # XLA may not compile every op on every platform
            out['xla' if jit else 'plain'] = {'error': f'{type(err).__name__}: {str(err)[:200]}'}
    return out


def work_train(p):
    """One training step (forward + backward + Adam), NCC + Grad, batch 1; and the bare
    U-Net's step (no warp, no image loss) to isolate what the warp and the losses add."""
    import keras
    import numpy as np
    import tensorflow as tf

    from vxm_keras import losses
    model = _model(p['model'], p['shape'])
    model.compile(optimizer=keras.optimizers.Adam(1e-4), loss=[losses.NCC(), losses.Grad('l2')],
                  loss_weights=[1.0, 1.0], jit_compile=p.get('jit', False))
    x = _inputs(p['shape'])
    zeros = np.zeros((1, *p['shape'], len(p['shape'])), np.float32)
    full = _timeit(lambda: model.train_on_batch(x, [x[1], zeros]), p['repeats'])
    if p.get('jit'):
        return {'full': full}
    unet = keras.Model(model.inputs, model.get_layer('flow').output)
    opt = keras.optimizers.Adam(1e-4)
    xs = [tf.constant(a) for a in x]

    @tf.function
    def unet_step():
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(unet(xs, training=True)))
        grads = tape.gradient(loss, unet.trainable_variables)
        opt.apply_gradients(zip(grads, unet.trainable_variables))
        return loss

    bare = _timeit(lambda: unet_step().numpy(), p['repeats'])
    return {'full': full, 'unet': bare}


def work_ncc(p):
    """NCC forward + backward: vxm_keras (separable box sums) against the original's dense
    9^3 convolution, same inputs, and the largest relative difference of the loss values."""
    import tensorflow as tf

    from vxm_keras import losses
    a, b = [tf.constant(v) for v in _inputs(p['shape'])]
    ncc = losses.NCC()
    ndim = len(p['shape'])

    def dense_ncc(y_true, y_pred, win=9, eps=1e-5):
        kernel = tf.ones([win] * ndim + [1, 1])
        conv = tf.nn.conv3d if ndim == 3 else tf.nn.conv2d
        strides = [1] * (ndim + 2)

        def box(v):
            return conv(v, kernel, strides, 'SAME')
        n = float(win ** ndim)
        s_i, s_j = box(y_true), box(y_pred)
        s_ii, s_jj, s_ij = box(y_true * y_true), box(y_pred * y_pred), box(y_true * y_pred)
        u_i, u_j = s_i / n, s_j / n
        cross = s_ij - u_j * s_i - u_i * s_j + u_i * u_j * n
        var_i = s_ii - 2 * u_i * s_i + u_i * u_i * n
        var_j = s_jj - 2 * u_j * s_j + u_j * u_j * n
        return -tf.reduce_mean(cross * cross / (var_i * var_j + eps))

    def step(fn):
        @tf.function
        def run():
            with tf.GradientTape() as tape:
                tape.watch(b)
                value = fn(a, b)
            return value, tape.gradient(value, b)
        return run

    ours, ref = step(lambda x, y: tf.reduce_mean(ncc.call(x, y))), step(dense_ncc)
    v_ours, v_ref = float(ours()[0]), float(ref()[0])
    return {'ours': _timeit(lambda: ours()[1].numpy(), p['repeats']),
            'dense': _timeit(lambda: ref()[1].numpy(), p['repeats']),
            'rel_diff': abs(v_ours - v_ref) / abs(v_ref)}


def work_warp(p):
    """SpatialTransformer (linear) against scipy.ndimage.map_coordinates (order 1): one
    single-channel volume, the same smooth random field."""
    import numpy as np
    import tensorflow as tf
    from scipy.ndimage import gaussian_filter, map_coordinates

    from vxm_keras.layers import SpatialTransformer
    shape = tuple(p['shape'])
    rng = np.random.default_rng(0)
    vol = rng.random(shape).astype(np.float32)
    disp = np.stack([gaussian_filter(rng.standard_normal(shape), 4) * 20 for _ in shape], -1).astype(np.float32)
    layer = SpatialTransformer()
    tv, td = tf.constant(vol[None, ..., None]), tf.constant(disp[None])
    fn = tf.function(lambda: layer([tv, td]))
    grid = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing='ij')

    def scipy_warp():
        coords = [g + disp[..., d] for d, g in enumerate(grid)]
        return map_coordinates(vol, coords, order=1, mode='nearest')
    return {'ours': _timeit(lambda: fn().numpy(), p['repeats']),
            'scipy': _timeit(scipy_warp, max(1, p['repeats'] // 2))}


def work_register(p):
    """register.py end to end, in this process: load volumes, load the model, predict,
    warp labels, write outputs (Python start-up and imports are timed by the parent)."""
    import runpy
    argv = ['register.py', '--moving', p['moving'], '--fixed', p['fixed'], '--model', p['model_file'],
            '--moved', p['moved'], '--moving-seg', p['moving'], '--moved-seg', p['moved_seg'], '--overwrite']
    if p.get('batch_dir'):
        argv = ['register.py', '--moving', p['batch_dir'], '--fixed', p['fixed'], '--model', p['model_file'],
                '--out-dir', p['out_dir'], '--overwrite']
    sys.argv = argv
    import contextlib
    import io
    import re
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            runpy.run_path(os.path.join(REPO, 'register.py'), run_name='__main__')
    except SystemExit as exit_:
        if exit_.code not in (0, None):
            raise
    # register.py prints 'load X s, predict Y s, write Z s'
    parts = re.search(r'load ([\d.]+) s, predict ([\d.]+) s, write ([\d.]+) s', printed.getvalue())
    return {'parts': [float(v) for v in parts.groups()]} if parts else {}


def work_ants(p):
    """ANTs SyN through antspyx (``type_of_transform='SyN'``: its default affine stage, then
    SyN) on a real prepared pair; the moving labels follow with nearest neighbour."""
    import ants
    import numpy as np

    from vxm_keras.io import load_volfile
    fixed = ants.from_numpy(load_volfile(p['fixed']).astype(np.float32))
    moving = ants.from_numpy(load_volfile(p['moving']).astype(np.float32))
    moving_seg = ants.from_numpy(load_volfile(p['moving'], key='seg').astype(np.float32))
    t = time.perf_counter()
    reg = ants.registration(fixed, moving, type_of_transform='SyN')
    moved_seg = ants.apply_transforms(fixed, moving_seg, reg['fwdtransforms'], interpolator='nearestNeighbor')
    seconds = time.perf_counter() - t
    np.save(p['moved_seg'], np.rint(moved_seg.numpy()).astype(np.int32))
    return {'seconds': seconds}


WORKERS = {'forward': work_forward, 'train': work_train, 'ncc': work_ncc, 'warp': work_warp,
           'register': work_register, 'ants': work_ants}


def _run_worker(kind, params):
    """Run one measurement in a fresh process; returns its dict plus wall time and peak RSS."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3')
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, '-m', 'vxm_keras.bench', '--worker', kind, json.dumps(params)],
                          capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        return {'error': proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else 'failed'}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result['wall'] = wall
    return result


def machine_description():
    import keras
    import numpy as np
    import tensorflow as tf
    cpu = platform.processor() or 'unknown CPU'
    try:
        with open('/proc/cpuinfo') as f:
            names = [line.split(':', 1)[1].strip() for line in f if line.startswith('model name')]
        if names:
            cpu = names[0]
    except OSError:
        pass
    gpus = tf.config.list_physical_devices('GPU')
    return (f'{cpu}; {os.cpu_count()} logical cores; '
            f'GPU: {", ".join(g.name for g in gpus) if gpus else "none"}; '
            f'Python {platform.python_version()}, TensorFlow {tf.__version__}, Keras {keras.__version__}, '
            f'NumPy {np.__version__}; {platform.platform()}')


def _fmt(t):
    if not isinstance(t, dict) or 'best' not in t:
        return 'n/a'
    return f'{t["best"]:.3f} / {t["median"]:.3f}'


SHARED_FREESURFER = os.path.join(os.path.dirname(REPO), 'shared', 'data', 'freesurfer')
PAPER_CPU_SECONDS = 144.0  # VM-2 per pair on a CPU, CVPR 2018 Table 1
SHORT_BATCH = 2  # scans in the short batch run that the long one is compared with


def _shipped_scans(shape):
    """The shipped example scan, atlas and atlas labels, resampled to ``shape``.

    Real brains rather than noise, so reading and writing cost what they cost on
    scans (noise does not compress: it takes 10x longer to write).
    """
    import numpy as np
    from scipy import ndimage

    from vxm_keras.io import load_volfile
    data = os.path.join(REPO, 'data')
    moving = load_volfile(os.path.join(data, 'example_moving.npz')).astype(np.float32)
    fixed = load_volfile(os.path.join(data, 'atlas.npz')).astype(np.float32)
    seg = load_volfile(os.path.join(data, 'atlas.npz'), key='seg').astype(np.int32)
    if moving.shape != tuple(shape):
        factors = [n / m for n, m in zip(shape, moving.shape)]
        moving, fixed = (ndimage.zoom(v, factors, order=1, grid_mode=True, mode='nearest') for v in (moving, fixed))
        seg = ndimage.zoom(seg, factors, order=0, grid_mode=True, mode='nearest')
    return moving, fixed, seg


def _registration_rows(tmp, shape, models, repeats, batch_scans, xla=True):
    """Forward, training step and register.py end to end for each model at one size."""
    import vxm_keras
    from vxm_keras.io import save_volfile
    tag = 'x'.join(map(str, shape))
    moving_vol, fixed_vol, seg = _shipped_scans(shape)
    moving, fixed = os.path.join(tmp, f'm{tag}.npz'), os.path.join(tmp, f'f{tag}.npz')
    save_volfile(moving, moving_vol, extra={'seg': seg})
    save_volfile(fixed, fixed_vol)
    # a short and a long list: the difference of their wall times is the cost of one more scan
    # once start-up, imports and model loading are paid
    batch_dir, short_dir = os.path.join(tmp, f'batch{tag}'), os.path.join(tmp, f'short{tag}')
    os.makedirs(batch_dir)
    os.makedirs(short_dir)
    for i in range(batch_scans):
        vol = (moving_vol, fixed_vol)[i % 2]
        save_volfile(os.path.join(batch_dir, f's{i}.npz'), vol)
        if i < SHORT_BATCH:
            save_volfile(os.path.join(short_dir, f's{i}.npz'), vol)
    blocks = {'tag': tag, 'ncc': _run_worker('ncc', {'shape': shape, 'repeats': repeats}),
              'warp': _run_worker('warp', {'shape': shape, 'repeats': repeats})}
    rows = []
    for name in models:
        model_file = os.path.join(tmp, f'{name}{tag}.h5')
        vxm_keras.save_model(_model(name, shape), model_file, overwrite=True)
        train_repeats = max(1, repeats - 1)
        row = {'tag': tag, 'model': name,
               'forward': _run_worker('forward', {'model': name, 'shape': shape, 'repeats': repeats, 'xla': xla}),
               'train': _run_worker('train', {'model': name, 'shape': shape, 'repeats': train_repeats}),
               'train_xla': _run_worker('train', {'model': name, 'shape': shape, 'repeats': train_repeats,
                                                  'jit': True}) if xla else {}}
        reg_params = {'moving': moving, 'fixed': fixed, 'model_file': model_file,
                      'moved': os.path.join(tmp, 'moved.npz'), 'moved_seg': os.path.join(tmp, 'ms.npz')}
        row['register'] = [_run_worker('register', reg_params) for _ in range(repeats)]
        row['batch'] = _run_worker('register', dict(reg_params, batch_dir=batch_dir,
                                                    out_dir=os.path.join(tmp, f'out{tag}{name}')))
        row['batch_short'] = (_run_worker('register', dict(reg_params, batch_dir=short_dir,
                                                           out_dir=os.path.join(tmp, f'short{tag}{name}')))
                              if batch_scans > SHORT_BATCH else {})
        rows.append(row)
    return rows, blocks


def _prepared_pair(tmp, pair):
    """A real (moving, fixed) pair of prepared .npz scans: the given paths, or sub-07 and
    sub-08 of ``../shared/data/freesurfer`` prepared on the fly; None when there is none."""
    if pair:
        return pair
    subjects = [os.path.join(SHARED_FREESURFER, s) for s in ('sub-07', 'sub-08')]
    if not all(os.path.isdir(s) for s in subjects):
        return None
    from vxm_keras.prepare import prepare_freesurfer_subject, write_prepared
    out = []
    for s in subjects:
        path = os.path.join(tmp, os.path.basename(s) + '.npz')
        write_prepared(prepare_freesurfer_subject(s), path)
        out.append(path)
    return out


def _unet_downsize(model_file):
    """The ``unet_downsize`` a saved model was built with (1 when the file does not say)."""
    import h5py
    with h5py.File(model_file, 'r') as f:
        config = f.attrs.get('model_config')
    if config is None:
        return 1
    config = json.loads(config.decode() if isinstance(config, bytes) else config)
    return int(config.get('config', {}).get('unet_downsize', 1))


def _peer_rows(tmp, pair, model_file, repeats):
    """VM-2 (register.py end to end) and ANTs SyN on the same real pair: seconds and Dice."""
    import importlib.util

    import numpy as np

    from vxm_keras.io import load_volfile
    from vxm_keras.metrics import PAPER_LABELS, dice
    moving, fixed = pair
    moving_seg, fixed_seg = load_volfile(moving, key='seg'), load_volfile(fixed, key='seg')
    labels = [lab for lab in PAPER_LABELS if np.any(moving_seg == lab) and np.any(fixed_seg == lab)]

    def mean_dice(seg):
        return float(np.nanmean(dice(seg, fixed_seg, labels)[1]))

    rows = [{'method': 'affine only (prepared scans)', 'seconds': None, 'dice': mean_dice(moving_seg)}]
    moved_seg = os.path.join(tmp, 'peer_vxm_seg.npz')
    regs = [_run_worker('register', {'moving': moving, 'fixed': fixed, 'model_file': model_file,
                                     'moved': os.path.join(tmp, 'peer_vxm.npz'), 'moved_seg': moved_seg})
            for _ in range(repeats)]
    walls = [r['wall'] for r in regs if 'wall' in r]
    downsize = _unet_downsize(model_file)
    where = 'U-Net at full resolution' if downsize == 1 else f'U-Net at 1/{downsize} resolution'
    rows.append({'method': f'VM-2 {os.path.basename(model_file)} ({where}), register.py end to end',
                 'seconds': min(walls) if walls else None,
                 'dice': mean_dice(load_volfile(moved_seg)) if walls else None,
                 'error': None if walls else regs[0].get('error')})
    if importlib.util.find_spec('ants') is None:
        rows.append({'method': 'ANTs SyN (antspyx)', 'seconds': None, 'dice': None,
                     'error': "antspyx is not installed: pip install -e '.[peers]'"})
        return rows, len(labels)
    ants_seg = os.path.join(tmp, 'peer_ants_seg.npy')
    res = _run_worker('ants', {'moving': moving, 'fixed': fixed, 'moved_seg': ants_seg})
    rows.append({'method': "ANTs SyN (antspyx, type_of_transform='SyN', default settings)",
                 'seconds': res.get('seconds'), 'maxrss_mib': res.get('maxrss_mib'),
                 'dice': mean_dice(np.load(ants_seg)) if 'seconds' in res else None, 'error': res.get('error')})
    return rows, len(labels)


def _best(times):
    return {'best': min(times), 'median': statistics.median(times)} if times else None


def run_benchmark(sizes, models, repeats, out_path, batch_scans, peers=False, pair=None,
                  peer_model=os.path.join(REPO, 'models', 'vm2_scan2scan.h5'), note=None, xla=True):
    lines = ['# vxm-keras benchmark', '', f'Machine: {machine_description()}', '',
             *([f'Note: {note}', ''] if note else []),
             f'Command: `{shlex.join(["python", "-m", "vxm_keras.bench", *sys.argv[1:]])}`', '',
             f'Times in seconds, best / median of {repeats} runs after a warm-up; '
             'memory is the peak resident set of the measuring process (MiB). Every measurement runs '
             'in its own process; ratios compare numbers of this run.', '']
    rows, blocks, peer = [], [], None
    with tempfile.TemporaryDirectory() as tmp:
        for shape in sizes:
            r, b = _registration_rows(tmp, shape, models, repeats, batch_scans, xla=xla)
            rows += r
            blocks.append(b)
        if peers:
            real = _prepared_pair(tmp, pair)
            peer = _peer_rows(tmp, real, peer_model, repeats) if real else None

    lines += ['## Registration (random weights; the shipped example scan, atlas and atlas labels)', '',
              '| size | model | forward | forward XLA | register.py end to end | end to end / forward | '
              'start-up + imports | read + model load | predict + label warp | write | '
              'peak MiB forward | peak MiB register.py | batch: s per scan | batch per scan / forward | '
              'batch: s per added scan | added scan / forward |',
              '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|']
    for row in rows:
        plain = row['forward'].get('plain', {})
        regs = [r for r in row['register'] if 'wall' in r]
        e2e = _best([r['wall'] for r in regs])
        best_run = min(regs, key=lambda r: r['wall']) if regs else {}
        parts = best_run.get('parts')
        start = f'{best_run["wall"] - sum(parts):.2f}' if parts else 'n/a'
        part_cells = [f'{v:.2f}' for v in parts] if parts else ['n/a'] * 3
        ratio = f'{e2e["best"] / plain["best"]:.2f}' if e2e and 'best' in plain else 'n/a'
        batch = row['batch']
        per_scan = batch['wall'] / batch_scans if 'wall' in batch else None
        batch_ratio = f'{per_scan / plain["best"]:.2f}' if per_scan and 'best' in plain else 'n/a'
        short = row['batch_short']
        added = ((batch['wall'] - short['wall']) / (batch_scans - SHORT_BATCH)
                 if 'wall' in batch and 'wall' in short else None)
        added_ratio = f'{added / plain["best"]:.2f}' if added and 'best' in plain else 'n/a'
        peak_reg = max((r.get('maxrss_mib', 0) for r in regs), default=0)
        lines.append(f'| {row["tag"]} | {row["model"]} | {_fmt(plain)} | {_fmt(row["forward"].get("xla"))} | '
                     f'{_fmt(e2e)} | {ratio} | {start} | {" | ".join(part_cells)} | '
                     f'{row["forward"].get("maxrss_mib", 0):.0f} | {peak_reg:.0f} | '
                     f'{"n/a" if per_scan is None else f"{per_scan:.2f}"} | {batch_ratio} | '
                     f'{"n/a" if added is None else f"{added:.2f}"} | {added_ratio} |')
    lines += ['', 'Forward: the model (U-Net, integration if any, warp) on one pair, in a `tf.function`. '
              'End to end: `register.py` with moving scan, labels and outputs as files, including Python '
              'start-up, imports, reading, model loading, prediction, nearest-neighbour label warp and '
              f'atomic writes. Batch: `register.py --moving DIR --out-dir OUT` over {batch_scans} scans '
              '(one process; reading and writing overlap prediction), wall time per scan including start-up. '
              f'Added scan: the wall time of that run minus that of the same command over {SHORT_BATCH} scans, '
              f'per extra scan: what one more scan costs once start-up, imports and model loading are paid '
              '(reading, prediction, warp and writing).',
              '', '## Training step (batch 1, NCC + Grad, Adam)', '',
              '| size | model | step | step XLA | bare U-Net step | warp + losses over the U-Net | '
              'peak MiB | peak MiB XLA |', '|---|---|---|---|---|---|---|---|']
    for row in rows:
        train, xla = row['train'], row['train_xla']
        full, unet = train.get('full', {}), train.get('unet', {})
        over = f'{100 * (full["best"] / unet["best"] - 1):.0f} %' if 'best' in full and 'best' in unet else 'n/a'
        xla_peak = f'{xla["maxrss_mib"]:.0f}' if 'maxrss_mib' in xla else 'n/a'
        lines.append(f'| {row["tag"]} | {row["model"]} | {_fmt(full)} | {_fmt(xla.get("full"))} | {_fmt(unet)} | '
                     f'{over} | {train.get("maxrss_mib", 0):.0f} | {xla_peak} |')
    lines += ['', '## Building blocks', '',
              '| size | NCC fwd+bwd (separable) | NCC fwd+bwd dense 9^3 (original) | speed-up | relative '
              'difference of the loss | warp (SpatialTransformer) | scipy map_coordinates | speed-up |',
              '|---|---|---|---|---|---|---|---|']
    for b in blocks:
        ncc, warp = b['ncc'], b['warp']
        sp = f'{ncc["dense"]["best"] / ncc["ours"]["best"]:.1f}x' if 'ours' in ncc else 'n/a'
        wp = f'{warp["scipy"]["best"] / warp["ours"]["best"]:.1f}x' if 'ours' in warp else 'n/a'
        rel = f'{ncc["rel_diff"]:.1e}' if 'rel_diff' in ncc else 'n/a'
        lines.append(f'| {b["tag"]} | {_fmt(ncc.get("ours"))} | {_fmt(ncc.get("dense"))} | {sp} | {rel} | '
                     f'{_fmt(warp.get("ours"))} | {_fmt(warp.get("scipy"))} | {wp} |')
    if peers:
        lines += ['', '## Peers on a real pair', '']
        if peer is None:
            lines.append(f'No real pair: pass --pair MOVING.npz FIXED.npz or provide {SHARED_FREESURFER}.')
        else:
            peer_rows, n_labels = peer
            vxm = next((r for r in peer_rows if r['method'].startswith('VM-2')), None)
            lines += [f'Moving {os.path.basename(pair[0]) if pair else "sub-07"} to fixed '
                      f'{os.path.basename(pair[1]) if pair else "sub-08"} (prepared, affinely aligned '
                      f'to MNI305); mean Dice over the {n_labels} of the 30 structures present in both.', '',
                      '| method | seconds | x slower than VM-2 | Dice |', '|---|---|---|---|']
            for r in peer_rows:
                secs = 'n/a' if r['seconds'] is None else f'{r["seconds"]:.1f}'
                slower = (f'{r["seconds"] / vxm["seconds"]:.1f}' if r['seconds'] and vxm and vxm['seconds']
                          else '')
                d = 'n/a' if r['dice'] is None else f'{r["dice"]:.3f}'
                lines.append(f'| {r["method"]} | {secs} | {slower} | {d} |' + (f' {r["error"]}' if r.get('error') else ''))
            if vxm and vxm['seconds']:
                lines += ['', f'The CVPR 2018 paper reports VM-2 at {PAPER_CPU_SECONDS:.0f} s per pair on a CPU: '
                          f'{PAPER_CPU_SECONDS / vxm["seconds"]:.1f}x the end-to-end time here.']
    errors = [(row['tag'], row['model'], k, row[k]['error']) for row in rows
              for k in ('forward', 'train', 'train_xla', 'batch', 'batch_short') if 'error' in row[k]]
    errors += [(b['tag'], '', k, b[k]['error']) for b in blocks for k in ('ncc', 'warp') if 'error' in b[k]]
    errors += [(row['tag'], row['model'], 'register', r['error']) for row in rows for r in row['register']
               if 'error' in r]
    if errors:
        lines += ['', '## Errors', ''] + [f'- {t} {m} {k}: {e}' for t, m, k, e in errors]
    text = '\n'.join(lines) + '\n'
    print(text)
    if out_path:
        from vxm_keras.io import atomic_path
        os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
        with atomic_path(out_path) as tmp, open(tmp, 'w') as f:
            f.write(text)
    return text


def main(argv=None):
    parser = argparse.ArgumentParser(prog='python -m vxm_keras.bench', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--sizes', nargs='+', default=['80x96x112', '160x192x224'])
    parser.add_argument('--models', nargs='+', default=['vm1', 'vm2'], choices=['vm1', 'vm2'])
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--batch-scans', type=int, default=10,
                        help=f'scans in the batch-throughput run (more than {SHORT_BATCH} for the added-scan cost)')
    parser.add_argument('--out', default=os.path.join(REPO, 'bench', 'RESULTS.md'))
    parser.add_argument('--quick', action='store_true', help='tiny shapes, 1 repeat: checks the script runs')
    parser.add_argument('--peers', action='store_true',
                        help="also ANTs SyN (pip install -e '.[peers]') and VM-2 on a real pair")
    parser.add_argument('--pair', nargs=2, metavar=('MOVING', 'FIXED'), default=None,
                        help='prepared .npz scans (vol, seg) for --peers (default: sub-07 to sub-08 of '
                             '../shared/data/freesurfer, prepared on the fly)')
    parser.add_argument('--peer-model', dest='peer_model', default=os.path.join(REPO, 'models', 'vm2_scan2scan.h5'),
                        help='the VM-2 model run on that pair (default models/vm2_scan2scan.h5)')
    parser.add_argument('--no-xla', dest='xla', action='store_false',
                        help='skip the XLA runs (on CPUs they take most of the benchmark time)')
    parser.add_argument('--note', default=None, help='a line for the report, e.g. what else ran on the machine')
    parser.add_argument('--worker', nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        kind, params = args.worker
        params = json.loads(params)
        params['shape'] = tuple(params.get('shape', ()))
        result = WORKERS[kind](params)
        result['maxrss_mib'] = _maxrss_mib()
        print(json.dumps(result))
        return 0
    if args.quick:
        sizes, repeats, models = [(32, 32, 32)], 1, ['vm1']
    else:
        sizes = [tuple(int(v) for v in s.split('x')) for s in args.sizes]
        repeats, models = args.repeats, args.models
    run_benchmark(sizes, models, repeats, args.out, args.batch_scans, peers=args.peers, pair=args.pair,
                  peer_model=args.peer_model, note=args.note, xla=args.xla)
    return 0


if __name__ == '__main__':
    sys.exit(main())
