"""The Adam update of test-time optimisation (refined fields, affine parameters)."""

import tensorflow as tf

__all__ = ['adam_update']


def adam_update(variable, m, v, grad, lr, t, beta1=0.9, beta2=0.999, eps=1e-8):
    """One Adam step on ``variable`` with moment variables ``m`` and ``v`` (same shape);
    ``t`` the 1-based step number. For test-time optimisation, where a Keras optimizer's
    state and variable tracking would be overhead."""
    m.assign(beta1 * m + (1 - beta1) * grad)
    v.assign(beta2 * v + (1 - beta2) * grad * grad)
    m_hat = m / (1 - beta1 ** t)
    v_hat = v / (1 - beta2 ** t)
    variable.assign_sub(lr * m_hat / (tf.sqrt(v_hat) + eps))
