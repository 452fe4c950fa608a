"""What each fine-tuning method trains, how it encodes captions, and what it saves.

A prepared method has `module` (an nn.Module whose trainable parameters the optimizer takes
and whose state_dict the checkpoints keep), `conditioning(captions)` (the UNet's conditioning
inputs) and `save(run_dir)` (writes the file other tools read; returns its path).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..train.finetune_config import FinetuneConfig


@dataclass
class PreparedMethod:
    module: nn.Module
    conditioning: Callable[[list[str]], dict]
    save: Callable[[Path], Path]


def frozen_conditioning(pipe, captions: list[str]) -> Callable[[list[str]], dict]:
    """The frozen text encoder's states of every caption the run will use, encoded once, in a
    fixed order: encoding them batch by batch would make a resumed run differ in the last bits
    (a matmul's rounding depends on its batch size)."""
    vocabulary = sorted(set(captions))
    encoded = pipe.encode_prompts(vocabulary)
    row = {caption: k for k, caption in enumerate(vocabulary)}

    def conditioning(batch: list[str]) -> dict:
        index = torch.tensor([row[c] for c in batch], device=pipe.device)
        return {key: value[index] for key, value in encoded.items()}

    return conditioning


def prepare_method(pipe, config: FinetuneConfig, captions: list[str]) -> PreparedMethod:
    """The method's trainable part on `pipe`, initialised from config.seed alone; `captions`:
    every caption the run will encode."""
    pipe.net.requires_grad_(config.method == "dreambooth")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return _prepare(pipe, config, captions)


def _prepare(pipe, config: FinetuneConfig, captions: list[str]) -> PreparedMethod:
    if config.method == "dreambooth":
        return _dreambooth(pipe, config, captions)
    if config.method == "lora":
        return _lora(pipe, config, captions)
    if config.method == "textual-inversion":
        return _textual_inversion(pipe, config)
    return _hypernetwork(pipe, config, captions)


def _dreambooth(pipe, config: FinetuneConfig, captions: list[str]) -> PreparedMethod:
    def save(run_dir: Path) -> Path:
        finetuned = {"method": "dreambooth", "data": config.data}
        return pipe.save_pretrained(run_dir / "model", extra={"finetuned": finetuned})

    return PreparedMethod(pipe.net, frozen_conditioning(pipe, captions), save)


def _lora(pipe, config: FinetuneConfig, captions: list[str]) -> PreparedMethod:
    from ..finetune.lora import LoRANetwork
    from ..finetune.lora_formats import save_lora

    network = LoRANetwork.create({"unet": pipe.net}, rank=config.rank, alpha=config.alpha,
                                 dropout=config.lora_dropout, targets=config.lora_targets)
    network.attach({"unet": pipe.net})

    def save(run_dir: Path) -> Path:
        return save_lora(network, run_dir / "lora.safetensors", layout=config.lora_layout)

    return PreparedMethod(network, frozen_conditioning(pipe, captions), save)


def _textual_inversion(pipe, config: FinetuneConfig) -> PreparedMethod:
    from ..finetune.textual_inversion import TextualInversion

    if not config.initializer:
        raise ValueError("textual inversion needs an initializer: one word near the concept that the new "
                         "token starts from (e.g. --initializer red)")
    inversion = TextualInversion(pipe.text_encoder, config.token, config.initializer, config.vectors)

    def conditioning(captions: list[str]) -> dict:
        return pipe.text_conditioning(*inversion.conditioning(captions))

    def save(run_dir: Path) -> Path:
        # A1111 names an embedding by its file: the token, less what file names cannot hold
        stem = re.sub(r"[^A-Za-z0-9_.-]", "", config.token) or "embedding"
        name = f"{stem}.pt" if config.embedding_layout == "a1111" else "learned_embeds.safetensors"
        return inversion.save(run_dir / name, layout=config.embedding_layout)

    return PreparedMethod(nn.ParameterDict({"vectors": inversion.vectors}), conditioning, save)


def _hypernetwork(pipe, config: FinetuneConfig, captions: list[str]) -> PreparedMethod:
    from ..finetune.hypernetwork import Hypernetwork, save_hypernetwork

    network = Hypernetwork.create([pipe.net.config.context_dim], config.layer_structure, config.activation,
                                  name=Path(config.data).name)
    network.attach(pipe.net, strength=1.0, self_attention=True)  # as apply_hypernetwork will

    def save(run_dir: Path) -> Path:
        return save_hypernetwork(network, run_dir / "hypernetwork.pt")

    return PreparedMethod(network, frozen_conditioning(pipe, captions), save)
