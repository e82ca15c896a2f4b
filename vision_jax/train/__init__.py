"""The training engine: one jitted step over a device Mesh, for every recipe."""
