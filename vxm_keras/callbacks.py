"""Keras callbacks for long training runs."""

import math
import os

import keras
import numpy as np

from .networks import save_model


class AtomicCheckpoint(keras.callbacks.Callback):
    """Save the full model at the end of every epoch, atomically.

    ``filepath`` may contain ``{epoch:04d}`` (1-based, like
    ``ModelCheckpoint``). The file is written under a temporary name and
    renamed, so a process killed mid-save never leaves a truncated model. An
    epoch whose loss or weights are not finite is not saved, keeping the last
    good checkpoint.
    """

    def __init__(self, filepath):
        super().__init__()
        self.filepath = os.fspath(filepath)

    def on_epoch_end(self, epoch, logs=None):
        loss = (logs or {}).get('loss')
        if loss is not None and not math.isfinite(float(loss)):
            print(f'\nepoch {epoch + 1}: loss is {loss}, checkpoint not written')
            return
        if not all(np.all(np.isfinite(w)) for w in self.model.get_weights()):
            print(f'\nepoch {epoch + 1}: weights are not finite, checkpoint not written')
            return
        save_model(self.model, self.filepath.format(epoch=epoch + 1), overwrite=True)
