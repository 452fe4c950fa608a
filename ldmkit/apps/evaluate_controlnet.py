"""`ldmkit evaluate-controlnet`: how well a trained ControlNet's images obey their hints.

- fill-shapes: outline hints of every (colour, shape, quadrant) combination, `size` of each
  (their own jitters), prompts naming colour and shape but no place ("a red circle"). Read back
  from each image, without any trained network: the share whose shape lands in the hint's
  quadrant, the IoU of the hint's filled region with the generated shape's mask, the shares with
  the right colour, shape and all three (data/fill_shapes.fill_obedience); overall, per quadrant
  and on the combinations the ControlNet's training held out apart.
- fashion-mnist-edges: Sobel edges of test images (never trained on), class prompts; the IoU of
  each generated garment's silhouette with that of the image its edges came from.

The same hints through the base alone (control scale 0: the base, bit for bit) give the floor: a
prompt without a place lands in the hint's quadrant by chance, about one time in four.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from ..data.shapes import COMBINATIONS, QUADRANTS
from ..pipelines import Pipeline
from ..train.controlnet_hints import HeldHints, edge_hints, fill_shapes_hints, generate_from_hints, obedience

EVAL_SEED = 424_242  # the evaluation hints' generators: apart from training's items and held hints


def controlnet_meta(path: str | Path) -> dict:
    """The config.json of an ldmkit ControlNet folder (what training recorded), else {}."""
    config = Path(path) / "config.json"
    return json.loads(config.read_text()) if config.is_file() else {}


def evaluation_hints(dataset: str, size: int) -> HeldHints:
    """fill-shapes: `size` hints of each of the 48 combinations; edges: 10 * size test images."""
    if dataset == "fill-shapes":
        return fill_shapes_hints([combo for _ in range(size) for combo in COMBINATIONS], seed=EVAL_SEED)
    if dataset == "fashion-mnist-edges":
        return edge_hints(10 * size)
    raise ValueError(f"unknown hint dataset {dataset!r}; choose fill-shapes or fashion-mnist-edges")


def subset(held: HeldHints, keep: list[bool]) -> HeldHints:
    rows = [k for k, kept in enumerate(keep) if kept]
    return HeldHints(held.dataset, held.hints[rows], held.targets[rows], [held.prompts[k] for k in rows],
                     None if held.combos is None else [held.combos[k] for k in rows])


def scores(held: HeldHints, images: torch.Tensor, holdout: set) -> dict:
    """obedience() overall; fill-shapes also per quadrant and on held-out / seen combinations."""
    result = obedience(held, images)
    if held.combos is None:
        return result
    for name, keep in [(q, [c[2] == q for c in held.combos]) for q in QUADRANTS] + [
            ("held_out", [c in holdout for c in held.combos]), ("seen", [c not in holdout for c in held.combos])]:
        if any(keep) and (name not in ("held_out", "seen") or holdout):
            part = subset(held, keep)
            result[name.replace(" ", "_")] = obedience(part, images[torch.tensor(keep)])
    return result


def evaluate_controlnet(pipe: Pipeline, dataset: str, size: int = 4, seed: int = 0, baseline: bool = True,
                        holdout=(), control_scale: float = 1.0, **settings) -> dict:
    """Obedience of the images of the ControlNet loaded on `pipe` (see the module's docstring);
    settings: steps, sampler, guidance."""
    held = evaluation_hints(dataset, size)
    holdout = {tuple(c) for c in holdout}
    start = time.perf_counter()
    images = generate_from_hints(pipe, held, seed=seed, control_scale=control_scale, **settings)
    result = {"dataset": dataset, "hints": len(held),
              "seconds_per_image": (time.perf_counter() - start) / len(held),
              "controlnet": scores(held, images, holdout)}
    if baseline:
        base = generate_from_hints(pipe, held, seed=seed, control_scale=0.0, **settings)
        result["base_alone"] = scores(held, base, holdout)
    steps, sampler, guidance = pipe.resolve_settings(settings.get("steps"), settings.get("sampler"),
                                                     settings.get("guidance"))
    result["settings"] = {"steps": steps, "sampler": sampler, "guidance": guidance, "seed": seed,
                          "control_scale": control_scale, "torch_threads": torch.get_num_threads(),
                          "device": str(pipe.device)}
    return result


def evaluate_controlnet_folder(model: str, controlnet: str | Path, dataset: str | None = None, device: str = "cpu",
                               **options) -> dict:
    """Load `model` and the ControlNet (checked against it), then evaluate_controlnet on the
    dataset its training recorded (or `dataset`)."""
    meta = controlnet_meta(controlnet)
    data = meta.get("train", {}).get("data", {})
    dataset = dataset or data.get("dataset")
    if dataset is None:
        raise ValueError(f"{controlnet} does not record the data it was trained on: give --data "
                         "fill-shapes or fashion-mnist-edges")
    pipe = Pipeline.from_pretrained(model, device=torch.device(device))
    net = pipe.load_controlnet(controlnet)
    result = evaluate_controlnet(pipe, dataset, holdout=data.get("holdout", ()), **options)
    return {"model": pipe.name, "controlnet_path": str(controlnet), "controlnet_name": net.name,
            "controlnet_base": meta.get("base"), "controlnet_step": meta.get("step"), **result}
