"""Shared plumbing of the command-line scripts (``train.py``, ``register.py``, ``test.py``).

User errors end with one line on stderr, ``error: <file>: <problem>``, and
exit code 2; they never print a traceback.
"""

import os
import sys


class UserError(Exception):
    """An error caused by the user's input: reported in one line, no traceback."""


def fail(message):
    """Print ``error: message`` to stderr and exit with status 2."""
    print(f'error: {message}', file=sys.stderr)
    raise SystemExit(2)


def setup_device(gpu):
    """Select devices before TensorFlow starts: ``None``/``'-1'`` = CPU, else ids like ``'0'`` or ``'0,1'``.

    Returns the number of GPUs requested (0 for CPU).
    """
    os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
    if gpu is None or str(gpu).strip() in ('', '-1'):
        os.environ['CUDA_VISIBLE_DEVICES'] = '-1'
        return 0
    ids = [g.strip() for g in str(gpu).split(',') if g.strip()]
    if not all(g.isdigit() for g in ids):
        fail(f'--gpu: expected an id or a comma-separated list of ids, got {gpu!r}')
    os.environ['CUDA_VISIBLE_DEVICES'] = ','.join(ids)
    return len(ids)


def initial_epoch(load_model, given=None):
    """The epoch a resumed run starts from: ``given`` when set, else the number in a
    checkpoint name like ``0010.h5``, else 0."""
    import re
    if given is not None:
        return given
    m = re.fullmatch(r'(\d+)\.h5', os.path.basename(load_model or ''))
    return int(m.group(1)) if m else 0


def check_schedule(args):
    """Check a training command's schedule and model files before TensorFlow loads.

    ``args`` has ``epochs``, ``steps_per_epoch``, ``batch_size`` (optional),
    ``load_model``, ``initial_epoch`` and optionally ``init_weights``. Returns the
    epoch the run starts from (see :func:`initial_epoch`).
    """
    sizes = {'--epochs': args.epochs, '--steps-per-epoch': args.steps_per_epoch,
             '--batch-size': getattr(args, 'batch_size', 1)}
    for flag, value in sizes.items():
        if value < 1:
            fail(f'{flag} must be positive, got {value}')
    init_weights = getattr(args, 'init_weights', None)
    if init_weights and args.load_model:
        fail('--init-weights starts a new model and --load-model resumes one: pass only one')
    for path in (init_weights, args.load_model):
        if path and not os.path.isfile(path):
            fail(f'{path}: model file not found')
    start = initial_epoch(args.load_model, args.initial_epoch)
    if start >= args.epochs:
        fail(f'initial epoch {start} is not below --epochs {args.epochs}: nothing to train')
    return start


def check_output(path, overwrite):
    """Refuse an output path that exists (without ``overwrite``) or whose folder is missing or read-only."""
    if path is None:
        return
    if os.path.exists(path) and not overwrite:
        fail(f'{path}: exists (use --overwrite to replace it)')
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        fail(f'{path}: folder {folder} does not exist')
    if not os.access(folder, os.W_OK):
        fail(f'{path}: folder {folder} is not writable')


def progress(items, desc=''):
    """Iterate over ``items`` with a Keras progress bar on stderr-like output."""
    import keras
    items = list(items)
    bar = keras.utils.Progbar(len(items), unit_name=desc or 'step')
    for n, item in enumerate(items):
        yield item
        bar.update(n + 1)


def run(main):
    """Run ``main()``; map user-facing exceptions to one-line errors with exit code 2."""
    from .io import InputFileError
    try:
        return main()
    except (UserError, InputFileError, FileNotFoundError, FileExistsError) as err:
        fail(str(err))
    except KeyboardInterrupt:
        print('interrupted', file=sys.stderr)
        raise SystemExit(130)
