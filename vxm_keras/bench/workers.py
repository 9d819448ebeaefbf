"""The benchmark's measurements, each run in a fresh Python process (its peak memory is its own).

``run_worker(kind, params)`` starts ``python -m vxm_keras.bench.workers KIND PARAMS_JSON`` and
returns the JSON dict the worker prints: timings (best and median of ``repeats`` runs after a
warm-up), plus ``wall`` (the process's wall time, start-up and imports included) and
``maxrss_mib``. Workers call the package's code directly, never parse what a command prints.
"""

import json
import os
import statistics
import subprocess
import sys
import time


def _timeit(fn, repeats):
    fn()  # warm-up: tracing, allocation
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return {'best': min(times), 'median': statistics.median(times)}


def global_ncc(a, b):
    """Pearson correlation of two images over all voxels."""
    import numpy as np
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


def environment(changes=None):
    """This process's environment with ``changes`` applied (a value ``None`` removes the variable)."""
    env = dict(os.environ)
    for key, value in (changes or {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


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
    """register.py's own code (``commands.register.run``) in this process: read the pair, load the
    model, predict, warp the labels, write the outputs; the command reports the seconds of those
    parts in ``timings``. Python start-up and imports are what the process's wall time adds."""
    from vxm_keras.cli import execute
    from vxm_keras.commands import register
    argv = ['--moving', p['moving'], '--fixed', p['fixed'], '--model', p['model_file'],
            '--moved', p['moved'], '--moving-seg', p['moving'], '--moved-seg', p['moved_seg'], '--overwrite']
    if p.get('batch_dir'):
        argv = ['--moving', p['batch_dir'], '--fixed', p['fixed'], '--model', p['model_file'],
                '--out-dir', p['out_dir'], '--overwrite']
    timings = {}
    code = execute(lambda args: register.run(args, timings=timings), register.build_parser().parse_args(argv))
    if code:
        raise SystemExit(code)
    return {'parts': [timings[k] for k in ('load', 'predict', 'write')]} if timings else {}


def work_ants(p):
    """ANTs SyN (:func:`vxm_keras.evaluation.ants_syn`: antspyx defaults) on a real prepared pair;
    the moving labels follow with nearest neighbour."""
    import numpy as np

    from vxm_keras.evaluation import ants_syn
    from vxm_keras.io import load_volfile
    moved_seg, seconds = ants_syn(load_volfile(p['moving']), load_volfile(p['fixed']),
                                  load_volfile(p['moving'], key='seg'))
    np.save(p['moved_seg'], moved_seg)
    return {'seconds': seconds}


def work_stages(p):
    """The default registration (:mod:`vxm_keras.registration`'s defaults, the shipped model) of
    one pair, twice in one process: the first is what a one-scan ``register.py`` pays (tracing
    and XLA compilation included), the second what each further pair of a batch costs. Returns
    the seconds of loading (model and scans; the imports come before), of each stage of both registrations
    (``Result.stages``) and of writing the moved image, and the oneDNN setting TensorFlow ran
    with; writes the moved image to ``p['moved']``."""
    import time
    t0 = time.perf_counter()
    from vxm_keras.io import load_volfile, save_volfile
    from vxm_keras.registration import Registration
    reg = Registration(p['model_file'])
    moving, fixed = load_volfile(p['moving']), load_volfile(p['fixed'])
    load = time.perf_counter() - t0
    runs = [reg.register(moving, fixed, optimize=p['optimize']) for _ in range(2)]
    t = time.perf_counter()
    save_volfile(p['moved'], runs[-1].moved)
    write = time.perf_counter() - t
    try:  # what TensorFlow decided (the variable, else its CPU check)
        from tensorflow.python.util import _pywrap_util_port
        onednn = bool(_pywrap_util_port.IsMklEnabled())
    except (ImportError, AttributeError):
        onednn = None
    return {'load': load, 'first': dict(runs[0].stages, total=runs[0].seconds),
            'second': dict(runs[1].stages, total=runs[1].seconds), 'write': write,
            'onednn': onednn, 'moved_ncc_to_fixed': global_ncc(runs[-1].moved, fixed)}


def work_syn_image(p):
    """ANTs SyN with antspyx's defaults on an image pair (no labels): its seconds, the moved
    image written to ``p['moved']``."""
    import time

    import ants
    import numpy as np

    from vxm_keras.io import load_volfile
    moving, fixed = load_volfile(p['moving']), load_volfile(p['fixed'])
    t = time.perf_counter()
    f, m = ants.from_numpy(np.asarray(fixed, np.float32)), ants.from_numpy(np.asarray(moving, np.float32))
    out = ants.registration(f, m, type_of_transform='SyN')
    seconds = time.perf_counter() - t
    moved = out['warpedmovout'].numpy()
    np.save(p['moved'], moved)
    return {'seconds': seconds, 'moved_ncc_to_fixed': global_ncc(moved, fixed)}


WORKERS = {'forward': work_forward, 'train': work_train, 'ncc': work_ncc, 'warp': work_warp,
           'register': work_register, 'ants': work_ants, 'stages': work_stages, 'syn_image': work_syn_image}


def run_worker(kind, params, env=None):
    """Run one measurement in a fresh process; returns its dict plus wall time and peak RSS.
    ``env``: variables to set (a value ``None`` removes the variable) on top of this process's."""
    env = dict(environment(env), TF_CPP_MIN_LOG_LEVEL='3')
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, '-m', 'vxm_keras.bench.workers', kind, json.dumps(params)],
                          capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        return {'error': proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else 'failed'}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result['wall'] = wall
    return result


def main(argv=None):
    """Worker entry point: ``KIND PARAMS_JSON``; prints the result as one JSON line."""
    kind, params = argv or sys.argv[1:]
    params = json.loads(params)
    params['shape'] = tuple(params.get('shape', ()))
    result = WORKERS[kind](params)
    result['maxrss_mib'] = _maxrss_mib()
    print(json.dumps(result))
    return 0


if __name__ == '__main__':
    sys.exit(main())
