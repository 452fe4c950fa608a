"""What the worker runs for a generation request: A1111's batches (n_iter x batch_size), the
request's own LoRAs, embeddings and hypernetwork (on for this request only), its ControlNet,
classifier and CLIP (by name, cached by the worker), interrupt and skip, and a PNG per image
that carries its settings, kept in the gallery under an opaque id."""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path

from PIL import Image

from ...pipelines.core import Cancelled, timestep_spacing
from ...pipelines.request import GenerationRequest, run
from ...utils.images import png_bytes
from ..adapters import parse_adapters
from ..generate import png_text, sampling_batch_size
from .worker import Skipped, Worker


@dataclass
class Result:
    id: str
    png: bytes
    settings: dict  # the PNG's text, "parameters" (A1111's infotext) included
    created: float


class Gallery:
    """This server's results by opaque id, the newest `size` kept (and written to `outputs`)."""

    def __init__(self, size: int = 256, outputs: Path | None = None):
        self.size, self.outputs = size, outputs
        self._items: OrderedDict[str, Result] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, png: bytes, settings: dict) -> Result:
        result = Result(secrets.token_hex(8), png, settings, time.time())
        with self._lock:
            self._items[result.id] = result
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        if self.outputs is not None:
            self.outputs.mkdir(parents=True, exist_ok=True)
            (self.outputs / f"{time.strftime('%Y%m%d-%H%M%S')}-{result.id}.png").write_bytes(png)
        return result

    def get(self, result_id: str) -> Result | None:
        with self._lock:
            return self._items.get(result_id)

    def newest(self, count: int) -> list[Result]:
        with self._lock:
            return list(reversed(self._items.values()))[:count]


@dataclass
class Generation:
    """One API request, checked and ready for the worker."""

    request: GenerationRequest  # num_images = batch_size, seed = the first image's
    n_iter: int = 1
    model: str | None = None  # None: the server's current model
    spacing: str | None = None
    networks: tuple[tuple[str, str, float], ...] = ()  # (loras | hypernetworks, name, weight)
    image: Image.Image | None = None
    mask: Image.Image | None = None
    control_image: Image.Image | None = None  # the hint of request.controlnet

    def __call__(self, worker: Worker, gallery: Gallery) -> list[Result]:
        pipe = worker.pipeline(self.model)
        parsed, applied = parse_adapters(**self._adapter_files(worker))
        loaded = worker.steering(pipe, self.request)
        batch = self.request.num_images
        results = []
        with pipe.adapters(**parsed), timestep_spacing(pipe, self.spacing):
            for i in range(self.n_iter):
                request = replace(self.request, seed=self.request.seed + i * batch).resolved(pipe)
                worker.begin_batch(pipe.name, i, self.n_iter, request.steps)
                try:
                    images = run(pipe, request, image=self.image, mask=self.mask, hook=worker.hook,
                                 batch_size=sampling_batch_size(pipe), control_image=self.control_image,
                                 loaded=loaded)
                except Skipped:
                    continue
                except Cancelled:
                    break
                settings = {**request.png_text(), "model": pipe.name, **applied}
                if self.spacing is not None:
                    settings["spacing"] = self.spacing
                for k, image in enumerate(images):
                    text = png_text(settings, image, request.seed + k)
                    results.append(gallery.add(png_bytes(image, text), text))
        return results

    def _adapter_files(self, worker: Worker) -> dict:
        """parse_adapters' arguments: the prompt's <lora:...> / <hypernet:...> tags, and every
        embedding whose name the prompt or negative prompt uses (A1111 applies those by name)."""
        registry = worker.registry
        files = {"loras": [], "embeddings": [], "hypernetworks": []}
        for kind, name, weight in self.networks:
            files[kind].append(f"{registry.path(kind, name)}:{weight}")
        words = set((self.request.prompt + " " + self.request.negative_prompt).replace(",", " ").split())
        for name, path in registry.files["embeddings"].items():
            if name in words:
                files["embeddings"].append(f"{path}:{name}")
        return files
