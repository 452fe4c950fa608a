"""The request and response shapes of AUTOMATIC1111's `/sdapi/v1`, the subset ldmkit runs.

Only the fields ldmkit acts on are declared; every other field A1111's clients send (the PyPI
client `webuiapi` sends about forty: restore_faces, tiling, s_churn, ...) is accepted and
ignored, as its default would be. Defaults of None mean the model's own setting. txt2img also
takes ldmkit's ControlNet, classifier and CLIP fields, and one ControlNet unit of the
sd-webui-controlnet extension's `alwayson_scripts` (controlnet_unit).
"""

from __future__ import annotations

import base64
import binascii
import io
import re

from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")


class GenerationPayload(_Request):
    prompt: str = ""
    negative_prompt: str = ""
    seed: int = Field(-1, description="-1: a random seed (the one used is reported in info)")
    sampler_name: str | None = Field(None, description='"Euler a", "Euler", "Heun", "DDIM", "DPM++ 2M", '
                                                       '"DPM++ 2M SDE", "DDPM" (or ldmkit\'s names)')
    sampler_index: str | None = Field(None, description="the old name of sampler_name")
    scheduler: str | None = Field(None, description='"Automatic" (the model\'s spacing) or "Karras"')
    batch_size: int = Field(1, ge=1)
    n_iter: int = Field(1, ge=1)
    steps: int | None = Field(None, ge=1)
    cfg_scale: float | None = Field(None, ge=0, le=100)
    width: int | None = Field(None, ge=1)
    height: int | None = Field(None, ge=1)
    override_settings: dict = Field(default_factory=dict, description="sd_model_checkpoint: a model for this "
                                                                      "request only")
    send_images: bool = True
    save_images: bool = False
    alwayson_scripts: dict = Field(default_factory=dict, description='txt2img: {"controlnet": {"args": [UNIT]}}, '
                                   "one sd-webui-controlnet unit (model, image, weight); other scripts are ignored")


class Txt2ImgPayload(GenerationPayload):
    controlnet: str | None = Field(None, description="a ControlNet's name (/controlnet/model_list)")
    control_image: str | None = Field(None, description="the ControlNet's hint: base64 PNG/JPEG, resized to the image")
    control_scale: float = Field(1.0, ge=0, le=10, allow_inf_nan=False)
    classifier: str | None = Field(None, description="a noisy latent classifier's name (/ldmkit/v1/steering): "
                                                     "classifier guidance towards the class the prompt names")
    classifier_scale: float = Field(1.0, ge=0, le=1000, allow_inf_nan=False)
    classifier_labels: list[int] | None = Field(None, description="the class to steer to, instead of the prompt's "
                                                                  "(with an empty prompt: one image set per label)")
    clip: str | None = Field(None, description="the CLIP of clip_guidance and rerank (default for text models: "
                                               "clip-small)")
    clip_guidance: float = Field(0.0, ge=0, le=1000, allow_inf_nan=False)
    rerank: int = Field(1, ge=1, description="candidates of each image; the one CLIP scores highest is kept")


class Img2ImgPayload(GenerationPayload):
    init_images: list[str] = Field(default_factory=list, description="base64 PNG/JPEG (a data: URL prefix is fine)")
    mask: str | None = Field(None, description="base64 image: white = repaint (inpainting)")
    inpainting_mask_invert: int = Field(0, ge=0, le=1)
    denoising_strength: float = Field(0.75, gt=0, le=1)
    resize_mode: int = 0


class OutpaintPayload(GenerationPayload):
    """ldmkit's own (A1111 outpaints through scripts): the image grown by these many pixels."""

    image: str
    left: int = Field(0, ge=0)
    right: int = Field(0, ge=0)
    top: int = Field(0, ge=0)
    bottom: int = Field(0, ge=0)


class ExtraSingleImagePayload(_Request):
    image: str
    upscaler_1: str = "None"
    upscaling_resize: float = Field(2, gt=0, le=8)
    upscaling_resize_w: int | None = Field(None, ge=1)
    upscaling_resize_h: int | None = Field(None, ge=1)
    resize_mode: int = Field(0, ge=0, le=1)  # 0: by upscaling_resize, 1: to w x h


class PngInfoPayload(_Request):
    image: str


def decode_image(data: str, max_pixels: int, what: str = "image") -> Image.Image:
    """A base64 image (raw or a data: URL) as a loaded PIL image; its size is read from the
    header and checked before the pixels are decoded (no decompression bombs)."""
    if not isinstance(data, str) or not data:
        raise ValueError(f"{what}: expected a base64-encoded PNG or JPEG")
    data = re.sub(r"^data:image/[\w.+-]+;base64,", "", data)
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{what}: not valid base64") from None
    try:
        image = Image.open(io.BytesIO(raw))
        if image.width * image.height > max_pixels:
            raise ValueError(f"{what}: {image.width}x{image.height} is over the limit of {max_pixels} pixels")
        image.load()
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as error:
        raise ValueError(f"{what}: not an image Pillow can read ({error})") from None
    return image


# one sd-webui-controlnet unit: what ldmkit runs, what it takes only at the value it runs (anything
# else would change the images), and what only the extension's preprocessors or UI read
UNIT_FIELDS = ("model", "image", "input_image", "weight", "enabled")
UNIT_AT_DEFAULT = {"module": ("none", "None", "", None), "mask": (None, ""), "mask_image": (None, ""),
                   "guidance_start": (0,), "guidance_end": (1,), "guidance": (1,),
                   "control_mode": (0, "Balanced"), "advanced_weighting": (None,),
                   "effective_region_mask": (None,), "ipadapter_input": (None,)}
UNIT_IGNORED = ("resize_mode", "low_vram", "lowvram", "processor_res", "threshold_a", "threshold_b",
                "pixel_perfect", "hr_option", "save_detected_map", "is_ui", "input_mode", "batch_images",
                "output_dir", "loopback", "inpaint_crop_input_image", "pulid_mode")
SUPPORTED_UNIT = ("one unit: model (a ControlNet's name), image (or input_image: base64), weight; module 'none' "
                  "(no preprocessor: send the hint itself), guidance_start 0, guidance_end 1, control_mode Balanced, "
                  "no mask")


def controlnet_unit(scripts: dict) -> dict:
    """The ControlNet fields of txt2img ({controlnet, control_image, control_scale}, or {}) from
    A1111's alwayson_scripts: the sd-webui-controlnet extension's {"controlnet": {"args": [unit]}}.
    Disabled units and units without a model are left out, as the extension leaves them."""
    entry = next((value for key, value in scripts.items() if key.lower() == "controlnet"), None)
    if entry is None:
        return {}
    where = "alwayson_scripts.controlnet"
    if not isinstance(entry, dict) or not isinstance(entry.get("args"), list) or set(entry) - {"args"}:
        raise ValueError(f'{where}: expected {{"args": [unit]}}; ldmkit runs {SUPPORTED_UNIT}')
    units = []
    for k, unit in enumerate(entry["args"]):
        if not isinstance(unit, dict):
            raise ValueError(f"{where}.args[{k}]: a unit is an object; ldmkit runs {SUPPORTED_UNIT}")
        if unit.get("enabled", True) is not False and unit.get("model") not in (None, "", "None"):
            units.append((k, unit))
    if not units:
        return {}
    if len(units) > 1:
        raise ValueError(f"{where}: {len(units)} enabled units; ldmkit runs {SUPPORTED_UNIT}")
    k, unit = units[0]
    where = f"{where}.args[{k}]"
    unknown = sorted(set(unit) - {*UNIT_FIELDS, *UNIT_AT_DEFAULT, *UNIT_IGNORED})
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; ldmkit runs {SUPPORTED_UNIT}")
    for key, allowed in UNIT_AT_DEFAULT.items():
        if key in unit and unit[key] not in allowed:
            raise ValueError(f"{where}: {key}={unit[key]!r} is not supported; ldmkit runs {SUPPORTED_UNIT}")
    if "image" in unit and "input_image" in unit:
        raise ValueError(f"{where}: give image or input_image (its old name), not both")
    image = unit.get("image", unit.get("input_image"))
    if isinstance(image, dict) and set(image) <= {"image", "mask"} and image.get("mask") in (None, ""):
        image = image.get("image")  # the extension's {"image": ..., "mask": ...} form, without a mask
    if not isinstance(image, str) or not image:
        raise ValueError(f"{where}: image: give the hint as a base64 PNG or JPEG (ldmkit runs no preprocessor)")
    model, weight = unit["model"], unit.get("weight", 1.0)
    if not isinstance(model, str):
        raise ValueError(f"{where}: model is a ControlNet's name (/controlnet/model_list), got {model!r}")
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not 0 <= weight <= 10:
        raise ValueError(f"{where}: weight must be a number in [0, 10], got {weight!r}")
    name = re.sub(r"\s*\[[0-9a-f]+\]$", "", model)  # the extension's names end in " [hash]"
    return {"controlnet": name, "control_image": image, "control_scale": float(weight)}


def encode_png(png: bytes) -> str:
    return base64.b64encode(png).decode("ascii")


LORA_TAG = re.compile(r"<(lora|hypernet):([^:>]+)(?::([^:>]+))?(?::[^>]*)?>")


def extra_networks(prompt: str) -> tuple[str, list[tuple[str, str, float]]]:
    """A1111's prompt syntax <lora:name:weight> and <hypernet:name:weight>: the prompt without the
    tags, and [(kind, name, weight)]."""
    found = []
    for kind, name, weight in LORA_TAG.findall(prompt):
        try:
            value = float(weight) if weight else 1.0
        except ValueError:
            raise ValueError(f"<{kind}:{name}:{weight}>: the weight must be a number") from None
        found.append(("loras" if kind == "lora" else "hypernetworks", name.strip(), value))
    text = " ".join(LORA_TAG.sub("", prompt).split())
    return text, found
