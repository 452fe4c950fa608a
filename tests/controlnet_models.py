"""A tiny text-to-image model for ControlNet tests: the shipped shapes model's first stage and
text encoder with a tiny random UNet (every weight moved off its init: a fresh UNet's zero output
conv would pass no gradient back to a ControlNet), saved as an ldmkit model folder."""

from dataclasses import replace
from pathlib import Path

import torch

from ldmkit import Pipeline
from ldmkit.model import ModelParts
from ldmkit.nets import make_net
from ldmkit.train.diffusion_config import TINY_UNET


def tiny_shapes_model(folder: Path) -> Path:
    shapes = Pipeline.from_pretrained("shapes")
    torch.manual_seed(0)
    net = make_net(TINY_UNET)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn(p.shape))
    parts = ModelParts(net, shapes.autoencoder, replace(shapes.config, net=TINY_UNET),
                       shapes.text_encoder, defaults=replace(shapes.defaults, steps=2), name="tiny-shapes")
    return Pipeline(parts).save_pretrained(folder)
