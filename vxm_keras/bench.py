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
    for jit in (False, True):
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
    import numpy as np
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
    try:
        runpy.run_path(os.path.join(REPO, 'register.py'), run_name='__main__')
    except SystemExit as exit_:
        if exit_.code not in (0, None):
            raise
    return {}


WORKERS = {'forward': work_forward, 'train': work_train, 'ncc': work_ncc, 'warp': work_warp,
           'register': work_register}


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


def run_benchmark(sizes, models, repeats, out_path, batch_scans):
    import numpy as np

    import vxm_keras
    from vxm_keras.io import save_volfile

    lines = ['# vxm-keras benchmark', '', f'Machine: {machine_description()}', '',
             f'Times in seconds, best / median of {repeats} runs after a warm-up; '
             'memory is the peak resident set of the measuring process.', '']
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for shape in sizes:
            tag = 'x'.join(map(str, shape))
            rng = np.random.default_rng(0)
            moving, fixed = os.path.join(tmp, f'm{tag}.npz'), os.path.join(tmp, f'f{tag}.npz')
            save_volfile(moving, rng.random(shape).astype(np.float32), extra={'seg': rng.integers(0, 5, shape)})
            save_volfile(fixed, rng.random(shape).astype(np.float32))
            batch_dir = os.path.join(tmp, f'batch{tag}')
            os.makedirs(batch_dir)
            for i in range(batch_scans):
                save_volfile(os.path.join(batch_dir, f's{i}.npz'), rng.random(shape).astype(np.float32))
            ncc = _run_worker('ncc', {'shape': shape, 'repeats': repeats})
            warp = _run_worker('warp', {'shape': shape, 'repeats': repeats})
            for name in models:
                model_file = os.path.join(tmp, f'{name}{tag}.h5')
                vxm_keras.save_model(_model(name, shape), model_file, overwrite=True)
                fwd = _run_worker('forward', {'model': name, 'shape': shape, 'repeats': repeats})
                train = _run_worker('train', {'model': name, 'shape': shape, 'repeats': max(1, repeats - 1)})
                reg_params = {'moving': moving, 'fixed': fixed, 'model_file': model_file,
                              'moved': os.path.join(tmp, 'moved.npz'), 'moved_seg': os.path.join(tmp, 'ms.npz')}
                regs = [_run_worker('register', reg_params) for _ in range(repeats)]
                reg_walls = [r['wall'] for r in regs if 'wall' in r]
                batch = _run_worker('register', dict(reg_params, batch_dir=batch_dir,
                                                     out_dir=os.path.join(tmp, f'out{tag}{name}')))
                rows.append((tag, name, fwd, train, regs, reg_walls, batch, ncc, warp))

    lines += ['## Registration', '',
              '| size | model | forward | forward XLA | register.py end to end | end to end / forward | '
              'peak MiB forward | peak MiB register.py | batch scans/min |',
              '|---|---|---|---|---|---|---|---|---|']
    for tag, name, fwd, train, regs, reg_walls, batch, ncc, warp in rows:
        plain = fwd.get('plain', {})
        e2e = {'best': min(reg_walls), 'median': statistics.median(reg_walls)} if reg_walls else None
        ratio = f'{e2e["best"] / plain["best"]:.2f}' if e2e and 'best' in plain else 'n/a'
        spm = f'{60 * batch_scans / batch["wall"]:.1f}' if 'wall' in batch else 'n/a'
        peak_reg = max((r.get('maxrss_mib', 0) for r in regs), default=0)
        lines.append(f'| {tag} | {name} | {_fmt(plain)} | {_fmt(fwd.get("xla"))} | {_fmt(e2e)} | {ratio} | '
                     f'{fwd.get("maxrss_mib", 0):.0f} | {peak_reg:.0f} | {spm} |')
    lines += ['', 'End to end includes Python start-up, imports, reading, model loading, prediction, '
              'label warping and atomic writes; batch mode registers '
              f'{batch_scans} scans in one process.', '',
              '## Training step (batch 1, NCC + Grad, Adam)', '',
              '| size | model | step | bare U-Net step | warp + losses overhead | peak MiB |',
              '|---|---|---|---|---|---|']
    for tag, name, fwd, train, *_ in rows:
        full, unet = train.get('full', {}), train.get('unet', {})
        over = f'{100 * (full["best"] / unet["best"] - 1):.0f} %' if 'best' in full and 'best' in unet else 'n/a'
        lines.append(f'| {tag} | {name} | {_fmt(full)} | {_fmt(unet)} | {over} | {train.get("maxrss_mib", 0):.0f} |')
    lines += ['', '## Building blocks (forward + backward for NCC)', '',
              '| size | NCC (separable) | NCC dense 9^3 (original) | speed-up | relative difference | '
              'warp (SpatialTransformer) | scipy map_coordinates | speed-up |',
              '|---|---|---|---|---|---|---|---|']
    seen = set()
    for tag, name, fwd, train, regs, reg_walls, batch, ncc, warp in rows:
        if tag in seen:
            continue
        seen.add(tag)
        sp = f'{ncc["dense"]["best"] / ncc["ours"]["best"]:.1f}x' if 'ours' in ncc else 'n/a'
        wp = f'{warp["scipy"]["best"] / warp["ours"]["best"]:.1f}x' if 'ours' in warp else 'n/a'
        rel = f'{ncc["rel_diff"]:.1e}' if 'rel_diff' in ncc else 'n/a'
        lines.append(f'| {tag} | {_fmt(ncc.get("ours"))} | {_fmt(ncc.get("dense"))} | {sp} | {rel} | '
                     f'{_fmt(warp.get("ours"))} | {_fmt(warp.get("scipy"))} | {wp} |')
    errors = [(r[0], r[1], k, v['error']) for r in rows for k, v in
              zip(('forward', 'train', 'batch', 'ncc', 'warp'), (r[2], r[3], r[6], r[7], r[8]))
              if isinstance(v, dict) and 'error' in v]
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
    parser.add_argument('--batch-scans', type=int, default=4, help='scans in the batch-throughput run')
    parser.add_argument('--out', default=os.path.join(REPO, 'bench', 'RESULTS.md'))
    parser.add_argument('--quick', action='store_true', help='tiny shapes, 1 repeat: checks the script runs')
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
    run_benchmark(sizes, models, repeats, args.out, args.batch_scans)
    return 0


if __name__ == '__main__':
    sys.exit(main())
