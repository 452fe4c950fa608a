"""Reading and writing models: ldmkit folders now; Stable Diffusion formats later."""

from .checkpoint import CheckpointError, atomic_write_bytes, load_checkpoint, save_checkpoint
