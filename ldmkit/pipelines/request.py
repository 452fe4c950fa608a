"""One generation request, declared once: the Python API (`run`), the `ldmkit` command's options,
the PNG text and the HTTP API all read and write this type, and JSON round-trips it through the
typed config machinery (unknown keys refused).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace

from ..config import from_dict, to_dict
from ..nets.deepcache import check_interval
from . import core
from .image_tasks import img2img, inpaint, outpaint
from .txt2img import generate
from .upscale import upscale

TASKS = ("txt2img", "img2img", "inpaint", "outpaint", "upscale")
COMMON = ("prompt", "negative_prompt", "num_images", "steps", "sampler", "guidance", "guidance_rescale", "seed",
          "deepcache", "tiny_decoder")
TASK_FIELDS = {  # the settings each task takes, beyond COMMON
    "txt2img": ("height", "width"),
    "img2img": ("strength",),
    "inpaint": ("strength", "resample"),
    "outpaint": ("strength", "resample", "left", "right", "top", "bottom"),
    "upscale": ("noise_level",),
}
# txt2img's ControlNet and guidance beyond classifier-free, the models named (the server's names;
# Python: a shipped name or a folder). The command line has options of its own for these
# (--controlnet FILE, --classifier DIR, ...: generate_to_folder's controlnets= and steering=), so
# task_fields, from which it makes its options, leaves them out.
STEERING_FIELDS = ("controlnet", "control_scale", "classifier", "classifier_scale", "classifier_labels", "clip",
                   "clip_guidance", "rerank")
STRENGTH_DEFAULTS = {"img2img": 0.6, "inpaint": 1.0, "outpaint": 1.0}
# always in the PNG text, in this order; other settings only where they differ from their default
ALWAYS_RECORDED = ("prompt", "negative_prompt", "sampler", "steps", "guidance")


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str = ""
    negative_prompt: str = ""
    task: str = "txt2img"  # txt2img | img2img | inpaint | outpaint | upscale
    num_images: int = 1
    steps: int | None = None  # None: the model's default (its card's)
    sampler: str | None = None
    guidance: float | None = None
    guidance_rescale: float = 0.0
    seed: int = 0  # image k uses seed + k
    deepcache: int | None = None  # DeepCache: the UNet's deep part every N calls, reused between (None: off)
    tiny_decoder: bool = False  # decode with the model's distilled tiny decoder (faster, a little less exact)
    height: int | None = None  # txt2img: pixels (default: the model's size)
    width: int | None = None
    strength: float | None = None  # img2img (default 0.6), inpaint / outpaint (default 1.0)
    resample: int = 0  # inpaint / outpaint: RePaint's extra passes per step
    noise_level: int | None = None  # upscale: the low-resolution image's noise (default: the model's)
    left: int = 0  # outpaint: pixels added on each side
    right: int = 0
    top: int = 0
    bottom: int = 0
    controlnet: str | None = None  # txt2img: a ControlNet by name; its control image is run's control_image
    control_scale: float = 1.0
    classifier: str | None = None  # txt2img: a noisy latent classifier by name (classifier guidance)
    classifier_scale: float = 1.0
    classifier_labels: tuple[int, ...] | None = None  # the class of each prompt (default: the one it names)
    clip: str | None = None  # txt2img: the CLIP of clip_guidance and rerank (default: clip-small, text models)
    clip_guidance: float = 0.0
    rerank: int = 1  # candidates of each image, the one CLIP scores highest kept

    def __post_init__(self):
        if isinstance(self.classifier_labels, list):  # JSON and Python callers give lists
            object.__setattr__(self, "classifier_labels", tuple(self.classifier_labels))
        unused = sorted(name for name in set(FIELD_NAMES) - _settable(self.task) - {"task"}
                        if getattr(self, name) != GenerationRequest.__dataclass_fields__[name].default)
        if unused:
            raise ValueError(f"the {self.task} task takes no {unused}; it takes {sorted(_settable(self.task))}")
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; choose one of {TASKS}")
        if not isinstance(self.num_images, int) or self.num_images < 1:
            raise ValueError(f"num_images must be a whole number >= 1, got {self.num_images!r}")
        if not isinstance(self.prompt, str) or not isinstance(self.negative_prompt, str):
            raise ValueError("prompt and negative_prompt must be strings")
        if self.deepcache is not None:
            check_interval(self.deepcache, "deepcache")
        if not isinstance(self.tiny_decoder, bool):
            raise ValueError(f"tiny_decoder must be true or false, got {self.tiny_decoder!r}")
        if self.task == "outpaint" and min(self.left, self.right, self.top, self.bottom) < 0:
            raise ValueError("left, right, top and bottom must be >= 0")
        for name in ("controlnet", "classifier", "clip"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                raise ValueError(f"{name} is a name (a string), got {getattr(self, name)!r}")
        if self.controlnet is None and self.control_scale != 1.0:
            raise ValueError("control_scale needs a controlnet")
        if self.classifier is None and (self.classifier_scale != 1.0 or self.classifier_labels is not None):
            raise ValueError("classifier_scale and classifier_labels need a classifier")
        if self.clip is not None and not self.clip_guidance and self.rerank == 1:
            raise ValueError("clip is used by rerank and clip_guidance: give one of them")

    @classmethod
    def from_json(cls, data: Mapping) -> GenerationRequest:
        """From a JSON object; a key this type does not have is an error naming the known ones."""
        return from_dict(cls, data)

    def to_json(self) -> dict:
        return to_dict(self)

    def resolved(self, pipe) -> GenerationRequest:
        """Every None filled from the model's defaults: what actually runs, and what is recorded."""
        steps, sampler, guidance = core.resolve_settings(pipe, self.steps, self.sampler, self.guidance)
        strength = self.strength
        if strength is None and self.task in STRENGTH_DEFAULTS:
            strength = STRENGTH_DEFAULTS[self.task]
        noise_level = self.noise_level
        if noise_level is None and self.task == "upscale" and pipe.config.lowres is not None:
            noise_level = pipe.config.lowres.noise_level
        return replace(self, steps=steps, sampler=sampler, guidance=guidance, strength=strength,
                       noise_level=noise_level)

    def png_text(self) -> dict:
        """The settings for a PNG's text: the task (unless txt2img), the five always recorded,
        then every other setting that differs from its default. Seeds and sizes are per image."""
        text = {} if self.task == "txt2img" else {"task": self.task}
        text |= {name: getattr(self, name) for name in ALWAYS_RECORDED}
        skip = {"task", "num_images", "seed", "height", "width", *ALWAYS_RECORDED}
        named = {"control_scale": self.controlnet, "classifier_scale": self.classifier}  # scale: recorded with it
        for field in fields(self):
            value = getattr(self, field.name)
            if field.name not in skip and (value != field.default or named.get(field.name) is not None):
                text[field.name] = list(value) if isinstance(value, tuple) else value
        return text


FIELD_NAMES = tuple(GenerationRequest.__dataclass_fields__)
HELP = {  # what each setting means, for the command line's --help and the API's schema
    "negative_prompt": "what to steer away from (classifier-free guidance's unconditional side)",
    "num_images": "images per prompt",
    "steps": "sampler steps (default: the model's)",
    "sampler": "ddpm | ddim | euler | euler_a | heun | dpmpp_2m | dpmpp_2m_sde (default: the model's)",
    "guidance": "classifier-free guidance scale; 1 = none (default: the model's)",
    "guidance_rescale": "rescale the guided prediction's std towards the conditional one's (0 = off)",
    "seed": "image k gets seed + k",
    "deepcache": "DeepCache: run the UNet's deep part every N steps and reuse it between (faster, slightly "
                 "different images; default: off)",
    "tiny_decoder": "decode with the model's distilled tiny decoder: several times faster, a little less exact "
                    "(an error if the model has none)",
    "height": "pixels (default: the model's size)",
    "width": "pixels (default: the model's size)",
    "strength": "in (0, 1]: how far to noise the input (1 = from pure noise; default 0.6 img2img, 1 else)",
    "resample": "RePaint: extra passes per step (0: off)",
    "noise_level": "noise added to the low-resolution input, 0..max (default: the model's, 20 for SD x4)",
    "left": "pixels to add on the left", "right": "pixels to add on the right",
    "top": "pixels to add on the top", "bottom": "pixels to add on the bottom",
    "controlnet": "a ControlNet's name; the control image (its hint) comes with the request",
    "control_scale": "how strongly the ControlNet steers (0: not at all)",
    "classifier": "a noisy latent classifier's name: classifier guidance towards the prompt's class",
    "classifier_scale": "classifier guidance scale",
    "classifier_labels": "the class of each prompt, instead of the one it names (with the empty prompt: "
                         "one image set per label, from the unconditional model)",
    "clip": "the CLIP of clip_guidance and rerank (default for text models: clip-small)",
    "clip_guidance": "CLIP guidance scale towards the prompt (0: off)",
    "rerank": "make N candidates of each image and keep the one CLIP scores highest",
}


def task_fields(task: str) -> tuple[str, ...]:
    """The settings `task` takes, in declaration order, but STEERING_FIELDS (the command line's
    own options)."""
    return tuple(name for name in FIELD_NAMES if name in _settable(task) and name not in STEERING_FIELDS)


def _settable(task: str) -> set[str]:
    return {*COMMON, *TASK_FIELDS.get(task, ()), *(STEERING_FIELDS if task == "txt2img" else ())}


def run(pipe, request: GenerationRequest, image=None, mask=None, output: str = "pil", progress: bool = False,
        hook: core.StepHook | None = None, batch_size: int = 64, vae_tile: int | None = None,
        control: Mapping | None = None, control_image=None, loaded: Mapping | None = None):
    """The images `request` asks of `pipe`; `image` (and `mask`, for inpaint) where the task
    takes them. hook(Step) runs after every sampler step and may raise core.Cancelled.
    batch_size, vae_tile: how txt2img runs (images sampled together, decoding in tiles).
    control: the loaded ControlNets' inputs, {"control_image": ..., "control_scale": ...} (the
    control_* arguments of txt2img.generate), for every task but upscale.
    control_image: the hint of the request's `controlnet`, which is pipe's only ControlNet for
    this run. loaded: the models the request names, already loaded ({"controlnet": ControlNet,
    "classifier": LatentClassifier, "clip": CLIP}: a server's cache; "clip" also stands for a CLIP
    the request leaves to the default); a name missing there is loaded as Pipeline.generate loads
    it (a shipped name or a folder)."""
    r = request.resolved(pipe)
    with deepcache_applied(pipe, r.deepcache), tiny_decoder_applied(pipe, r.tiny_decoder):
        return _run(pipe, r, image, mask, output, progress, hook, batch_size, vae_tile, control, control_image,
                    loaded or {})


def _run(pipe, r: GenerationRequest, image, mask, output, progress, hook, batch_size, vae_tile, control,
         control_image, loaded: Mapping):
    if r.controlnet is not None:
        if control:
            raise ValueError("the request names a controlnet: give its control_image, not control=")
        if control_image is None:
            raise ValueError(f"the ControlNet {r.controlnet!r} needs a control image (its hint)")
        control = {"control_image": control_image, "control_scale": r.control_scale}
    elif control_image is not None:
        raise ValueError("a control image was given but no controlnet: name one")
    common = dict(negative_prompt=r.negative_prompt, num_images=r.num_images, steps=r.steps, sampler=r.sampler,
                  guidance=r.guidance, seed=r.seed, output=output, progress=progress,
                  guidance_rescale=r.guidance_rescale, hook=hook)
    if control:
        if r.task == "upscale":
            raise ValueError("the upscale task takes no ControlNet control")
        common |= dict(control)
    if r.task != "txt2img" and image is None:
        raise ValueError(f"the {r.task} task needs an input image")
    if r.task == "txt2img":
        named = {name: loaded.get(name, getattr(r, name)) if getattr(r, name) is not None else None
                 for name in ("controlnet", "classifier")}
        labels = None if r.classifier_labels is None else list(r.classifier_labels)
        steering = dict(classifier=named["classifier"], classifier_scale=r.classifier_scale, classifier_labels=labels,
                        clip=loaded.get("clip", r.clip), clip_guidance=r.clip_guidance, rerank=r.rerank)
        with _only_controlnet(pipe, named["controlnet"]):
            return generate(pipe, r.prompt, height=r.height, width=r.width, batch_size=batch_size,
                            vae_tile=vae_tile, **common, **steering)
    if r.task == "img2img":
        return img2img(pipe, image, r.prompt, strength=r.strength, **common)
    if r.task == "inpaint":
        if mask is None:
            raise ValueError("the inpaint task needs a mask (white: repaint)")
        return inpaint(pipe, image, mask, r.prompt, strength=r.strength, resample=r.resample, **common)
    if r.task == "outpaint":
        return outpaint(pipe, image, r.prompt, r.left, r.right, r.top, r.bottom, strength=r.strength,
                        resample=r.resample, **common)
    return upscale(pipe, image, r.prompt, noise_level=r.noise_level, **common)


@contextlib.contextmanager
def deepcache_applied(pipe, interval: int | None):
    """`pipe` under DeepCache with `interval` inside the block (None: as it is), as it was afterwards."""
    if interval is None:
        yield
        return
    before = pipe.deepcache_interval
    pipe.use_deepcache(interval)
    try:
        yield
    finally:
        pipe.deepcache_interval = before


@contextlib.contextmanager
def tiny_decoder_applied(pipe, on: bool):
    """`pipe` decoding with its tiny decoder inside the block (False: as it is), as it was afterwards."""
    if not on:
        yield
        return
    before = pipe.tiny_decoder_on
    pipe.use_tiny_decoder(True)
    try:
        yield
    finally:
        pipe.tiny_decoder_on = before


@contextlib.contextmanager
def _only_controlnet(pipe, controlnet):
    """`pipe` with `controlnet` (a name, folder or loaded ControlNet) as its only ControlNet, and
    its own ones back afterwards; None: as it is."""
    if controlnet is None:
        yield
        return
    before = list(pipe.controlnets)
    pipe.controlnets.clear()
    try:
        pipe.load_controlnet(controlnet)
        yield
    finally:
        pipe.controlnets[:] = before
