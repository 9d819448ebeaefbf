"""Checkpoints: atomic, skip NaN epochs, and resume with the optimizer state."""
import math
import os

import keras
import numpy as np

import vxm_keras
from vxm_keras import losses
from vxm_keras.callbacks import AtomicCheckpoint, load_optimizer_state


def compiled(model):
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=[losses.MSE(), losses.Grad('l2')],
                  loss_weights=[1.0, 0.1])
    return model


def toy_data(rng):
    x = rng.random((2, 2, 32, 32, 1)).astype(np.float32)
    return [x[0], x[1]], [x[1], np.zeros((2, 32, 32, 2), np.float32)]


def test_resume_with_optimizer_state_matches_straight_training(tmp_path, rng):
    inputs, targets = toy_data(rng)
    keras.utils.set_random_seed(0)
    straight = compiled(vxm_keras.vm1((32, 32)))
    start = [w.copy() for w in straight.get_weights()]
    straight.fit(inputs, targets, epochs=4, batch_size=2, shuffle=False, verbose=0)

    first = compiled(vxm_keras.vm1((32, 32)))
    first.set_weights(start)
    first.fit(inputs, targets, epochs=2, batch_size=2, shuffle=False, verbose=0,
              callbacks=[AtomicCheckpoint(tmp_path / '{epoch:04d}.h5')])
    assert sorted(os.listdir(tmp_path)) == ['0001.h5', '0002.h5']
    resumed = compiled(vxm_keras.load_model(tmp_path / '0002.h5'))
    assert load_optimizer_state(resumed, tmp_path / '0002.h5')
    resumed.fit(inputs, targets, epochs=4, initial_epoch=2, batch_size=2, shuffle=False, verbose=0)
    for a, b in zip(straight.get_weights(), resumed.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-6)
    # without the optimizer state, Adam restarts and the weights differ
    fresh = compiled(vxm_keras.load_model(tmp_path / '0002.h5'))
    fresh.fit(inputs, targets, epochs=4, initial_epoch=2, batch_size=2, shuffle=False, verbose=0)
    assert max(np.abs(a - b).max() for a, b in zip(straight.get_weights(), fresh.get_weights())) > 1e-5


def test_nan_epoch_is_not_checkpointed(tmp_path, rng):
    model = compiled(vxm_keras.vm1((32, 32)))
    callback = AtomicCheckpoint(tmp_path / '{epoch:04d}.h5')
    callback.set_model(model)
    callback.on_epoch_end(0, {'loss': 0.5})
    callback.on_epoch_end(1, {'loss': math.nan})
    assert os.listdir(tmp_path) == ['0001.h5']
