"""A training loop for ``tf.distribute.MultiWorkerMirroredStrategy``.

Keras 3's ``model.fit`` does not run under MultiWorkerMirroredStrategy
(keras-team/keras#20585: batches arrive as ``PerReplica`` values it cannot
convert), so multi-worker training steps through ``strategy.run`` here. It
drives the same Keras callbacks as ``fit`` (checkpoints, CSV log,
TerminateOnNaN, progress bar), so the outputs of a run look the same.
"""

import numpy as np
import tensorflow as tf

import keras

__all__ = ['fit_distributed']


def fit_distributed(model, dataset, strategy, losses, loss_weights, global_batch_size, epochs,
                    steps_per_epoch, initial_epoch=0, callbacks=(), verbose=1):
    """Train ``model`` on ``dataset`` with ``strategy``, ``steps_per_epoch`` steps an epoch.

    Args:
        model: compiled under ``strategy.scope()`` (its optimizer is used).
        dataset: ``tf.data.Dataset`` of ``((moving, fixed), (fixed, zeros))``
            batches of ``global_batch_size``.
        losses, loss_weights: one loss (``reduction=None``, per-sample
            values) and weight per model output.
        callbacks: Keras callbacks, called as ``fit`` calls them.

    Returns:
        ``keras.callbacks.History``.
    """
    optimizer = model.optimizer
    history = keras.callbacks.History()
    cbs = keras.callbacks.CallbackList(list(callbacks) + [history], add_progbar=verbose > 0, model=model,
                                       verbose=verbose, epochs=epochs, steps=steps_per_epoch)
    iterator = iter(strategy.experimental_distribute_dataset(dataset))
    names = ['loss'] + [f'{out.name.split("/")[0]}_loss' for out in model.outputs]

    def replica_step(inputs, targets):
        with tf.GradientTape() as tape:
            preds = model(list(inputs), training=True)
            terms = [w * tf.nn.compute_average_loss(fn(t, p), global_batch_size=global_batch_size)
                     for fn, w, t, p in zip(losses, loss_weights, targets, preds)]
            total = tf.add_n(terms)
        grads = tape.gradient(total, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return [total] + [term / w if w else term for term, w in zip(terms, loss_weights)]

    @tf.function
    def train_step():
        inputs, targets = next(iterator)
        per_replica = strategy.run(replica_step, args=(inputs, targets))
        return [strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None) for v in per_replica]

    model.stop_training = False
    cbs.on_train_begin()
    for epoch in range(initial_epoch, epochs):
        cbs.on_epoch_begin(epoch)
        sums = np.zeros(len(names))
        for step in range(steps_per_epoch):
            cbs.on_train_batch_begin(step)
            values = np.array([float(v) for v in train_step()])
            sums += values
            cbs.on_train_batch_end(step, dict(zip(names, sums / (step + 1))))
            if model.stop_training:
                break
        logs = dict(zip(names, sums / (step + 1)))
        cbs.on_epoch_end(epoch, logs)
        if model.stop_training:
            break
    cbs.on_train_end()
    return history
