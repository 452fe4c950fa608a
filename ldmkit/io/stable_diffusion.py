"""Stable Diffusion checkpoints in and out: single files and diffusers folders.

A single file (SD v1.x / v2.x .safetensors, or a legacy .ckpt read only through
torch.load(weights_only=True)) holds, under prefixes:

    model.diffusion_model.   the UNet                 (LDM names; ldmkit uses diffusers' names)
    first_stage_model.       the KL autoencoder
    cond_stage_model.transformer.   v1: OpenAI CLIP ViT-L/14, transformers layout
    cond_stage_model.model.         v2: OpenCLIP ViT-H/14 (penultimate layer is the context)
    model_ema.               optionally, EMA copies of the UNet weights (dots removed from names)

A diffusers folder holds unet/, vae/, text_encoder/, tokenizer/ and scheduler/ subfolders.
Which is which is told by content: keys, shapes, configs; never by a file's name.

What a single file cannot say: the prediction type of a v2 model (SD 2.x-base predicts eps at
512 px, SD 2.x predicts v at 768 px: same shapes). It is taken from, in order, the caller's
`prediction=`, a sibling .yaml (the original configs' `parameterization: "v"`), the file's
training step (875,000 is 2.0-base), else v for v2 and eps for v1. Files ldmkit writes carry
their whole ldmkit config in the safetensors metadata, so they read back exactly.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from ..autoencoders import Autoencoder, AutoencoderConfig
from ..conditioning import TextEncoder
from ..conditioning.clip import clip_file_state, clip_text_encoder, tokenizer_files
from ..config import from_dict
from ..model import GenerationDefaults, LatentDiffusionConfig, LowResConfig, ModelParts
from ..model.folder import model_config
from ..nets import UNet
from ..storage.folder import CheckpointError, atomic_write, swap_into_place
from ..storage.weights_file import read_weights
from . import sd_configs as cfgs
from . import sd_keys as keys

UNET, VAE, CLIP, OPEN_CLIP, EMA = (
    "model.diffusion_model.", "first_stage_model.", "cond_stage_model.transformer.", "cond_stage_model.model.",
    "model_ema.",
)
LDMKIT_METADATA = "ldmkit"  # safetensors metadata key: the ldmkit config.json of the model
WEIGHTS_NAMES = ("diffusion_pytorch_model", "model")  # diffusers' and transformers' file stems
SD_DEFAULTS = GenerationDefaults(guidance=7.5, sampler="dpmpp_2m", steps=25)  # what SD's model cards suggest


# ---- telling formats apart -------------------------------------------------------------------
def is_diffusers_folder(path: Path) -> bool:
    return path.is_dir() and ((path / "model_index.json").is_file() or (path / "unet" / "config.json").is_file())


def load_stable_diffusion(path: str | Path, **options):
    """The parts of the model in an SD single file or a diffusers folder."""
    path = Path(path)
    if path.is_file():
        return load_single_file(path, **options)
    if is_diffusers_folder(path):
        from .dit_folders import is_dit_folder, load_dit_folder  # it reads folders with this module's helpers

        if is_dit_folder(path):
            return load_dit_folder(path, **options)
        return load_diffusers_folder(path, **options)
    raise CheckpointError(f"{path} is neither a Stable Diffusion file nor a diffusers folder "
                          f"(no model_index.json or unet/)")


def split_prefixes(state: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    parts: dict[str, dict[str, torch.Tensor]] = {p: {} for p in (UNET, VAE, CLIP, OPEN_CLIP, EMA)}
    for key, value in state.items():
        for prefix in parts:
            if key.startswith(prefix):
                parts[prefix][key[len(prefix):]] = value
                break
    return parts


# ---- modules from weights without a second copy in memory -------------------------------------
def build(module_cls, config, state: Mapping[str, torch.Tensor]):
    """module_cls(config) with `state` as its parameters: built on the meta device and the file's
    tensors assigned in place, so a 3.4 GB UNet is never held twice."""
    with torch.device("meta"):
        module = module_cls(config)
    try:
        module.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as error:
        raise CheckpointError(f"the weights do not fit a {module_cls.__name__} of this config: "
                              f"{str(error)[:600]}") from None
    return module.eval()


def _tokenizer_folder(tokenizer, metadata: Mapping[str, str], fallback: Path | None, what: str):
    """The CLIP tokenizer, or the folder to read it from: the caller's path, the file's own copy
    (ldmkit exports embed it), or a diffusers folder's tokenizer/."""
    from ..conditioning import load_clip_tokenizer

    if tokenizer is not None:
        return Path(tokenizer)
    embedded = {k[len("tokenizer."):]: v for k, v in metadata.items() if k.startswith("tokenizer.")}
    if embedded:
        with tempfile.TemporaryDirectory(prefix="ldmkit-tokenizer-") as folder:
            for name, text in embedded.items():
                (Path(folder) / Path(name).name).write_text(text, encoding="utf-8")
            return load_clip_tokenizer(folder)
    if fallback is not None and fallback.is_dir():
        return fallback
    raise FileNotFoundError(
        f"{what} has a CLIP text encoder but no tokenizer. Pass tokenizer=FOLDER (ldmkit ... --tokenizer FOLDER): "
        "a folder with vocab.json and merges.txt, e.g. the tokenizer/ folder of any diffusers Stable Diffusion "
        "model (v1 and v2 share the vocabulary)"
    )


# ---- single files ---------------------------------------------------------------------------
def load_single_file(path: str | Path, tokenizer: str | Path | None = None, prediction: str | None = None,
                     use_ema: bool = False):
    """The parts of the model in an SD v1/v2 single file (or one ldmkit wrote). use_ema: the file's EMA
    UNet weights instead of the raw ones; prediction: "eps" | "v" to override the inference."""
    path = Path(path)
    tensors, metadata = read_weights(path)
    parts = split_prefixes(tensors)
    if not parts[UNET]:
        sample = ", ".join(list(tensors)[:4])
        raise CheckpointError(f"{path} holds no Stable Diffusion UNet ('{UNET}' keys); it has {len(tensors)} tensors "
                              f"such as {sample or 'none'}: is it a VAE, LoRA or embedding file?")
    unet_ldm = _ema_weights(parts, path) if use_ema else parts[UNET]
    meta = json.loads(metadata[LDMKIT_METADATA]) if LDMKIT_METADATA in metadata else None

    if meta is not None:  # written by ldmkit: its own configs, exactly
        config, vae_config = _ldmkit_configs(meta)
    else:
        config, vae_config = _infer_configs(path, parts, metadata, prediction)
    if prediction is not None:
        config = replace(config, prediction=prediction)
    unet = build(UNet, config.net, keys.unet_ldm_to_diffusers(unet_ldm, config.net))
    autoencoder = build(Autoencoder, vae_config, keys.vae_ldm_to_diffusers(parts[VAE], vae_config))

    text_encoder = None
    if config.text_encoder == "clip" and config.conditioning == "text":
        if parts[CLIP]:
            state, act = keys.clip_ldm_to_transformers(parts[CLIP]), "quick_gelu"
        elif parts[OPEN_CLIP]:
            state, act = keys.open_clip_to_transformers(parts[OPEN_CLIP]), "gelu"
        else:
            raise CheckpointError(f"{path} has no text encoder ('{CLIP}' or '{OPEN_CLIP}' keys)")
        clip_config = meta["text_encoder_config"] if meta else cfgs.clip_config_from_state(state, act)
        pad = "!" if parts[OPEN_CLIP] else None  # OpenCLIP pads with token 0, "!"
        text_encoder = clip_text_encoder(
            clip_config, state, _tokenizer_folder(tokenizer, metadata, None, str(path)), pad
        )
    return _assemble(config, unet, autoencoder, text_encoder, meta, path.stem, path, "stable-diffusion single file")


def _ldmkit_configs(meta: Mapping[str, Any]):
    """(LatentDiffusionConfig, AutoencoderConfig) from the config ldmkit wrote into a file or folder."""
    return model_config(meta), from_dict(AutoencoderConfig, meta["autoencoder"])


def _assemble(config, unet, autoencoder, clip_encoder, ours: Mapping[str, Any] | None, name: str, source: Path,
              kind: str) -> ModelParts:
    """A model ldmkit wrote (`ours`: its config) gets back its name, class names, defaults and
    MiniLM text encoder; a foreign SD model gets SD's defaults."""
    text_encoder = clip_encoder
    if config.conditioning == "text" and config.text_encoder == "minilm":
        text_encoder = TextEncoder.minilm(config.text_length)
    if ours is None:
        return ModelParts(unet, autoencoder, config, text_encoder, defaults=SD_DEFAULTS, name=name,
                          meta={"source": str(source), "format": kind})
    return ModelParts(unet, autoencoder, config, text_encoder, ours.get("class_names"),
                      from_dict(GenerationDefaults, ours.get("defaults", {})), name=ours.get("name", name), meta=ours)


def _ema_weights(parts, path) -> dict[str, torch.Tensor]:
    """LDM's LitEma stores "model_ema." + the parameter's name with its dots removed."""
    if not parts[EMA]:
        raise CheckpointError(f"{path} has no EMA weights ('{EMA}' keys): load it without use_ema")
    ema = {}
    for name in parts[UNET]:
        flat = ("diffusion_model." + name).replace(".", "")
        if flat not in parts[EMA]:
            raise CheckpointError(f"{path}: the EMA weights lack {name}")
        ema[name] = parts[EMA][flat]
    return ema


def _infer_configs(path: Path, parts, metadata, prediction):
    """Configs of a foreign single file: SD v1 / v2 / inpainting, or the x4 upscaler (7 input
    channels: z_t and the RGB low-resolution image), told apart by the UNet's input channels."""
    if not parts[VAE]:
        raise CheckpointError(f"{path} has no first-stage autoencoder ('{VAE}' keys)")
    v2 = bool(parts[OPEN_CLIP])
    unet_config = cfgs.unet_config_from_ldm(parts[UNET], v2)
    vae_config = cfgs.vae_config_from_ldm(parts[VAE])
    extra_channels = unet_config.in_channels - vae_config.z_channels
    if extra_channels == 3 and unet_config.num_classes:  # x4 upscaler: noise level as class label
        schedule, sampling, inferred = cfgs.schedule_from_diffusers(cfgs.SD_X4_SCHEDULER_CONFIG)
        vae_config = replace(vae_config, scaling_factor=cfgs.SD_X4_VAE_SCALE)
        return LatentDiffusionConfig(
            net=unet_config, schedule=schedule, prediction=prediction or inferred, conditioning="text",
            text_encoder="clip", image_size=128, sampling=sampling, task="upscaling", lowres=LowResConfig(channels=3),
        ), vae_config
    if prediction is None:
        prediction = _v2_prediction(path, metadata) if v2 and extra_channels == 0 else "eps"
    schedule, sampling = cfgs.sd_schedule()
    config = LatentDiffusionConfig(
        net=unet_config, schedule=schedule, prediction=prediction, conditioning="text",
        text_encoder="clip", image_size=768 if v2 and prediction == "v" and extra_channels == 0 else 512,
        sampling=sampling, task=_task(unet_config.in_channels, vae_config.z_channels, None),
    )
    return config, vae_config


def _v2_prediction(path: Path, metadata: Mapping[str, str]) -> str:
    yaml = path.with_suffix(".yaml")
    if yaml.is_file():
        return "v" if re.search(r"parameterization:\s*[\"']?v[\"']?\s*$", yaml.read_text(), re.M) else "eps"
    if metadata.get("global_step") == "875000":  # SD 2.0-base
        return "eps"
    return "v"


def save_single_file(parts: ModelParts, path: str | Path) -> Path:
    """The model as one SD-layout .safetensors file, its ldmkit config in the metadata. An
    OpenCLIP text encoder (SD v2) is written in OpenCLIP layout with a zero last layer in place
    of the one the conversion dropped (SD v2 reads the penultimate layer, never that one)."""
    path = Path(path)
    state = {UNET + k: v for k, v in keys.unet_diffusers_to_ldm(parts.net.state_dict(), parts.net.config).items()}
    state |= {
        VAE + k: v
        for k, v in keys.vae_diffusers_to_ldm(parts.autoencoder.state_dict(), parts.autoencoder.config).items()
    }
    meta = parts.describe()
    metadata = {"format": "pt", LDMKIT_METADATA: ""}
    if parts.uses_clip:
        text = parts.text_encoder.model
        text_state = clip_file_state(text)
        if text.config.hidden_act == "gelu":  # OpenCLIP
            open_clip = keys.transformers_to_open_clip(text_state)
            open_clip |= _zero_last_resblock(open_clip)
            state |= {OPEN_CLIP + k: v for k, v in open_clip.items()}
        else:
            state |= {CLIP + k: v for k, v in keys.clip_transformers_to_ldm(text_state).items()}
        files = tokenizer_files(parts.text_encoder.tokenizer)
        metadata |= {f"tokenizer.{name}": data.decode("utf-8") for name, data in files.items()}
    metadata[LDMKIT_METADATA] = json.dumps(meta)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def _zero_last_resblock(open_clip: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    last = max(int(m.group(1)) for k in open_clip if (m := re.match(r"transformer\.resblocks\.(\d+)\.", k)))
    prefix = f"transformer.resblocks.{last}."
    return {k.replace(prefix, f"transformer.resblocks.{last + 1}."): torch.zeros_like(v)
            for k, v in open_clip.items() if k.startswith(prefix)}


# ---- diffusers folders ------------------------------------------------------------------------
def read_component(folder: Path, what: str) -> dict[str, torch.Tensor]:
    """The weights of a diffusers/transformers component folder: safetensors preferred, fp16
    variants and sharded files too; .bin files only through torch.load(weights_only=True)."""
    for stem in WEIGHTS_NAMES:
        for variant in ("", ".fp16"):
            for ext in (".safetensors", ".bin"):
                index = folder / f"{stem}{variant}{ext}.index.json"
                if index.is_file():
                    shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
                    state: dict[str, torch.Tensor] = {}
                    for shard in shards:
                        state |= read_weights(folder / shard)[0]
                    return state
                if (folder / f"{stem}{variant}{ext}").is_file():
                    return read_weights(folder / f"{stem}{variant}{ext}")[0]
    raise CheckpointError(f"no {what} weights in {folder} (looked for diffusion_pytorch_model / model "
                          ".safetensors or .bin, plain, fp16 or sharded)")


def read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: a diffusers folder needs it")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path} is not valid JSON ({error})") from None


def load_diffusers_folder(path: str | Path, tokenizer: str | Path | None = None, prediction: str | None = None,
                          use_ema: bool = False):
    """The parts of the model in a diffusers Stable Diffusion folder (or one ldmkit wrote)."""
    path = Path(path)
    if use_ema:
        raise ValueError("a diffusers folder holds one set of UNet weights (no EMA copy): load it without use_ema")
    ours = read_json(path / "ldmkit.json") if (path / "ldmkit.json").is_file() else None
    if ours is not None:
        config, vae_config = _ldmkit_configs(ours)
    else:
        unet_cfg = read_json(path / "unet" / "config.json")
        scheduler = read_json(path / "scheduler" / "scheduler_config.json")
        schedule, sampling, inferred = cfgs.schedule_from_diffusers(scheduler)
        vae_config = cfgs.vae_config_from_diffusers(read_json(path / "vae" / "config.json"))
        unet_config = cfgs.unet_config_from_diffusers(unet_cfg)
        lowres = _upscaler(path, unet_config.in_channels - vae_config.z_channels)
        config = LatentDiffusionConfig(
            net=unet_config, schedule=schedule, prediction=inferred, conditioning="text", text_encoder="clip",
            sampling=sampling, image_size=unet_cfg.get("sample_size", 64) * vae_config.downsampling_factor,
            task=_task(unet_config.in_channels, vae_config.z_channels, lowres), lowres=lowres,
        )
    if prediction is not None:
        config = replace(config, prediction=prediction)
    unet = build(UNet, config.net, read_component(path / "unet", "UNet"))
    autoencoder = build(Autoencoder, vae_config, read_component(path / "vae", "VAE"))
    text_encoder = None
    if config.conditioning == "text" and config.text_encoder == "clip":
        text_cfg = read_json(path / "text_encoder" / "config.json")
        folder = _tokenizer_folder(tokenizer, {}, path / "tokenizer", str(path))
        text_encoder = clip_text_encoder(text_cfg, read_component(path / "text_encoder", "text encoder"), folder)
    parts = _assemble(config, unet, autoencoder, text_encoder, ours, path.name, path, "diffusers folder")
    consistency = cfgs.CONSISTENCY_SCHEDULERS.get(scheduler.get("_class_name")) if ours is None else None
    if consistency is not None:  # an LCM / TCD folder: few steps by default, guidance as its card says
        guidance = 8.0 if config.net.guidance_embed_dim is not None else 1.0
        parts.defaults = GenerationDefaults(guidance=guidance, sampler=consistency, steps=4)
    return parts


def _task(in_channels: int, z_channels: int, lowres: LowResConfig | None) -> str:
    """A foreign model's task, told by content: a low-resolution input, or SD inpainting's 2z + 1 channels."""
    if lowres is not None:
        return "upscaling"
    return "inpainting" if in_channels == 2 * z_channels + 1 else "generation"


def _upscaler(path: Path, image_channels: int):
    """The LowResConfig of a diffusers upscaler folder (SD x4: a low_res_scheduler/), else None."""
    if not (path / "low_res_scheduler").is_dir():
        return None
    schedule, _, _ = cfgs.schedule_from_diffusers(read_json(path / "low_res_scheduler" / "scheduler_config.json"))
    max_level = read_json(path / "model_index.json").get("max_noise_level", 350)
    return LowResConfig(channels=image_channels, schedule=schedule, max_noise_level=max_level)


@contextlib.contextmanager
def staged_folder(folder: str | Path) -> Iterator[Path]:
    """A temporary sibling of `folder` to fill in the block; then its files are fsynced and it
    replaces `folder` whole (removed instead if the block raises)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.tmp-"))
    try:
        yield staging
        for file in staging.rglob("*"):
            if file.is_file():
                with open(file, "rb+") as f:
                    os.fsync(f.fileno())
        swap_into_place(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def write_component(folder: Path, config: Mapping[str, Any], state: Mapping[str, torch.Tensor]) -> None:
    """A diffusers model folder: config.json and diffusion_pytorch_model.safetensors."""
    import diffusers

    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({**config, "_diffusers_version": diffusers.__version__}, indent=2))
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()},
              folder / "diffusion_pytorch_model.safetensors")


def save_diffusers_folder(parts: ModelParts, folder: str | Path) -> Path:
    """The model as a diffusers folder that diffusers' StableDiffusionPipeline loads (CLIP models)
    and ldmkit reads back exactly (ldmkit.json keeps its config). Written whole, then renamed.
    A DiT is written as a DiTPipeline folder (ldmkit.io.dit_folders)."""
    import diffusers

    if parts.config.net.kind == "dit":
        from .dit_folders import save_dit_folder

        return save_dit_folder(parts, folder)
    folder = Path(folder)
    with staged_folder(folder) as staging:
        size = parts.config.image_size
        factor = parts.autoencoder.config.downsampling_factor
        write_component(staging / "unet", cfgs.unet_config_to_diffusers(parts.net.config, size // factor),
                        parts.net.state_dict())
        write_component(staging / "vae", cfgs.vae_config_to_diffusers(parts.autoencoder.config, size),
                        parts.autoencoder.state_dict())
        scheduler = cfgs.schedule_to_diffusers(parts.config.schedule, parts.config.sampling, parts.config.prediction)
        (staging / "scheduler").mkdir()
        (staging / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler, indent=2))
        index = {"_class_name": "StableDiffusionPipeline", "_diffusers_version": diffusers.__version__,
                 "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
                 "scheduler": ["diffusers", "DDIMScheduler"], "text_encoder": [None, None], "tokenizer": [None, None],
                 "safety_checker": [None, None], "feature_extractor": [None, None], "requires_safety_checker": False}
        if parts.uses_clip:
            text = parts.text_encoder.model
            (staging / "text_encoder").mkdir()
            text.config.to_json_file(staging / "text_encoder" / "config.json")
            save_file({k: v.detach().cpu().contiguous() for k, v in clip_file_state(text).items()},
                      staging / "text_encoder" / "model.safetensors")
            parts.text_encoder.tokenizer.save_pretrained(staging / "tokenizer")
            index |= {"text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"]}
        (staging / "model_index.json").write_text(json.dumps(index, indent=2))
        (staging / "ldmkit.json").write_text(json.dumps(parts.describe(), indent=2))
    return folder
