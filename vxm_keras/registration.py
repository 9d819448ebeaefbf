"""The registration engine: a model loaded once, then any number of pairs.

    from vxm_keras.registration import Registration
    reg = Registration('models/vm2_scan2scan.h5')
    result = reg.register(moving, fixed, optimize=40)      # arrays (*spatial), [0, 1]
    result.moved, result.warp                              # (*spatial), (*spatial, ndim)
    moved_seg = reg.warp_labels(moving_seg, result.warp)

Scans of any grid, from files, in one call as register.py does: :func:`vxm_keras.register`
(:mod:`vxm_keras.pipeline`).

One network pass gives the moved image, the displacement and (diffeomorphic
models) its inverse. Two ways to go past the plain prediction:

* ``optimize=N``: instance-specific optimisation (Balakrishnan et al., TMI
  2019): the predicted field (a displacement on the U-Net's grid, or a
  velocity) is refined on the given pair with Adam steps of the training
  loss ``-NCC(F, M o phi) + lambda * mean ||grad field||^2``, coarse to fine:
  ``coarse`` steps on the pair at a quarter of its resolution, ``N`` at half
  resolution, ``fine`` at full resolution.
* ``cascade=K``: the network applied recursively to its own output, the
  fields composed (Zhao et al., ICCV 2019), so one interpolation of the
  moving image in the end.

Conventions: arrays are single volumes ``(*spatial)`` without batch or
channel axes; displacements are ``(*spatial, ndim)`` in voxel units with
the model's indexing (``ij``: component ``d`` moves along axis ``d``), not
absolute coordinates.
"""

import dataclasses
import os
import time

import numpy as np
import tensorflow as tf

from . import losses, settings, spatial
from .io import ModelFileError
from .modelio import load_model
from .networks import RegistrationModel
from .optim import adam_update

__all__ = ['DEFAULT_LR', 'OPT_LAMBDA', 'COARSE_STEPS', 'FINE_STEPS', 'FINE_LAMBDA', 'IMAGE_LOSS_WEIGHTS',
           'IMAGE_LOSSES', 'Result', 'compose', 'Registration']

# the refinement's defaults, owned by vxm_keras.settings (the measurements behind them: models/README.md)
DEFAULT_LR = settings.DEFAULT.lr
OPT_LAMBDA = settings.DEFAULT.lam
COARSE_STEPS = settings.DEFAULT.coarse
FINE_STEPS = settings.DEFAULT.fine
FINE_LAMBDA = settings.DEFAULT.fine_lam
IMAGE_LOSS_WEIGHTS = settings.IMAGE_LOSS_WEIGHTS
IMAGE_LOSSES = losses.IMAGE_LOSSES


@dataclasses.dataclass
class Result:
    """One registration. ``moved`` ``(*spatial)``; ``warp`` and ``inverse`` ``(*spatial, ndim)``
    displacements in voxel units (``inverse`` only when asked for, diffeomorphic models);
    ``seconds`` the time spent on the pair; ``losses`` the loss after each optimisation step;
    ``stages`` seconds by stage: ``'network'``, the optimisation's ``'coarse'``, ``'optimize'``
    and ``'fine'`` steps (as named by :meth:`Registration.register`'s arguments), ``'finish'``
    (the displacement, the moved image, the copies to numpy)."""
    moved: np.ndarray
    warp: np.ndarray
    inverse: np.ndarray = None
    seconds: float = 0.0
    losses: list = dataclasses.field(default_factory=list)
    stages: dict = dataclasses.field(default_factory=dict)


def compose(first: tf.Tensor, second: tf.Tensor, indexing: str = 'ij') -> tf.Tensor:
    """Displacement of ``T_first o T_second`` (sample by ``second``, then by ``first``):
    ``second + first o (id + second)``; both ``(batch, *spatial, ndim)`` tensors."""
    return second + spatial.transform(first, second, 'linear', indexing=indexing)


def _pool(x, factor):
    if factor == 1:
        return x
    pool = tf.nn.avg_pool3d if len(x.shape) == 5 else tf.nn.avg_pool2d
    return pool(x, factor, factor, 'VALID')


class Registration:
    """A registration model ready to register pairs of arrays on its grid.

    Args:
        model: a :class:`~vxm_keras.networks.RegistrationModel` (``vm1``,
            ``vm2``, ``vm2diff``) or the path of a saved one.
        xla: compile the network's prediction with XLA (see ``bench/RESULTS.md``:
            slower on CPUs, try it on GPUs).

    Raises:
        ModelFileError: the file (or object) is not a pairwise vxm_keras model.
    """

    def __init__(self, model, xla=False):
        source = model
        if isinstance(model, (str, os.PathLike)):
            model = load_model(model)
        if not isinstance(model, RegistrationModel):
            what = f'{os.fspath(source)}: ' if isinstance(source, (str, os.PathLike)) else ''
            raise ModelFileError(f'{what}not a vxm_keras registration model ({type(model).__name__}); '
                                 'expected one made by train.py (vm1, vm2, vm2diff)')
        self.model = model
        # for messages: the file the model came from, else its Keras name
        self.name = os.fspath(source) if isinstance(source, (str, os.PathLike)) else model.name
        self.inshape = tuple(model.inshape)
        self.indexing = model.indexing
        self._field_net = model.field_model()
        if xla:  # predict_on_batch follows the compiled jit_compile setting
            self._field_net.compile(jit_compile=True)
        self._finish = tf.function(self._finish_fn, autograph=False)
        self._warp_nearest = tf.function(
            lambda vol, warp: spatial.transform(vol, warp, 'nearest', indexing=self.indexing, vol_gradient=False),
            autograph=False)
        self._warp_linear = tf.function(
            lambda vol, warp: spatial.transform(vol, warp, 'linear', indexing=self.indexing, vol_gradient=False),
            autograph=False)
        self._steps = {}

    # -- checks -------------------------------------------------------------------------------

    def check(self, vol: np.ndarray, name: str = 'scan') -> None:
        """Raise ``ValueError`` naming ``name`` unless ``vol`` is on the model's grid."""
        vol = np.asarray(vol)
        if vol.ndim != len(self.inshape):
            raise ValueError(f'{name}: a {vol.ndim}-D scan, but the model registers {len(self.inshape)}-D '
                             f'volumes {self.inshape}')
        if vol.shape != self.inshape:
            raise ValueError(f'{name}: shape {vol.shape}, but the model takes {self.inshape}')

    # -- registration --------------------------------------------------------------------------

    def register(self, moving: np.ndarray, fixed: np.ndarray, inverse: bool = False, optimize: int = 0,
                 cascade: int = 1, lam: float = OPT_LAMBDA, lr: float = DEFAULT_LR, image_loss: str = 'ncc',
                 coarse: int | None = None, fine: int | None = None, fine_lam: float = FINE_LAMBDA,
                 network: bool = True) -> Result:
        """Register ``moving`` to ``fixed``.

        Args:
            moving, fixed: ``(*inshape)`` arrays, intensities in [0, 1].
            inverse: also return the inverse displacement (diffeomorphic models).
            optimize: Adam steps of instance-specific optimisation on the pair at half
                resolution (full resolution for models whose field is on the full grid);
                0: the network alone, and no ``coarse`` or ``fine`` steps either.
            cascade: network passes, each on the previous result, fields composed.
            lam: smoothness weight of the optimisation loss (``OPT_LAMBDA``).
            lr: Adam step size of the optimisation, voxels of the field's grid.
            image_loss: the optimisation's image term (:data:`IMAGE_LOSSES`): ``'ncc'`` (9^3
                window), ``'mse'``; for a moving scan whose contrast differs from the fixed
                scan's ``'ngf'`` (normalised gradient fields) or ``'mind'`` (MIND-SSC descriptors).
            coarse: steps of the optimisation at a quarter of the resolution, before the
                ``optimize`` steps (default ``COARSE_STEPS``; only with ``optimize`` > 0).
            fine: steps at full resolution after them (default ``FINE_STEPS``; only with
                ``optimize`` > 0), smoothness weight ``fine_lam``.
            network: start the optimisation from the network's field; ``False`` starts it from
                no deformation (for a pair the network was not trained on, e.g. a T2 moving scan
                for a network trained on T1 pairs); needs ``optimize`` > 0 and ``cascade`` 1.

        Returns:
            :class:`Result`.
        """
        if inverse and not self.model.diffeomorphic:
            raise ValueError(f'{self.model.name}: this model has no inverse; a diffeomorphic model '
                             '(train.py --model vm2diff) does')
        # the settings' checks (ValueError naming the bad value)
        settings.DEFAULT.replace(optimize=optimize, coarse=coarse, fine=fine, lam=lam, fine_lam=fine_lam, lr=lr,
                                 image_loss=image_loss, cascade=cascade, network=network)
        self.check(moving, 'moving')
        self.check(fixed, 'fixed')
        t0 = time.perf_counter()
        moving_b = tf.constant(np.asarray(moving, np.float32)[None, ..., None])
        fixed_b = tf.constant(np.asarray(fixed, np.float32)[None, ..., None])
        warp = inv = None
        current = moving_b
        history = []
        stages = {}
        for k in range(int(cascade)):
            t_net = time.perf_counter()
            if network:
                field = tf.convert_to_tensor(self._field_net.predict_on_batch([current, fixed_b]))
            else:
                field = tf.zeros([1, *self._field_net.outputs[0].shape[1:]])
            stages['network'] = stages.get('network', 0.0) + time.perf_counter() - t_net
            if optimize and k == int(cascade) - 1:
                field, history = self.optimize_field(field, current, fixed_b, int(optimize), lam=lam, lr=lr,
                                                     image_loss=image_loss, quarter_steps=coarse,
                                                     fine_steps=fine, fine_lam=fine_lam, stages=stages)
            t_finish = time.perf_counter()
            step_warp, step_inv = self._finish(field, tf.constant(bool(inverse)))
            warp = step_warp if warp is None else compose(warp, step_warp, self.indexing)
            if inverse:
                inv = step_inv if inv is None else compose(step_inv, inv, self.indexing)
            current = self._warp_linear(moving_b, warp)
            stages['finish'] = stages.get('finish', 0.0) + time.perf_counter() - t_finish
        t_copy = time.perf_counter()
        result = Result(moved=current.numpy()[0, ..., 0], warp=warp.numpy()[0],
                        inverse=None if inv is None else inv.numpy()[0], losses=history, stages=stages)
        stages['finish'] += time.perf_counter() - t_copy
        result.seconds = time.perf_counter() - t0
        return result

    def _finish_fn(self, field, inverse):
        warp = self.model.field_to_warp(field)
        if not self.model.diffeomorphic:
            return warp, tf.zeros_like(warp)
        inv = tf.cond(inverse, lambda: self.model.field_to_warp(field, inverse=True), lambda: tf.zeros_like(warp))
        return warp, inv

    def optimize_field(self, field: tf.Tensor, moving: tf.Tensor, fixed: tf.Tensor, steps: int,
                       lam: float = OPT_LAMBDA, lr: float = DEFAULT_LR, image_loss: str = 'ncc',
                       quarter_steps: int | None = None, fine_steps: int | None = None,
                       fine_lam: float = FINE_LAMBDA, stages: dict | None = None) -> tuple[tf.Tensor, list]:
        """Instance-specific optimisation of a field on one pair, coarse to fine.

        Args:
            field: ``(1, *inshape / field_factor, ndim)`` start (the network's prediction).
            moving, fixed: ``(1, *inshape, 1)`` tensors.
            steps: Adam steps on the pair average-pooled by 2 (at full resolution when the
                field's grid is finer than that), smoothness weight ``lam``.
            quarter_steps: Adam steps before those (default ``COARSE_STEPS``) on the pair
                average-pooled by 4, optimising an increment of the field on a grid half as fine
                as the field's, linearly upsampled onto it (3-D and 2-D fields whose grid
                halves evenly).
            fine_steps: Adam steps after them on the full-resolution pair (default
                ``FINE_STEPS``), smoothness weight ``fine_lam``.
            lr, image_loss: as in :meth:`register`.
            stages: a dict that gets the seconds of each stage added under ``'coarse'``,
                ``'optimize'``, ``'fine'`` (:attr:`Result.stages`).

        Every stage starts its own Adam state: its gradients have their own scale.

        Returns:
            ``(field, losses)``: the refined field (a tensor like ``field``) and the loss
            after each step (each at the resolution of its stage).
        """
        quarter_steps = COARSE_STEPS if quarter_steps is None else int(quarter_steps)
        fine_steps = FINE_STEPS if fine_steps is None else int(fine_steps)
        history = []
        stages = {} if stages is None else stages
        if quarter_steps > 0 and all(n % 2 == 0 for n in field.shape[1:-1]):
            t = time.perf_counter()
            field = self._optimize_increment(field, moving, fixed, quarter_steps, lam, lr, image_loss, history)
            stages['coarse'] = stages.get('coarse', 0.0) + time.perf_counter() - t
        half = 2 if self.model.field_factor >= 2 else 1
        model = self.model
        for name, scale, n, weight in [('optimize', half, steps, lam), ('fine', 1, fine_steps, fine_lam)]:
            if n <= 0:
                continue
            t = time.perf_counter()
            variable = tf.Variable(field)
            stage = self._stage_fns(('field', scale, image_loss, float(weight)), image_loss, weight,
                                    field_of=lambda variable, base: variable,
                                    warp_of=lambda field, scale=scale: model.field_to_warp(field, scale=scale))
            self._run_steps(stage, variable, tf.zeros(()), moving, fixed, scale, n, lr, history)
            field = tf.convert_to_tensor(variable)
            stages[name] = stages.get(name, 0.0) + time.perf_counter() - t
        return field, history

    def _optimize_increment(self, field, moving, fixed, steps, lam, lr, image_loss, history):
        """``field + up(delta)`` after ``steps`` Adam steps on ``delta``, an increment on a grid half
        as fine as ``field``'s, with everything on that grid: the pair pooled to match, the field's
        displacement (or velocity) brought down to it once."""
        model = self.model
        scale = model.field_factor * 2
        if model.diffeomorphic:  # the velocity averaged onto the coarse grid, in its voxel units
            base = _pool(field, 2) / 2.0
        else:
            base = model.field_to_warp(field, scale=scale)
        int_steps, indexing = model.int_steps, self.indexing

        def warp_of(coarse):
            return spatial.integrate_velocity(coarse, int_steps, indexing) if model.diffeomorphic else coarse

        stage = self._stage_fns(('increment', scale, image_loss, float(lam)), image_loss, lam,
                                field_of=lambda delta, base: base + delta, warp_of=warp_of)
        delta = tf.Variable(tf.zeros_like(base))
        self._run_steps(stage, delta, base, moving, fixed, scale, steps, lr, history)
        # the increment in the field grid's voxel units
        return field + spatial.rescale_field(tf.convert_to_tensor(delta), 2)

    def _stage_fns(self, key, image_loss, lam, field_of, warp_of):
        """One compiled Adam step of the optimisation loss and the fixed image's preparation
        for it, ``(prepare, step)``, cached under ``key``: the variable and ``base`` give the
        field (``field_of``), the field the displacement (``warp_of``); the loss is
        ``similarity(fixed, moving o displacement) + lam * Grad(field)``."""
        if key in self._steps:
            return self._steps[key]
        sim = IMAGE_LOSSES[image_loss]()
        weight = IMAGE_LOSS_WEIGHTS[image_loss]
        smooth = losses.Grad('l2')
        indexing = self.indexing

        def step(variable, m, v, base, moving, prepared_fixed, lr, t):
            with tf.GradientTape() as tape:
                field = field_of(variable, base)
                moved = spatial.transform(moving, warp_of(field), 'linear', indexing=indexing, vol_gradient=False)
                # one pair: the per-sample image loss is (1,); the step's loss is a scalar
                loss = weight * tf.reduce_mean(sim.prepared_loss(prepared_fixed, moved)) + lam * smooth(field, field)
            adam_update(variable, m, v, tape.gradient(loss, variable), lr, t)
            return loss

        # the fixed image's window sums are the same at every step of a stage: made once
        self._steps[key] = (tf.function(sim.prepare, autograph=False), tf.function(step, autograph=False))
        return self._steps[key]

    @staticmethod
    def _run_steps(stage, variable, base, moving, fixed, scale, n, lr, history):
        """``n`` steps of ``stage`` (from :meth:`_stage_fns`) on the pair pooled by ``scale``, from a
        fresh Adam state (moments zero, count from 1: every stage starts its own); appends each
        loss to ``history``."""
        prepare, step = stage
        adam = (tf.Variable(tf.zeros_like(variable)), tf.Variable(tf.zeros_like(variable)))
        m_s, prepared_fixed = _pool(moving, scale), prepare(_pool(fixed, scale))
        for t in range(1, n + 1):
            loss = step(variable, *adam, base, m_s, prepared_fixed, tf.constant(float(lr)), tf.constant(float(t)))
            history.append(float(loss))

    # -- uncertainty ---------------------------------------------------------------------------

    def uncertainty(self, moving: np.ndarray, fixed: np.ndarray, samples: int = 16, seed: int = 0) -> np.ndarray:
        """Per-voxel uncertainty of the displacement (probabilistic models: ``vm2diff``, MICCAI 2018).

        Velocities are drawn from the predicted ``N(mean, exp(log_sigma))``, each integrated to a
        displacement; the result is the standard deviation of those displacements, the root of the
        summed per-component variances, ``(*inshape)`` in voxels of the model grid.

        Args:
            moving, fixed: ``(*inshape)`` arrays.
            samples: velocities drawn (16 give the map to about 20 %).
            seed: of the draws.
        """
        if not hasattr(self.model, 'variance_model'):
            raise ValueError(f'{self.model.name}: not a probabilistic model; vm2diff predicts a variance')
        if int(samples) < 2:
            raise ValueError(f'samples must be >= 2, got {samples}')
        self.check(moving, 'moving')
        self.check(fixed, 'fixed')
        if not hasattr(self, '_variance_net'):
            self._variance_net = self.model.variance_model()
            self._to_warp = tf.function(lambda field: self.model.field_to_warp(field), autograph=False)
        mean, log_sigma = self._variance_net.predict_on_batch(
            [np.asarray(moving, np.float32)[None, ..., None], np.asarray(fixed, np.float32)[None, ..., None]])
        rng = np.random.default_rng(seed)
        sigma = np.exp(np.asarray(log_sigma) / 2)
        total = total_sq = 0.0
        for _ in range(int(samples)):
            vel = mean + sigma * rng.standard_normal(mean.shape).astype(np.float32)
            disp = self._to_warp(tf.constant(vel, tf.float32)).numpy()[0].astype(np.float64)
            total = total + disp
            total_sq = total_sq + disp * disp
        n = float(samples)
        variance = np.clip(total_sq / n - (total / n) ** 2, 0, None) * n / (n - 1)
        return np.sqrt(variance.sum(axis=-1)).astype(np.float32)

    # -- applying a result ---------------------------------------------------------------------

    def warp_labels(self, seg: np.ndarray, warp: np.ndarray) -> np.ndarray:
        """Warp an integer label map ``(*inshape)`` by ``warp`` ``(*inshape, ndim)`` with
        nearest-neighbour sampling; returns int32 ``(*inshape)`` (labels exact below 2**24)."""
        self.check(seg, 'labels')
        out = self._warp_nearest(np.asarray(seg, np.float32)[None, ..., None],
                                 np.asarray(warp, np.float32)[None])
        return np.rint(out.numpy()[0, ..., 0]).astype(np.int32)

    def warp_image(self, vol: np.ndarray, warp: np.ndarray) -> np.ndarray:
        """Warp an image ``(*inshape)`` by ``warp`` with (tri)linear interpolation."""
        self.check(vol, 'image')
        out = self._warp_linear(np.asarray(vol, np.float32)[None, ..., None], np.asarray(warp, np.float32)[None])
        return out.numpy()[0, ..., 0]

