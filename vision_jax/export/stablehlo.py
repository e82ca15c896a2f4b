"""StableHLO through `jax.export`: a serialized program that plain JAX reloads and calls.

The directory holds `model.jax_export` (the bytes of `jax.export.Exported.serialize()`,
weights included as constants), `model.mlir` (the StableHLO module as text, for
tools that read MLIR) and `export.json`. The batch dimension is symbolic, so one
artifact serves any batch size. Reloading needs only jax:

  exported = jax.export.deserialize(bytearray(open("model.jax_export", "rb").read()))
  logits = exported.call(images)   # float32 [N, H, W, C] -> [N, classes]
"""

from __future__ import annotations

import os

from vision_jax.export.core import Exportable

ARTIFACT = "model.jax_export"


def export_exported(exportable: Exportable, platforms=("cpu",)):
  """The `jax.export.Exported` of the eval forward, batch size symbolic."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  batch, = jax.export.symbolic_shape("batch")
  spec = jax.ShapeDtypeStruct((batch, *exportable.input_shape), jnp.float32)
  return jax.export.export(jax.jit(exportable.closed_forward()), platforms=platforms)(spec)


def write(exportable: Exportable, directory: str, platforms=("cpu",)) -> dict:
  """Writes the artifact into `directory`; returns the metadata entries it adds."""
  exported = export_exported(exportable, platforms)
  with open(os.path.join(directory, ARTIFACT), "wb") as f:
    f.write(exported.serialize())
  with open(os.path.join(directory, "model.mlir"), "w", encoding="utf-8") as f:
    f.write(exported.mlir_module())
  return {"artifact": ARTIFACT, "platforms": list(exported.platforms),
          "calling_convention_version": exported.calling_convention_version,
          "reload": "jax.export.deserialize(bytearray(open(artifact, 'rb').read()))"
                    ".call(images)"}
