"""ldmkit's own files: model and run folders written atomically, and weight files of any
format read without unpickling anything. Below every layer that reads or writes a model."""

from .folder import CheckpointError, atomic_write, load_checkpoint, save_checkpoint, swap_into_place
from .weights_file import detect_format, read_safetensors_metadata, read_weights, safe_torch_load

__all__ = [
    "CheckpointError", "atomic_write", "detect_format", "load_checkpoint", "read_safetensors_metadata",
    "read_weights", "safe_torch_load", "save_checkpoint", "swap_into_place",
]
