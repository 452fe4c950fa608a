"""A1111's "parameters" text: the one-string form of an image's settings that AUTOMATIC1111's web
UI writes into its PNGs and that every tool of that family reads back (png-info, "send to
txt2img"). ldmkit writes it beside its own per-setting chunks, and reads it back, so images move
between the tools.

    a photo of a sneaker
    Negative prompt: blurry
    Steps: 20, Sampler: DPM++ 2M, CFG scale: 3.0, Seed: 7, Size: 32x32, Model: fashion-mnist

The last line is `Label: value` pairs; a value holding a comma, colon or quote is JSON-quoted.
"""

from __future__ import annotations

import json
import re

# A1111's sampler names -> ldmkit's (A1111 >= 1.9 names the schedule apart: "Schedule type")
SAMPLER_NAMES = {"Euler a": "euler_a", "Euler": "euler", "Heun": "heun", "DDIM": "ddim", "DPM++ 2M": "dpmpp_2m",
                 "DPM++ 2M SDE": "dpmpp_2m_sde", "DDPM": "ddpm"}
A1111_SAMPLER = {v: k for k, v in SAMPLER_NAMES.items()}
# A1111's schedule types -> ldmkit's timestep spacing (None: the model's own)
SCHEDULE_TYPES = {"Automatic": None, "Karras": "karras", "Uniform": "linspace"}
# A1111's labels for the settings both tools have; every other setting keeps its ldmkit name
LABELS = {"steps": "Steps", "sampler": "Sampler", "spacing": "Schedule type", "guidance": "CFG scale",
          "seed": "Seed", "size": "Size", "model": "Model", "strength": "Denoising strength",
          "guidance_rescale": "CFG Rescale phi", "software": "Version"}
FIELD_OF_LABEL = {v: k for k, v in LABELS.items()}
_FIRST_LINES = ("prompt", "negative_prompt")
_PAIR = re.compile(r'\s*([^,:"]+):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')


def sampler_from_a1111(name: str) -> tuple[str, str | None]:
    """("Euler a" | "DPM++ 2M Karras" | an ldmkit name) -> (ldmkit sampler, spacing or None)."""
    if name in SAMPLER_NAMES or name in A1111_SAMPLER:
        return SAMPLER_NAMES.get(name, name), None
    if name.endswith(" Karras") and name[: -len(" Karras")] in SAMPLER_NAMES:  # A1111 < 1.9's names
        return SAMPLER_NAMES[name[: -len(" Karras")]], "karras"
    known = sorted({*SAMPLER_NAMES, *(f"{n} Karras" for n in SAMPLER_NAMES)})
    raise ValueError(f"unknown sampler {name!r}; choose one of {known}")


def _text(value) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return json.dumps(text) if any(c in text for c in ',:"\n') else text


def format_infotext(settings: dict) -> str:
    """A1111's parameters text of an ldmkit settings dict (the PNG text of generate_to_folder)."""
    lines = [str(settings.get("prompt", ""))]
    if settings.get("negative_prompt"):
        lines.append(f"Negative prompt: {settings['negative_prompt']}")
    pairs = []
    order = ("steps", "sampler", "spacing", "guidance", "seed", "size", "model")  # A1111's own order first
    for key, value in sorted(settings.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)):
        if key in _FIRST_LINES or value is None:
            continue
        if key == "sampler":
            value = A1111_SAMPLER.get(value, value)
        elif key == "spacing":
            value = {"karras": "Karras", "linspace": "Uniform"}.get(value, value)
        pairs.append(f"{LABELS.get(key, key)}: {_text(value)}")
    return "\n".join([*lines, ", ".join(pairs)])


def parse_infotext(text: str) -> dict:
    """The settings of an A1111 parameters text, under ldmkit's names where the two tools share
    a setting (sampler as ldmkit's name, numbers as numbers); other labels kept as written."""
    lines = text.strip("\n").split("\n")
    last = lines[-1] if lines and _PAIR.match(lines[-1]) and "Steps:" in lines[-1] else None
    if last is not None:
        lines = lines[:-1]
    prompt, negative, in_negative = [], [], False
    for line in lines:
        if line.startswith("Negative prompt:"):
            in_negative, line = True, line[len("Negative prompt:"):].strip()
        (negative if in_negative else prompt).append(line)
    settings: dict = {"prompt": "\n".join(prompt), "negative_prompt": "\n".join(negative)}
    for label, raw in _PAIR.findall(last or ""):
        value = json.loads(raw) if raw.startswith('"') else raw.strip()
        key = FIELD_OF_LABEL.get(label.strip(), label.strip())
        if key == "sampler":
            try:
                value, spacing = sampler_from_a1111(value)
            except ValueError:  # another tool's sampler: kept as written
                spacing = None
            if spacing is not None:
                settings["spacing"] = spacing
            settings[key] = value
        else:
            settings[key] = _value(key, value)
    return settings


def _value(key: str, value: str):
    if key == "spacing":
        return SCHEDULE_TYPES.get(value, value)
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    if value.startswith(("[", "{")):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            pass
    return value
