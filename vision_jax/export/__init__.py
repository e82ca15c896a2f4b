"""Export a classifier to the runtimes that serve models: StableHLO, SavedModel, TFLite, ONNX.

`export_model(loaded, fmt, out)` writes one artifact directory (the model and
export.json); docs/export.md lists what each format holds and how to run it.
The implementations live in one module per format.
"""

from vision_jax.export.core import (FORMATS, METADATA_FILE, Exportable, ExportError,
                                    calibration_files, family_of, from_loaded, read_metadata)
from vision_jax.export.tflite import check_int8_io
from vision_jax.export.writer import (NEEDS_CALIBRATION, UNSUPPORTED, check_supported,
                                      export_model)

__all__ = ["FORMATS", "METADATA_FILE", "NEEDS_CALIBRATION", "UNSUPPORTED", "Exportable",
           "ExportError", "calibration_files", "check_int8_io", "check_supported",
           "export_model", "family_of", "from_loaded", "read_metadata"]
