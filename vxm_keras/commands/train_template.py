"""``train_template.py``: learn a (conditional) template jointly with registration (NeurIPS 2019).

Brains (prepared .npz scans), optionally at lower resolution:

    python train_template.py --data-dir prepared/ --downsize 2 --model-dir runs/template

Conditional on attributes (a CSV with a header; first column the scan's file
name, then numeric columns):

    python train_template.py --data-dir prepared/ --attributes ages.csv --model-dir runs/cond

The 2-D Fashion-MNIST demo, conditioned on class, or on class and a random
scale applied to each image:

    python train_template.py --fashion-mnist ../shared/data/fashion_mnist --condition class+scale \\
        --model-dir runs/fashion

Resume a stopped run with ``--load-model runs/template/0006.h5`` (the initial
epoch is read from the name unless ``--initial-epoch`` is given).

Outputs in ``--model-dir``: ``{epoch:04d}.h5`` (the model), ``training_log.csv``,
``template.npz`` (+ ``template.nii.gz`` for 3-D: key ``vol``, or ``templates``
and ``attributes`` when conditional) and ``templates.png``.
"""

import argparse
import csv
import os
import sys

from ..cli import (check_schedule, device_options, execute, fail, finite_float, nonnegative_int, positive_int,
                   schedule_options, training_data_options)
from ..device import setup_device, start_training_tensorflow


def build_parser():
    p = argparse.ArgumentParser(
        prog='train_template.py', description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[training_data_options(('--fashion-mnist', 'folder with the Fashion-MNIST IDX files')),
                 schedule_options(), device_options()])
    p.set_defaults(lr=1e-3, epochs=20, batch_size=8, model_dir='runs/template')
    p.add_argument('--attributes', help='CSV: file name, then one numeric column per attribute')
    p.add_argument('--condition', default='none', choices=['none', 'class', 'class+scale'],
                   help='Fashion-MNIST: what the template is conditioned on')
    p.add_argument('--scale-range', dest='scale_range', type=finite_float, nargs=2, default=(0.6, 1.4),
                   help='Fashion-MNIST class+scale: range of the random zoom applied to the images')
    p.add_argument('--n-images', dest='n_images', type=positive_int, default=10000,
                   help='Fashion-MNIST: how many training images to use')
    p.add_argument('--downsize', type=positive_int, default=1, help='block-average 3-D scans by this factor first')
    p.add_argument('--image-sigma', dest='image_sigma', type=finite_float, default=0.1)
    p.add_argument('--gamma', type=finite_float, default=10.0, help='weight of the centrality term')
    p.add_argument('--lambda-d', dest='lambda_d', type=finite_float, default=0.01, help='displacement magnitude weight')
    p.add_argument('--lambda-a', dest='lambda_a', type=finite_float, default=1.0, help='smoothness weight')
    p.add_argument('--int-steps', dest='int_steps', type=nonnegative_int, default=7)
    p.add_argument('--int-downsize', dest='int_downsize', type=positive_int, default=2)
    return p


def _read_attributes(path, files):
    import numpy as np
    try:
        with open(path, newline='', encoding='utf-8') as f:
            rows = [row for row in csv.reader(f) if row]
    except UnicodeDecodeError:
        fail(f'{path}: not a CSV text file (not UTF-8 text)')
    if len(rows) < 2:
        fail(f'{path}: needs a header and one row per scan')
    names = {os.path.basename(f) for f in files}
    if os.path.basename(rows[0][0]) in names:  # a header names columns, not a scan
        fail(f'{path}: the first line is the row of {rows[0][0]}, not a header; add a header line '
             '(a name for the file column, then one per attribute)')
    table = {}
    width = len(rows[0])
    for n, row in enumerate(rows[1:], start=2):
        if len(row) != width:
            fail(f'{path}: line {n} has {len(row)} fields, the header {width}')
        try:
            values = [float(v) for v in row[1:]]
        except (ValueError, IndexError):
            fail(f'{path}: line {n}: expected a file name and numbers, got {row}')
        if not all(np.isfinite(values)):
            fail(f'{path}: line {n}: attributes must be finite numbers, got {row}')
        table[os.path.basename(row[0])] = values
    missing = [os.path.basename(f) for f in files if os.path.basename(f) not in table]
    if missing:
        fail(f'{path}: no row for {", ".join(missing[:5])}')
    return np.array([table[os.path.basename(f)] for f in files], np.float32)


def main(argv=None):
    return execute(run, build_parser().parse_args(argv))


def run(args):
    """Train a template as the command line says (``args`` from :func:`build_parser`); returns the
    exit code."""
    setup_device(args.gpu, args.verbose)
    initial_epoch = check_schedule(args)
    start_training_tensorflow()
    import keras
    import numpy as np

    from .. import generators
    from ..callbacks import AtomicCheckpoint

    if args.seed is not None:
        keras.utils.set_random_seed(args.seed)
    images, labels, attributes, files = _training_images(args)
    inshape = images.shape[1:]
    n_attr = 0 if attributes is None else attributes.shape[1]
    print(f'{len(images)} images of shape {inshape}; '
          f'{"conditional on " + str(n_attr) + " attributes" if n_attr else "unconditional"}', flush=True)
    model = _template_model(args, images, n_attr, initial_epoch)
    vel_shape = tuple(model.outputs[2].shape[1:])
    # the same sampler as train.py: batch k is the same whether the run was resumed or not
    sampler = generators.Sampler(args.seed, start=initial_epoch * args.steps_per_epoch)

    def batches():
        zeros = np.zeros((args.batch_size, *vel_shape), np.float32)
        for idx in sampler.indices(len(images), args.batch_size):
            x = images[idx][..., None]
            inputs = (x, attributes[idx]) if n_attr else x
            yield inputs, (x, zeros, zeros)

    os.makedirs(args.model_dir, exist_ok=True)
    model.fit(_dataset(batches, n_attr, inshape, vel_shape), initial_epoch=initial_epoch,
              epochs=args.epochs, steps_per_epoch=args.steps_per_epoch, verbose=1, shuffle=False,
              callbacks=[keras.callbacks.TerminateOnNaN(),
                         AtomicCheckpoint(os.path.join(args.model_dir, '{epoch:04d}.h5')),
                         keras.callbacks.CSVLogger(os.path.join(args.model_dir, 'training_log.csv'),
                                                   append=initial_epoch > 0)])
    out = _write_templates(args, model, images, attributes, labels, files)
    print(f'wrote {out} and {os.path.join(args.model_dir, "templates.png")}')
    return 0


def _training_images(args):
    """``(images (n, *spatial), labels or None, attributes (n, a) or None, files or None)``: the
    Fashion-MNIST subset or the training scans (downsized, with their attributes CSV)."""
    import numpy as np

    from .. import generators
    if args.fashion_mnist:
        # the random zooms are part of the data: the same seed gives the same data when resumed
        images, labels, attributes = generators.fashion_mnist(args.fashion_mnist, args.condition, args.n_images,
                                                              args.scale_range, np.random.default_rng(args.seed))
        return images, labels, attributes, None
    files = generators.list_volumes(args.data_dir, args.train_list)
    images = generators.load_volumes(files)
    if args.downsize > 1:
        from ..templates import downsize_images
        try:
            images = downsize_images(images, args.downsize)
        except ValueError as err:
            fail(f'--downsize: {err}')
    attributes = _read_attributes(args.attributes, files) if args.attributes else None
    return images, None, attributes, files


def _template_model(args, images, n_attr, initial_epoch):
    """The template model, new (initialised at the images' mean) or resumed from --load-model
    (checked against the data), compiled with the template losses."""
    import keras

    from .. import losses, modelio, networks
    inshape = images.shape[1:]
    if args.load_model:
        model = modelio.load_model(args.load_model)
        if not isinstance(model, networks.TemplateCreation):
            fail(f'{args.load_model}: not a template model (train_template.py writes those)')
        if tuple(model.inshape) != tuple(inshape) or model.n_attributes != n_attr:
            fail(f'{args.load_model}: a template of shape {tuple(model.inshape)} with {model.n_attributes} '
                 f'attributes, the data has shape {tuple(inshape)} and {n_attr}')
    else:
        try:
            model = networks.TemplateCreation(inshape, n_attributes=n_attr, int_steps=args.int_steps,
                                              int_downsize=args.int_downsize, template_init=images.mean(0))
        except ValueError as err:
            fail(str(err))
    model.compile(optimizer=keras.optimizers.Adam(args.lr),
                  loss=[losses.MSE(image_sigma=args.image_sigma), losses.MSE(),
                        losses.DisplacementPenalty(args.lambda_d, args.lambda_a)],
                  loss_weights=[1.0, args.gamma, 1.0])
    if args.load_model:
        from ..callbacks import load_optimizer_state
        restored = load_optimizer_state(model, args.load_model)
        print(f'resuming from {args.load_model} at epoch {initial_epoch}; optimizer state '
              f'{"restored" if restored else "not in the file, starting fresh"}', flush=True)
    return model


def _write_templates(args, model, images, attributes, labels, files):
    """``template.npz`` (conditional: the templates of an attribute grid; otherwise the template,
    with the training labels' majority map when every scan has labels), its NIfTI copy (3-D) and
    ``templates.png``; returns the ``.npz`` path."""
    import numpy as np

    from .. import plot
    from ..io import atomic_path, load_volfile, save_volfile
    out = os.path.join(args.model_dir, 'template.npz')
    png = os.path.join(args.model_dir, 'templates.png')
    if attributes is not None:
        grid_attrs, rows, cols = _attribute_grid(args, attributes, labels)
        temps = model.templates(grid_attrs)
        with atomic_path(out) as tmp, open(tmp, 'wb') as f:
            np.savez_compressed(f, templates=temps, attributes=grid_attrs)
        plot.template_grid(png, temps, rows, cols)
        return out
    template = model.templates()
    extra = None
    if files is not None and _has_segs(files):
        from ..templates import downsize_labels, template_segmentation
        segs = np.stack([load_volfile(f, key='seg') for f in files])
        segs = downsize_labels(segs, args.downsize)
        extra = {'seg': template_segmentation(model, images, segs)}
        print('template seg: the training scans\' labels warped to the template, per-voxel majority')
    save_volfile(out, template, overwrite=True, extra=extra)
    if template.ndim == 3:
        save_volfile(os.path.join(args.model_dir, 'template.nii.gz'), template, overwrite=True)
        plot.save_figure_atomic(png, plot.slices_figure, [np.clip(template, 0, 1)], ['learned template'],
                                segs=[extra['seg'] if extra else None])
    else:
        plot.template_grid(png, template[None], [''], [''])
    return out


def _has_segs(files):
    import numpy as np
    for f in files:
        try:
            with np.load(f) as npz:
                if 'seg' not in npz.files:
                    return False
        except (OSError, ValueError):
            return False
    return True


def _dataset(batches, n_attr, inshape, vel_shape):
    import tensorflow as tf
    img = tf.TensorSpec((None, *inshape, 1), tf.float32)
    field = tf.TensorSpec((None, *vel_shape), tf.float32)
    inputs = (img, tf.TensorSpec((None, n_attr), tf.float32)) if n_attr else img
    return tf.data.Dataset.from_generator(batches, output_signature=(inputs, (img, field, field))).prefetch(2)


def _attribute_grid(args, attributes, labels):
    """Attribute rows for the template figure: classes x scales for Fashion-MNIST, else the
    distinct attribute rows (at most 8) of the data."""
    import numpy as np
    names = ['T-shirt', 'trouser', 'pullover', 'dress', 'coat', 'sandal', 'shirt', 'sneaker', 'bag', 'boot']
    if args.fashion_mnist and args.condition == 'class+scale':
        lo, hi = args.scale_range
        scales = np.linspace(lo, hi, 5)
        rows = []
        for c in range(10):
            for s in scales:
                rows.append(np.concatenate([np.eye(10)[c], [(s - (lo + hi) / 2) / ((hi - lo) / 2)]]))
        return np.array(rows, np.float32), names, [f'x{s:.2f}' for s in scales]
    if args.fashion_mnist:
        return np.eye(10, dtype=np.float32), [''], names
    unique = np.unique(attributes, axis=0)[:8]
    return unique, [''], [', '.join(f'{v:.2g}' for v in row) for row in unique]


if __name__ == '__main__':
    sys.exit(main())
