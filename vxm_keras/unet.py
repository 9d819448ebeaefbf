"""The U-Net of VoxelMorph (CVPR 2018, Figure 2): convolution blocks, the encoder-decoder core and
the check that an input shape suits it. Tensors are channels-last ``(batch, *spatial, channels)``."""

import keras

from .layers import UpsampleConcatConv

__all__ = ['conv_block', 'up_block', 'check_inshape', 'unet_core']


def _conv(ndim):
    return {1: keras.layers.Conv1D, 2: keras.layers.Conv2D, 3: keras.layers.Conv3D}[ndim]


def _upsample(ndim):
    return {1: keras.layers.UpSampling1D, 2: keras.layers.UpSampling2D, 3: keras.layers.UpSampling3D}[ndim]


def conv_block(x, nf, strides=1, name=None):
    """3x3(x3) 'same' convolution, he_normal init, LeakyReLU(0.2).

    ``x`` is ``(batch, *spatial, channels)``; returns
    ``(batch, *spatial / strides, nf)``.
    """
    ndim = len(x.shape) - 2
    x = _conv(ndim)(nf, kernel_size=3, padding='same', strides=strides, kernel_initializer='he_normal',
                    dtype=_tiny_grid_dtype(x.shape[1:-1], strides),
                    name=None if name is None else name + '_conv')(x)
    return keras.layers.LeakyReLU(negative_slope=0.2, name=None if name is None else name + '_act')(x)


def _tiny_grid_dtype(spatial, strides):
    """``'float32'`` for a convolution on a grid smaller than its 3-voxel kernel while a mixed
    bfloat16 policy is set, else ``None`` (the global policy). oneDNN's bfloat16 filter gradient
    there returned NaN from finite inputs on a CPU with AVX512-BF16 (the 32^3 test volumes'
    2^3 bottleneck: half of the seeds tried); such layers cost nothing in float32."""
    if keras.mixed_precision.global_policy().compute_dtype != 'bfloat16':
        return None
    sizes = [n for n in spatial if n is not None]
    if any(n < 3 or -(-n // strides) < 3 for n in sizes):
        return 'float32'
    return None


def up_block(low, skip, nf, name=None):
    """Nearest 2x upsampling of ``low``, concatenation with ``skip``, then a 3x3(x3) conv
    block: ``(batch, *spatial / 2, c)``, ``(batch, *spatial, c_skip)`` -> ``(batch, *spatial, nf)``.

    One :class:`~vxm_keras.layers.UpsampleConcatConv` (same weights as the
    upsample / concatenate / convolve layers of the original, far less memory
    and arithmetic), then LeakyReLU(0.2).
    """
    y = UpsampleConcatConv(nf, kernel_initializer='he_normal',
                           name=None if name is None else name + '_conv')([low, skip])
    return keras.layers.LeakyReLU(negative_slope=0.2, name=None if name is None else name + '_act')(y)


def check_inshape(inshape, levels=4):
    """Raise ``ValueError`` unless every spatial size is a positive multiple of ``2**levels``."""
    inshape = tuple(int(n) for n in inshape)
    if len(inshape) not in (2, 3):
        raise ValueError(f'inshape must have 2 or 3 spatial dimensions, got {inshape}')
    factor = 2 ** levels
    bad = [n for n in inshape if n <= 0 or n % factor]
    if bad:
        raise ValueError(f'input shape {inshape} is not divisible by {factor}: the U-Net halves the '
                         f'grid {levels} times, so every size must be a multiple of {factor} '
                         f'(pad or crop the volumes, e.g. to 160x192x224)')
    return inshape


def unet_core(x, enc_nf, dec_nf, full_size=True):
    """The VoxelMorph U-Net on a Keras tensor ``x`` ``(batch, *spatial, channels)``.

    Encoder: ``enc_nf`` (4 entries) stride-2 conv blocks, down to 1/16.
    Decoder: ``dec_nf[0]`` at 1/16, upsample + skip, ``dec_nf[1]`` at 1/8,
    upsample + skip, ``dec_nf[2]`` at 1/4, upsample + skip, ``dec_nf[3]`` and
    ``dec_nf[4]`` at 1/2, upsample + concat with ``x``, ``dec_nf[5]`` at full
    size, and ``dec_nf[6]`` when given (VM-2). Returns the last feature map
    ``(batch, *spatial, dec_nf[-1])``. With ``full_size=False`` (the
    probabilistic model) the decoder stops at 1/2 after ``dec_nf[4]``
    (``dec_nf`` has 5 entries) and returns ``(batch, *spatial / 2, dec_nf[4])``.
    """
    enc_nf, dec_nf = list(enc_nf), list(dec_nf)
    sizes = (6, 7) if full_size else (5,)
    if len(enc_nf) != 4 or len(dec_nf) not in sizes:
        raise ValueError(f'enc_nf needs 4 entries and dec_nf {" or ".join(map(str, sizes))}, '
                         f'got {enc_nf} and {dec_nf}')
    enc = [x]
    for i, nf in enumerate(enc_nf):
        enc.append(conv_block(enc[-1], nf, strides=2, name=f'enc_{i}'))
    y = conv_block(enc[-1], dec_nf[0], name='dec_0')
    for i, skip in zip((1, 2, 3), (enc[3], enc[2], enc[1])):
        y = up_block(y, skip, dec_nf[i], name=f'dec_{i}')
    y = conv_block(y, dec_nf[4], name='dec_4')
    if not full_size:
        return y
    y = up_block(y, enc[0], dec_nf[5], name='dec_5')
    if len(dec_nf) == 7:
        y = conv_block(y, dec_nf[6], name='dec_6')
    return y
