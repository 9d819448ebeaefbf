"""Shared plumbing of the command-line scripts (``train.py``, ``register.py``, ``test.py``, ...).

Every command is a module with ``build_parser()``, ``run(args)`` (the work, callable from Python
with a parsed namespace) and ``main(argv)``, which parses and hands ``run`` to :func:`execute`.
Options that several commands share come from the parent parsers here, so their names, aliases
and checks cannot drift apart. User errors (:class:`~vxm_keras.errors.UserError`) end with one
line on stderr, ``error: <file>: <problem>``, and exit code 2; they never print a traceback.
"""

import argparse
import os
import signal
import sys
import threading

from .errors import UserError, fail  # noqa: F401  (re-exported for the commands)
from .runs import check_run_dir, held_locks, initial_epoch, lock_run_dir, release_run_dirs, writes_outputs

__all__ = ['Terminated', 'execute', 'finite_float', 'device_options', 'training_data_options', 'schedule_options',
           'registration_options', 'check_registration', 'overwrite_option', 'check_schedule', 'progress']


class Terminated(BaseException):
    """SIGTERM arrived (``kill``, a job scheduler's time limit): unwinds like Ctrl-C, so temporary
    outputs are removed and run folders unlocked instead of left behind by an abrupt exit."""


def _on_sigterm(signum, frame):
    raise Terminated()


def execute(command, args):
    """Run ``command(args)`` and return its exit code; a user error becomes one line on stderr and
    code 2, an interrupt code 130 (SIGTERM 143), any other ``OSError`` (disk full, permissions) one
    line and code 1."""
    held = held_locks()
    previous = None
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return command(args) or 0
    except (UserError, FileNotFoundError, FileExistsError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print('interrupted', file=sys.stderr)
        return 130
    except Terminated:
        print('terminated', file=sys.stderr)
        return 143
    except OSError as err:  # not the user's input, but no traceback either
        print(f'error: {err}', file=sys.stderr)
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        release_run_dirs(held)


def finite_float(text):
    """argparse type of every float flag: NaN and Inf are refused as the flag is read (an infinite
    learning rate would train to non-finite weights and still exit 0)."""
    import math
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected a number, got {text!r}') from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f'must be a finite number, got {text!r}')
    return value


def _whole(minimum):
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f'expected a whole number, got {text!r}') from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f'must be >= {minimum}, got {value}')
        return value
    return parse


# argparse types of whole-number flags, checked as they are read
positive_int = _whole(1)
nonnegative_int = _whole(0)


def _parent():
    return argparse.ArgumentParser(add_help=False)


def device_options():
    """``--gpu``, ``--verbose``: where a command runs (see :func:`setup_device`)."""
    p = _parent()
    p.add_argument('--gpu', default=None, help="GPU id or comma list ('-1' or absent: CPU)")
    p.add_argument('--verbose', action='store_true', help="show TensorFlow's start-up messages")
    return p


def training_data_options(*extra_sources):
    """``--data-dir`` | ``--train-list`` (one of them, or of ``extra_sources``: ``(flag, help)``
    pairs, e.g. train_template.py's ``--fashion-mnist``)."""
    p = _parent()
    data = p.add_mutually_exclusive_group(required=True)
    data.add_argument('--data-dir', '--data_dir', dest='data_dir', help='folder of prepared .npz scans')
    data.add_argument('--train-list', '--train_list', dest='train_list',
                      help="text file, one scan path per line (relative paths are taken from the list's folder)")
    for flag, help_text in extra_sources:
        data.add_argument(flag, dest=flag.lstrip('-').replace('-', '_'), help=help_text)
    return p


def schedule_options():
    """A training run's schedule, folder and resumption: ``--lr``, ``--epochs``, ``--steps-per-epoch``,
    ``--batch-size``, ``--model-dir``, ``--overwrite``, ``--load-model``, ``--initial-epoch``, ``--seed``.
    Commands set their own defaults with ``parser.set_defaults``; :func:`check_schedule` checks them."""
    p = _parent()
    p.add_argument('--lr', type=finite_float, default=1e-4, help='Adam learning rate (default %(default)s)')
    p.add_argument('--epochs', type=int, default=1500, help='epoch to stop after (default %(default)s)')
    p.add_argument('--steps-per-epoch', '--steps_per_epoch', dest='steps_per_epoch', type=int, default=100,
                   help='training steps per epoch, one checkpoint each (default %(default)s)')
    p.add_argument('--batch-size', '--batch_size', dest='batch_size', type=int, default=1,
                   help='pairs (or images) per step, the global batch (default %(default)s)')
    p.add_argument('--model-dir', '--model_dir', dest='model_dir', default='runs/train',
                   help='where checkpoints and the log go (default %(default)s)')
    p.add_argument('--overwrite', action='store_true',
                   help='replace the run in --model-dir (a new run: its checkpoints and log; a resumed run: '
                        'the checkpoints after the one resumed from)')
    p.add_argument('--load-model', '--load_model_file', dest='load_model', default=None,
                   help='resume from this checkpoint (.h5)')
    p.add_argument('--initial-epoch', '--initial_epoch', dest='initial_epoch', type=int, default=None,
                   help='epoch the resumed run starts from (default: recorded in the checkpoint)')
    p.add_argument('--seed', type=int, default=None,
                   help='seed of the weights and of the sampling: batch k is the same whether the run '
                        'went straight through or was resumed')
    return p


def registration_options(default_optimize=None):
    """How a pair is registered: ``--model``-independent refinement options shared by register.py
    and test.py: ``--optimize`` (default ``default_optimize``, else
    :data:`vxm_keras.settings.DEFAULT`'s), ``--optimize-lambda``, ``--optimize-coarse``,
    ``--optimize-fine``, ``--cascade``, ``--cross-contrast``; :func:`check_registration`. Defaults
    and help texts come from :mod:`vxm_keras.settings`."""
    from .settings import DEFAULT, help_text
    defaults = DEFAULT.replace(optimize=default_optimize)
    p = _parent()
    p.add_argument('--optimize', type=int, default=defaults.optimize, metavar='N',
                   help=help_text('optimize', defaults))
    p.add_argument('--optimize-lambda', dest='optimize_lambda', type=finite_float, default=None,
                   help=help_text('lam', defaults))
    p.add_argument('--optimize-coarse', dest='optimize_coarse', type=int, default=None, metavar='N',
                   help=help_text('coarse', defaults))
    p.add_argument('--optimize-fine', dest='optimize_fine', type=int, default=None, metavar='N',
                   help=help_text('fine', defaults))
    p.add_argument('--cascade', type=int, default=defaults.cascade, metavar='K', help=help_text('cascade', defaults))
    p.add_argument('--cross-contrast', dest='cross_contrast', action='store_true',
                   help=help_text('cross_contrast', defaults))
    return p


def check_registration(args):
    """Check the options of :func:`registration_options`; returns the keyword arguments of
    :meth:`vxm_keras.registration.Registration.register` the user set (the rest keep the
    defaults of :mod:`vxm_keras.settings`)."""
    from .settings import CROSS_CONTRAST, DEFAULT
    if args.optimize < 0 or args.cascade < 1:
        fail(f'--optimize must be >= 0 and --cascade >= 1, got {args.optimize} and {args.cascade}')
    if args.optimize_lambda is not None and not args.optimize_lambda >= 0:
        fail(f'--optimize-lambda must be >= 0, got {args.optimize_lambda}')
    for flag, value in [('--optimize-coarse', args.optimize_coarse), ('--optimize-fine', args.optimize_fine)]:
        if value is not None and value < 0:
            fail(f'{flag} must be >= 0, got {value}')
    options = dict(optimize=args.optimize, cascade=args.cascade)
    for key, value in (('lam', args.optimize_lambda), ('coarse', args.optimize_coarse),
                       ('fine', args.optimize_fine)):
        if value is not None:
            options[key] = value
    if getattr(args, 'cross_contrast', False):
        if args.optimize < 1 or args.cascade != 1:
            fail('--cross-contrast refines from the affine alignment: it needs --optimize > 0 and --cascade 1')
        options.update(image_loss=CROSS_CONTRAST.image_loss, network=CROSS_CONTRAST.network,
                       fine_lam=CROSS_CONTRAST.fine_lam)
    DEFAULT.replace(**options)  # the settings' own checks; the flags' above give the user's words
    return options


def overwrite_option(help_text='replace existing outputs (never the inputs)'):
    """``--overwrite`` for commands that write outputs."""
    p = _parent()
    p.add_argument('--overwrite', action='store_true', help=help_text)
    return p


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
        if path and os.path.isdir(path):
            fail(f'{path}: a folder, not a model file (.h5)')
        if path and not os.path.isfile(path):
            fail(f'{path}: model file not found')
    start = initial_epoch(args.load_model, args.initial_epoch)
    if start >= args.epochs:
        fail(f'initial epoch {start} is not below --epochs {args.epochs}: nothing to train')
    for flag in ('lr', 'lam'):
        value = getattr(args, flag, None)
        if value is not None and not (value > 0 if flag == 'lr' else value >= 0):
            name = {'lr': '--lr', 'lam': '--lambda'}[flag]
            fail(f'{name} must be {"positive" if flag == "lr" else ">= 0"}, got {value}')
    if getattr(args, 'model_dir', None):
        if writes_outputs():
            lock_run_dir(args.model_dir)  # before the check: two runs cannot both find the folder free
        check_run_dir(args.model_dir, start, bool(args.load_model), getattr(args, 'overwrite', False))
    return start


def progress(items, desc=''):
    """Iterate over ``items`` printing ``desc k/n`` as each one starts (no TensorFlow needed)."""
    items = list(items)
    for n, item in enumerate(items):
        print(f'{desc or "step"} {n + 1}/{len(items)}', flush=True)
        yield item
