"""Keras callbacks and checkpoint helpers for long training runs."""

import glob
import math
import os

import h5py
import keras
import numpy as np

from .runs import EPOCH_ATTR
from .io import atomic_path
from .modelio import save_full

__all__ = ['save_optimizer_state', 'load_optimizer_state', 'AtomicCheckpoint']

# HDF5 group where checkpoints keep the optimizer's variables (Adam moments, step count)
_OPTIMIZER_GROUP = 'vxm_optimizer_state'


def save_optimizer_state(model, h5file):
    """Store ``model.optimizer``'s variables in an open, writable ``h5py.File``."""
    if model.optimizer is None:
        return
    if _OPTIMIZER_GROUP in h5file:
        del h5file[_OPTIMIZER_GROUP]
    group = h5file.create_group(_OPTIMIZER_GROUP)
    for i, var in enumerate(model.optimizer.variables):
        group.create_dataset(f'{i:05d}', data=np.asarray(var.numpy()))
        group[f'{i:05d}'].attrs['path'] = var.path


def load_optimizer_state(model, path):
    """Restore the optimizer variables written by :class:`AtomicCheckpoint` into the compiled
    ``model``. Returns ``True`` if they were restored, ``False`` if the file has none or they
    do not fit this optimizer (then training continues with a fresh optimizer)."""
    with h5py.File(path, 'r') as f:
        if _OPTIMIZER_GROUP not in f:
            return False
        group = f[_OPTIMIZER_GROUP]
        values = [group[k][()] for k in sorted(group)]
    optimizer = model.optimizer
    optimizer.build(model.trainable_variables)
    variables = optimizer.variables
    if len(values) != len(variables) or any(v.shape != tuple(var.shape) for v, var in zip(values, variables)):
        return False
    for var, value in zip(variables, values):
        var.assign(value)
    return True


class AtomicCheckpoint(keras.callbacks.Callback):
    """Save the full model (and the optimizer state) at the end of every epoch, atomically.

    ``filepath`` may contain ``{epoch:04d}`` (1-based, like
    ``ModelCheckpoint``). ``save_model`` saves that model instead of the one
    being trained (they share weights); the optimizer state is the trained one's. The file is written under a temporary name and
    renamed, so a process killed mid-save never leaves a truncated model. An
    epoch whose loss or weights are not finite is not saved, keeping the last
    good checkpoint.
    """

    def __init__(self, filepath, save_model=None):
        super().__init__()
        self.filepath = os.fspath(filepath)
        # e.g. the registration model inside a segmentation-supervised training model
        self.save_model = save_model

    def on_train_begin(self, logs=None):
        # a run killed while saving (SIGKILL, power loss) leaves its hidden temporary file behind
        folder = os.path.dirname(os.path.abspath(self.filepath))
        for stale in glob.glob(os.path.join(folder, '.tmp*-*.h5')):
            try:
                os.unlink(stale)
            except OSError:
                pass

    def on_epoch_end(self, epoch, logs=None):
        loss = (logs or {}).get('loss')
        if loss is not None and not math.isfinite(float(loss)):
            print(f'\nepoch {epoch + 1}: loss is {loss}, checkpoint not written')
            return
        if not all(np.all(np.isfinite(w)) for w in self.model.get_weights()):
            print(f'\nepoch {epoch + 1}: weights are not finite, checkpoint not written')
            return
        with atomic_path(self.filepath.format(epoch=epoch + 1)) as tmp:
            save_full(self.save_model or self.model, tmp)
            with h5py.File(tmp, 'a') as f:
                save_optimizer_state(self.model, f)
                # a renamed checkpoint still resumes at the right epoch (cli.initial_epoch)
                f.attrs[EPOCH_ATTR] = epoch + 1
