"""Reading and writing models: ldmkit folders, Stable Diffusion single files, diffusers folders."""

from .checkpoint import CheckpointError, atomic_write_bytes, load_checkpoint, save_checkpoint
from .weights_file import detect_format, read_safetensors_metadata, read_weights
