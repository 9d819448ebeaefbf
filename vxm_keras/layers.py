"""Keras layers of VoxelMorph: spatial transformer, field integration, rescaling.

All layers are registered under the package name ``vxm_keras`` so that a model
saved to ``.h5`` or ``.keras`` loads with plain ``keras.models.load_model``
once ``vxm_keras`` has been imported. Fields are displacements in voxel units
with ``ij`` indexing (see :mod:`vxm_keras.spatial`).
"""

import keras
import numpy as np
import tensorflow as tf

from . import spatial

__all__ = ['SpatialTransformer', 'VecInt', 'RescaleTransform', 'SampleNormal', 'Subsample', 'OneHot',
           'LearnedTemplate', 'MeanStream', 'UpsampleConcatConv']

_register = keras.saving.register_keras_serializable(package='vxm_keras')


@_register
class SpatialTransformer(keras.layers.Layer):
    """Warp images by a dense displacement field (the VoxelMorph transformer).

    Inputs ``[image, disp]``: ``image`` is ``(batch, *spatial, channels)`` with
    any number of channels, ``disp`` is ``(batch, *spatial, ndim)`` in voxel
    units; output voxel ``x`` is ``image`` sampled at ``x + disp(x)``.
    Output ``(batch, *spatial, channels)``, float32.

    Args:
        interp_method: ``'linear'`` (differentiable with respect to image and
            field) or ``'nearest'`` (label maps).
        indexing: ``'ij'`` (component ``d`` moves along axis ``d``) or ``'xy'``
            (first two components swapped, as in the 2018 release).
        fill_value: ``None`` to take the nearest edge value outside the
            volume, or a number to use there instead.
    """

    def __init__(self, interp_method='linear', indexing='ij', fill_value=None, **kwargs):
        if interp_method not in ('linear', 'nearest'):
            raise ValueError(f"interp_method must be 'linear' or 'nearest', got {interp_method!r}")
        if indexing not in ('ij', 'xy'):
            raise ValueError(f"indexing must be 'ij' or 'xy', got {indexing!r}")
        # sampling is done in float32 even under a mixed-precision policy
        kwargs.setdefault('dtype', 'float32')
        super().__init__(**kwargs)
        self.interp_method = interp_method
        self.indexing = indexing
        self.fill_value = fill_value

    def build(self, input_shape):
        if len(input_shape) != 2:
            raise ValueError('SpatialTransformer takes two inputs: [image, displacement]')
        vol_shape, disp_shape = input_shape
        ndim = len(vol_shape) - 2
        if tuple(disp_shape[1:-1]) != tuple(vol_shape[1:-1]):
            raise ValueError(f'SpatialTransformer: image spatial shape {tuple(vol_shape[1:-1])} and '
                             f'displacement spatial shape {tuple(disp_shape[1:-1])} differ')
        if disp_shape[-1] != ndim:
            raise ValueError(f'SpatialTransformer: a {ndim}-D image needs a displacement with {ndim} '
                             f'components, got {disp_shape[-1]}')

    def call(self, inputs):
        vol, disp = inputs
        return spatial.transform(vol, disp, interp_method=self.interp_method,
                                 indexing=self.indexing, fill_value=self.fill_value)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0])

    def get_config(self):
        config = super().get_config()
        config.update(interp_method=self.interp_method, indexing=self.indexing,
                      fill_value=self.fill_value)
        return config


@_register
class VecInt(keras.layers.Layer):
    """Integrate a stationary velocity field by scaling and squaring.

    Input ``(batch, *spatial, ndim)`` velocity ``v`` in voxel units; output the
    displacement of ``exp(v)``, same shape: ``u = v / 2**int_steps``, then
    ``int_steps`` times ``u <- u + u o (id + u)`` (linear interpolation, edge
    values outside). ``int_steps=0`` returns ``v``.

    Args:
        method: ``'ss'`` (scaling and squaring), the only method.
        int_steps: number of squaring steps (7 in the papers).
        indexing: ``'ij'`` or ``'xy'``, as in :class:`SpatialTransformer`.
    """

    def __init__(self, method='ss', int_steps=7, indexing='ij', **kwargs):
        if method not in ('ss', 'scaling_and_squaring'):
            raise ValueError(f"VecInt supports method='ss' (scaling and squaring), got {method!r}")
        if int(int_steps) < 0:
            raise ValueError(f'int_steps must be >= 0, got {int_steps}')
        kwargs.setdefault('dtype', 'float32')
        super().__init__(**kwargs)
        self.method = 'ss'
        self.int_steps = int(int_steps)
        self.indexing = indexing

    def call(self, vel):
        return spatial.integrate_velocity(vel, self.int_steps, self.indexing)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(method=self.method, int_steps=self.int_steps, indexing=self.indexing)
        return config


@_register
class RescaleTransform(keras.layers.Layer):
    """Resize a displacement field by ``factor`` and scale its values with it.

    Input ``(batch, *spatial, ndim)``; output
    ``(batch, *round(spatial * factor), ndim)``. Output voxel ``i`` samples the
    input at ``i / factor`` with linear interpolation, then the vectors are
    multiplied by ``factor`` so they stay in voxel units of the new grid.
    ``factor=2`` brings a half-resolution field to full resolution.
    """

    def __init__(self, factor, **kwargs):
        if float(factor) <= 0:
            raise ValueError(f'factor must be positive, got {factor}')
        kwargs.setdefault('dtype', 'float32')
        super().__init__(**kwargs)
        self.factor = float(factor)

    def call(self, disp):
        return spatial.rescale_field(disp, self.factor)

    def compute_output_shape(self, input_shape):
        spatial_shape = [int(round(n * self.factor)) for n in input_shape[1:-1]]
        return (input_shape[0], *spatial_shape, input_shape[-1])

    def get_config(self):
        config = super().get_config()
        config.update(factor=self.factor)
        return config


@_register
class SampleNormal(keras.layers.Layer):
    """Draw ``mean + exp(log_var / 2) * eps``, ``eps ~ N(0, 1)``, while training; return
    ``mean`` at inference.

    Inputs ``[mean, log_var]`` of equal shape ``(batch, *spatial, ndim)``; output the
    same shape. The probabilistic model's velocity sample.
    """

    def __init__(self, seed=None, **kwargs):
        kwargs.setdefault('dtype', 'float32')
        super().__init__(**kwargs)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs, training=None):
        mean, log_var = inputs
        if not training:
            return tf.cast(mean, tf.float32)
        eps = keras.random.normal(tf.shape(mean), seed=self.seed_generator)
        return tf.cast(mean, tf.float32) + tf.exp(tf.cast(log_var, tf.float32) / 2.0) * eps

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0])

    def get_config(self):
        config = super().get_config()
        config.update(seed=self.seed)
        return config


@_register
class Subsample(keras.layers.Layer):
    """Every ``factor``-th voxel along each spatial axis, starting at 0: ``(batch, *spatial, c)``
    -> ``(batch, *spatial / factor, c)``. Voxel ``k`` of the result is voxel ``factor * k``,
    the point a field on the coarse grid is sampled at by :class:`RescaleTransform`: label
    maps brought to the U-Net's grid this way stay aligned with its field."""

    def __init__(self, factor, **kwargs):
        super().__init__(**kwargs)
        self.factor = int(factor)

    def call(self, x):
        return x[(slice(None), *[slice(None, None, self.factor)] * (len(x.shape) - 2), slice(None))]

    def compute_output_shape(self, input_shape):
        return (input_shape[0], *[-(-n // self.factor) for n in input_shape[1:-1]], input_shape[-1])

    def get_config(self):
        config = super().get_config()
        config.update(factor=self.factor)
        return config


@_register
class OneHot(keras.layers.Layer):
    """Integer label map ``(batch, *spatial, 1)`` -> one-hot ``(batch, *spatial, len(labels))``
    over the given label values (others, background included, get all zeros)."""

    def __init__(self, labels, **kwargs):
        kwargs.setdefault('dtype', 'float32')
        super().__init__(**kwargs)
        self.labels = [int(v) for v in labels]

    def call(self, seg):
        seg = tf.cast(tf.round(tf.cast(seg, tf.float32)), tf.int32)
        return tf.cast(tf.equal(seg, tf.constant(self.labels, tf.int32)), tf.float32)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], len(self.labels))

    def get_config(self):
        config = super().get_config()
        config.update(labels=self.labels)
        return config


@_register
class LearnedTemplate(keras.layers.Layer):
    """A trainable image: the template of template-construction models (NeurIPS 2019).

    Called on any tensor with a batch axis, returns the template repeated
    over that batch, ``(batch, *shape, channels)``.

    Args:
        shape: ``(*spatial, channels)`` of the template.
        init: optional array of that shape to start from (e.g. the mean of
            the training images); zeros otherwise.
    """

    def __init__(self, shape, init=None, **kwargs):
        kwargs.setdefault('dtype', 'float32')
        super().__init__(**kwargs)
        self.shape = tuple(int(n) for n in shape)
        self._init = None if init is None else np.asarray(init, np.float32).reshape(self.shape)
        self.template = self.add_weight(
            name='template', shape=self.shape, trainable=True,
            initializer=(keras.initializers.Zeros() if self._init is None
                         else keras.initializers.Constant(self._init)))

    def call(self, like):
        batch = tf.shape(like)[0]
        return tf.tile(self.template[None], tf.concat([[batch], tf.ones(len(self.shape), tf.int32)], 0))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], *self.shape)

    def get_config(self):
        config = super().get_config()
        config.update(shape=list(self.shape))  # the values travel with the weights
        return config


@_register
class MeanStream(keras.layers.Layer):
    """Running mean of its input over the training stream (the template model's centrality term).

    Input ``(batch, *shape)``; output the running mean ``(batch, *shape)`` (the same
    for every batch element). While training, the stored mean becomes
    ``(count * mean + sum(batch)) / (count + batch)`` with ``count`` capped at
    ``cap`` so the mean keeps following the network; the output carries the
    gradient of the current batch's share, so a loss on it pushes the
    average deformation towards zero.
    """

    def __init__(self, cap=100, **kwargs):
        kwargs.setdefault('dtype', 'float32')
        super().__init__(**kwargs)
        self.cap = float(cap)

    def build(self, input_shape):
        self.mean = self.add_weight(name='mean', shape=tuple(input_shape[1:]), initializer='zeros',
                                    trainable=False)
        self.count = self.add_weight(name='count', shape=(), initializer='zeros', trainable=False)

    def call(self, x, training=None):
        x = tf.cast(x, tf.float32)
        batch = tf.cast(tf.shape(x)[0], tf.float32)
        if not training:
            return tf.zeros_like(x) + self.mean
        count = tf.minimum(self.count, self.cap)
        new_mean = (count * tf.stop_gradient(self.mean) + tf.reduce_sum(x, 0)) / (count + batch)
        self.mean.assign(tf.stop_gradient(new_mean))
        self.count.assign(tf.minimum(self.count + batch, self.cap))
        return tf.zeros_like(x) + new_mean

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(cap=self.cap)
        return config


# Nearest 2x upsampling followed by a 3-tap 'same' convolution equals a stride-2
# transposed convolution with 4 taps per axis: output 2i + p sees low-resolution
# voxels i - 1, i (p = 0) or i, i + 1 (p = 1) through sums of the 3 original taps.
# Row t of this matrix gives tap t of the transposed kernel from taps (-1, 0, +1).
_FOLD_UPSAMPLE = np.array([[0, 0, 1], [0, 1, 1], [1, 1, 0], [1, 0, 0]], np.float32)


@_register
class UpsampleConcatConv(keras.layers.Layer):
    """``conv(concat([upsample_x2(low), skip]))`` of the VoxelMorph decoder, computed without
    building the upsampled or the concatenated tensor.

    Numerically the same as ``UpSampling(2)`` (nearest), ``Concatenate`` and a
    3x3(x3) ``'same'`` convolution with bias, and with the same weights (kernel
    ``(3, 3[, 3], c_low + c_skip, filters)``, bias ``(filters,)``), so it loads
    weights saved from that form. The upsampled part runs as a stride-2
    transposed convolution on the low-resolution grid (8 taps per output voxel in
    3-D instead of 27) and the skip part as a plain convolution; the full-size
    decoder level of VM-2 needs about a third of the memory and arithmetic.

    Inputs: ``[low (batch, *spatial / 2, c_low), skip (batch, *spatial, c_skip)]``.
    Output: ``(batch, *spatial, filters)``, no activation.
    """

    def __init__(self, filters, kernel_initializer='he_normal', **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def build(self, input_shape):
        low, skip = input_shape
        self.ndim = len(low) - 2
        if self.ndim not in (2, 3):
            raise ValueError(f'UpsampleConcatConv is 2-D or 3-D, got input shape {low}')
        self.c_low = int(low[-1])
        self.kernel = self.add_weight(name='kernel', shape=(3,) * self.ndim + (self.c_low + int(skip[-1]), self.filters),
                                      initializer=self.kernel_initializer)
        self.bias = self.add_weight(name='bias', shape=(self.filters,), initializer='zeros')

    def call(self, inputs):
        low, skip = inputs
        fold = tf.constant(_FOLD_UPSAMPLE, dtype=low.dtype)
        k_low, k_skip = self.kernel[..., :self.c_low, :], self.kernel[..., self.c_low:, :]
        k_low, k_skip = tf.cast(k_low, low.dtype), tf.cast(k_skip, skip.dtype)
        out_shape = tf.concat([tf.shape(skip)[:-1], [self.filters]], 0)
        if self.ndim == 3:
            # transposed-conv kernels are (*taps, out, in)
            k_up = tf.einsum('ad,be,cf,defio->abcoi', fold, fold, fold, k_low)
            y = tf.nn.conv3d_transpose(low, k_up, out_shape, strides=2, padding='SAME')
            y = y + tf.nn.conv3d(skip, k_skip, strides=[1] * 5, padding='SAME')
        else:
            k_up = tf.einsum('ad,be,deio->aboi', fold, fold, k_low)
            y = tf.nn.conv2d_transpose(low, k_up, out_shape, strides=2, padding='SAME')
            y = y + tf.nn.conv2d(skip, k_skip, strides=1, padding='SAME')
        return tf.nn.bias_add(y, tf.cast(self.bias, y.dtype))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[1][:-1]) + (self.filters,)

    def get_config(self):
        return dict(super().get_config(), filters=self.filters,
                    kernel_initializer=keras.initializers.serialize(self.kernel_initializer))
