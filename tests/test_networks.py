"""Architecture, parameter counts, a short fit, and save/load across processes."""
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import vxm_keras
from vxm_keras import losses, modelio, networks
from vxm_keras.layers import UpsampleConcatConv
from vxm_keras.metrics import dice


def expected_params(ndim, enc, dec):
    """Count written from the papers' architecture: conv k^d * cin * cout + cout."""
    k = 3 ** ndim
    convs = [(2, enc[0]), (enc[0], enc[1]), (enc[1], enc[2]), (enc[2], enc[3]),  # encoder, stride 2
             (enc[3], dec[0]),                 # 1/16
             (dec[0] + enc[2], dec[1]),        # 1/8, skip from 3rd encoder level
             (dec[1] + enc[1], dec[2]),        # 1/4
             (dec[2] + enc[0], dec[3]),        # 1/2
             (dec[3], dec[4]),                 # 1/2
             (dec[4] + 2, dec[5])]             # full size, skip from the input pair
    if len(dec) == 7:
        convs.append((dec[5], dec[6]))
    convs.append((dec[-1], ndim))              # flow
    return sum(k * cin * cout + cout for cin, cout in convs)


def test_param_counts_by_hand():
    # VM-1 3-D written out in full: 54*16+16 + 27*16*32+32 + 2*(27*32*32+32) | decoder ...
    by_hand = (54 * 16 + 16) + (27 * 16 * 32 + 32) + 2 * (27 * 32 * 32 + 32) \
        + (27 * 32 * 32 + 32) + (27 * 64 * 32 + 32) + (27 * 64 * 32 + 32) + (27 * 48 * 32 + 32) \
        + (27 * 32 * 8 + 8) + (27 * 10 * 8 + 8) + (27 * 8 * 3 + 3)
    assert expected_params(3, (16, 32, 32, 32), (32, 32, 32, 32, 8, 8)) == by_hand


@pytest.mark.parametrize('builder,enc,dec', [
    (networks.vm1, (16, 32, 32, 32), (32, 32, 32, 32, 8, 8)),
    (networks.vm2, (16, 32, 32, 32), (32, 32, 32, 32, 32, 16, 16)),
])
@pytest.mark.parametrize('inshape', [(160, 192, 224), (32, 32, 32), (64, 48)])
def test_shapes_and_params(builder, enc, dec, inshape):
    model = builder(inshape)
    ndim = len(inshape)
    assert [tuple(t.shape) for t in model.inputs] == [(None, *inshape, 1)] * 2
    assert [tuple(t.shape) for t in model.outputs] == [(None, *inshape, 1), (None, *inshape, ndim)]
    assert modelio.count_params(model) == expected_params(ndim, enc, dec)
    convs = [l for l in model.layers
             if isinstance(l, keras.layers.Conv2D | keras.layers.Conv3D | UpsampleConcatConv)]
    assert [c.filters for c in convs] == list(enc) + list(dec) + [ndim]
    # the upsampling decoder levels (1/8, 1/4, 1/2, full size) are fused layers
    fused = [i for i, c in enumerate(convs) if isinstance(c, UpsampleConcatConv)]
    assert fused == [5, 6, 7, 9]
    plain = [c for c in convs if not isinstance(c, UpsampleConcatConv)]
    assert [c.strides[0] for c in plain] == [2] * 4 + [1] * (len(dec) + 1 - 4)
    assert all(c.kernel_size == (3,) * ndim and c.padding == 'same' for c in plain)
    assert all(c.kernel.shape[:ndim] == (3,) * ndim for c in convs)
    acts = [l for l in model.layers if isinstance(l, keras.layers.LeakyReLU)]
    assert len(acts) == len(convs) - 1 and all(a.negative_slope == pytest.approx(0.2) for a in acts)
    assert convs[-1].activation is keras.activations.linear


def test_flow_initialisation_is_tiny():
    model = networks.vm2((32, 32, 32))
    kernel = model.get_layer('flow').kernel.numpy()
    assert 0.5e-5 < kernel.std() < 2e-5 and np.abs(kernel.mean()) < 1e-6


def test_rejects_shapes_not_divisible_by_16():
    with pytest.raises(ValueError, match='not divisible by 16'):
        networks.vm2((160, 190, 224))


def test_diffeomorphic_variant_outputs(rng):
    model = networks.vm2((32, 32, 32), int_steps=7, int_downsize=2)
    assert tuple(model.outputs[1].shape) == (None, 16, 16, 16, 3)
    x = rng.random((1, 32, 32, 32, 1)).astype(np.float32)
    moved, warp = model.warp_model().predict([x, x], verbose=0)
    assert moved.shape == x.shape and warp.shape == (1, 32, 32, 32, 3)


def blob_pair(shape=(32, 32, 32), shift=(3, -2, 2)):
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing='ij'), -1).astype(np.float32)
    centre = np.array(shape) / 2
    r_fixed = np.linalg.norm(grid - centre, axis=-1)
    r_moving = np.linalg.norm(grid - centre - np.array(shift), axis=-1)
    fixed = np.exp(-(r_fixed / 6) ** 2)
    moving = np.exp(-(r_moving / 6) ** 2)
    return moving[None, ..., None], fixed[None, ..., None], (r_moving < 7), (r_fixed < 7)


def test_short_fit_lowers_loss_and_raises_dice():
    keras.utils.set_random_seed(1)
    moving, fixed, seg_m, seg_f = blob_pair()
    model = networks.vm2(moving.shape[1:-1])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=[losses.MSE(), losses.Grad('l2')],
                  loss_weights=[1.0, 0.01])
    zeros = np.zeros(moving.shape[:-1] + (3,), np.float32)
    hist = model.fit([moving, fixed], [fixed, zeros], epochs=60, verbose=0)
    loss = hist.history['loss']
    assert loss[-1] < 0.3 * loss[0]
    _, flow = model.predict([moving, fixed], verbose=0)
    warped = networks.nn_transformer(moving.shape[1:-1]).predict(
        [seg_m[None, ..., None].astype(np.float32), flow], verbose=0)[0, ..., 0]
    before = dice(seg_m.astype(int), seg_f.astype(int), labels=[1])[1][0]
    after = dice(warped.astype(int), seg_f.astype(int), labels=[1])[1][0]
    assert after > before + 0.1, (before, after)


@pytest.mark.parametrize('suffix', ['.h5', '.weights.h5', '.keras'])
def test_save_and_load_in_fresh_process(tmp_path, rng, suffix):
    model = networks.vm1((32, 32, 32), int_steps=5, int_downsize=2)
    # move weights off their initial values so a mix-up would show
    for w in model.weights:
        w.assign(w + rng.normal(0, 0.01, w.shape).astype(np.float32))
    x = rng.random((2, 2, 32, 32, 32, 1)).astype(np.float32)
    moved, flow = model.predict([x[0], x[1]], verbose=0)
    path = tmp_path / ('model' + suffix)
    vxm_keras.save_model(model, path)
    with pytest.raises(FileExistsError):
        vxm_keras.save_model(model, path)
    np.save(tmp_path / 'x.npy', x)
    loader = 'keras.models.load_model(path, compile=False)' if suffix != '.weights.h5' \
        else 'vxm_keras.load_model(path)'
    script = textwrap.dedent(f"""
        import sys, numpy as np, keras
        import vxm_keras
        path = sys.argv[1]
        m = {loader}
        m2 = vxm_keras.load_model(path)
        x = np.load(sys.argv[2])
        out = [m.predict([x[0], x[1]], verbose=0), m2.predict([x[0], x[1]], verbose=0)]
        np.savez(sys.argv[3], a0=out[0][0], a1=out[0][1], b0=out[1][0], b1=out[1][1],
                 cls=type(m).__name__)
    """)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3')
    subprocess.run([sys.executable, '-c', script, str(path), str(tmp_path / 'x.npy'),
                    str(tmp_path / 'out.npz')], check=True, env=env)
    out = np.load(tmp_path / 'out.npz')
    assert str(out['cls']) == 'VxmDense'
    for key, ref in [('a0', moved), ('a1', flow), ('b0', moved), ('b1', flow)]:
        np.testing.assert_allclose(out[key], ref, atol=1e-6)


def test_load_model_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match='missing.h5'):
        vxm_keras.load_model(tmp_path / 'missing.h5')
    bad = tmp_path / 'bad.h5'
    bad.write_bytes(b'not an hdf5 file')
    with pytest.raises(ValueError, match='bad.h5'):
        vxm_keras.load_model(bad)
    plain = tmp_path / 'plain.weights.h5'
    networks.vm1((32, 32)).save_weights(plain)
    with pytest.raises(ValueError, match='architecture record'):
        vxm_keras.load_model(plain)


def test_half_resolution_unet(rng):
    model = networks.vm2((64, 64, 32), unet_downsize=2)
    assert tuple(model.outputs[0].shape) == (None, 64, 64, 32, 1)
    assert tuple(model.outputs[1].shape) == (None, 32, 32, 16, 3)
    assert modelio.count_params(model) == expected_params(3, (16, 32, 32, 32), (32, 32, 32, 32, 32, 16, 16))
    with pytest.raises(ValueError, match='not divisible by 32'):
        networks.vm2((48, 64, 32), unet_downsize=2)
    # the full-resolution warp is the half-resolution flow upsampled with its vectors doubled
    model.get_layer('flow').bias.assign([0.5, -0.25, 1.0])
    x = rng.random((1, 64, 64, 32, 1)).astype(np.float32)
    _, flow = model.predict([x, x], verbose=0)
    _, warp = model.warp_model().predict([x, x], verbose=0)
    from scipy.ndimage import map_coordinates
    grid = np.meshgrid(*[np.arange(n) / 2 for n in (64, 64, 32)], indexing='ij')
    ref = np.stack([map_coordinates(flow[0, ..., d], grid, order=1, mode='nearest') * 2 for d in range(3)], -1)
    np.testing.assert_allclose(warp[0], ref, atol=1e-5)


def _built_under(policy, *builders):
    """The models of ``builders`` built under the mixed-precision ``policy``; float32 put back."""
    keras.mixed_precision.set_global_policy(policy)
    try:
        return [build() for build in builders]
    finally:
        keras.mixed_precision.set_global_policy('float32')


def test_mixed_precision_keeps_field_and_warp_float32():
    model, prob = _built_under('mixed_float16', lambda: networks.vm2((32, 32, 32)),
                               lambda: networks.vm2diff((32, 32, 32)))
    assert model.get_layer('enc_0_conv').compute_dtype == 'float16'
    assert [o.dtype for o in model.outputs] == ['float32', 'float32']
    assert all(o.dtype == 'float32' for o in prob.outputs)
    model.compile(optimizer='adam', loss=[losses.NCC(), losses.Grad()], loss_weights=[1.0, 1.0])
    x = np.random.default_rng(0).random((1, 32, 32, 32, 1)).astype(np.float32)
    values = model.train_on_batch([x, x], [x, np.zeros((1, 32, 32, 32, 3), np.float32)])
    assert np.all(np.isfinite(values))


def test_bfloat16_keeps_convolutions_on_grids_smaller_than_their_kernel_in_float32():
    """oneDNN's bfloat16 filter gradient returned NaN on the 2^3 bottleneck of a 32^3 VM-2 (a CPU
    with AVX512-BF16, half of the seeds): those convolutions run in float32, the rest in bfloat16.
    Four training steps on seeds that gave NaN before stay finite."""
    from scipy.ndimage import gaussian_filter
    model, large = _built_under('mixed_bfloat16', lambda: networks.vm2((32, 32, 32)),
                                lambda: networks.vm2((64, 64, 64)))
    # 32^3: enc_3 goes 4^3 -> 2^3, dec_0 runs on 2^3
    assert [model.get_layer(n).compute_dtype for n in ('enc_2_conv', 'enc_3_conv', 'dec_0_conv')] == \
        ['bfloat16', 'float32', 'float32']
    assert large.get_layer('dec_0_conv').compute_dtype == 'bfloat16'  # 4^3 at 64^3
    model.compile(optimizer=keras.optimizers.Adam(1e-4), loss=[losses.MSE(), losses.Grad('l2')],
                  loss_weights=[1.0, 0.01])
    for seed in (1, 2):
        rng = np.random.default_rng(seed)
        for _ in range(4):
            m, f = (np.clip(gaussian_filter(rng.random((32, 32, 32)), 2) * 3 - 1, 0, 1)
                    .astype(np.float32)[None, ..., None] for _ in range(2))
            values = model.train_on_batch([m, f], [f, np.zeros((1, 32, 32, 32, 3), np.float32)])
            assert np.all(np.isfinite(values)), seed


def original_unet_flow(inshape, enc, dec):
    """The 2018 layer stack written out independently: UpSampling (nearest), Concatenate and
    a 'same' convolution at every decoder level; returns a model [moving, fixed] -> flow."""
    ndim = len(inshape)
    conv = keras.layers.Conv3D if ndim == 3 else keras.layers.Conv2D
    up = keras.layers.UpSampling3D if ndim == 3 else keras.layers.UpSampling2D
    act = lambda t: keras.layers.LeakyReLU(negative_slope=0.2)(t)  # noqa: E731
    moving, fixed = keras.Input((*inshape, 1)), keras.Input((*inshape, 1))
    x = keras.layers.Concatenate()([moving, fixed])
    levels = [x]
    for nf in enc:
        levels.append(act(conv(nf, 3, strides=2, padding='same')(levels[-1])))
    y = act(conv(dec[0], 3, padding='same')(levels[-1]))
    for i, skip in zip((1, 2, 3), (levels[3], levels[2], levels[1])):
        y = act(conv(dec[i], 3, padding='same')(keras.layers.Concatenate()([up()(y), skip])))
    y = act(conv(dec[4], 3, padding='same')(y))
    y = act(conv(dec[5], 3, padding='same')(keras.layers.Concatenate()([up()(y), x])))
    for nf in dec[6:]:
        y = act(conv(nf, 3, padding='same')(y))
    return keras.Model([moving, fixed], conv(ndim, 3, padding='same')(y))


@pytest.mark.parametrize('inshape', [(32, 32, 32), (48, 64)])
def test_fused_decoder_equals_the_original_layer_stack(rng, inshape):
    enc, dec = (16, 32, 32, 32), (32, 32, 32, 32, 32, 16, 16)
    model = networks.vm2(inshape)
    flow = keras.Model(model.inputs, model.get_layer('flow').output)
    ref = original_unet_flow(inshape, enc, dec)
    # weights are in the same order and shapes: the original's files load into the fused model
    weights = [rng.standard_normal(w.shape).astype(np.float32) * 0.1 for w in ref.get_weights()]
    ref.set_weights(weights)
    flow.set_weights(weights)
    x = [rng.random((2, *inshape, 1)).astype(np.float32) for _ in range(2)]
    expected = ref.predict(x, verbose=0)
    np.testing.assert_allclose(flow.predict(x, verbose=0), expected, atol=1e-4 * np.abs(expected).max())


@pytest.mark.parametrize('ndim', [2, 3])
def test_upsample_concat_conv_gradients_match_the_original(rng, ndim):
    shape = (6, 8, 4)[:ndim]
    low = tf.constant(rng.standard_normal((1, *[n // 2 for n in shape], 3)).astype(np.float32))
    skip = tf.constant(rng.standard_normal((1, *shape, 2)).astype(np.float32))
    layer = UpsampleConcatConv(4)
    layer([low, skip])
    layer.bias.assign(rng.standard_normal(4).astype(np.float32))
    up = keras.layers.UpSampling3D() if ndim == 3 else keras.layers.UpSampling2D()
    conv = (keras.layers.Conv3D if ndim == 3 else keras.layers.Conv2D)(4, 3, padding='same')
    conv.build((1, *shape, 5))
    conv.set_weights(layer.get_weights())
    target = tf.constant(rng.standard_normal((1, *shape, 4)).astype(np.float32))
    grads = []
    for fn, weights in ((lambda a, b: layer([a, b]), layer.trainable_weights),
                        (lambda a, b: conv(tf.concat([up(a), b], -1)), conv.trainable_weights)):
        with tf.GradientTape() as tape:
            tape.watch([low, skip])
            loss = tf.reduce_sum(fn(low, skip) * target)
        grads.append([g.numpy() for g in tape.gradient(loss, [low, skip, *weights])])
    for ours, ref in zip(*grads):
        np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4)
    config = layer.get_config()
    assert UpsampleConcatConv.from_config(config).filters == 4


def test_transfer_weights_copies_the_shared_unet_layers_only():
    source = networks.vm2((32, 32))
    target = networks.vm2diff((32, 32))
    before = {layer.name: layer.get_weights() for layer in target.layers if layer.get_weights()}
    copied, skipped = modelio.transfer_weights(source, target)
    shared = [f'enc_{i}_conv' for i in range(4)] + [f'dec_{i}_conv' for i in range(4)]
    assert copied == shared
    # VM-2's dec_4 has 32 features, vm2diff's 16; the heads exist only in vm2diff
    assert skipped == ['dec_4_conv', 'flow_mean', 'flow_log_sigma']
    for name in shared:
        for a, b in zip(target.get_layer(name).get_weights(), source.get_layer(name).get_weights()):
            np.testing.assert_array_equal(a, b)
    for name in skipped:
        for a, b in zip(target.get_layer(name).get_weights(), before[name]):
            np.testing.assert_array_equal(a, b)
    # copied weights do change the network: the half-resolution features now equal VM-2's
    x = np.random.default_rng(0).random((1, 32, 32, 2)).astype(np.float32)
    feats = [keras.Model(m.get_layer('moving_fixed').output, m.get_layer('dec_3_act').output)
             for m in (source, target)]
    np.testing.assert_allclose(feats[0](x), feats[1](x), atol=1e-6)
