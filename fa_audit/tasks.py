"""StudentNet's synthetic teacher task (the audit paper names it, but not its form; ours):

    x ~ N(0, I_{d_in}),   y = argmax_k ( tanh(x W_1 / sqrt(d_in)) W_2 / sqrt(width) )_k

W_1 [d_in, width], W_2 [width, K] standard normal, drawn once from `key`; train and test are
disjoint draws of x. A student of enough capacity can fit it exactly; nothing about it is tuned.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def teacher(key, *, train: int, test: int, d_in: int = 64, width: int = 128, classes: int = 10):
    """((x_train [N, d_in] float32, y_train [N] int32), (x_test, y_test)) as NumPy arrays."""
    k_w1, k_w2, k_train, k_test = jax.random.split(key, 4)
    W1 = jax.random.normal(k_w1, (d_in, width)) / jnp.sqrt(d_in)
    W2 = jax.random.normal(k_w2, (width, classes)) / jnp.sqrt(width)

    def draw(k, n):
        x = jax.random.normal(k, (n, d_in))
        y = jnp.argmax(jnp.tanh(x @ W1) @ W2, axis=-1).astype(jnp.int32)
        return np.asarray(x, np.float32), np.asarray(y)

    return draw(k_train, train), draw(k_test, test)
