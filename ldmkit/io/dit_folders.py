"""DiT models as diffusers DiTPipeline folders, both ways.

    model_index.json   _class_name "DiTPipeline"; id2label {"0": "tench, Tinca tinca", ...}: the class
                       names, each a list of synonyms after commas (diffusers' save_pretrained drops
                       it, the released folders carry it)
    transformer/       DiTTransformer2DModel (the first releases say Transformer2DModel): config.json
                       and weights, in diffusers' layout (ldmkit.io.dit_keys)
    vae/               AutoencoderKL, read and written as Stable Diffusion's (ldmkit.io.stable_diffusion)
    scheduler/         scheduler_config.json: the noise schedule, the prediction, the default sampler
    ldmkit.json        in folders ldmkit wrote: the model's whole ldmkit config, read back exactly

diffusers' DiT computes what the reference's does (ldmkit.nets.dit) but for two numbers, which
DiTConfig keeps as options: the timestep frequencies (diffusers' shift 1, fixed in its code; the
reference's 0) and the eps of the LayerNorm before each MLP (the config's norm_eps, 1e-5; the
reference's 1e-6). The eps is written into the folder's config, so only the shift keeps a DiT
with the reference's numerics from exporting exactly. diffusers keeps a copy of the timestep and
label embedders in every block; ldmkit's DiT has one, so a folder whose copies differ (a DiT
trained in diffusers) cannot be read exactly, and is refused.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from ..autoencoders import Autoencoder, AutoencoderConfig
from ..config import from_dict, to_dict
from ..model import GenerationDefaults, LatentDiffusionConfig, ModelParts
from ..model.folder import model_config
from ..nets.dit import DiT, sincos_position_embedding
from ..nets.dit_config import DiTConfig
from ..storage import CheckpointError
from . import sd_configs as cfgs
from .dit_keys import dit_from_diffusers, dit_to_diffusers
from .stable_diffusion import build, read_component, read_json, staged_folder, write_component

PIPELINE = "DiTPipeline"
TRANSFORMERS = ("DiTTransformer2DModel", "Transformer2DModel")  # the second: folders converted before 0.28
# diffusers' DiT options that ldmkit's DiT builds with these values only
FIXED = dict(activation_fn="gelu-approximate", attention_bias=True, norm_type="ada_norm_zero",
             norm_elementwise_affine=False)
EMBEDDERS = "norm1.emb."  # diffusers' per-block copy of the timestep and label embedders
# a folder's scheduler -> the ldmkit sampler that steps as it does; another scheduler gets dpmpp_2m
SAMPLER_OF_SCHEDULER = {"DDIMScheduler": "ddim", "DDPMScheduler": "ddpm", "DPMSolverMultistepScheduler": "dpmpp_2m",
                        "EulerDiscreteScheduler": "euler", "EulerAncestralDiscreteScheduler": "euler_a",
                        "HeunDiscreteScheduler": "heun", **cfgs.CONSISTENCY_SCHEDULERS}
DIT_GUIDANCE, DIT_STEPS = 4.0, 50  # DiTPipeline's defaults (guidance_scale, num_inference_steps)


def is_dit_folder(path: Path) -> bool:
    """A diffusers folder whose model_index.json names DiTPipeline."""
    index = Path(path) / "model_index.json"
    if not index.is_file():
        return False
    try:
        return json.loads(index.read_text()).get("_class_name") == PIPELINE
    except (json.JSONDecodeError, AttributeError):
        return False


# ---- configs -----------------------------------------------------------------------------------
def dit_config_from_diffusers(cfg: Mapping[str, Any]) -> DiTConfig:
    """DiTConfig from a DiTTransformer2DModel config.json, with diffusers' numerics."""
    if cfg.get("_class_name", TRANSFORMERS[0]) not in TRANSFORMERS:
        raise CheckpointError(f"a DiTPipeline's transformer must be one of {TRANSFORMERS}, this one is "
                              f"{cfg.get('_class_name')}")
    unsupported = {k: cfg[k] for k, v in FIXED.items() if k in cfg and cfg[k] != v}
    if cfg.get("cross_attention_dim") is not None:
        unsupported["cross_attention_dim"] = cfg["cross_attention_dim"]
    if unsupported:
        raise CheckpointError(f"this DiT transformer uses options ldmkit's DiT does not build: {unsupported}")
    num_classes = cfg.get("num_embeds_ada_norm", 1000)
    if num_classes is None:
        raise CheckpointError("this DiT transformer has no class embeddings (num_embeds_ada_norm null), which "
                              "diffusers' DiT needs and ldmkit does not read")
    heads, head_dim = cfg.get("num_attention_heads", 16), cfg.get("attention_head_dim", 72)
    channels = cfg.get("in_channels", 4)
    out = cfg.get("out_channels") or channels
    if out not in (channels, 2 * channels):
        raise CheckpointError(f"this DiT transformer gives {out} channels for {channels} input channels: expected "
                              f"{channels} or {2 * channels} (learned sigma)")
    return DiTConfig(in_channels=channels, out_channels=channels, input_size=cfg.get("sample_size", 32),
                     patch_size=cfg.get("patch_size", 2), hidden_size=heads * head_dim, depth=cfg.get("num_layers", 28),
                     num_heads=heads, mlp_ratio=4.0, num_classes=num_classes, learn_sigma=out == 2 * channels,
                     time_freq_shift=1, mlp_norm_eps=cfg.get("norm_eps", 1e-5))


def dit_config_to_diffusers(c: DiTConfig) -> dict[str, Any]:
    """A DiTTransformer2DModel config.json; the caller has checked the timestep numerics."""
    if c.mlp_ratio != 4.0 or c.num_classes is None or c.out_channels != c.in_channels:
        raise ValueError(f"diffusers' DiTTransformer2DModel has MLPs 4x wide, class labels and as many output "
                         f"channels as input ones: this DiT has mlp_ratio {c.mlp_ratio}, num_classes {c.num_classes},"
                         f" {c.in_channels} -> {c.out_channels} channels")
    return {"_class_name": TRANSFORMERS[0], "num_attention_heads": c.num_heads,
            "attention_head_dim": c.hidden_size // c.num_heads, "in_channels": c.in_channels,
            "out_channels": c.output_channels, "num_layers": c.depth, "sample_size": c.input_size,
            "patch_size": c.patch_size, "num_embeds_ada_norm": c.num_classes, "norm_eps": c.mlp_norm_eps,
            "dropout": 0.0, "norm_num_groups": 32, "upcast_attention": False, **FIXED}


def class_names_from_id2label(id2label: Mapping[str, str] | None, num_classes: int) -> list[str]:
    """Class k's name from id2label["k"] (its synonyms after commas); a class it leaves out is named "k"."""
    names = [str(k) for k in range(num_classes)]
    for key, name in (id2label or {}).items():
        if not str(key).isdigit() or int(key) >= num_classes:
            raise CheckpointError(f"model_index.json's id2label names class {key!r}; the transformer has classes "
                                  f"0..{num_classes - 1}")
        names[int(key)] = str(name)
    return names


# ---- reading ------------------------------------------------------------------------------------
def transformer_state(state: Mapping[str, torch.Tensor], config: DiTConfig, where: Path) -> dict[str, torch.Tensor]:
    """The reference layout from a DiTTransformer2DModel's weights, once its blocks' copies of the
    embedders are checked to be copies."""
    for key, value in state.items():
        if key.startswith("transformer_blocks.0." + EMBEDDERS):
            for i in range(1, config.depth):
                other = state.get(key.replace("transformer_blocks.0.", f"transformer_blocks.{i}.", 1))
                if other is not None and not torch.equal(other, value):
                    raise CheckpointError(
                        f"{where}: block {i}'s timestep/label embedder differs from block 0's "
                        f"({key.split(EMBEDDERS)[1]}): this DiT has one embedder per block (trained in diffusers?), "
                        "ldmkit's DiT shares one, as the reference does, so it cannot load this model exactly")
    pos_embed = sincos_position_embedding(config.hidden_size, config.input_size // config.patch_size)
    try:
        return dit_from_diffusers(state, config.depth, pos_embed)
    except KeyError as error:
        raise CheckpointError(f"{where}: the transformer weights lack {error.args[0]} (a {config.depth}-block DiT "
                              "by its config.json)") from None


def load_dit_folder(path: str | Path, prediction: str | None = None, **options) -> ModelParts:
    """The parts of the model in a diffusers DiTPipeline folder (or one ldmkit wrote): a DiT,
    conditioned on the classes of id2label, the VAE, the scheduler's schedule and sampler.
    prediction: "eps" | "v" | "x0" to override the scheduler's prediction_type."""
    path = Path(path)
    if options:
        raise ValueError(f"{sorted(options)} do not apply to a DiT folder (no text encoder, one set of weights)")
    index = read_json(path / "model_index.json")
    ours = read_json(path / "ldmkit.json") if (path / "ldmkit.json").is_file() else None
    scheduler = read_json(path / "scheduler" / "scheduler_config.json")
    if ours is not None:
        config, vae_config = model_config(ours), from_dict(AutoencoderConfig, ours["autoencoder"])
        if config.net.kind != "dit":
            raise CheckpointError(f"{path / 'ldmkit.json'} describes a {config.net.kind}, not a DiT")
    else:
        net_config = dit_config_from_diffusers(read_json(path / "transformer" / "config.json"))
        schedule, sampling, inferred = cfgs.schedule_from_diffusers(scheduler)
        vae_config = cfgs.vae_config_from_diffusers(read_json(path / "vae" / "config.json"))
        config = LatentDiffusionConfig(
            net=net_config, schedule=schedule, prediction=inferred, conditioning="class", sampling=sampling,
            image_size=net_config.input_size * vae_config.downsampling_factor,
        )
    if prediction is not None:
        config = replace(config, prediction=prediction)
    state = transformer_state(read_component(path / "transformer", "transformer"), config.net, path)
    net = build(DiT, config.net, state)
    autoencoder = build(Autoencoder, vae_config, read_component(path / "vae", "VAE"))
    if ours is not None:
        return ModelParts(net, autoencoder, config, None, ours.get("class_names"),
                          from_dict(GenerationDefaults, ours.get("defaults", {})), name=ours.get("name", path.name),
                          meta=ours)
    sampler = SAMPLER_OF_SCHEDULER.get(scheduler.get("_class_name"), "dpmpp_2m")
    return ModelParts(net, autoencoder, config, None, class_names_from_id2label(index.get("id2label"),
                                                                               config.net.num_classes),
                      GenerationDefaults(guidance=DIT_GUIDANCE, sampler=sampler, steps=DIT_STEPS), name=path.name,
                      meta={"source": str(path), "format": "diffusers DiT folder"})


# ---- writing ------------------------------------------------------------------------------------
def save_dit_folder(parts: ModelParts, folder: str | Path, allow_numerics_change: bool = False) -> Path:
    """A class-conditional ldmkit DiT as a DiTPipeline folder that diffusers loads and ldmkit reads
    back exactly. diffusers' DiT embeds timesteps at frequencies with shift 1: a DiT with the
    reference's shift 0 is refused unless allow_numerics_change, and then written as the model
    with shift 1: its timestep frequencies exp(-ln(10^4) k / 128) become exp(-ln(10^4) k / 127),
    up to 7.5% apart, which moves the outputs a little (a few percent on a tiny random DiT).
    diffusers' DiTPipeline.__call__ takes label 1000 as the null class, so it guides
    (guidance_scale > 1) only 1000-class models; its transformer runs any."""
    import diffusers

    config = parts.config
    net = config.net
    if net.kind != "dit":
        raise ValueError(f"a DiTPipeline folder holds a DiT; this model's network is a {net.kind}")
    if config.conditioning != "class" or config.task != "generation":
        raise ValueError(f"diffusers' DiTPipeline runs class-conditional image generation; this model has "
                         f"conditioning {config.conditioning!r}, task {config.task!r}")
    if len(parts.class_names) > net.num_classes:
        raise ValueError(f"{len(parts.class_names)} class names for a DiT of {net.num_classes} classes")
    if net.time_freq_shift != 1:
        if not allow_numerics_change:
            raise ValueError(
                f"this DiT embeds timesteps with frequency shift {net.time_freq_shift} (the reference DiT's); "
                "diffusers' DiTTransformer2DModel has shift 1 built in, so the exported model would embed "
                "timesteps at frequencies up to 7.5% apart and compute slightly different numbers. Pass "
                "allow_numerics_change=True (save_dit_folder) to export it anyway, as the model with shift 1, "
                "or fine-tune it with time_freq_shift=1 first"
            )
        net = replace(net, time_freq_shift=1)
    transformer = dit_config_to_diffusers(net)
    # clones: diffusers' blocks share our one embedder and split our qkv, and safetensors stores no shared memory
    state = {k: v.detach().clone() for k, v in dit_to_diffusers(parts.net.state_dict(), net.depth).items()}
    size = net.input_size * parts.autoencoder.config.downsampling_factor
    describe = parts.describe() | {"model": to_dict(replace(config, net=net))}
    folder = Path(folder)
    with staged_folder(folder) as staging:
        write_component(staging / "transformer", transformer, state)
        write_component(staging / "vae", cfgs.vae_config_to_diffusers(parts.autoencoder.config, size),
                        parts.autoencoder.state_dict())
        (staging / "scheduler").mkdir()
        (staging / "scheduler" / "scheduler_config.json").write_text(
            json.dumps(cfgs.schedule_to_diffusers(config.schedule, config.sampling, config.prediction), indent=2))
        index = {"_class_name": PIPELINE, "_diffusers_version": diffusers.__version__,
                 "transformer": ["diffusers", TRANSFORMERS[0]], "vae": ["diffusers", "AutoencoderKL"],
                 "scheduler": ["diffusers", "DDIMScheduler"],
                 "id2label": {str(k): name for k, name in enumerate(parts.class_names)}}
        (staging / "model_index.json").write_text(json.dumps(index, indent=2))
        (staging / "ldmkit.json").write_text(json.dumps(describe, indent=2))
    return folder
