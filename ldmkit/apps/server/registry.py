"""The models, adapter files, ControlNets, noisy latent classifiers and CLIPs a server may load,
by name: the shipped ones and what the configured folder holds. A client names one of these; it
never names a path."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ...model import BUNDLED, MODELS_DIR
from ...model.clip import SHIPPED as SHIPPED_CLIPS
from ...model.folder import model_config

ADAPTER_FOLDERS = {"loras": "Lora", "embeddings": "embeddings", "hypernetworks": "hypernetworks"}  # A1111's
# the models that steer txt2img: kind -> its folder in --models-dir (ControlNet/ is A1111's name)
STEERING_FOLDERS = {"controlnets": "ControlNet", "classifiers": "classifiers", "clips": "clip"}
KIND_NAMES = {"loras": "LoRA", "embeddings": "embedding", "hypernetworks": "hypernetwork",
              "controlnets": "controlnet", "classifiers": "classifier", "clips": "clip"}  # for messages


class Registry:
    """Names -> files. models_dir holds model folders (ldmkit or diffusers) and SD .safetensors
    files, at its top or under Stable-diffusion/, and Lora/, embeddings/, hypernetworks/;
    ControlNet/ (folders, or .safetensors files), classifiers/ and clip/ (folders)."""

    def __init__(self, models_dir: Path | None = None, first: str | None = None):
        self.models_dir = None if models_dir is None else Path(models_dir)
        self.first = first
        self.refresh()

    def refresh(self) -> None:
        self.models = {name: MODELS_DIR / name for name in BUNDLED if (MODELS_DIR / name).is_dir()}
        if self.first is not None and self.first not in self.models:
            path = Path(self.first)  # the model given on the command line, by its folder or file
            self.models[path.stem if path.is_file() else path.name] = path
        self.files: dict[str, dict[str, Path]] = {kind: {} for kind in (*ADAPTER_FOLDERS, *STEERING_FOLDERS)}
        for path in _folders(MODELS_DIR / "controlnets"):
            self.files["controlnets"][path.name] = path
        for path in _folders(MODELS_DIR / "classifiers"):
            self.files["classifiers"][path.name] = path
        for name in SHIPPED_CLIPS:  # clip-small once it is trained and copied there
            if (MODELS_DIR / name / "config.json").is_file():
                self.files["clips"][name] = MODELS_DIR / name
        if self.models_dir is None:
            return
        if not self.models_dir.is_dir():
            raise FileNotFoundError(f"--models-dir {self.models_dir} is not a folder")
        for folder in (self.models_dir, self.models_dir / "Stable-diffusion"):
            for path in sorted(folder.glob("*")) if folder.is_dir() else ():
                if path.suffix == ".safetensors" or (path / "config.json").is_file() or \
                        (path / "model_index.json").is_file():
                    self.models.setdefault(path.stem if path.is_file() else path.name, path)
        for kind, sub in ADAPTER_FOLDERS.items():
            folder = self.models_dir / sub
            for path in sorted(folder.glob("*.safetensors")) if folder.is_dir() else ():
                self.files[kind][path.stem] = path
        for kind, sub in STEERING_FOLDERS.items():  # the shipped ones keep their names
            folder = self.models_dir / sub
            for path in _folders(folder):
                self.files[kind].setdefault(path.name, path)
            if kind == "controlnets":  # original single files, as A1111's extension reads them (never .pth)
                for path in sorted(folder.glob("*.safetensors")) if folder.is_dir() else ():
                    self.files[kind].setdefault(path.stem, path)

    def model_path(self, name: str) -> Path:
        if name not in self.models:
            raise KeyError(f"unknown model {name!r}; the known ones: {sorted(self.models)}")
        return self.models[name]

    def path(self, kind: str, name: str) -> Path:
        """The file or folder of a LoRA, embedding, hypernetwork, ControlNet, classifier or CLIP."""
        if not isinstance(name, str) or name not in self.files[kind]:
            raise KeyError(f"unknown {KIND_NAMES[kind]} {name!r}; the known ones: {sorted(self.files[kind])}")
        return self.files[kind][name]

    def task(self, name: str) -> str:
        """generation | inpainting | upscaling, read from a model folder's config.json."""
        config = self.model_path(name) / "config.json"
        if config.is_file():
            return model_config(json.loads(config.read_text())).task
        return "generation"

    def short_hash(self, name: str) -> str:
        """A1111's 10-hex model hash (of the weights file's first MiB: cheap, stable)."""
        path = self.model_path(name)
        weights = path if path.is_file() else path / "model.safetensors"
        if not weights.is_file():
            return ""
        with open(weights, "rb") as f:
            return hashlib.sha256(f.read(2**20)).hexdigest()[:10]


def _folders(folder: Path) -> list[Path]:
    """The model folders (those with a config.json) in `folder`, if it exists."""
    return [p for p in sorted(folder.glob("*")) if (p / "config.json").is_file()] if folder.is_dir() else []
