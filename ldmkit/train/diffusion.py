"""Training the second stage: diffusion in the latent space of a frozen autoencoder.

The data are encoded once: latents z0 = s * E(x) (posterior means) and, for text conditioning,
the MiniLM states of each distinct caption. An inpainting model (UNet input: z_t, mask, masked
image's latent, as SD inpainting) draws random masks at every step and encodes its masked
images then; it can start from a text-to-image model (`init_from`), the new input channels
zero, as SD inpainting started from SD. Each step then draws a batch, replaces the
conditioning of a `cond_dropout` share by the null one (the empty caption, or the null class)
so that classifier-free guidance has an unconditional model to subtract, and takes an AdamW
step on the objective of LDM eq. 2. All randomness of a step comes from a generator seeded by
(seed, step), so a resumed run repeats an uninterrupted one exactly. With autoencoder "pixel" the
first stage is the identity (f = 1): diffusion on the images themselves, as GLIDE's, whose networks
also take the caption's pooled state (model.net.pooled_dim). An unCLIP decoder (model.conditioning
"image-embedding") is conditioned on each image's CLIP image embedding instead, computed once
(ldmkit/train/unclip_decoder.py), and dropped to the zero embedding as captions are to "".
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..config import from_dict, to_dict
from ..data import ImageFolder, fashion_mnist, load_fashion_mnist, shapes
from ..diffusion import diffusion_loss, make_schedule, q_sample
from ..model import GenerationDefaults, ModelParts, load_first_stage, resolve_repo_path
from ..model.conditioner import NULL_PROMPT, ImageEmbeddingConditioner, TextConditioner, takes_pooled
from ..nets import make_net
from ..pipelines import Pipeline, inpainting_inputs
from ..pipelines.upscale import enlarged
from ..storage import atomic_write, load_checkpoint, save_checkpoint
from ..utils.images import image_grid, save_png
from . import distributed
from .checkpoints import checkpoint_dir, prune_checkpoints, resume_point
from .diffusion_config import DiffusionTrainConfig
from .ema import EMA
from .logging import JsonlLog, plot_losses
from .masks import random_masks
from .steps import NonFiniteSteps, fused_adam, learning_rate, mixed_precision, step_generator
from .unclip_decoder import embed_training_images, preview_rows, save_variation_grid


def class_names(dataset: str) -> list[str] | None:
    """The name of each class label, in label order (a class model's prompts)."""
    if dataset == "folder":
        return None
    if dataset == "fashion-mnist":
        return list(fashion_mnist.CLASS_NAMES)
    return [shapes.caption(*combo) for combo in shapes.COMBINATIONS]


def preview_prompts(config: DiffusionTrainConfig, captions: list[str]) -> list[str]:
    """The rows of the sample grids: every class, seen and held-out shapes, or the first
    distinct captions of a folder."""
    if config.model.conditioning == "none":
        return [""]
    if config.data.dataset == "folder":
        return list(dict.fromkeys(captions))[:8]
    if config.data.dataset == "fashion-mnist":
        return [fashion_mnist.caption(y) for y in range(len(fashion_mnist.CLASS_NAMES))]
    held = [shapes.caption(*c) for c in config.data.holdout]
    seen = [shapes.caption(*c) for c in shapes.COMBINATIONS[::7] if c not in config.data.holdout]
    return seen[:6] + held[:4]


def load_captioned_images(config: DiffusionTrainConfig, channels: int) -> tuple[torch.Tensor, list[str], torch.Tensor]:
    """(images (N, C, H, W) in [-1, 1], captions, class labels (N,); folders have no labels: -1).
    Fashion-MNIST and shapes come at 32x32; a smaller model.image_size area-averages them to it."""
    images, captions, labels = _captioned_images(config, channels)
    size = config.model.image_size
    if images.shape[-1] != size:
        if images.shape[-1] % size:
            raise ValueError(f"model.image_size {size} does not divide the {config.data.dataset} images' "
                             f"{images.shape[-1]} pixels: choose a divisor (area averaging shrinks them to it)")
        images = low_resolution(images, (size, size))
    return images, captions, labels


def _captioned_images(config: DiffusionTrainConfig, channels: int) -> tuple[torch.Tensor, list[str], torch.Tensor]:
    data = config.data
    if data.dataset == "folder":
        folder = ImageFolder(Path(data.path), size=config.model.image_size, channels=channels)
        print(folder.summary())
        for path, reason in folder.skipped[:10]:
            print(f"  skipped {path}: {reason}")
        n = min(len(folder), data.limit or len(folder))
        items = [folder[i] for i in tqdm(range(n), desc="reading images", disable=n < 1000)]
        return torch.stack([x for x, _ in items]), [t for _, t in items], torch.full((n,), -1)
    if data.dataset == "fashion-mnist":
        images, labels = load_fashion_mnist("train", limit=data.limit)
        return images, [fashion_mnist.caption(int(y)) for y in labels], labels
    dataset = shapes.ShapesDataset(length=data.limit or 20_000, seed=config.seed, holdout=data.holdout)
    items = [dataset[i] for i in range(len(dataset))]
    labels = torch.tensor([c * 12 + s * 4 + q for _, _, (c, s, q) in items])  # 48 combinations
    return torch.stack([x for x, _, _ in items]), [t for _, t, _ in items], labels


def low_resolution(images: torch.Tensor, size) -> torch.Tensor:
    """Images area-averaged to `size` (H, W): a super-resolution model's low-resolution inputs."""
    return torch.nn.functional.interpolate(images, size=tuple(size), mode="area")


def upscaler_inputs(images: torch.Tensor, lowres, latent_size, f: int) -> torch.Tensor:
    """What an upscaler joins to z_t, before noise: the images area-averaged by the model's upscale
    factor, then enlarged to the latent's size (a pixel-space upsampler; a latent one's are that size)."""
    enlarge = lowres.enlargement(f)
    small = low_resolution(images, [side // enlarge for side in latent_size])
    return enlarged(small, enlarge)


@torch.no_grad()
def encode_dataset(autoencoder, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Latents z0 = s * E(x) of every image, computed once: (N, c, H/f, W/f)."""
    return torch.cat([autoencoder.to_latent(chunk) for chunk in images.split(batch_size)])


def cached_latents(autoencoder, images: torch.Tensor, config: DiffusionTrainConfig, device) -> torch.Tensor:
    """encode_dataset, kept in config.latent_cache between runs (a study's many runs on one data
    set encode it once), under a key of the first stage's weights, the data config and the images."""
    if config.latent_cache is None:
        return encode_dataset(autoencoder, images.to(device))
    from safetensors.torch import load_file, save_file

    digest = hashlib.sha256(json.dumps([to_dict(config.data), list(images.shape)]).encode())
    for name, tensor in sorted(autoencoder.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    digest.update(images.contiguous().view(torch.uint8).numpy().tobytes())
    path = Path(config.latent_cache) / f"latents-{digest.hexdigest()[:20]}.safetensors"
    if path.exists():
        return load_file(path)["latents"].to(device)
    latents = encode_dataset(autoencoder, images.to(device))
    atomic_write(path, lambda tmp: save_file({"latents": latents.cpu().contiguous()}, str(tmp)))
    return latents


def train_diffusion(
    config: DiffusionTrainConfig,
    run_dir: str | Path,
    device: str | torch.device = "cpu",
    resume: bool = True,
    progress: bool = True,
    max_steps: int | None = None,
) -> dict[str, float]:
    """Train, or resume, a latent diffusion model in `run_dir` (under torchrun: data-parallel)."""
    return distributed.run(
        lambda rank, device: _train_diffusion(config, Path(run_dir), rank, device, resume, progress, max_steps),
        device, config.batch_size,
    )


def _train_diffusion(config, run_dir: Path, rank: distributed.Rank, device: torch.device, resume: bool,
                     progress: bool, max_steps: int | None) -> dict[str, float]:
    if (config.batch_size // rank.world) % config.accumulate:
        raise ValueError(f"each process's {config.batch_size // rank.world} images per step do not split into "
                         f"accumulate={config.accumulate} equal micro-batches")
    # a pixel-space model's "first stage" is the identity on images of its net's output channels
    autoencoder = load_first_stage(config.autoencoder, config.model.net.out_channels, device)
    images, captions, labels = load_captioned_images(config, autoencoder.config.in_channels)
    if images.shape[1] != autoencoder.config.in_channels:
        raise ValueError(
            f"the {config.data.dataset} images have {images.shape[1]} channels but the autoencoder "
            f"{config.autoencoder} takes {autoencoder.config.in_channels}: train one for this data first"
        )
    latents = cached_latents(autoencoder, images, config, device)  # (N, c, h, w)
    model_cfg = config.model
    z, unet_in = latents.shape[1], model_cfg.net.in_channels
    inpainting = model_cfg.task == "inpainting"
    if unet_in != model_cfg.net_in_channels(z):
        if model_cfg.task == "generation":
            raise ValueError(f"the autoencoder's latents have {z} channels, so unet.in_channels must be {z} "
                             f"(text-to-image) or {2 * z + 1} (inpainting: + mask + masked image's latent, with "
                             f"model.task=inpainting), got {unet_in}")
        raise ValueError(f"a {model_cfg.task} model on {z}-channel latents needs unet.in_channels = "
                         f"{model_cfg.net_in_channels(z)}, got {unet_in}")
    lowres = None
    if model_cfg.lowres:
        f = autoencoder.config.downsampling_factor
        lowres = upscaler_inputs(images, model_cfg.lowres, latents.shape[-2:], f).to(device)
    low_alpha_bar = make_schedule(model_cfg.lowres.schedule).alpha_bar.float().to(device) if model_cfg.lowres else None

    encoder = None
    if model_cfg.conditioning == "text":  # each distinct caption once; "" is the null caption
        from ..conditioning import TextEncoder

        encoder = TextEncoder.minilm(model_cfg.text_length).to(device)
        vocabulary = sorted(set(captions) | {NULL_PROMPT})
        # each distinct caption's network inputs (context (V, L, D), its mask, a pooled state (V, D))
        caption_table = TextConditioner.from_states(*encoder(vocabulary), device, torch.float32,
                                                    pooled=takes_pooled(model_cfg))
        caption_index = torch.tensor([vocabulary.index(c) for c in captions])
        null_index = vocabulary.index(NULL_PROMPT)
    if model_cfg.conditioning == "image-embedding":  # an unCLIP decoder: each image's CLIP embedding, once
        embeddings = embed_training_images(model_cfg.embedding_clip, model_cfg.embedding_dim, images, device,
                                           progress and rank.is_main)                # (N, E)
        previews = preview_rows(labels)
    sched = make_schedule(model_cfg.schedule)

    torch.manual_seed(config.seed)
    unet = make_net(model_cfg.net, gradient_checkpointing=config.gradient_checkpointing).to(device)
    if config.init_from:
        start_from(unet, config.init_from)
    point = resume_point(run_dir, config) if resume else None
    if point is not None:  # before FSDP shards the weights
        unet.load_state_dict(point[1]["unet"])
    if config.parallel == "fsdp":
        net = distributed.fully_sharded(unet, rank, device, units=unet.shard_units)
    else:
        net = distributed.data_parallel(unet, rank, device)
    ema = EMA(unet, config.ema_decay)  # under FSDP, sharded as the weights are
    # generates with the EMA weights: the sample grids during training and the final model
    pipeline = Pipeline(ModelParts(
        make_net(model_cfg.net).to(device), autoencoder, model_cfg, encoder, class_names(config.data.dataset),
        GenerationDefaults(guidance=config.guidance), name=run_dir.name,
    ))
    opt = fused_adam(unet.parameters(), lr=config.lr, weight_decay=config.weight_decay)

    log = JsonlLog(run_dir / "log.jsonl") if rank.is_main else None
    start, seconds_before = 0, 0.0
    nonfinite = NonFiniteSteps(config.max_nonfinite_steps)
    if point is not None:
        found, stored, train_state = point
        ema.load_state_dict({key: distributed.shard_like(value, ema.shadow[key])
                             for key, value in stored["ema_unet"].items()})
        distributed.load_optimizer_state(opt, train_state["optimizer"])
        start, seconds_before = train_state["step"], train_state["seconds"]
        nonfinite.skipped = train_state.get("skipped_nonfinite", 0)
        if rank.is_main:
            log.truncate_after(start)
            print(f"resuming from {found} (step {start})")
    elif resume is False and rank.is_main and (run_dir / "log.jsonl").exists():
        (run_dir / "log.jsonl").unlink()

    end = config.steps if max_steps is None else min(config.steps, max_steps)
    bar = tqdm(range(start, end), initial=start, total=config.steps, desc="diffusion",
               disable=not (progress and rank.is_main))
    mine = rank.rows(config.batch_size)  # every process draws the global batch, then keeps its rows
    t0 = time.perf_counter()
    autocast = mixed_precision(config.mixed_precision, device)
    scaler = torch.amp.GradScaler(device.type, enabled=config.mixed_precision == "fp16")

    def save_state(done: int) -> None:
        """Called by every process: FSDP's shards are gathered whole, then rank 0 writes."""
        weights = {"unet": distributed.full_state(unet.state_dict()),
                   "ema_unet": distributed.full_state(ema.state_dict())}
        optimizer = distributed.full_optimizer_state(opt)
        if not rank.is_main:
            return
        seconds = seconds_before + time.perf_counter() - t0
        meta = {"type": "diffusion-run", "train": to_dict(config)}
        train_state = {"step": done, "optimizer": optimizer, "seconds": seconds, "skipped_nonfinite": nonfinite.skipped}
        save_checkpoint(checkpoint_dir(run_dir, done), weights, meta, train_state)
        prune_checkpoints(run_dir, config.keep_checkpoints)

    for step in bar:
        unet.train()
        gen = step_generator(config.seed, step)
        index = torch.randint(len(latents), (config.batch_size,), generator=gen)[mine]
        drop = (torch.rand(config.batch_size, generator=gen) < config.cond_dropout)[mine]  # (B,) unconditional
        cond = {}
        if model_cfg.conditioning == "text":
            rows = torch.where(drop, null_index, caption_index[index])
            cond = {name: table[rows] for name, table in caption_table.items()}
        elif model_cfg.conditioning == "class":
            null_class = pipeline.conditioner.null_label
            cond = {"class_labels": torch.where(drop, null_class, labels[index]).to(device)}
        elif model_cfg.conditioning == "image-embedding":
            cond = ImageEmbeddingConditioner.dropped(embeddings[index.to(device)], drop)
        concat = None
        if lowres is not None:  # noise augmentation: a random level per image, given as its class label
            level = torch.randint(model_cfg.lowres.max_noise_level + 1, (config.batch_size,), generator=gen)[mine]
            low = lowres[index]
            noise = torch.randn((config.batch_size, *low.shape[1:]), generator=gen)[mine].to(device)
            concat = q_sample(low, low_alpha_bar[level.to(device)].view(-1, 1, 1, 1), noise)
            cond = {**cond, "class_labels": level.to(device)}
        if inpainting:
            repaint = random_masks(config.batch_size, images.shape[-2:], gen)[mine].to(device)
            with torch.no_grad():
                concat = inpainting_inputs(autoencoder, images[index].to(device), repaint)
        for group in opt.param_groups:
            group["lr"] = learning_rate(config.lr, step, config.warmup_steps, config.steps, config.lr_schedule)

        opt.zero_grad(set_to_none=True)
        loss = backward_in_micro_batches(net, latents[index], cond, concat, sched, config, gen, rank, scaler, autocast)
        scaler.unscale_(opt)
        grad_norm = distributed.full(torch.nn.utils.clip_grad_norm_(unet.parameters(), config.grad_clip or math.inf))
        done = step + 1
        loss = distributed.mean_over_processes(loss.detach(), rank)  # the same on every process
        if nonfinite.finite(loss.item(), grad_norm.item()):
            scaler.step(opt)
            ema.update(unet, step)
        elif nonfinite.too_many:
            save_state(done)  # the weights are still those from before the streak began
            raise nonfinite.error(done, checkpoint_dir(run_dir, done), config.lr)
        scaler.update()
        sample = done % config.sample_every == 0 or done == end
        if sample:
            ema_weights = distributed.full_state(ema.state_dict())
        # logged before the checkpoint is written: a run killed between the two resumes from the
        # checkpoint before and drops this line, instead of resuming past a step it never logged
        if rank.is_main and (done % config.log_every == 0 or done == end):
            speed = (done - start) * config.batch_size / (time.perf_counter() - t0)
            log.write({"step": done, "loss": loss.item(), "grad_norm": grad_norm.item(), "images_per_s": speed,
                       "skipped_nonfinite": nonfinite.skipped})
            bar.set_postfix(loss=f"{loss.item():.4f}", img_per_s=f"{speed:.0f}")
        if done % config.checkpoint_every == 0 or done == end:
            save_state(done)
        if not rank.is_main:
            continue  # rank 0 alone logs, samples and writes checkpoints
        if sample:
            pipeline.net.load_state_dict(ema_weights)
            grid_path = run_dir / "samples" / f"step_{done:06d}.png"
            if lowres is not None:
                prompts = captions[:8] if model_cfg.conditioning == "text" else None
                save_upscale_grid(pipeline, images[:8], grid_path, done, prompts)
            elif inpainting:
                save_inpainting_grid(pipeline, images[:8], captions[:8], grid_path, done)
            elif model_cfg.conditioning == "image-embedding":
                save_variation_grid(pipeline, images[previews], embeddings[previews.to(device)],
                                    [captions[k] for k in previews], grid_path, done)
            else:
                save_sample_grid(pipeline, preview_prompts(config, captions), grid_path, done)
    bar.close()
    if not rank.is_main:
        return {"steps": end, "train_minutes": (seconds_before + time.perf_counter() - t0) / 60, "rank": rank.rank}
    records = log.read()
    plot_losses(records, ["loss", "grad_norm"], run_dir / "loss.png", title=run_dir.name)
    speeds = [r["images_per_s"] for r in records if "images_per_s" in r]
    summary = {"steps": end, "train_minutes": (seconds_before + time.perf_counter() - t0) / 60,
               "images_per_s": speeds[-1] if speeds else None}
    if end == config.steps:  # the finished model: EMA weights (those of the last grid), autoencoder, config
        pipeline.save_pretrained(run_dir / "model", extra={
            "dataset": config.data.dataset, "train": to_dict(config), "training": summary})
    return summary


def backward_in_micro_batches(net, z0: torch.Tensor, cond: dict, concat: torch.Tensor | None, sched,
                              config: DiffusionTrainConfig, gen: torch.Generator, rank, scaler,
                              autocast) -> torch.Tensor:
    """The loss of this process's rows, backpropagated in `config.accumulate` micro-batches
    (DDP syncs gradients after the last only). Every micro-batch replays the step's generator
    from the same point and keeps its rows of one draw of t and eps for the global batch, so
    accumulation takes the same step as one big batch, up to float rounding."""
    parts, start = config.accumulate, gen.get_state()
    size = z0.shape[0] // parts
    total = torch.zeros((), device=z0.device)
    for m in range(parts):
        rows = slice(m * size, (m + 1) * size)
        part_cond = {key: value[rows] for key, value in cond.items()}
        part_concat = None if concat is None else concat[rows]

        def model(x_t, t, part_cond=part_cond, part_concat=part_concat):
            return net(x_t if part_concat is None else torch.cat([x_t, part_concat], dim=1), t, **part_cond)

        gen.set_state(start)
        with distributed.gradient_sync(net, enabled=m == parts - 1):
            with autocast:
                loss = diffusion_loss(
                    model, z0[rows], sched, config.model.prediction, min_snr_gamma=config.min_snr_gamma,
                    offset_noise=config.offset_noise, gen=gen, shard=(rank.rank * parts + m, rank.world * parts),
                    learn_sigma=getattr(config.model.net, "learn_sigma", False),
                ) / parts
            scaler.scale(loss).backward()
        total = total + loss.detach()
    return total


def start_from(unet: torch.nn.Module, folder: str) -> None:
    """Load another model's UNet weights into `unet`; a conv_in with more input channels keeps
    the given ones and gets zeros for the rest, so training starts from that model's behaviour."""
    states, _, _ = load_checkpoint(resolve_repo_path(folder))
    if "unet" not in states:
        raise ValueError(f"init_from {folder} holds no UNet (an ldmkit model folder is needed)")
    given, own = states["unet"], unet.state_dict()
    for key, value in own.items():
        if key not in given:
            raise ValueError(f"init_from {folder} has no {key}: its UNet has another architecture")
        weight = given[key]
        if key == "conv_in.weight" and weight.shape[1] < value.shape[1] and weight.shape[2:] == value.shape[2:] \
                and weight.shape[0] == value.shape[0]:
            weight = torch.cat([weight, weight.new_zeros(value.shape[0], value.shape[1] - weight.shape[1],
                                                         *value.shape[2:])], dim=1)
        if weight.shape != value.shape:
            raise ValueError(f"init_from {folder}: {key} has shape {tuple(weight.shape)}, this UNet's "
                             f"{tuple(value.shape)}")
        own[key] = weight
    unet.load_state_dict(own)


@torch.no_grad()
def save_sample_grid(pipeline: Pipeline, prompts: list[str], path: Path, step: int, per_prompt: int = 8) -> None:
    """A row of `per_prompt` samples (seeds 0..) for each prompt, labelled with it."""
    images = pipeline.generate(prompts, num_images=per_prompt, seed=0)
    grid = image_grid([im.resize((64, 64), 0) for im in images], columns=per_prompt, row_labels=prompts)
    save_png(grid, path, {"step": step, "guidance": pipeline.defaults.guidance, "prompts": prompts})


@torch.no_grad()
def save_upscale_grid(pipeline: Pipeline, images: torch.Tensor, path: Path, step: int,
                      prompts: list[str] | None = None) -> None:
    """Rows: the low-resolution input (enlarged), the model's upscaling (of each image's prompt, for
    a text-conditioned upscaler), the original."""
    from ..utils.images import to_pil

    size = images.shape[-1]
    factor = pipeline.config.lowres.factor(pipeline.autoencoder.config.downsampling_factor)
    small = low_resolution(images, (size // factor,) * 2)
    prompts = prompts or [""] * len(small)
    upscaled = [pipeline.upscale(to_pil(x), prompt, seed=k, output="tensor")[0]
                for k, (x, prompt) in enumerate(zip(small, prompts))]
    rows = [[to_pil(x).resize((64, 64), 0) for x in batch] for batch in (small, upscaled, images)]
    grid = image_grid([im for row in rows for im in row], columns=len(images),
                      row_labels=["input", "ldmkit", "original"])
    save_png(grid, path, {"step": step, "noise_level": pipeline.config.lowres.noise_level})


@torch.no_grad()
def save_inpainting_grid(pipeline: Pipeline, images: torch.Tensor, captions: list[str], path: Path, step: int) -> None:
    """Rows: the input with its right half masked (grey), the model's completion, the original."""
    from PIL import Image

    from ..utils.images import to_pil

    width = images.shape[-1]
    mask = Image.new("L", tuple(images.shape[-2:][::-1]), 0)
    mask.paste(255, (width // 2, 0, width, images.shape[-2]))
    masked = images.clone()
    masked[..., width // 2:] = 0
    completed = [pipeline.inpaint(to_pil(x), mask, caption, seed=k)[0]
                 for k, (x, caption) in enumerate(zip(images, captions))]
    rows = [[to_pil(x) for x in masked], completed, [to_pil(x) for x in images]]
    grid = image_grid([im.resize((64, 64), 0) for row in rows for im in row], columns=len(images),
                      row_labels=["masked", "ldmkit", "original"])
    save_png(grid, path, {"step": step, "task": "inpaint right half", "prompts": captions})


def pipeline_from_checkpoint(checkpoint: str | Path, device: str | torch.device = "cpu") -> Pipeline:
    """The model a run's checkpoint holds, as the run would have saved it at that step: its EMA
    weights, the run's first stage, text encoder and class names (for FD against training time)."""
    states, meta, _ = load_checkpoint(checkpoint)
    if meta.get("type") != "diffusion-run":
        raise ValueError(f"{checkpoint} is not a checkpoint of `ldmkit train` (type {meta.get('type')!r})")
    config = from_dict(DiffusionTrainConfig, meta["train"])
    autoencoder = load_first_stage(config.autoencoder, config.model.net.out_channels, device)
    net = make_net(config.model.net).to(device)
    net.load_state_dict(states["ema_unet"])
    encoder = None
    if config.model.conditioning == "text":
        from ..conditioning import TextEncoder

        encoder = TextEncoder.minilm(config.model.text_length).to(device)
    return Pipeline(ModelParts(net, autoencoder, config.model, encoder, class_names(config.data.dataset),
                               GenerationDefaults(guidance=config.guidance), name=Path(checkpoint).name,
                               meta={"dataset": config.data.dataset, "train": to_dict(config)}))
