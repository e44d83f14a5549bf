"""One mesh from config and the sharding rules of parameters and batches."""

from gohd_jax.parallel.mesh import BATCH_AXES, batch_sharding, host_to_global, make_mesh
from gohd_jax.parallel.rules import param_shardings, sharding_report

__all__ = ["BATCH_AXES", "batch_sharding", "host_to_global", "make_mesh", "param_shardings", "sharding_report"]
