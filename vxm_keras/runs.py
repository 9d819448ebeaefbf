"""A training run's folder: its checkpoints and log, and who may write there.

Policy shared by ``train.py`` and ``train_template.py`` (and :mod:`vxm_keras.callbacks`): the
epoch a resumed run starts from, refusing to clobber another run's files, and an exclusive lock
on the folder for as long as a run writes to it. Problems are :class:`~vxm_keras.errors.UserError`.
"""

import os
import re

from .errors import fail

__all__ = ['EPOCH_ATTR', 'CHECKPOINT_NAME', 'initial_epoch', 'check_run_dir', 'writes_outputs', 'lock_run_dir',
           'held_locks', 'release_run_dirs']


# the attribute in which AtomicCheckpoint records the epoch a checkpoint ends
EPOCH_ATTR = 'vxm_keras_epoch'
CHECKPOINT_NAME = r'(\d{4,})\.h5'


def initial_epoch(load_model, given=None):
    """The epoch a resumed run starts from: ``given`` when set, else the epoch recorded in
    the checkpoint (so a renamed ``best.h5`` resumes where it ended), else the number in a
    name like ``0010.h5``, else 0."""
    if given is not None:
        return given
    if load_model and os.path.isfile(load_model):
        try:
            import h5py
            with h5py.File(load_model, 'r') as f:
                if EPOCH_ATTR in f.attrs:
                    return int(f.attrs[EPOCH_ATTR])
        except (OSError, ValueError):
            pass
    m = re.fullmatch(CHECKPOINT_NAME, os.path.basename(load_model or ''))
    return int(m.group(1)) if m else 0


def check_run_dir(model_dir, start, resuming, overwrite):
    """Never clobber a run silently: check ``model_dir`` before a training run writes to it.

    A new run (``resuming`` False) refuses a folder that holds checkpoints or a training
    log; a resumed run starting at epoch ``start`` refuses one that holds checkpoints of
    later epochs (they would be overwritten). With ``overwrite`` those files are deleted
    instead, and a resumed run's log keeps only the epochs before ``start``.
    """
    import csv
    if not os.path.isdir(model_dir):
        if os.path.exists(model_dir):
            fail(f'{model_dir}: exists and is not a folder')
        return
    checkpoints = sorted((int(m.group(1)), os.path.join(model_dir, m.group(0)))
                         for m in map(lambda n: re.fullmatch(CHECKPOINT_NAME, n), os.listdir(model_dir)) if m)
    log = os.path.join(model_dir, 'training_log.csv')
    has_log = os.path.isfile(log) and os.path.getsize(log) > 0
    doomed = [path for epoch, path in checkpoints if epoch > start]
    if not resuming and has_log:
        doomed.append(log)
    if doomed and not overwrite:
        if resuming:
            fail(f'{model_dir}: holds checkpoints of epochs after {start} ({", ".join(os.path.basename(p) for p in doomed)}), '
                 f'which this run would overwrite: resume from the latest ({checkpoints[-1][1]}), choose another '
                 '--model-dir, or pass --overwrite to replace them')
        latest = f'resume it with --load-model {checkpoints[-1][1]}, ' if checkpoints else ''
        fail(f'{model_dir}: holds a training run ({", ".join(os.path.basename(p) for p in doomed)}): '
             f'{latest}choose another --model-dir, or pass --overwrite to replace it')
    for path in doomed:
        os.unlink(path)
    if resuming and os.path.isfile(log):
        # the log keeps the epochs before the one resumed from, so it reads 0, 1, ..., once each
        with open(log, newline='') as f:
            rows = list(csv.reader(f))
        if rows and 'epoch' in rows[0]:
            col = rows[0].index('epoch')
            kept = [rows[0]] + [r for r in rows[1:] if r and r[col].isdigit() and int(r[col]) < start]
            if len(kept) != len(rows):
                from .io import atomic_path
                with atomic_path(log) as tmp, open(tmp, 'w', newline='') as f:
                    csv.writer(f).writerows(kept)


# (folder, descriptor holding its lock, whether this process made the folder), oldest first
_RUN_DIR_LOCKS = []


def writes_outputs():
    """Whether this process writes a training run's outputs: always, except in a multi-worker
    run (``TF_CONFIG``), where the chief does (worker 0 when there is no chief)."""
    if not os.environ.get('TF_CONFIG'):
        return True
    import json
    config = json.loads(os.environ['TF_CONFIG'])
    task = config.get('task', {})
    if 'chief' in config.get('cluster', {}):
        return task.get('type') == 'chief'
    return task.get('type') == 'worker' and int(task.get('index', 0)) == 0


def lock_run_dir(model_dir):
    """Take an exclusive lock on a training run's folder (made if missing) until the command ends
    (:func:`execute` releases it; the system does if the process dies): a second run into the
    same folder stops at once with one line instead of overwriting the first one's checkpoints
    and log. A lock on the folder itself, so no lock file is left behind. Without ``fcntl``
    (Windows) there is no lock."""
    try:
        import fcntl
    except ImportError:
        return
    made = not os.path.isdir(model_dir)
    os.makedirs(model_dir, exist_ok=True)
    fd = os.open(model_dir, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        fail(f'{model_dir}: another training run is writing to this folder; wait for it to end or '
             'choose another --model-dir')
    _RUN_DIR_LOCKS.append((model_dir, fd, made))


def held_locks():
    """How many run-folder locks this process holds (for :func:`release_run_dirs`)."""
    return len(_RUN_DIR_LOCKS)


def release_run_dirs(keep=0):
    """Release the run-folder locks taken after the first ``keep``; a folder this process made
    and left empty (the run failed before writing) is removed."""
    while len(_RUN_DIR_LOCKS) > keep:
        folder, fd, made = _RUN_DIR_LOCKS.pop()
        os.close(fd)
        if made:
            try:
                os.rmdir(folder)
            except OSError:  # not empty: the run wrote something
                pass
