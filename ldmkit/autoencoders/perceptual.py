"""Perceptual distances for the first-stage loss: LPIPS, and a download-free stand-in.

LPIPS (Zhang et al. 2018): d(x, y) = sum_l mean_hw || w_l * (u(F_l(x)) - u(F_l(y))) ||^2, with
F_l the VGG16 activations relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 of inputs shifted and
scaled as LPIPS does, u() unit length along channels, and w_l learned non-negative 1x1 weights
(the heads lin0..lin4). No pretrained VGG16 or LPIPS weights ship here: `LPIPS.from_files` reads
a torchvision VGG16 state dict (`features.N.weight`) and the `lpips` package's head weights
(`lin{l}.model.1.weight`) from the user's files. Without them, `DiscriminatorFeatureLoss` compares
the patch discriminator's own activations (feature matching) and needs no download.
Every loss here maps images (B, C, H, W) in [-1, 1] to a distance per sample, shape (B,).
"""

from pathlib import Path

import torch
from torch import nn

from ldmkit.autoencoders.discriminator import PatchDiscriminator

VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
LPIPS_TAPS = (3, 8, 15, 22, 29)            # indices in vgg16().features of relu1_2 ... relu5_3
LPIPS_CHANNELS = (64, 128, 256, 512, 512)


class VGG16Features(nn.Module):
    """torchvision's vgg16().features up to relu5_3, with the same indices, so `features.N.*`
    keys of a torchvision state dict load as they are."""

    def __init__(self):
        super().__init__()
        layers, c_in = [], 3
        for v in VGG16_LAYOUT:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c_in, v, 3, padding=1), nn.ReLU()]
                c_in = v
        self.features = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        taps = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in LPIPS_TAPS:
                taps.append(x)                                                 # (B, C_l, H_l, W_l)
        return taps


class LinearHead(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        # Index 0 held dropout in the lpips package; kept so the key is model.1.weight.
        self.model = nn.Sequential(nn.Identity(), nn.Conv2d(channels, 1, 1, bias=False))


class LPIPSHeads(nn.Module):
    """lin0..lin4, named as in the lpips package's weight files."""

    def __init__(self):
        super().__init__()
        for layer, c in enumerate(LPIPS_CHANNELS):
            self.add_module(f"lin{layer}", LinearHead(c))

    def forward(self, layer: int, d: torch.Tensor) -> torch.Tensor:
        return getattr(self, f"lin{layer}").model(d)                           # (B, 1, H_l, W_l)


class LPIPS(nn.Module):
    """Frozen; build with LPIPS.from_files(vgg_path, lpips_path) to get meaningful weights."""

    def __init__(self):
        super().__init__()
        self.vgg = VGG16Features()
        self.heads = LPIPSHeads()
        # LPIPS's ScalingLayer: ImageNet statistics expressed for inputs in [-1, 1].
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188])[:, None, None],
                             persistent=False)
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450])[:, None, None],
                             persistent=False)
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def from_files(cls, vgg_path: str | Path, lpips_path: str | Path) -> "LPIPS":
        """vgg_path: torchvision VGG16 weights (.pth or .safetensors; classifier.* keys are
        ignored); lpips_path: the lpips package's vgg.pth (lin0..lin4)."""
        model = cls()
        vgg = _read_state_dict(vgg_path, "VGG16")
        vgg = {k: v for k, v in vgg.items() if not k.startswith("classifier.")}
        _load_exactly(model.vgg, vgg, vgg_path, "torchvision VGG16 weights")
        _load_exactly(model.heads, _read_state_dict(lpips_path, "LPIPS"), lpips_path,
                      "LPIPS linear heads")
        return model

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:                                                    # grey -> RGB
            x, y = x.expand(-1, 3, -1, -1), y.expand(-1, 3, -1, -1)
        fx = self.vgg((x - self.shift) / self.scale)
        fy = self.vgg((y - self.shift) / self.scale)
        total = x.new_zeros(x.shape[0])
        for layer, (a, b) in enumerate(zip(fx, fy)):
            d = (_unit(a) - _unit(b)).pow(2)                                   # (B, C_l, H_l, W_l)
            total = total + self.heads(layer, d).mean(dim=(1, 2, 3))           # spatial mean, (B,)
        return total


def _unit(f: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Scale each pixel's feature vector to unit length along channels (LPIPS eq. 1)."""
    return f / (f.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)


def _read_state_dict(path: str | Path, what: str) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} weight file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)  # tensors only, no code
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict of {what}")
    return state


def _load_exactly(module: nn.Module, state: dict, path, what: str) -> None:
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        first = (f"first missing key {missing[0]!r}" if missing else
                 f"first unexpected key {unexpected[0]!r}")
        raise ValueError(f"{path} does not hold {what}: {first} ({len(missing)} missing, "
                         f"{len(unexpected)} unexpected; expected keys like "
                         f"{next(iter(expected))!r})")
    for k, v in expected.items():
        if state[k].shape != v.shape:
            raise ValueError(f"{path}: {k} has shape {tuple(state[k].shape)}, "
                             f"{what} need {tuple(v.shape)}")
    module.load_state_dict(state)


class DiscriminatorFeatureLoss(nn.Module):
    """Feature matching (Salimans et al. 2016; pix2pixHD, Wang et al. 2018, eq. 4): the sum over
    the discriminator's LeakyReLU layers of mean |D_l(x) - D_l(x~)|, the real side detached.
    It needs no pretrained network, but it only measures anything once D has trained a little.
    D is held, not owned: its parameters stay out of this module's parameters, state dict and
    train()/eval() switches, as they belong to the discriminator's own optimiser and checkpoint."""

    def __init__(self, discriminator: PatchDiscriminator):
        super().__init__()
        object.__setattr__(self, "discriminator", discriminator)  # not registered as a submodule

    def forward(self, x: torch.Tensor, x_rec: torch.Tensor) -> torch.Tensor:
        # One call on both halves: BatchNorm then normalises real and fake with the same statistics.
        _, feats = self.discriminator(torch.cat([x, x_rec]), return_features=True)
        total = x.new_zeros(x.shape[0])
        for f in feats:
            real, fake = f.chunk(2)                                        # 2 x (B, C_l, H_l, W_l)
            total = total + (fake - real.detach()).abs().flatten(1).mean(1)    # (B,)
        return total


class NoPerceptualLoss(nn.Module):
    def forward(self, x: torch.Tensor, x_rec: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(x.shape[0])


PERCEPTUAL_LOSSES = ("lpips", "disc_features", "none")


def perceptual_loss(name: str, discriminator: PatchDiscriminator | None = None,
                    vgg_path: str | Path | None = None,
                    lpips_path: str | Path | None = None) -> nn.Module:
    """name -> a module mapping (x, x_rec) to a (B,) distance."""
    if name == "lpips":
        if vgg_path is None or lpips_path is None:
            raise ValueError("perceptual loss 'lpips' needs vgg_path and lpips_path: no pretrained "
                             "VGG16/LPIPS weights ship with ldmkit; use 'disc_features' or 'none'")
        return LPIPS.from_files(vgg_path, lpips_path)
    if name == "disc_features":
        if discriminator is None:
            raise ValueError("perceptual loss 'disc_features' needs the discriminator")
        return DiscriminatorFeatureLoss(discriminator)
    if name == "none":
        return NoPerceptualLoss()
    raise ValueError(f"unknown perceptual loss {name!r}; choose one of {PERCEPTUAL_LOSSES}")
