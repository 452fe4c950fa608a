"""The settings of a fine-tuning run, one dataclass for the four methods."""

from __future__ import annotations

from dataclasses import dataclass

METHODS = ("lora", "textual-inversion", "dreambooth", "hypernetwork")
# AdamW learning rates measured on the shapes model (docs/finetune.md); higher ones broke it
DEFAULT_LR = {"lora": 5e-4, "textual-inversion": 5e-3, "dreambooth": 1e-4, "hypernetwork": 2e-4}


@dataclass(frozen=True)
class FinetuneConfig:
    method: str
    data: str  # a folder of images with captions (.txt beside each, or metadata.jsonl)
    steps: int = 400
    batch_size: int = 8
    lr: float | None = None  # None: the method's DEFAULT_LR
    seed: int = 0
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    # LoRA
    rank: int = 4
    alpha: float | None = None  # None: = rank (scale 1)
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] = ("attention",)  # + "feed_forward", "conv"
    lora_layout: str = "kohya"  # the file written: kohya | diffusers
    # textual inversion
    token: str = "<concept>"
    initializer: str | None = None  # a word whose embedding the new token starts from
    vectors: int = 1
    embedding_layout: str = "a1111"  # a1111 | diffusers
    # the prior-preservation loss on images the model generates first (DreamBooth's; any method)
    class_prompts: tuple[str, ...] = ()
    class_images: int = 48
    prior_weight: float = 1.0
    # hypernetwork
    layer_structure: tuple[float, ...] = (1.0, 2.0, 1.0)
    activation: str = "linear"

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"unknown fine-tuning method {self.method!r}; choose one of {METHODS}")
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"steps and batch_size must be >= 1, got {self.steps}, {self.batch_size}")
        if self.method == "dreambooth" and self.prior_weight > 0 and not self.class_prompts:
            raise ValueError("DreamBooth's prior preservation needs class_prompts (what the class looks like "
                             "without the identifier, e.g. 'a red circle in the top left'); or set prior_weight=0")

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.method]
