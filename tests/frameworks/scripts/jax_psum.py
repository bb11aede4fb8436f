"""jax.distributed.initialize() with no arguments, then a psum across every process."""

from __future__ import annotations

import jax
import jax.numpy as jnp

jax.distributed.initialize()
values = jnp.ones(jax.local_device_count()) * (jax.process_index() + 1)
total = jax.pmap(lambda x: jax.lax.psum(x, "i"), axis_name="i")(values)
print("jax", jax.process_index(), jax.process_count(), jax.device_count(), total.tolist())
jax.distributed.shutdown()
