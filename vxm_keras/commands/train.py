"""``train.py``: train VM-1 / VM-2 on prepared scans, to an atlas or scan-to-scan.

    python train.py --data-dir prepared/ --model vm2 --model-dir runs/vm2 --epochs 100

One full model per epoch (``{epoch:04d}.h5``, written atomically), a CSV log,
optional TensorBoard; resume with ``--load-model runs/vm2/0010.h5`` (the
initial epoch is read from the name unless ``--initial-epoch`` is given).
"""

import argparse
import os
import re
import sys
import tempfile

from ..cli import (check_schedule, device_options, execute, fail, finite_float, nonnegative_int, positive_int,
                   schedule_options, training_data_options)
from ..device import setup_device, start_training_tensorflow
from ..runs import writes_outputs
from ..settings import IMAGE_LOSS_WEIGHTS, TRAINING_LAMBDA
from ..shipped import DEFAULT_ATLAS


def build_parser():
    p = argparse.ArgumentParser(prog='train.py', description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                parents=[training_data_options(), schedule_options(), device_options()])
    p.add_argument('--atlas', '--atlas_file', dest='atlas', default=DEFAULT_ATLAS,
                   help="fixed image for scan-to-atlas training (default data/atlas.npz); 'none' for scan-to-scan")
    p.add_argument('--model', default='vm2', choices=['vm1', 'vm2', 'vm2diff'],
                   help='vm1, vm2 (CVPR 2018 / TMI 2019), or vm2diff (probabilistic diffeomorphic, MICCAI 2018)')
    p.add_argument('--image-loss', '--image_loss', dest='image_loss', default='ncc', choices=list(IMAGE_LOSS_WEIGHTS),
                   help='image term: ncc (9^3 local), mse, or mind (MIND-SSC descriptors, for pairs of different '
                        'contrasts; weight ' + ', '.join(f'{k} {w:g}' for k, w in IMAGE_LOSS_WEIGHTS.items()) + ')')
    p.add_argument('--lambda', '--reg_param', dest='lam', type=finite_float, default=None,
                   help='smoothness weight (default ' + ', '.join(f'{v:g} for {k}' for k, v in TRAINING_LAMBDA.items())
                        + ')')
    p.add_argument('--init-weights', dest='init_weights', default=None,
                   help='start a new model from the weights of this trained model, layer by layer where '
                        'names and shapes match (e.g. a VM-2 .h5 for a vm2diff run); the rest starts fresh')
    p.add_argument('--int-steps', '--int_steps', dest='int_steps', type=nonnegative_int, default=0,
                   help='scaling-and-squaring steps (0: plain displacement; 7: diffeomorphic)')
    p.add_argument('--int-downsize', dest='int_downsize', type=positive_int, default=1)
    p.add_argument('--unet-downsize', dest='unet_downsize', type=int, default=1, choices=[1, 2, 4],
                   help='run the U-Net at 1/N resolution and upsample its field (CPU training)')
    p.add_argument('--prior-lambda', dest='prior_lambda', type=finite_float, default=25.0,
                   help='vm2diff: precision weight of the Laplacian prior (default 25)')
    p.add_argument('--image-sigma', dest='image_sigma', type=finite_float, default=0.01,
                   help='vm2diff: noise std of the Gaussian image likelihood (default 0.01)')
    p.add_argument('--bidir', action='store_true', help='vm2diff: also warp fixed to moving with the inverse')
    p.add_argument('--seg-weight', dest='seg_weight', type=finite_float, default=0.0,
                   help="weight of the auxiliary Dice loss on the scans' 'seg' maps (TMI 2019); 0 = off")
    p.add_argument('--seg-labels', dest='seg_labels', type=int, nargs='+', default=None,
                   help='labels of that Dice loss (default: the 30 structures, or the atlas seg labels)')
    p.add_argument('--seg-full-res', dest='seg_full_res', action='store_true',
                   help='score the auxiliary Dice loss at full resolution (default: on the U-Net\'s grid when '
                        '--unet-downsize > 1, 3-4x cheaper with 30 labels)')
    p.add_argument('--augment', action='store_true',
                   help='augment every training scan on the fly: affine jitter, smooth random deformation, '
                        'left-right flip (hemisphere labels swapped), gamma, bias field, noise '
                        '(vxm_keras.augment); seeded by --seed and resumable')
    p.add_argument('--synth', default=None, metavar='DIR',
                   help='label-driven synthesis (SynthMorph): train on images drawn at random from label maps '
                        '(the training scans\' seg maps, plus the .nii.gz/.mgz/.npz maps in DIR, reduced to the '
                        'brain and centred on the grid), scored by the Dice of the warped labels alone; '
                        'the result does not depend on the scans\' contrast')
    p.add_argument('--synth-mix', dest='synth_mix', type=finite_float, default=0.0, metavar='P',
                   help='with --synth: the fraction of steps (0-1) that train on real pairs of the training scans '
                        '(image similarity and smoothness, as without --synth) instead of synthetic ones; '
                        'keeps a network fine-tuned from real-scan weights registering real anatomy '
                        '(default 0: synthesis only)')
    p.add_argument('--mixed-precision', dest='mixed_precision', action='store_true',
                   help='U-Net in float16 on GPUs, bfloat16 on CPUs (the field, the warp and the losses stay '
                        'float32); on the 2-core development CPU the step is about 7 %% faster '
                        '(bench/TRAINING_STEP.md)')
    p.add_argument('--xla', default='auto', choices=['auto', 'on', 'off'],
                   help="XLA compilation of the training step: 'auto' (Keras: on GPUs, off on CPUs, "
                        "where it measured slower, see bench/RESULTS.md), 'on' or 'off'")
    p.add_argument('--tensorboard', action='store_true', help='also log to <model-dir>/tensorboard')
    return p



def _strategy(tf, n_gpus):
    """The tf.distribute strategy and whether this process writes the outputs.

    ``TF_CONFIG`` in the environment: ``MultiWorkerMirroredStrategy`` (the chief,
    or worker 0 without a chief, writes); several GPUs: ``MirroredStrategy``;
    otherwise the default strategy.
    """
    if os.environ.get('TF_CONFIG'):
        return tf.distribute.MultiWorkerMirroredStrategy(), writes_outputs()
    if n_gpus > 1:
        return tf.distribute.MirroredStrategy(), True
    return tf.distribute.get_strategy(), True


def _losses(args, model, lam):
    """Loss functions and weights, one per model output."""
    from .. import losses
    if args.model == 'vm2diff':
        image = losses.MSE(image_sigma=args.image_sigma)
        kl = losses.KL(prior_lambda=args.prior_lambda)
        if model.bidir:  # the symmetric term: each direction gets half the image weight
            return [image, losses.MSE(image_sigma=args.image_sigma), kl], [0.5, 0.5, 1.0]
        return [image, kl], [1.0, 1.0]
    return ([losses.IMAGE_LOSSES[args.image_loss](), losses.Grad('l2')],
            [IMAGE_LOSS_WEIGHTS[args.image_loss], lam])


def _targets_for(model, seg_factor=1):
    """Map the generators' ``(inputs, (fixed, zeros[, fixed_seg]))`` to the registration
    model's outputs: a bidirectional model also gets the moving image as target, and the
    fixed labels are subsampled by ``seg_factor`` (a coarse auxiliary Dice loss). The dummy
    zeros already have the model's shape (:func:`generators.zeros_shape`)."""
    bidir = len(model.outputs) == 3
    if not bidir and seg_factor == 1:
        return None

    def fn(inputs, targets, *weights):  # per-output sample weights (--synth-mix) pass through
        segs = [t[(slice(None), *[slice(None, None, seg_factor)] * (len(t.shape) - 2), slice(None))]
                for t in targets[2:]]
        return (inputs, (targets[0], *([inputs[0]] if bidir else []), targets[1], *segs), *weights)
    return fn


def _make_model(args, inshape):
    """The model to train: loaded from ``--load-model``, or built and optionally started from
    ``--init-weights``. A loaded file decides the architecture (``args.model`` follows it)."""
    from .. import modelio, networks
    if args.load_model:
        model = modelio.load_model(args.load_model)
        if tuple(model.inputs[0].shape[1:-1]) != tuple(inshape):
            fail(f'{args.load_model}: model input {tuple(model.inputs[0].shape[1:-1])} '
                 f'does not match the data {tuple(inshape)}')
        if isinstance(model, networks.VxmDenseProb):
            args.model = 'vm2diff'
        elif args.model == 'vm2diff':
            fail(f'{args.load_model}: not a vm2diff model')
        return model
    try:
        if args.model == 'vm2diff':
            model = networks.vm2diff(inshape, int_steps=args.int_steps or 7, bidir=args.bidir,
                                     unet_downsize=args.unet_downsize)
        else:
            build = networks.vm1 if args.model == 'vm1' else networks.vm2
            model = build(inshape, int_steps=args.int_steps, int_downsize=args.int_downsize,
                          unet_downsize=args.unet_downsize)
    except ValueError as err:
        fail(str(err))
    if args.init_weights:
        source = modelio.load_model(args.init_weights)
        copied, skipped = modelio.transfer_weights(source, model)
        if not copied:
            fail(f'{args.init_weights}: no layer matches the new model by name and shape')
        print(f'weights from {args.init_weights}: {len(copied)} layers copied ({", ".join(copied)}); '
              f'{len(skipped)} start fresh ({", ".join(skipped) or "none"})', flush=True)
    return model


def _load_segs(args, files, atlas_path, shape):
    """Label maps for segmentation-supervised training, and the labels to score.

    With the default tissue atlas (labels 1-3), the subjects' FreeSurfer aseg is
    mapped to the same tissue classes.
    """
    import numpy as np

    from ..io import load_volfile
    from ..metrics import PAPER_LABELS, aseg_to_tissue
    segs = []
    for f in files:
        seg = load_volfile(f, key='seg')
        if seg.shape != tuple(shape):
            fail(f'{f}: seg shape {seg.shape} differs from its vol {tuple(shape)}')
        segs.append(seg.astype(np.int32))
    segs = np.stack(segs)
    atlas_seg = None
    if atlas_path is not None:
        atlas_seg = load_volfile(atlas_path, key='seg').astype(np.int32)
        atlas_labels = set(np.unique(atlas_seg).tolist()) - {0}
        if atlas_labels <= {1, 2, 3} and segs.max() > 3:
            print('the atlas seg is a tissue map: mapping the subjects\' aseg to CSF / GM / WM', flush=True)
            segs = aseg_to_tissue(segs)
        labels = args.seg_labels or sorted(atlas_labels)
    else:
        present = set(np.unique(segs).tolist())
        labels = args.seg_labels or [lab for lab in PAPER_LABELS if lab in present]
    if not labels:
        fail('no labels to supervise with: pass --seg-labels')
    return segs, atlas_seg, [int(v) for v in labels]


def main(argv=None):
    return execute(run, build_parser().parse_args(argv))


def run(args):
    """Train as the command line says (``args`` from :func:`build_parser`); returns the exit code."""
    n_gpus = setup_device(args.gpu, args.verbose)
    lam = args.lam if args.lam is not None else TRAINING_LAMBDA[args.image_loss]
    initial_epoch = check_schedule(args)
    _check_combinations(args)
    start_training_tensorflow()
    import keras
    import tensorflow as tf

    if args.seed is not None:
        keras.utils.set_random_seed(args.seed)
        tf.config.experimental.enable_op_determinism()
    if args.mixed_precision:
        # float16 needs loss scaling and gains on GPUs; CPUs with AVX512-BF16/AMX run bfloat16
        keras.mixed_precision.set_global_policy('mixed_float16' if n_gpus else 'mixed_bfloat16')
        print(f'mixed precision: U-Net in {keras.mixed_precision.global_policy().compute_dtype}, the field, '
              'warp and losses in float32 (saved models load in float32)', flush=True)
    data = _training_data(args)
    strategy, is_chief = _strategy(tf, n_gpus)
    if args.batch_size % strategy.num_replicas_in_sync:
        fail(f'--batch-size {args.batch_size} must be a multiple of the {strategy.num_replicas_in_sync} '
             'replicas training together (it is the global batch)')
    if strategy.num_replicas_in_sync > 1:
        print(f'training on {strategy.num_replicas_in_sync} replicas with {type(strategy).__name__}',
              flush=True)
    with strategy.scope():
        model, trained, loss_fns, loss_weights, seg_factor = _compiled(args, data, lam, initial_epoch)
    # each worker of a multi-worker run draws its own pairs; batch k is the same whether the
    # run went straight through or was resumed (with --seed, across processes too)
    worker = getattr(getattr(strategy, 'cluster_resolver', None), 'task_id', None) or 0
    dataset = _dataset(args, data, model, seg_factor, initial_epoch, worker, strategy.num_replicas_in_sync)
    # only the chief writes checkpoints and logs; other workers keep theirs in a scratch folder
    out_dir = args.model_dir if is_chief else tempfile.mkdtemp(prefix='vxm_worker_')
    _fit(args, trained, model, dataset, strategy, is_chief, out_dir, loss_fns, loss_weights, initial_epoch)
    if trained.stop_training:  # only TerminateOnNaN stops a run early
        good = sorted(f for f in os.listdir(out_dir) if re.fullmatch(r'\d{4}\.h5', f))
        fail('training stopped: the loss became NaN or Inf; '
             + (f'the last good checkpoint is {os.path.join(out_dir, good[-1])}' if good
                else 'no checkpoint was written'))
    return 0


def _check_combinations(args):
    """Flags that cannot go together, refused before TensorFlow loads or any scan is read."""
    if not 0 <= args.synth_mix < 1:
        fail(f'--synth-mix must be a fraction in [0, 1), got {args.synth_mix}')
    if args.synth and args.atlas.lower() != 'none':
        fail('--synth trains on pairs drawn from label maps: use it with --atlas none')
    if args.synth_mix and not args.synth:
        fail('--synth-mix mixes real pairs into synthetic training: give --synth DIR too')
    if args.synth_mix and (args.bidir or args.augment):
        fail('--synth-mix cannot be combined with --bidir or --augment')


def _training_data(args):
    """The training scans (and atlas, label maps, synthesis maps) in memory, checked; a namespace
    with ``files, atlas, vols, inshape, segs, atlas_seg, seg_labels, real_vols, real_segs``
    (``vols``/``segs`` hold the label maps with --synth, ``real_*`` the scans)."""
    from types import SimpleNamespace

    import numpy as np

    from .. import generators
    from ..io import load_volfile
    files = generators.list_volumes(args.data_dir, args.train_list)
    atlas = None
    if args.atlas.lower() != 'none':
        atlas = load_volfile(args.atlas, check_finite=True)
        if atlas.ndim not in (2, 3):
            fail(f'{args.atlas}: expected a 2-D or 3-D atlas, got shape {atlas.shape}')
    if atlas is None and len(files) < 2 and not (args.augment or args.synth):
        fail(f'scan-to-scan training (--atlas none) needs at least 2 scans, got {len(files)} '
             f'({files[0]}); give more scans, an atlas, or --augment (pairs of one scan with itself, '
             'each side deformed on its own)')
    if args.synth_mix and len(files) < 2:
        fail(f'--synth-mix needs at least 2 training scans for its real pairs, got {len(files)}')
    vols = generators.load_volumes(files, shape=None if atlas is None else atlas.shape)
    inshape = vols.shape[1:]
    print(f'{len(files)} training scans of shape {inshape}; '
          f'{"atlas " + args.atlas if atlas is not None else "scan-to-scan pairs"}', flush=True)
    data = SimpleNamespace(files=files, atlas=atlas, vols=vols, inshape=inshape, segs=None, atlas_seg=None,
                           seg_labels=None, real_vols=vols, real_segs=None)
    if args.synth and args.seg_weight <= 0:
        args.seg_weight = 1.0
    if args.seg_weight > 0:
        data.segs, data.atlas_seg, data.seg_labels = _load_segs(args, files, None if atlas is None else args.atlas,
                                                                inshape)
        print(f'auxiliary Dice loss (weight {args.seg_weight}) on labels {data.seg_labels}', flush=True)
    if args.synth:
        from ..synth import load_label_maps
        maps = load_label_maps(args.synth, inshape)
        data.real_segs = data.segs
        data.segs = np.concatenate([data.segs, maps])
        # the generator's images are replaced by synthetic ones: the label maps stand in
        data.vols = data.segs.astype(np.float32)
        print(f'synthesis: {len(maps)} label maps from {args.synth} and {len(files)} training seg maps',
              flush=True)
    return data


def _compiled(args, data, lam, initial_epoch):
    """The model and the model trained (with the label head for --seg-weight), compiled, resumed
    from --load-model. Returns ``(model, trained, loss_fns, loss_weights, seg_factor)``."""
    import keras

    from .. import losses, networks
    from ..callbacks import load_optimizer_state
    model = _make_model(args, data.inshape)
    loss_fns, loss_weights = _losses(args, model, lam)
    if args.synth and not args.synth_mix:  # synthetic contrasts differ by design: only labels count
        loss_weights[0] = 0.0
    trained = model
    seg_factor = 1
    if args.seg_weight > 0:
        coarse = not args.seg_full_res and model.field_factor > 1 and not model.diffeomorphic
        seg_factor = model.field_factor if coarse else 1
        trained = networks.seg_supervised(model, data.seg_labels, coarse=coarse)
        loss_fns.append(losses.Dice(labels=data.seg_labels))
        loss_weights.append(args.seg_weight)
    trained.compile(optimizer=keras.optimizers.Adam(args.lr), loss=loss_fns, loss_weights=loss_weights,
                    jit_compile={'auto': 'auto', 'on': True, 'off': False}[args.xla])
    if args.load_model:
        restored = load_optimizer_state(trained, args.load_model)
        if restored:
            # the checkpoint's learning rate is part of the state; --lr wins
            trained.optimizer.learning_rate.assign(args.lr)
        print(f'resuming from {args.load_model} at epoch {initial_epoch}; optimizer state '
              f'{"restored" if restored else "not in the file, starting fresh"}', flush=True)
    return model, trained, loss_fns, loss_weights, seg_factor


def _dataset(args, data, model, seg_factor, initial_epoch, worker, replicas):
    """The ``tf.data`` pipeline of training pairs: batch k is drawn from (seed, k), so a resumed
    run sees what a straight run would; synthesis, augmentation and --synth-mix per batch."""
    import numpy as np
    import tensorflow as tf

    from .. import generators
    sampler = generators.Sampler(args.seed, start=initial_epoch * args.steps_per_epoch, worker=worker)
    shapes = generators.zeros_shape(model)
    if data.atlas is None:
        gen = generators.scan_to_scan(data.vols, args.batch_size, sampler=sampler, segs=data.segs,
                                      self_pairs=bool(args.augment), **shapes)
    else:
        gen = generators.scan_to_atlas(data.vols, data.atlas.astype(np.float32), args.batch_size, sampler=sampler,
                                       segs=data.segs, atlas_seg=data.atlas_seg, **shapes)
    dataset = generators.as_dataset(gen)
    if args.synth_mix:
        from ..synth import mixed_pairs
        real_sampler = generators.Sampler(sampler.seed + 1, start=sampler.start, worker=worker)
        real = generators.as_dataset(generators.scan_to_scan(data.real_vols, args.batch_size,
                                                             sampler=real_sampler, segs=data.real_segs, **shapes))
        # both streams advance every step, so a resumed run draws what a straight run would
        dataset = (tf.data.Dataset.zip(dataset, real).enumerate(start=sampler.start)
                   .map(mixed_pairs(sampler.map_seed, args.synth_mix)).prefetch(1))
    elif args.synth or args.augment:
        if args.synth:
            from ..synth import pair_synthesizer as per_batch
        else:
            from ..augment import pair_augmenter as per_batch
        # batch k gets the draw keyed by (seed, k), resumed runs included
        dataset = dataset.enumerate(start=sampler.start).map(per_batch(sampler.map_seed)).prefetch(1)
    to_targets = _targets_for(model, seg_factor)
    if to_targets is not None:
        dataset = dataset.map(to_targets)
    if replicas > 1:
        # every worker draws its own random pairs; nothing to shard
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
        dataset = dataset.with_options(options)
    return dataset


def _fit(args, trained, model, dataset, strategy, is_chief, out_dir, loss_fns, loss_weights, initial_epoch):
    """``fit`` with the callbacks (NaN stop, atomic checkpoint of ``model`` each epoch, CSV log,
    TensorBoard), or the multi-worker loop; checkpoints and log go to ``out_dir``."""
    import keras
    import tensorflow as tf

    from ..callbacks import AtomicCheckpoint
    os.makedirs(out_dir, exist_ok=True)
    callbacks = [
        keras.callbacks.TerminateOnNaN(),
        AtomicCheckpoint(os.path.join(out_dir, '{epoch:04d}.h5'), save_model=model),
        keras.callbacks.CSVLogger(os.path.join(out_dir, 'training_log.csv'),
                                  append=initial_epoch > 0),
    ]
    if args.tensorboard and is_chief:
        callbacks.append(keras.callbacks.TensorBoard(os.path.join(args.model_dir, 'tensorboard')))
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        from ..training import fit_distributed
        per_sample = [type(fn).from_config(dict(fn.get_config(), reduction=None)) for fn in loss_fns]
        fit_distributed(trained, dataset, strategy, per_sample, loss_weights, args.batch_size, args.epochs,
                        args.steps_per_epoch, initial_epoch, callbacks, verbose=1 if is_chief else 0)
    else:
        trained.fit(dataset, epochs=args.epochs, steps_per_epoch=args.steps_per_epoch,
                    initial_epoch=initial_epoch, callbacks=callbacks, verbose=1, shuffle=False)


if __name__ == '__main__':
    sys.exit(main())
