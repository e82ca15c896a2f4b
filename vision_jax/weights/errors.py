"""The error every weight loader raises (plain Python, so that naming it imports no JAX)."""


class WeightLoadError(ValueError):
  """A foreign checkpoint does not fit the vision_jax model it was loaded into."""
