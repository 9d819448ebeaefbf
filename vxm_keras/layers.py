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
        disp = tf.cast(vel, tf.float32) * (1.0 / 2 ** self.int_steps)
        for _ in range(self.int_steps):
            disp = disp + spatial.transform(disp, disp, 'linear', indexing=self.indexing)
        return disp

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
