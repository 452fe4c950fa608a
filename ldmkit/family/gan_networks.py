"""A small class-conditional GAN: a DCGAN generator (Radford et al. 2016) and the project's
PatchGAN discriminator (the adversary of VQGAN's first stages) with a projection head for the
class (Miyato & Koyama 2018).

Generator: z -> linear -> 4x4 features -> (ConvTranspose 4x4 stride 2, BatchNorm, ReLU) per
doubling of the size, the width halving each time -> the last one to `channels` -> tanh, images
in [-1, 1] like the data. The class y enters through conditional BatchNorm (class_input
"batchnorm", the presets'): each BatchNorm's gain and shift are linear in a class embedding
e(y). The older class_input "concat" feeds [z, e(y)] to the linear layer instead; trained on
Fashion-MNIST it collapsed to one image per class (see Generator). A class made of attributes
(shapes: colour, shape, quadrant) embeds as the sum of one embedding per attribute
(ClassEmbedding), so a combination never trained on still has an e(y). Discriminator: D(x, y) = the
PatchGAN's logit of each patch plus <V_y, phi(x)>, phi(x) its last feature map, mean-pooled; one
verdict per patch, each also asking whether the image fits its class.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..autoencoders.discriminator import PatchDiscriminator

CONDITIONINGS = ("class", "none")
D_NORMS = ("batch", "group")
CLASS_INPUTS = ("concat", "batchnorm")


@dataclass(frozen=True)
class GANConfig:
    z_dim: int = 128
    base_channels: int = 64  # the generator's width at half size; it doubles per halving, down to 4x4
    image_size: int = 32  # 4 * 2^n pixels
    channels: int = 1
    num_classes: int = 10
    # a class made of attributes: how many values each has, the label being the mixed-radix number
    # of their indices (itertools.product's order; shapes: (4, 3, 4) colours, shapes, quadrants).
    # e(y) is then the sum of one embedding per attribute. (): one embedding per class
    attributes: tuple[int, ...] = ()
    conditioning: str = "class"  # class | none
    # how G takes the class: "batchnorm", conditional BatchNorm (every BatchNorm's gain and
    # shift linear in a class embedding, BigGAN), z alone entering the first layer; "concat",
    # the embedding concatenated to z before it, which collapsed (see Generator). The default
    # stays "concat" so that folders written before this option load as they were; the presets
    # set "batchnorm".
    class_input: str = "concat"
    d_base_channels: int = 64  # the PatchGAN's width (VQGAN's 64)
    d_layers: int = 3  # its stride-2 blocks less one (n_layers); 3 judges 2x2 patches of a 32x32 image
    d_norm: str = "batch"  # batch (as VQGAN's) | group
    # ProGAN's minibatch standard deviation before D's last conv, over groups of this many
    # images (0: off): a feature that lets D see a batch's variety. Measured, it did not undo
    # the "concat" generator's collapse, and with "batchnorm" it was not needed: off in the presets
    d_minibatch_std: int = 0

    def __post_init__(self):
        object.__setattr__(self, "attributes", tuple(self.attributes))
        if self.conditioning not in CONDITIONINGS:
            raise ValueError(f"conditioning must be one of {CONDITIONINGS}, got {self.conditioning!r}")
        if self.attributes and (min(self.attributes) < 1 or math.prod(self.attributes) != self.num_classes):
            raise ValueError(f"attributes {self.attributes} must be counts >= 1 whose product is num_classes "
                             f"({self.num_classes})")
        if self.class_input not in CLASS_INPUTS:
            raise ValueError(f"class_input must be one of {CLASS_INPUTS}, got {self.class_input!r}")
        if self.image_size < 8 or self.image_size & (self.image_size - 1):
            raise ValueError(f"image_size must be a power of 2 and >= 8 (4x4 doubled n times), got {self.image_size}")
        for name in ("z_dim", "base_channels", "channels", "num_classes", "d_base_channels", "d_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.d_norm not in D_NORMS:
            raise ValueError(f"d_norm must be one of {D_NORMS}, got {self.d_norm!r}")
        if self.d_minibatch_std < 0 or self.d_minibatch_std == 1:
            raise ValueError(f"d_minibatch_std must be 0 (off) or a group size >= 2, got {self.d_minibatch_std}")

    @property
    def upsamplings(self) -> int:
        """The doublings from 4x4 to image_size."""
        return int(math.log2(self.image_size // 4))


class ClassEmbedding(nn.Embedding):
    """labels (B,) -> e(y) (B, dim): a learned row per class, or with attributes (a, b, ...) the sum
    of one row per attribute, e(y) = E_1[y_1] + E_2[y_2] + ..., y_i the label's attribute indices;
    the tables are stacked in one weight of a + b + ... rows. With attributes each row starts
    N(0, 1/A), A attributes, so that e(y) starts N(0, 1) as one class's row does."""

    def __init__(self, num_classes: int, dim: int, attributes: tuple[int, ...] = ()):
        super().__init__(sum(attributes) or num_classes, dim)
        self.attributes = tuple(attributes)
        self.gain = len(attributes) ** -0.5 if attributes else 1.0  # a row's scale, for other inits too
        with torch.no_grad():
            self.weight.mul_(self.gain)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        return class_rows(self.weight, labels, self.attributes)


def class_rows(table: torch.Tensor, labels: torch.Tensor, attributes: tuple[int, ...] = ()) -> torch.Tensor:
    """table's row per label (B, D); with attributes, the sum of the rows of the label's attribute
    values (table: their tables stacked, sum(attributes) rows)."""
    if not attributes:
        return table[labels]
    indices, rest, offset = [], labels, sum(attributes)
    for count in reversed(attributes):  # mixed radix, last attribute the fastest
        offset -= count
        indices.append(rest % count + offset)
        rest = rest // count
    return table[torch.stack(indices, dim=1)].sum(dim=1)  # (B, A, D) -> (B, D)


class ClassBatchNorm2d(nn.BatchNorm2d):
    """Conditional BatchNorm (de Vries et al. 2017; BigGAN, Brock et al. 2019): BatchNorm without
    its own affine, then a gain and a shift computed from the class's embedding e,
    x_hat * (1 + W_g e) + W_b e. Linear maps of one shared embedding rather than a free gain per
    class: Adam moves each parameter by about the learning rate per step, and with free
    per-class gains (starting at 1) the preset's G still ignored the class at step 600. A
    BatchNorm2d still (running statistics, momentum), so refresh_batch_statistics finds it."""

    def __init__(self, channels: int, embedding_dim: int):
        super().__init__(channels, affine=False)
        self.gain = nn.Linear(embedding_dim, channels, bias=False)
        self.shift = nn.Linear(embedding_dim, channels, bias=False)

    def forward(self, x: torch.Tensor, embedded: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W), embedded (B, embedding_dim): the class embeddings of the batch."""
        gain, shift = 1 + self.gain(embedded), self.shift(embedded)  # (B, C) each
        return super().forward(x) * gain[:, :, None, None] + shift[:, :, None, None]


class Generator(nn.Module):
    """(z (B, z_dim), class labels (B,)) -> images (B, channels, image_size, image_size) in [-1, 1]."""

    def __init__(self, config: GANConfig):
        super().__init__()
        self.config = c = config
        # class_input "concat": the class joins z as a learned embedding, concatenated
        # (conditional GANs, Mirza & Osindero 2014); through the first linear layer it is a
        # class-dependent offset of the 4x4 features. The first BatchNorm normalises z's part
        # and the class's together, and G is free to grow the class's weights until z is a small
        # perturbation: the batch still varies, class to class, and a discriminator judging
        # images one at a time cannot tell. On Fashion-MNIST it did (at step 1800, z's part of
        # the 4x4 features had std 0.19 against the class's 0.63; equal at the start), and every
        # image of a class came out the same whatever z. Trained unconditionally, the same net
        # kept its variety. "batchnorm": z alone makes the 4x4 features, so the first BatchNorm
        # scales z's own variation to unit variance, and the class only sets the gains and
        # shifts after each BatchNorm.
        conditional, concat = c.conditioning == "class", c.class_input == "concat"
        self.class_embedding = ClassEmbedding(c.num_classes, c.z_dim, c.attributes) if conditional else None

        def norm(channels: int) -> nn.BatchNorm2d:
            return nn.BatchNorm2d(channels) if concat or not conditional else ClassBatchNorm2d(channels, c.z_dim)

        inputs = c.z_dim * (2 if conditional and concat else 1)
        width = c.base_channels * 2 ** (c.upsamplings - 1)  # at 4x4
        # no biases before a BatchNorm: its shift makes them moot
        self.project = nn.Linear(inputs, width * 4 * 4, bias=False)
        self.project_norm = norm(width)
        blocks = []
        for _ in range(c.upsamplings - 1):
            # kernel 4, stride 2: every output pixel gets the same number of taps, so no
            # checkerboard (Odena et al. 2016)
            blocks += [nn.ConvTranspose2d(width, width // 2, 4, 2, 1, bias=False), norm(width // 2), nn.ReLU(True)]
            width //= 2
        blocks += [nn.ConvTranspose2d(width, c.channels, 4, 2, 1), nn.Tanh()]  # DCGAN: no norm on the output
        self.blocks = nn.Sequential(*blocks)
        self.apply(_dcgan_init)  # the class embedding keeps torch's N(0, 1): z's scale, not drowned out

    def forward(self, z: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        embedded = None
        if self.class_embedding is not None:
            if class_labels is None:
                raise ValueError("this generator is class-conditional: give class_labels")
            embedded = self.class_embedding(class_labels).to(z.dtype)  # (B, z_dim)
            if self.config.class_input == "concat":
                z = torch.cat([z, embedded], dim=1)  # (B, 2 z_dim)
        h = self.project(z).view(len(z), -1, 4, 4)
        h = torch.relu(_apply(self.project_norm, h, embedded))  # (B, width, 4, 4)
        for layer in self.blocks:
            h = _apply(layer, h, embedded)
        return h

    @torch.no_grad()
    def refresh_batch_statistics(self, classes: Sequence[int] | None = None, batches: int = 16,
                                 batch_size: int = 64, seed: int = 0,
                                 z_means: torch.Tensor | None = None) -> Generator:
        """Recompute BatchNorm's running statistics as the average over `batches` batches of fresh
        samples, z ~ N(0, I) and classes drawn uniformly from `classes` (those trained on; None:
        all), from `seed` (BigGAN's "standing statistics", Brock et al. 2019). z_means (classes or
        1, z_dim; attribute tables, stacked, for a class of attributes): z ~ N(m_y, I) instead, m_y
        those rows (class_rows), the prior a VAE decoder samples. Eval mode uses them;
        those tracked in training belong to earlier weights and, averaged into an EMA of the
        weights, to none at all."""
        choices = torch.tensor(range(self.config.num_classes) if classes is None else list(classes))
        norms = [m for m in self.modules() if isinstance(m, nn.BatchNorm2d)]
        momenta = [norm.momentum for norm in norms]
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None  # a cumulative average over the batches
        was_training, like = self.training, next(self.parameters())
        self.train()
        gen = torch.Generator().manual_seed(seed)
        for _ in range(batches):
            z = torch.randn((batch_size, self.config.z_dim), generator=gen).to(like.device, like.dtype)
            labels = choices[torch.randint(len(choices), (batch_size,), generator=gen)].to(like.device)
            if z_means is not None:
                means = z_means[0] if len(z_means) == 1 else class_rows(z_means, labels, self.config.attributes)
                z = z + means.to(z)
            self(z, labels if self.config.conditioning == "class" else None)
        for norm, momentum in zip(norms, momenta):
            norm.momentum = momentum
        return self.train(was_training)


class MinibatchStd(nn.Module):
    """x (B, C, H, W) -> (B, C + 1, H, W): ProGAN's minibatch standard deviation (Karras et al.
    2018, sec. 3). The batch is split into groups of `group_size` images (image i in group
    i mod B/group_size; the whole batch where group_size does not divide it); per group, the
    standard deviation of each feature at each position over the group's images, averaged over
    features and positions, is appended to each of its images as a constant channel. A batch
    of near-copies shows a small value that no single image can show, so D can reject a
    generator that ignores z."""

    def __init__(self, group_size: int = 4, eps: float = 1e-8):
        super().__init__()
        self.group_size, self.eps = group_size, eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        group = min(self.group_size, b)
        if b % group:
            group = b
        y = x.view(group, b // group, c, h, w)  # y[g, m]: image g * (b / group) + m, group m
        std = (y.var(dim=0, correction=0) + self.eps).sqrt().mean(dim=(1, 2, 3))  # (b / group,)
        return torch.cat([x, std.repeat(group).view(b, 1, 1, 1).expand(b, 1, h, w).to(x.dtype)], dim=1)


class ProjectionDiscriminator(nn.Module):
    """(images (B, C, H, W), class labels (B,)) -> logits (B, 1, H', W'), one per patch.

    D(x, y)_patch = psi(x)_patch + <V_y, phi(x)> (Miyato & Koyama 2018, eq. 3): psi the PatchGAN's
    own logits, phi(x) its last activations mean-pooled over positions (the mean rather than the
    paper's sum, so the term's scale does not depend on the image size), V a learned vector per
    class. The class term is the same for every patch of an image.

    With d_minibatch_std > 0 the minibatch standard deviation of the last activations joins
    them as one more input channel of the last conv (ProGAN), which then has one more input
    than the PatchGAN's own. Its BatchNorm (d_norm "batch") normalises each batch's features
    per channel, real and fake batches apart, which hides much of the spread that channel
    measures: use it with d_norm "group"."""

    def __init__(self, config: GANConfig):
        super().__init__()
        self.patches = PatchDiscriminator(config.channels, config.d_base_channels, config.d_layers, config.d_norm)
        main = self.patches.main
        width = config.d_base_channels * min(2**config.d_layers, 8)  # that of its last activations
        self.minibatch_std = None
        if config.d_minibatch_std:
            self.minibatch_std = MinibatchStd(config.d_minibatch_std)
            last = nn.Conv2d(width + 1, 1, 4, 1, 1)  # as the PatchGAN's last conv, one more input
            nn.init.normal_(last.weight, 0.0, 0.02)
            nn.init.zeros_(last.bias)
            main[-1] = last
        self.class_embedding = None
        if config.conditioning == "class":
            self.class_embedding = ClassEmbedding(config.num_classes, width, config.attributes)
            # as the paper's code (Glorot); with attributes, their sum at that scale
            nn.init.xavier_uniform_(self.class_embedding.weight, gain=self.class_embedding.gain)

    def forward(self, x: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        main = self.patches.main
        for layer in main[:-1]:
            x = layer(x)
        features = x  # the last activations (B, width, H', W')
        logits = main[-1](x if self.minibatch_std is None else self.minibatch_std(x))
        if self.class_embedding is None:
            return logits
        if class_labels is None:
            raise ValueError("this discriminator is class-conditional: give class_labels")
        pooled = features.mean(dim=(2, 3))  # phi(x): (B, width)
        projection = (self.class_embedding(class_labels).to(pooled.dtype) * pooled).sum(dim=1)  # (B,)
        return logits + projection.view(-1, 1, 1, 1)


def _apply(layer: nn.Module, h: torch.Tensor, embedded: torch.Tensor | None) -> torch.Tensor:
    """A generator layer on h; a ClassBatchNorm2d also gets the class embeddings."""
    return layer(h, embedded) if isinstance(layer, ClassBatchNorm2d) else layer(h)


def _dcgan_init(m: nn.Module) -> None:
    """DCGAN's init (Radford et al. 2016), as the PatchGAN's: weights ~ N(0, 0.02), norm scales ~ N(1, 0.02)."""
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(m.weight, 0.0, 0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.BatchNorm2d) and m.affine:  # ClassBatchNorm2d: its gains start at 1
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)
