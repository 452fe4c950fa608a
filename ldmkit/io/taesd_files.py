"""Tiny autoencoder (TAESD) weights in and out, in three layouts told apart by content:

    ldmkit folder      config.json ({"kind": "tiny-autoencoder", "tiny-autoencoder": TinyAutoencoderConfig})
                       and model.safetensors (keys under "tiny-autoencoder.")
    diffusers folder   an AutoencoderTiny's config.json and diffusion_pytorch_model.safetensors (or
                       .bin); ldmkit's parameter names are diffusers' own, so no renaming
    original files     madebyollin/taesd: taesd_encoder.pth and taesd_decoder.pth (or .safetensors;
                       taesdxl_*, taesd3_*, taef1_* alike), each the state dict of a plain
                       nn.Sequential: "0.weight", "1.conv.0.weight", "1.skip.weight", ...

The original encoder's indices are ldmkit's encoder.layers indices. The original decoder's index 0
is Clamp(), which has no weights and which TinyDecoder applies in forward instead, so every
decoder index is one more than ldmkit's. The original files carry no config: it is read off the
weights (widths from the convs, stages from the Blocks between convs); the upsampling factor is
not in the weights and is taesd.py's 2.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..autoencoders.tiny import TinyAutoencoder, TinyAutoencoderConfig
from ..config import from_dict, to_dict
from ..storage import CheckpointError, load_checkpoint, read_weights, save_checkpoint
from .stable_diffusion import read_component, read_json

KIND = "tiny-autoencoder"      # config.json's "kind" in an ldmkit folder, and its weights' prefix
DIFFUSERS_CLASS = "AutoencoderTiny"
ORIGINAL_SUFFIXES = (".safetensors", ".pth", ".pt")  # in order of preference: safetensors runs no pickle
DECODER_OFFSET = 1             # the original Decoder's index 0 is the weightless Clamp()
BLOCK_KEYS = {f"conv.{i}.{leaf}" for i in (0, 2, 4) for leaf in ("weight", "bias")} | {"skip.weight"}


# ---- the original layout --------------------------------------------------------------------------
def _sequential_entries(state: Mapping[str, torch.Tensor], what: str) -> list[tuple[int, str, dict]]:
    """[(index, "conv" | "block", {name: tensor})] of an nn.Sequential's state dict, by index."""
    entries: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        head, _, rest = key.partition(".")
        if not head.isdigit() or not rest:
            raise CheckpointError(f"{what}: key {key!r} is not an nn.Sequential entry; expected TAESD's "
                                  "'0.weight', '1.conv.0.weight', ... (a diffusers folder needs its config.json)")
        entries.setdefault(int(head), {})[rest] = value
    out = []
    for index in sorted(entries):
        names = set(entries[index])
        if names <= {"weight", "bias"}:
            out.append((index, "conv", entries[index]))
        elif names <= BLOCK_KEYS:
            out.append((index, "block", entries[index]))
        else:  # e.g. TAEF2's "pool" inside its Blocks
            raise CheckpointError(f"{what}: entry {index} holds {sorted(names)}, neither a conv nor a TAESD Block "
                                  f"({sorted(BLOCK_KEYS)}): a TAESD variant this loader does not read")
    if not out or out[0][1] != "conv" or out[-1][1] != "conv":
        raise CheckpointError(f"{what}: expected convs first and last with Blocks between, found "
                              f"{[kind for _, kind, _ in out]}")
    return out


def config_from_original(encoder: Mapping[str, torch.Tensor],
                         decoder: Mapping[str, torch.Tensor]) -> TinyAutoencoderConfig:
    """The TinyAutoencoderConfig of original-layout encoder and decoder weights, read off them."""
    enc = _sequential_entries(encoder, "the encoder file")
    dec = _sequential_entries(decoder, "the decoder file")
    # The original Encoder has weights at every index; variants with bare ReLUs (TAESana's F32Encoder) do not.
    if [index for index, _, _ in enc] != list(range(len(enc))):
        raise CheckpointError(f"the encoder file has weights at indices {[i for i, _, _ in enc]}, not 0, 1, 2, ...: "
                              "not the TAESD Encoder layout")
    if dec[0][0] != DECODER_OFFSET:
        raise CheckpointError(f"the decoder file's first conv is at index {dec[0][0]}; TAESD's Decoder has it at "
                              f"{DECODER_OFFSET}, after Clamp()")
    encoder_widths, encoder_blocks = [], []
    for _, kind, tensors in enc[:-1]:
        if kind == "conv":  # each conv but the last opens a stage
            encoder_widths.append(tensors["weight"].shape[0])
            encoder_blocks.append(0)
        else:
            encoder_blocks[-1] += 1
    decoder_widths, decoder_blocks = [], [0]
    for _, kind, tensors in dec[1:]:
        if kind == "conv":  # each conv after the first closes a stage; its input is the stage's width
            decoder_widths.append(tensors["weight"].shape[1])
            decoder_blocks.append(0)
        else:
            decoder_blocks[-1] += 1
    return TinyAutoencoderConfig(
        in_channels=enc[0][2]["weight"].shape[1], out_channels=dec[-1][2]["weight"].shape[0],
        latent_channels=enc[-1][2]["weight"].shape[0],
        encoder_block_out_channels=tuple(encoder_widths), num_encoder_blocks=tuple(encoder_blocks),
        decoder_block_out_channels=tuple(decoder_widths), num_decoder_blocks=tuple(decoder_blocks[:-1]),
    )


def from_original(encoder: Mapping[str, torch.Tensor], decoder: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Original-layout encoder and decoder weights -> one state dict with ldmkit's (= diffusers') names."""
    state = {f"encoder.layers.{key}": value for key, value in encoder.items()}
    for key, value in decoder.items():
        index, _, rest = key.partition(".")
        state[f"decoder.layers.{int(index) - DECODER_OFFSET}.{rest}"] = value
    return state


def _find_original_pair(path: Path) -> tuple[Path, Path]:
    """(encoder file, decoder file): from a folder holding one *encoder / *decoder pair, or from
    either file of a pair (its partner has the same name with the other word)."""
    def named(folder: Path, prefix: str, half: str, suffixes=ORIGINAL_SUFFIXES) -> Path | None:
        return next((folder / f"{prefix}{half}{s}" for s in suffixes if (folder / f"{prefix}{half}{s}").is_file()),
                    None)

    if path.is_file():
        stem = path.stem
        for half, other in (("encoder", "decoder"), ("decoder", "encoder")):
            if stem.endswith(half):
                prefix = stem[: -len(half)]
                # Prefer the partner in the same format as the file given.
                partner = named(path.parent, prefix, other, (path.suffix, *ORIGINAL_SUFFIXES))
                if partner is None:
                    raise FileNotFoundError(f"{path} is a TAESD {half}; its {other} {prefix}{other}"
                                            f"{{{', '.join(ORIGINAL_SUFFIXES)}}} is not beside it")
                return (path, partner) if half == "encoder" else (partner, path)
        raise CheckpointError(f"{path}: a single file holds one half of TAESD, named *encoder or *decoder "
                              f"(taesd_encoder.pth, taesd_decoder.pth); give such a file or their folder")
    prefixes = sorted({f.stem[: -len("encoder")] for f in path.iterdir()
                       if f.is_file() and f.suffix in ORIGINAL_SUFFIXES and f.stem.endswith("encoder")})
    pairs = [p for p in prefixes if named(path, p, "decoder") is not None]
    if len(pairs) == 1:
        return named(path, pairs[0], "encoder"), named(path, pairs[0], "decoder")
    if len(pairs) > 1:
        raise CheckpointError(f"{path} holds {len(pairs)} TAESD pairs ({', '.join(p + 'encoder' for p in pairs)}): "
                              "give the encoder file of the one to load")
    found = sorted(f.name for f in path.iterdir())
    listing = ", ".join(found[:8]) + (f" and {len(found) - 8} more" if len(found) > 8 else "") if found else "nothing"
    raise FileNotFoundError(
        f"no tiny autoencoder in {path} (found {listing}); expected an ldmkit folder (config.json with kind "
        f"{KIND!r} + model.safetensors), a diffusers {DIFFUSERS_CLASS} folder (config.json + "
        "diffusion_pytorch_model.safetensors), or TAESD's original *encoder / *decoder .safetensors / .pth files")


# ---- diffusers ------------------------------------------------------------------------------------
def config_from_diffusers(cfg: Mapping[str, Any]) -> TinyAutoencoderConfig:
    """TinyAutoencoderConfig from an AutoencoderTiny config.json (field names are the same)."""
    for key, supported in (("act_fn", "relu"), ("upsample_fn", "nearest")):
        if cfg.get(key, supported) != supported:
            raise CheckpointError(f"this AutoencoderTiny has {key}={cfg[key]!r}; TinyAutoencoder has "
                                  f"{supported!r} only")
    fields = {f.name for f in dataclasses.fields(TinyAutoencoderConfig)}
    # force_upcast, block_out_channels (a copy of the decoder's) and "_" entries do not describe the network.
    return from_dict(TinyAutoencoderConfig, {k: v for k, v in cfg.items() if k in fields and v is not None})


# ---- loading and saving ---------------------------------------------------------------------------
def _build(config: TinyAutoencoderConfig, state: Mapping[str, torch.Tensor], source: str) -> TinyAutoencoder:
    """A TinyAutoencoder of `config` holding `state`; a mismatch is reported key by key."""
    with torch.device("meta"):  # no memory spent on weights about to be replaced
        model = TinyAutoencoder(config)
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    shapes = [f"{k}: {tuple(state[k].shape)} found, {tuple(v.shape)} expected"
              for k, v in expected.items() if k in state and state[k].shape != v.shape]
    problems = [f"{len(items)} {what} ({'; '.join(items[:3])})" for what, items in
                (("shape(s) differ", shapes), ("key(s) missing", missing), ("unexpected key(s)", unexpected)) if items]
    if problems:
        raise CheckpointError(f"{source} does not fit a TinyAutoencoder of {config}: {'; '.join(problems)}")
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()


def load_tiny_autoencoder(path: str | Path) -> TinyAutoencoder:
    """The tiny autoencoder in an ldmkit folder, a diffusers AutoencoderTiny folder, or TAESD's
    original files (their folder, or either file of the pair). Weights keep the files' dtype, on the CPU."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no tiny autoencoder at {path}: give an ldmkit or diffusers folder, or TAESD's "
                                "original taesd_encoder / taesd_decoder files")
    if path.is_dir() and (path / "config.json").is_file():
        cfg = read_json(path / "config.json")
        if cfg.get("kind") == KIND:
            states, meta, _ = load_checkpoint(path)
            if not isinstance(meta.get(KIND), dict):
                raise CheckpointError(f"{path / 'config.json'} says kind {KIND!r} but has no {KIND!r} config")
            return _build(from_dict(TinyAutoencoderConfig, meta[KIND]), states.get(KIND, {}), str(path))
        if cfg.get("_class_name") == DIFFUSERS_CLASS:
            return _build(config_from_diffusers(cfg), read_component(path, DIFFUSERS_CLASS), str(path))
        found = cfg.get("kind") or cfg.get("type") or cfg.get("_class_name") or f"keys {sorted(cfg)[:6]}"
        raise CheckpointError(f"{path / 'config.json'} describes {found!r}, not a tiny autoencoder: expected "
                              f"\"kind\": {KIND!r} (ldmkit) or \"_class_name\": {DIFFUSERS_CLASS!r} (diffusers)")
    encoder_file, decoder_file = _find_original_pair(path)
    encoder, decoder = read_weights(encoder_file)[0], read_weights(decoder_file)[0]
    source = f"{encoder_file.name} + {decoder_file.name}"
    try:
        config = config_from_original(encoder, decoder)
    except ValueError as error:  # an invalid config read off odd weights: say which files
        raise CheckpointError(f"{source}: {error}") from None
    return _build(config, from_original(encoder, decoder), source)


def save_tiny_autoencoder(model: TinyAutoencoder, folder: str | Path) -> Path:
    """An ldmkit tiny-autoencoder folder (written whole, then renamed into place)."""
    return save_checkpoint(folder, {KIND: model.state_dict()}, {"kind": KIND, KIND: to_dict(model.config)})
