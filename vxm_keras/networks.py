"""VoxelMorph networks (CVPR 2018 / TMI 2019) as Keras functional models.

``vm1(inshape)`` and ``vm2(inshape)`` build the papers' VM-1 and VM-2.
Inputs are ``[moving, fixed]``, each ``(batch, *inshape, 1)``; outputs are
``[moved, flow]``: the moving image warped by the predicted displacement and
the field the smoothness loss applies to, ``(batch, *inshape, ndim)`` in voxel
units with ``ij`` indexing. With ``int_steps > 0`` (diffeomorphic variant)
``flow`` is the stationary velocity (at ``1 / int_downsize`` resolution) and
the displacement itself comes from :meth:`VxmDense.warp_model`.
"""

import keras
import numpy as np

from .layers import (LearnedTemplate, MeanStream, OneHot, RescaleTransform, SampleNormal, SpatialTransformer,
                     Subsample, VecInt)

from .unet import _conv, _upsample, check_inshape, conv_block, unet_core, up_block  # noqa: F401

__all__ = ['VM1_ENC', 'VM1_DEC', 'VM2_ENC', 'VM2_DEC', 'RegistrationModel', 'VxmDense', 'VxmDenseProb',
           'TemplateCreation', 'seg_supervised', 'vm2diff', 'vxm_net', 'vm1', 'vm2', 'nn_transformer']

_register = keras.saving.register_keras_serializable(package='vxm_keras')

VM1_ENC = (16, 32, 32, 32)
VM1_DEC = (32, 32, 32, 32, 8, 8)
VM2_ENC = (16, 32, 32, 32)
VM2_DEC = (32, 32, 32, 32, 32, 16, 16)


def _pair_inputs(inshape, unet_downsize):
    """Check the shape; return ``(inshape, moving, fixed, x)``: the two ``Input`` tensors and
    their concatenation, average-pooled by ``unet_downsize`` (1, 2 or 4) for the U-Net."""
    if unet_downsize not in (1, 2, 4):
        raise ValueError(f'unet_downsize must be 1, 2 or 4, got {unet_downsize}')
    inshape = check_inshape(inshape, levels=4 + unet_downsize.bit_length() - 1)
    moving = keras.Input(shape=(*inshape, 1), name='moving')
    fixed = keras.Input(shape=(*inshape, 1), name='fixed')
    x = keras.layers.Concatenate(name='moving_fixed')([moving, fixed])
    if unet_downsize > 1:
        pool = {2: keras.layers.AveragePooling2D, 3: keras.layers.AveragePooling3D}[len(inshape)]
        x = pool(unet_downsize, name='input_down')(x)
    return inshape, moving, fixed, x


class _ConfiguredByArguments:
    """``get_config`` / ``from_config`` of a model rebuilt from its constructor's arguments: the
    names in ``_CONFIG`` (each kept as an attribute of the same name) and ``name``."""
    _CONFIG = ()

    def get_config(self):
        config = {key: getattr(self, key) for key in self._CONFIG}
        if 'inshape' in config:
            config['inshape'] = list(config['inshape'])
        return dict(config, name=self.name)

    @classmethod
    def from_config(cls, config, custom_objects=None):
        return cls(**config)


class RegistrationModel(_ConfiguredByArguments, keras.Model):
    """Shared base of the pairwise registration models (inputs ``[moving, fixed]``).

    A subclass builds its graph, calls ``super().__init__`` and then
    :meth:`_set_deformation` with the tensor that parameterises the
    deformation (the *field*: a displacement on the U-Net's grid, or a
    stationary velocity) and the warp computed from it. The model then knows
    itself: :meth:`field_model` predicts the field, :meth:`field_to_warp`
    turns a field into the full-resolution displacement (or its inverse, for
    diffeomorphic models) on any grid, and :meth:`warp_model` gives the
    Keras model ``[moving, fixed] -> [moved, warp(, inverse)]``. The
    registration engine (:mod:`vxm_keras.registration`) uses these alone.
    """

    def _set_deformation(self, field, warp, field_factor, int_steps):
        # stored references, so no caller has to find tensors by layer name
        self._field_tensor = field
        self._warp_tensor = warp
        self.field_factor = int(field_factor)
        self.diffeomorphic = int(int_steps) > 0

    @property
    def ndim(self):
        return len(self.inshape)

    def field_model(self):
        """Model ``[moving, fixed] -> field`` ``(batch, *inshape / field_factor, ndim)``."""
        return keras.Model(self.inputs, self._field_tensor, name=self.name + '_field')

    def field_to_warp(self, field, scale=1, inverse=False):
        """The displacement a field stands for, as a TensorFlow tensor (differentiable).

        Args:
            field: ``(batch, *inshape / field_factor, ndim)`` (the output of
                :meth:`field_model`; velocities for diffeomorphic models).
            scale: 1 for the model's grid ``inshape``, 2 for a grid half its size, etc.
            inverse: the inverse displacement (integrated negative velocity); only
                diffeomorphic models have one.

        Returns:
            ``(batch, *inshape / scale, ndim)`` displacement, voxel units of that grid,
            the model's indexing.
        """
        from .spatial import integrate_velocity, rescale_field
        if inverse and not self.diffeomorphic:
            raise ValueError(f'{self.name}: a plain displacement model has no inverse; a diffeomorphic '
                             'model (vm2diff, or --int-steps > 0) does')
        disp = field
        if self.diffeomorphic:
            disp = integrate_velocity(-field if inverse else field, self.int_steps, self.indexing)
        return rescale_field(disp, self.field_factor / scale)

    def warp_model(self, inverse=False):
        """Model ``[moving, fixed] -> [moved, warp]`` using the mean field (inference);
        ``warp`` is the full-resolution displacement ``(batch, *inshape, ndim)`` in voxel units,
        the model's indexing. With ``inverse=True`` (diffeomorphic models) a third output gives
        the inverse displacement."""
        outputs = [self.outputs[0], self._warp_tensor]
        if inverse:
            if not self.diffeomorphic:
                raise ValueError(f'{self.name}: a plain displacement model has no inverse')
            neg = keras.layers.Rescaling(-1.0, dtype='float32')(self._field_tensor)
            outputs.append(_integrate(neg, self.int_steps, self.field_factor, self.indexing))
        return keras.Model(self.inputs, outputs, name=self.name + '_warp')


def _integrate(field, int_steps, factor, indexing, name=None, vecint_name=None):
    """Keras layers: integrate a velocity (``int_steps > 0``) and bring it to the input grid
    (``factor``); ``name`` names the last layer (``'warp'`` in the saved models)."""
    disp = field
    if int_steps > 0:
        disp = VecInt(int_steps=int_steps, indexing=indexing, name=vecint_name)(disp)
    if factor > 1:
        return RescaleTransform(factor, name=name)(disp)
    if disp is field:  # a plain full-resolution displacement is its own warp
        return disp
    return keras.layers.Identity(name=name, dtype='float32')(disp)


@_register
class VxmDense(RegistrationModel):
    """VoxelMorph dense registration network (a functional model).

    Args:
        inshape: spatial shape ``(*spatial,)``, 2-D or 3-D, each size a
            multiple of 16.
        enc_nf, dec_nf: encoder (4) and decoder (6 or 7) feature counts.
        int_steps: 0 for a plain displacement; > 0 integrates the predicted
            velocity with that many scaling-and-squaring steps.
        int_downsize: integrate at ``1 / int_downsize`` resolution.
        indexing: ``'ij'``, or ``'xy'`` for fields in the 2018 layout.
        unet_downsize: 1 (the papers), or 2 / 4 to run the U-Net on the
            average-pooled pair and upsample its field to full resolution
            (:class:`RescaleTransform`); warping stays at full resolution.
            Inputs must then be multiples of ``16 * unet_downsize``.

    Inputs ``[moving, fixed]`` ``(batch, *inshape, 1)``; outputs ``[moved,
    flow]`` (see the module docstring); ``flow`` lives on the U-Net's grid.
    """
    # get_config's keys: the constructor's arguments (with the name)
    _CONFIG = ('inshape', 'enc_nf', 'dec_nf', 'int_steps', 'int_downsize', 'indexing', 'unet_downsize')

    def __init__(self, inshape, enc_nf=VM2_ENC, dec_nf=VM2_DEC, int_steps=0, int_downsize=1,
                 indexing='ij', unet_downsize=1, name='vxm_dense', **kwargs):
        int_steps, int_downsize, unet_downsize = int(int_steps), int(int_downsize), int(unet_downsize)
        inshape, moving, fixed, x = _pair_inputs(inshape, unet_downsize)
        ndim = len(inshape)
        low_shape = [n // unet_downsize for n in inshape]
        if int_downsize < 1 or any(n % int_downsize for n in low_shape):
            raise ValueError(f'int_downsize={int_downsize} must be >= 1 and divide the U-Net grid {low_shape}')
        features = unet_core(x, enc_nf, dec_nf)
        # the field stays float32 under a mixed-precision policy: warping needs the precision
        flow = _conv(ndim)(ndim, kernel_size=3, padding='same', name='flow', dtype='float32',
                           kernel_initializer=keras.initializers.RandomNormal(mean=0.0, stddev=1e-5))(features)
        loss_field = flow
        if int_steps > 0 and int_downsize > 1:
            loss_field = RescaleTransform(1.0 / int_downsize, name='flow_down')(flow)
        # one factor from the field's grid back to the input grid
        up = int_downsize * unet_downsize if int_steps > 0 else unet_downsize
        warp = _integrate(loss_field, int_steps, up, indexing, name='warp', vecint_name='vecint')
        moved = SpatialTransformer(interp_method='linear', indexing=indexing, name='transformer')([moving, warp])
        super().__init__(inputs=[moving, fixed], outputs=[moved, loss_field], name=name, **kwargs)
        self.inshape = inshape
        self.enc_nf = [int(n) for n in enc_nf]
        self.dec_nf = [int(n) for n in dec_nf]
        self.int_steps = int_steps
        self.int_downsize = int_downsize
        self.unet_downsize = unet_downsize
        self.indexing = indexing
        self._set_deformation(loss_field, warp, up, int_steps)


@_register
class VxmDenseProb(RegistrationModel):
    """Probabilistic diffeomorphic VoxelMorph (Dalca et al., MICCAI 2018 / MedIA 2019).

    The U-Net's decoder stops at half resolution (``dec_nf`` 32,32,32,32,16);
    two 3x3(x3) heads give the mean ``mu`` (init N(0, 1e-5)) and the log
    variance ``log_sigma`` (init N(0, 1e-10), bias -10) of a stationary
    velocity field. Training draws ``v = mu + exp(log_sigma / 2) * eps``,
    inference uses ``mu``; ``v`` is integrated by scaling and squaring
    (``int_steps``) and upsampled to full resolution (vectors scaled with the
    grid).

    Inputs ``[moving, fixed]`` ``(batch, *inshape, 1)``. Outputs ``[moved,
    flow_params]`` with ``flow_params = concat([mu, log_sigma])`` ``(batch,
    *inshape / (2 unet_downsize), 2 ndim)`` for :class:`~vxm_keras.losses.KL`;
    with ``bidir=True`` ``[moved, fixed_moved, flow_params]``, where
    ``fixed_moved`` is the fixed image warped by the inverse (integrated
    ``-v``). Displacements: :meth:`warp_model`.
    """
    # get_config's keys: the constructor's arguments (with the name)
    _CONFIG = ('inshape', 'enc_nf', 'dec_nf', 'int_steps', 'bidir', 'unet_downsize', 'indexing')

    def __init__(self, inshape, enc_nf=VM2_ENC, dec_nf=(32, 32, 32, 32, 16), int_steps=7, bidir=False,
                 unet_downsize=1, indexing='ij', name='vm2diff', **kwargs):
        unet_downsize = int(unet_downsize)
        if int(int_steps) < 1:
            raise ValueError('the diffeomorphic model needs int_steps >= 1')
        inshape, moving, fixed, x = _pair_inputs(inshape, unet_downsize)
        ndim = len(inshape)
        conv = _conv(ndim)
        features = unet_core(x, enc_nf, dec_nf, full_size=False)
        mean = conv(ndim, kernel_size=3, padding='same', name='flow_mean', dtype='float32',
                    kernel_initializer=keras.initializers.RandomNormal(0.0, 1e-5))(features)
        log_sigma = conv(ndim, kernel_size=3, padding='same', name='flow_log_sigma', dtype='float32',
                         kernel_initializer=keras.initializers.RandomNormal(0.0, 1e-10),
                         bias_initializer=keras.initializers.Constant(-10.0))(features)
        params = keras.layers.Concatenate(name='flow_params', dtype='float32')([mean, log_sigma])
        vel = SampleNormal(name='velocity')([mean, log_sigma])
        factor = 2 * unet_downsize
        warp = _integrate(vel, int_steps, factor, indexing, name='warp', vecint_name='vecint')
        moved = SpatialTransformer(indexing=indexing, name='transformer')([moving, warp])
        outputs = [moved, params]
        if bidir:
            inv = keras.layers.Rescaling(-1.0, name='velocity_neg', dtype='float32')(vel)
            inv = _integrate(inv, int_steps, factor, indexing, name='inv_warp', vecint_name='vecint_inv')
            fixed_moved = SpatialTransformer(indexing=indexing, name='transformer_inv')([fixed, inv])
            outputs = [moved, fixed_moved, params]
        super().__init__(inputs=[moving, fixed], outputs=outputs, name=name, **kwargs)
        self.inshape = inshape
        self.enc_nf = [int(n) for n in enc_nf]
        self.dec_nf = [int(n) for n in dec_nf]
        self.int_steps = int(int_steps)
        self.bidir = bool(bidir)
        self.unet_downsize = unet_downsize
        self.indexing = indexing
        # inference uses the mean velocity (SampleNormal passes it through outside training)
        self._set_deformation(mean, warp, factor, int_steps)
        self._log_sigma_tensor = log_sigma

    def variance_model(self):
        """Model ``[moving, fixed] -> [mean, log_sigma]``: the predicted distribution of the
        velocity, each ``(batch, *inshape / field_factor, ndim)``, variance ``exp(log_sigma)``."""
        return keras.Model(self.inputs, [self._field_tensor, self._log_sigma_tensor], name=self.name + '_variance')


@_register
class TemplateCreation(_ConfiguredByArguments, keras.Model):
    """Learn a template, optionally conditioned on attributes, jointly with the registration
    of that template to every image (Dalca, Rakic, Guttag, Sabuncu, NeurIPS 2019).

    The template is a trainable image (:class:`LearnedTemplate`, started from
    ``template_init``, e.g. the mean training image); with ``n_attributes > 0``
    a decoder maps the attribute vector (dense -> reshape to 1/8 resolution ->
    three upsampling convolution blocks -> 1-channel convolution) to a
    correction added to it. A VoxelMorph U-Net reads ``[template, image]``
    and predicts a stationary velocity, integrated by scaling and squaring
    (``int_steps``) at ``1 / int_downsize`` resolution.

    Inputs: ``image`` ``(batch, *inshape, 1)`` and, when conditional,
    ``attributes`` ``(batch, n_attributes)``. Outputs: ``[warped_template,
    mean_velocity, velocity]``: the template warped onto the image (for
    ``MSE(image_sigma)`` against it), the running mean of the velocity over
    training (:class:`MeanStream`, for the centrality term ``gamma *
    mean^2``, target zeros) and the velocity itself (for
    :class:`~vxm_keras.losses.DisplacementPenalty`).
    """
    # get_config's keys: the constructor's arguments (with the name)
    _CONFIG = ('inshape', 'n_attributes', 'enc_nf', 'dec_nf', 'int_steps', 'int_downsize', 'cond_nf', 'mean_cap')

    def __init__(self, inshape, n_attributes=0, enc_nf=VM2_ENC, dec_nf=VM2_DEC, int_steps=7, int_downsize=2,
                 cond_nf=32, mean_cap=100, template_init=None, name='template_creation', **kwargs):
        inshape, image, _, _ = _pair_inputs(inshape, 1)
        ndim = len(inshape)
        conv = _conv(ndim)
        if any(n % int_downsize for n in inshape):
            raise ValueError(f'int_downsize={int_downsize} must divide {inshape}')
        inputs = [image]
        template = LearnedTemplate((*inshape, 1), init=template_init, name='template')(image)
        if n_attributes:
            attributes = keras.Input(shape=(int(n_attributes),), name='attributes')
            inputs.append(attributes)
            low = [n // 8 for n in inshape]
            y = keras.layers.Dense(int(np.prod(low)) * cond_nf, name='cond_dense')(attributes)
            y = keras.layers.Reshape((*low, cond_nf), name='cond_reshape')(y)
            for i in range(3):
                y = _upsample(ndim)(name=f'cond_up_{i}')(y)
                y = conv_block(y, cond_nf, name=f'cond_{i}')
            delta = conv(1, kernel_size=3, padding='same', name='cond_template', dtype='float32',
                         kernel_initializer=keras.initializers.RandomNormal(0.0, 1e-5))(y)
            template = keras.layers.Add(name='conditional_template', dtype='float32')([template, delta])
        x = keras.layers.Concatenate(name='template_image')([template, image])
        features = unet_core(x, enc_nf, dec_nf)
        flow = conv(ndim, kernel_size=3, padding='same', name='flow', dtype='float32',
                    kernel_initializer=keras.initializers.RandomNormal(0.0, 1e-5))(features)
        vel = RescaleTransform(1.0 / int_downsize, name='velocity')(flow) if int_downsize > 1 else flow
        warp = _integrate(vel, int_steps, int_downsize, 'ij', name='warp', vecint_name='vecint')
        warped = SpatialTransformer(name='transformer')([template, warp])
        mean_vel = MeanStream(cap=mean_cap, name='mean_velocity')(vel)
        super().__init__(inputs=inputs, outputs=[warped, mean_vel, vel], name=name, **kwargs)
        self.inshape = inshape
        self.n_attributes = int(n_attributes)
        self.enc_nf = [int(n) for n in enc_nf]
        self.dec_nf = [int(n) for n in dec_nf]
        self.int_steps = int(int_steps)
        self.int_downsize = int(int_downsize)
        self.cond_nf = int(cond_nf)
        self.mean_cap = mean_cap
        self._velocity, self._warp_tensor = vel, warp


    def templates(self, attributes=None):
        """The learned template ``(*inshape)``, or for a conditional model one per row of
        ``attributes`` ``(n, n_attributes)``: ``(n, *inshape)``."""
        if not self.n_attributes:
            return self.get_layer('template').template.numpy()[..., 0]
        attributes = np.asarray(attributes, np.float32).reshape(-1, self.n_attributes)
        sub = keras.Model(self.inputs, self.get_layer('conditional_template').output)
        dummy = np.zeros((len(attributes), *self.inshape, 1), np.float32)
        return sub.predict([dummy, attributes], verbose=0)[..., 0]

    def warp_model(self, inverse=False):
        """Model ``inputs -> [warped_template, warp]``: the template registered to the image;
        ``warp`` ``(batch, *inshape, ndim)`` maps image voxels into the template. With
        ``inverse=True`` a third output maps template voxels into the image (integrated
        negative velocity): warping an image or its labels by it brings them to template space."""
        outputs = [self.outputs[0], self._warp_tensor]
        if inverse:
            neg = keras.layers.Rescaling(-1.0, dtype='float32')(self._velocity)
            outputs.append(_integrate(neg, self.int_steps, self.int_downsize, 'ij'))
        return keras.Model(self.inputs, outputs)


def seg_supervised(model, labels, coarse=False):
    """Training model for the auxiliary segmentation loss (TMI 2019).

    Wraps a registration model (shares its layers and weights): inputs
    ``[moving, fixed, moving_seg]`` with ``moving_seg`` an integer label map
    ``(batch, *inshape, 1)``; outputs the model's outputs plus the moving
    segmentation one-hot encoded over ``labels`` and warped with linear
    interpolation, ``(batch, *inshape, len(labels))``, for
    :class:`~vxm_keras.losses.Dice` ``(labels=labels)`` against the fixed
    label map. Only ``model`` is needed (and saved) for registration: images
    in, no labels.

    With ``coarse=True`` and a plain displacement model whose field lives on a
    coarser grid (``unet_downsize`` > 1), the labels are subsampled to that grid
    (:class:`~vxm_keras.layers.Subsample`) and warped by the field itself: the
    output is ``(batch, *inshape / field_factor, len(labels))`` and the fixed
    label map must be subsampled the same way. With 30 labels this is what makes
    the loss affordable on a CPU (a training step 7 s -> about 2 s at 160x192x224).
    """
    inshape = tuple(model.inputs[0].shape[1:-1])
    seg = keras.Input(shape=(*inshape, 1), name='moving_seg')
    warp = model._warp_tensor
    source = seg
    if coarse and model.field_factor > 1 and not model.diffeomorphic:
        warp = model._field_tensor
        source = Subsample(model.field_factor, name='moving_seg_coarse')(seg)
    onehot = OneHot(labels, name='moving_seg_onehot')(source)
    moved_seg = SpatialTransformer('linear', indexing=getattr(model, 'indexing', 'ij'),
                                   name='seg_transformer')([onehot, warp])
    return keras.Model([*model.inputs, seg], [*model.outputs, moved_seg], name=model.name + '_seg')


def vm2diff(inshape, **kwargs):
    """The diffeomorphic probabilistic VM-2 of MICCAI 2018 / MedIA 2019; see :class:`VxmDenseProb`."""
    return VxmDenseProb(inshape, **kwargs)


# Legacy .h5 files name a model by its bare class name, not the registered
# 'vxm_keras>VxmDense'; make those names resolvable as well.
keras.saving.get_custom_objects()['VxmDense'] = VxmDense
keras.saving.get_custom_objects()['VxmDenseProb'] = VxmDenseProb
keras.saving.get_custom_objects()['TemplateCreation'] = TemplateCreation


def vxm_net(inshape, enc_nf, dec_nf, int_steps=0, int_downsize=1, indexing='ij'):
    """Build a :class:`VxmDense`; see its docstring for shapes and arguments."""
    return VxmDense(inshape, enc_nf, dec_nf, int_steps=int_steps, int_downsize=int_downsize,
                    indexing=indexing)


def vm1(inshape, **kwargs):
    """VM-1 of the papers: encoder 16,32,32,32, decoder 32,32,32,32,8,8."""
    return VxmDense(inshape, VM1_ENC, VM1_DEC, name=kwargs.pop('name', 'vm1'), **kwargs)


def vm2(inshape, **kwargs):
    """VM-2 of the papers: encoder 16,32,32,32, decoder 32,32,32,32,32,16,16."""
    return VxmDense(inshape, VM2_ENC, VM2_DEC, name=kwargs.pop('name', 'vm2'), **kwargs)


def nn_transformer(inshape, indexing='ij'):
    """Model ``[labels, warp] -> warped labels`` with nearest-neighbour sampling.

    ``labels`` is ``(batch, *inshape, channels)`` (integer labels as floats,
    exact below 2**24), ``warp`` ``(batch, *inshape, ndim)``.
    """
    inshape = tuple(int(n) for n in inshape)
    labels = keras.Input(shape=(*inshape, None), name='labels')
    warp = keras.Input(shape=(*inshape, len(inshape)), name='warp')
    out = SpatialTransformer(interp_method='nearest', indexing=indexing, name='nn_transformer')([labels, warp])
    return keras.Model([labels, warp], out, name='nn_transformer')
