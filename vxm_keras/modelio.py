"""Saving and loading vxm_keras models, and moving weights between them.

Models travel as Keras files: ``.h5`` (legacy HDF5, what the original
release used) and ``.keras`` hold the whole model; ``.weights.h5`` holds the
weights plus a record of the architecture so :func:`load_model` can rebuild
it. Every write is atomic (temporary file, then rename).
"""

import json
import logging
import os

import h5py
import keras
import numpy as np

from .io import ModelFileError, atomic_path

__all__ = ['save_model', 'save_full', 'load_model', 'transfer_weights', 'count_params']

# the architecture record stored in .weights.h5 files written by save_model
_CONFIG_ATTR = 'vxm_keras_model'


def save_model(model: keras.Model, path: str | os.PathLike, overwrite: bool = False) -> None:
    """Save ``model`` atomically (temporary file in the same folder, then rename).

    ``path`` ending in ``.weights.h5`` saves weights only, plus a record of
    the architecture so :func:`load_model` can rebuild it; ``.h5`` (legacy
    HDF5) and ``.keras`` save the full model. Existing files are replaced only
    with ``overwrite=True``.
    """
    path = os.fspath(path)
    if not path.endswith(('.h5', '.keras')):
        raise ValueError(f'{path}: model files must end in .h5, .weights.h5 or .keras')
    with atomic_path(path, overwrite=overwrite) as tmp:
        if path.endswith('.weights.h5'):
            model.save_weights(tmp)
            record = {'class_name': keras.saving.get_registered_name(type(model)),
                      'config': model.get_config()}
            with h5py.File(tmp, 'a') as f:
                f.attrs[_CONFIG_ATTR] = json.dumps(record)
        else:
            save_full(model, tmp)


class _LegacyNotice(logging.Filter):
    def filter(self, record):
        return 'considered legacy' not in record.getMessage()


def save_full(model, path):
    """``model.save(path)`` (``.h5`` or ``.keras``) without Keras 3's warning that HDF5 is a legacy
    format: .h5 is this project's model format on purpose (the original release's; users load
    it from other projects), and a training run would print the warning at every checkpoint."""
    notice = _LegacyNotice()
    logger = logging.getLogger('absl')  # where Keras' absl.logging.warning goes
    logger.addFilter(notice)
    try:
        model.save(path)
    finally:
        logger.removeFilter(notice)


def load_model(path: str | os.PathLike, compile: bool = False) -> keras.Model:
    """Load a vxm_keras model from ``.h5``, ``.keras`` or ``.weights.h5``.

    No custom objects are needed. ``.weights.h5`` files must come from
    :func:`save_model` (they carry the architecture); for other weight files
    build the network yourself and call ``model.load_weights``.

    Raises:
        FileNotFoundError: no such file.
        ModelFileError: (a ``ValueError``) the file is not a readable vxm_keras model.
    """
    from . import networks  # noqa: F401  (registers the model classes with Keras)
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ModelFileError(f'{path}: a folder, not a model file (.h5, .keras or .weights.h5)')
    if not os.path.isfile(path):
        raise FileNotFoundError(f'{path}: model file not found')
    try:
        if path.endswith('.weights.h5'):
            with h5py.File(path, 'r') as f:
                record = f.attrs.get(_CONFIG_ATTR)
            if record is None:
                raise ValueError('weights file without the vxm_keras architecture record; build the '
                                 'network (e.g. vxm_keras.networks.vm2(inshape)) and call load_weights')
            record = json.loads(record)
            cls = keras.saving.get_registered_object(record['class_name'])
            if cls is None:
                raise ValueError(f"unknown model class {record['class_name']!r}")
            model = cls.from_config(record['config'])
            model.load_weights(path)
            return model
        if not path.endswith(('.h5', '.keras')):
            raise ValueError('model files must end in .h5, .weights.h5 or .keras')
        return keras.models.load_model(path, compile=compile)
    except (OSError, KeyError, TypeError, ValueError) as err:
        raise ModelFileError(f'{path}: cannot be loaded as a vxm_keras model: {err}') from err


def transfer_weights(source: keras.Model, target: keras.Model) -> tuple:
    """Copy into ``target`` the weights of every layer of ``source`` with the same name
    and the same weight shapes (e.g. the encoder and first decoder levels of a trained
    VM-2 into a new ``vm2diff``, whose U-Net names its layers the same way).

    Returns ``(copied, skipped)``: names of the layers copied, and of the layers of
    ``target`` that have weights but got none (no such layer in ``source``, or
    other shapes). Both models must be built.
    """
    by_name = {layer.name: layer for layer in source.layers}
    copied, skipped = [], []
    for layer in target.layers:
        weights = layer.get_weights()
        if not weights:
            continue
        src = by_name.get(layer.name)
        src_weights = src.get_weights() if src is not None else []
        if len(src_weights) == len(weights) and all(a.shape == b.shape for a, b in zip(src_weights, weights)):
            layer.set_weights(src_weights)
            copied.append(layer.name)
        else:
            skipped.append(layer.name)
    return copied, skipped


def count_params(model: keras.Model) -> int:
    """Number of trainable parameters."""
    return int(sum(np.prod(w.shape) for w in model.trainable_weights))
