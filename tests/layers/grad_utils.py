"""Backend-agnostic gradients for tests (TensorFlow and JAX)."""

import keras
import numpy as np


def value_and_grads(fn, args):
    """Returns `(fn(*args), [d sum(fn(*args)) / d arg for arg in args])`.

    `args` is a list of arrays; `fn` maps tensors to a tensor. Gradients
    come back as NumPy arrays (zeros where an argument does not matter).
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        tensors = [tf.convert_to_tensor(a) for a in args]
        with tf.GradientTape() as tape:
            for t in tensors:
                tape.watch(t)
            out = fn(*tensors)
            total = tf.reduce_sum(tf.cast(out, "float32"))
        grads = tape.gradient(
            total, tensors,
            unconnected_gradients=tf.UnconnectedGradients.ZERO,
        )
        return np.asarray(out), [np.asarray(g) for g in grads]
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        def total(*a):
            out = fn(*a)
            return jnp.sum(out.astype("float32")), out

        (_, out), grads = jax.value_and_grad(
            total, argnums=tuple(range(len(args))), has_aux=True
        )(*[jnp.asarray(a) for a in args])
        return np.asarray(out), [np.asarray(g) for g in grads]
    raise NotImplementedError(f"Unsupported backend {backend!r}")
