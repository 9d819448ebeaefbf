"""Where a VM-2 training step spends its time at the shipped configuration (U-Net on the
half-resolution pair, field upsampled, warp and NCC at 160x192x224), and what bfloat16 buys.

    python -m vxm_keras.bench.training_step --policy float32 mixed_bfloat16 --out bench/TRAINING_STEP.md

Each part is timed forward + backward on its own (best of 4 after a warm-up), each policy in its
own process; the U-Net's FLOPs are counted from its convolutions (2 k^3 c_in c_out per output
voxel, the backward counted as twice the forward) and set against this CPU's fp32 peak.
"""
import argparse
import json
import os
import subprocess
import sys
import time

SHAPE = (160, 192, 224)


def _best(fn, n=4):
    fn()
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def measure(policy):
    import keras
    import numpy as np
    import tensorflow as tf
    if policy != 'float32':
        keras.mixed_precision.set_global_policy(policy)
    import vxm_keras
    from vxm_keras import losses
    model = vxm_keras.networks.vm2(SHAPE, unet_downsize=2)
    rng = np.random.default_rng(0)
    m, f = (tf.constant(rng.random((1, *SHAPE, 1), np.float32)) for _ in range(2))
    flow = model.get_layer('flow')
    unet = keras.Model(model.inputs, flow.output)
    upsample, transformer = model.get_layer('warp'), model.get_layer('transformer')
    low = tf.Variable(rng.standard_normal((1, *flow.output.shape[1:])).astype(np.float32))
    full = tf.Variable(upsample(low))
    moved = tf.Variable(transformer([m, full]))

    def grad_of(loss_fn, var):
        @tf.function
        def step():
            with tf.GradientTape() as tape:
                loss = loss_fn()
            return tape.gradient(loss, var)
        return lambda: tf.nest.map_structure(lambda g: g.numpy(), step())

    parts = {
        'U-Net (half resolution)': grad_of(lambda: tf.reduce_mean(tf.cast(unet([m, f], training=True), tf.float32) ** 2),
                                           unet.trainable_variables),
        'field upsampling x2': grad_of(lambda: tf.reduce_sum(upsample(low) ** 2), low),
        'warp (trilinear, full resolution)': grad_of(lambda: tf.reduce_sum(transformer([m, full]) ** 2), full),
        'NCC 9^3 (full resolution)': grad_of(lambda: tf.reduce_mean(losses.NCC()(f, moved)), moved),
        'Grad l2 (half resolution)': grad_of(lambda: tf.reduce_mean(losses.Grad('l2')(low, low)), low),
    }

    def whole():
        with tf.GradientTape() as tape:
            out, field = model([m, f], training=True)
            loss = tf.reduce_mean(losses.NCC()(f, out)) + tf.reduce_mean(losses.Grad('l2')(field, field))
        return tape.gradient(loss, model.trainable_variables)
    step = tf.function(whole)
    parts['whole step (all of the above)'] = lambda: [g.numpy() for g in step()]
    seconds = {name: _best(fn) for name, fn in parts.items()}
    flops = 0
    for layer in unet.layers:
        if isinstance(layer, keras.layers.Conv3D):
            k = np.prod(layer.kernel_size)
            cin, cout = layer.kernel.shape[-2], layer.kernel.shape[-1]
            flops += 2 * k * cin * cout * np.prod(layer.output.shape[1:-1])
    return {'policy': policy, 'seconds': seconds, 'unet_forward_gflop': float(flops) / 1e9}


def peak_gflops():
    """fp32 peak of this CPU: cores x 2 AVX-512 FMA units x 16 lanes x 2 flops x clock."""
    cores = os.cpu_count()
    mhz = None
    with open('/proc/cpuinfo') as f:
        for line in f:
            if line.startswith('cpu MHz'):
                mhz = float(line.split(':')[1])
                break
    return cores * 2 * 16 * 2 * (mhz or 0) / 1e3, cores, mhz


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--policy', nargs='+', default=['float32', 'mixed_bfloat16'])
    p.add_argument('--out', default=None)
    p.add_argument('--worker', default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(measure(args.worker)))
        return 0
    results = []
    for policy in args.policy:
        proc = subprocess.run([sys.executable, '-m', 'vxm_keras.bench.training_step', '--worker', policy],
                              capture_output=True, text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3'))
        if proc.returncode:
            raise SystemExit(proc.stderr[-2000:])
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    peak, cores, mhz = peak_gflops()
    names = list(results[0]['seconds'])
    lines = ['| part (forward + backward) | ' + ' | '.join(r['policy'] for r in results) + ' |',
             '|---|' + '---|' * len(results)]
    for name in names:
        lines.append(f'| {name} | ' + ' | '.join(f'{r["seconds"][name]:.3f} s' for r in results) + ' |')
    gflop = results[0]['unet_forward_gflop']
    lines += ['', f'U-Net forward: {gflop:.1f} GFLOP; forward + backward about {3 * gflop:.1f} GFLOP. '
              f'fp32 peak of this CPU ({cores} cores x 2 AVX-512 FMA units x 16 lanes x 2 flops x {mhz:.0f} MHz): '
              f'{peak:.0f} GFLOP/s.']
    for r in results:
        t = r['seconds']['U-Net (half resolution)']
        lines.append(f'- {r["policy"]}: the U-Net runs at {3 * gflop / t:.0f} GFLOP/s, '
                     f'{100 * 3 * gflop / t / peak:.0f} % of that peak; the whole step at '
                     f'{3 * gflop / r["seconds"]["whole step (all of the above)"]:.0f} GFLOP/s of U-Net work.')
    text = '\n'.join(lines) + '\n'
    print(text)
    if args.out:
        with open(args.out, 'w') as f:
            f.write(text)
    return 0


if __name__ == '__main__':
    sys.exit(main())
