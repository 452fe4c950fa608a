"""The generative family side by side on Fashion-MNIST: one table, a row per model, each scored as
`ldmkit evaluate` scores a model, so that "GANs: high fidelity, low diversity; VAEs: more diverse;
diffusion: both" become numbers anyone can rerun. `--dataset shapes` makes the same table on
shapes (benchmarks/family_shapes.py says how it is scored).

    python -m benchmarks.family_table [--dataset fashion-mnist] [--models NAME_OR_FOLDER ...] [--per-class 100]
        [--seed 0] [--steps N] [--clip clip-small] [--threads 1] [--out docs/results/family-fashion-mnist.json]
        [--grid docs/images/family-fashion-mnist.png] [--markdown]

Every model (default: the shipped fashion-mnist, fashion-mnist-f4 and fashion-mnist-lcm, and
models/fashion-mnist-dit, -gan, -vae, -kl-f4-prior, -dalle, -glide and -unclip where they exist) is loaded with
Pipeline.from_pretrained and draws 10 x per-class images of the 10 class prompts in one
generate(prompts, num_images=per_class, seed=seed, output="tensor") call at its own defaults
(--steps overrides the diffusion models' steps). The images are scored by
ldmkit.apps.evaluate.score_fashion_mnist_images: FD and FD_inf of the shipped classifier's features
against the 10,000 test images, class agreement, and precision (fidelity) and recall (diversity)
against as many real training images; with a CLIP (--clip), the CLIP score. The "real" row scores
held-out real training images (per-class of each class, none of them in the reference set) the
same way: what a perfect generator would score with this many images.

A row is saved as soon as it is done and reused by a later run of the same model folder (and the
same weights in it), per-class, seed, --steps and CLIP, so a killed run goes on from the next model. Each row keeps
its ten grid samples (one per class, a base64 PNG strip), so the grid is redrawn from the file.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import inspect
import io
import json
import math
import sys
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

from ldmkit.apps.evaluate import (
    fashion_mnist_prompts,
    real_data_floor,
    score_fashion_mnist_images,
    shipped_test_features,
)
from ldmkit.data import fashion_mnist, load_fashion_mnist
from ldmkit.family import FamilyGenerator
from ldmkit.family.loading import PARTS, family_kind
from ldmkit.family.unclip import part_folder
from ldmkit.metrics import classify, load_fmnist_classifier
from ldmkit.model.folder import BUNDLED, MODELS_DIR, resolve_model
from ldmkit.pipelines import Pipeline
from ldmkit.utils.images import to_pil

from .results import write_json
from .sd_models import cpu_name

# Folders in models/; those absent are left out of the default table.
DEFAULT_MODELS = ("fashion-mnist", "fashion-mnist-f4", "fashion-mnist-lcm", "fashion-mnist-dit", "fashion-mnist-gan",
                  "fashion-mnist-vae", "fashion-mnist-kl-f4-prior", "fashion-mnist-dalle", "fashion-mnist-glide",
                  "fashion-mnist-unclip")
FAMILY_KINDS = {"gan": "GAN", "dalle": "autoregressive (DALL-E)", "vae": "VAE", "unclip": "unCLIP (prior + decoder)",
                "cascade": "pixel diffusion cascade (GLIDE)"}
# generate() arguments that say what to draw, not how: left out of a family model's sampling settings
NOT_SAMPLING = {"self", "prompt", "num_images", "seed", "output", "class_labels", "clip", "batch_size"}
SCORES = ("images", "frechet_distance", "fd_inf", "fd_inf_halves", "class_agreement", "class_agreement_by_class",
          "precision", "recall")


def default_models(names: tuple[str, ...] = DEFAULT_MODELS) -> list[str]:
    """The shipped models of `names` that are in models/, as names or folders."""
    # a folder still being assembled (a cascade with one stage trained) has no config.json yet
    return [name if name in BUNDLED else str(MODELS_DIR / name) for name in names
            if (MODELS_DIR / name / "config.json").is_file()]


def model_folder(name_or_path: str) -> str:
    """The model's folder, relative to the repository where inside it: the row's identity."""
    folder = resolve_model(name_or_path).resolve()
    try:
        return str(folder.relative_to(MODELS_DIR.parent.resolve()))
    except ValueError:
        return str(folder)


def row_key(folder: str, per_prompt: int, seed: int, steps: int | None, clip: str | None,
            count_name: str = "per_class") -> dict:
    return {"folder": folder, "weights": fingerprint(folder), count_name: per_prompt, "seed": seed, "steps": steps,
            "clip": clip}


def fingerprint(folder: str) -> str:
    """What the folder holds (config.json and weights, hashed), and for a folder that names its
    parts (unCLIP's prior and decoder, a cascade's base and upsampler) what they hold too: a row of
    weights since retrained is measured again, not reused."""
    digest = hashlib.sha256()
    root = resolve_model(folder)
    folders = [root]
    config = root / "config.json"
    meta = json.loads(config.read_text()) if config.is_file() else {}
    for part in PARTS.get(meta.get("kind"), ()):
        folders.append(part_folder(meta[part], root, part))
    for each in folders:
        for name in ("config.json", "model.safetensors"):
            path = each / name
            if path.is_file():
                digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def parameter_counts(model) -> dict:
    """Parameters of the networks trained for the model that sample (denoiser, generator,
    transformer; a cascade's two stages, unCLIP's prior and decoder: "network") and, apart, of the
    first stage's decoder where images are decoded from latents or codes (None in pixel space).
    The frozen text encoder or CLIP is named in the row, not counted: it is shared, not trained here."""
    if isinstance(model, FamilyGenerator):
        networks, autoencoder = model.networks(), getattr(model, "autoencoder", None)
    else:
        networks, autoencoder = [model.net], model.autoencoder
    networks = [n for n in networks if n is not autoencoder]  # a first stage's prior: no network of its own
    decoder = None
    if autoencoder is not None and hasattr(autoencoder, "decoder"):  # what decode() runs (none for pixels)
        parts = [autoencoder.decoder, autoencoder.post_quant_conv, getattr(autoencoder, "quantizer", None)]
        decoder = sum(p.numel() for part in parts if part is not None for p in part.parameters())
    return {"network": sum(p.numel() for n in networks for p in n.parameters()) if networks else None,
            "first_stage_decoder": decoder}


def model_kind(model) -> str:
    if isinstance(model, FamilyGenerator):
        if getattr(model, "first_stage", False):
            return "VAE (KL first stage, z ~ N(0,I))"
        return FAMILY_KINDS.get(model.kind, model.kind)
    network = model.config.net.kind
    return f"latent consistency ({network})" if "distill" in model.meta else f"latent diffusion ({network})"


def sampling_settings(model, steps: int | None) -> dict:
    """What generate() runs with: a diffusion model's steps, sampler and guidance (its defaults,
    --steps over its steps); a family model's own defaults, read off its generate()."""
    if isinstance(model, FamilyGenerator):
        defaults = {name: p.default for name, p in inspect.signature(model.generate).parameters.items()
                    if name not in NOT_SAMPLING and p.default is not inspect.Parameter.empty}
        defaults = model.settings_used(defaults)  # None: the folder's or its parts' own (unCLIP, a cascade)
        # JSON has no inf: truncation=inf (off) is written as the string "inf"
        return {k: str(v) if isinstance(v, float) and not math.isfinite(v) else v for k, v in defaults.items()}
    resolved_steps, sampler, guidance = model.resolve_settings(steps, None, None)
    return {"steps": resolved_steps, "sampler": sampler, "guidance": guidance}


def training_record(meta: dict) -> dict:
    """Training time and steps as the folder's config.json records them; None where it does not."""
    training = meta.get("training") or {}
    return {"minutes": training.get("train_minutes"), "steps": training.get("steps"), "note": training.get("note")}


def sample_strip(images: torch.Tensor, picks: list[int]) -> str:
    """The images at `picks` (the first of each class) side by side, a PNG in base64: the row's
    grid samples."""
    firsts = [to_pil(images[i]) for i in picks]
    strip = Image.new(firsts[0].mode, (sum(im.width for im in firsts), firsts[0].height))
    for c, image in enumerate(firsts):
        strip.paste(image, (c * image.width, 0))
    buffer = io.BytesIO()
    strip.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


class Scorer:
    """Fashion-MNIST's: the classifier, the test features and the real reference images, computed
    once a run; what the table draws and how it lays out its columns."""

    dataset, count_name, grid_mode, grid_labels = "fashion-mnist", "per_class", "L", fashion_mnist.CLASS_NAMES
    accuracy_columns, fd_format = ("agreement",), ".3f"
    metric = ("ldmkit.apps.evaluate.score_fashion_mnist_images: FD, FD_inf of the shipped classifier's features "
              "against the 10,000 test images; class agreement; precision and recall (k = 3) against as many real "
              "training images")

    def __init__(self, per_class: int):
        self.per_class = self.per_prompt = per_class
        self.prompts = fashion_mnist_prompts()
        self.classifier = load_fmnist_classifier()
        self.test_features = shipped_test_features("cpu")
        self.reference_images, self.held_out = real_images(per_class)
        self.reference_features = classify(self.classifier, self.reference_images)[0]

    def counts(self) -> dict:
        return {"per_class": self.per_class, "images": 10 * self.per_class}

    def score(self, images: torch.Tensor, model=None) -> dict:
        """The row's scores of a model's images (None: real images); an unconditional model's
        images were not asked for classes, so it has no class agreement."""
        scores = score_fashion_mnist_images(self.classifier, images, self.per_class, self.test_features,
                                            self.reference_features)
        if not getattr(model, "conditional", True):
            scores["class_agreement"] = scores["class_agreement_by_class"] = None
        return {k: scores[k] if k != "images" else len(images) for k in SCORES}

    def floor_row(self) -> dict:
        """The held-out real images scored as a model's, and the floor as `ldmkit evaluate`
        reports it (the reference images themselves against the test set)."""
        return {"model": "real training images", "kind": "data (held out)", **self.score(self.held_out),
                "as_evaluate": real_data_floor(self.reference_features, self.test_features),
                "samples_png": self.strip(self.held_out)}

    def strip(self, images: torch.Tensor) -> str:
        return sample_strip(images, [c * self.per_class for c in range(10)])

    @staticmethod
    def accuracy_cells(row: dict) -> list[str]:
        return [number(row["class_agreement"], ".1%")]

    @staticmethod
    def floor_line(results: dict) -> str:
        evaluate_floor = results["floor"]["as_evaluate"]
        return (f"{results['settings']['images']} images a row; FD floor as `ldmkit evaluate` reports it (the "
                f"reference images themselves): {evaluate_floor['frechet_distance']:.3f}")


def real_images(per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first 10 x per_class training images (the reference, as evaluate takes them) and
    per_class further ones of each class, in label order (the held-out "real" generator)."""
    count, limit = 10 * per_class, 40 * per_class
    while True:
        images, labels = load_fashion_mnist("train", limit=limit)
        picks = [count + torch.nonzero(labels[count:] == c).flatten()[:per_class] for c in range(10)]
        if all(len(p) == per_class for p in picks):
            return images[:count], images[torch.cat(picks)]
        if len(labels) < limit:
            raise ValueError(f"the training split has fewer than {per_class} held-out images of some class")
        limit *= 2


def measure(name: str, key: dict, scorer, clip, steps: int | None) -> dict:
    """Load, generate per_prompt images of each of the scorer's prompts in one call, time it and
    score them: one row."""
    model = Pipeline.from_pretrained(name)
    if model.meta.get("dataset") != scorer.dataset:
        raise SystemExit(f"{name} was trained on {model.meta.get('dataset')!r}: the table scores {scorer.dataset}")
    settings = sampling_settings(model, steps)
    conditional = getattr(model, "conditional", True)  # a family model may take no prompt
    prompts = scorer.prompts if conditional else [""]
    per_prompt = scorer.per_prompt * (len(scorer.prompts) // len(prompts))
    diffusion = {} if isinstance(model, FamilyGenerator) else settings
    start = time.perf_counter()
    images = model.generate(prompts, num_images=per_prompt, seed=key["seed"], output="tensor", **diffusion)
    seconds = time.perf_counter() - start
    row = {"model": Path(key["folder"]).name, "key": key, "kind": model_kind(model),
           "parameters": parameter_counts(model), "text_encoder": model.meta.get("text_encoder"),
           "sampling": settings, "training": training_record(model.meta),
           "seconds_per_image_batched": seconds / len(images), **scorer.score(images, model),
           "clip_score": None if clip is None or not conditional else clip.score(
               images, [p for p in prompts for _ in range(per_prompt)]),
           "measured_on": {"cpu": cpu_name(), "threads": torch.get_num_threads(), "device": str(model.device),
                           "torch": torch.__version__},
           "samples_png": scorer.strip(images)}
    return row


def load_clip(name: str | None):
    """(the CLIP, a note): None and why where it cannot be had (clip-small is not shipped yet)."""
    if not name or name.lower() == "none":
        return None, "no CLIP asked for: clip_score left out"
    from ldmkit.model.clip import CLIP

    try:
        return CLIP.from_pretrained(name), f"clip_score: CLIP score of {name} (max(100 cos, 0))"
    except FileNotFoundError as error:
        return None, f"clip_score left out: {error}"


def stored_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return json.loads(path.read_text()).get("rows", [])


def number(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def sampling_text(sampling: dict) -> str:
    if {"sampler", "steps", "guidance"} == set(sampling):  # a diffusion model's (a cascade has more)
        return f"{sampling['sampler']} {sampling['steps']} steps, w {sampling['guidance']:g}"
    return ", ".join(f"{k} {v}" for k, v in sampling.items()) or "defaults"


COLUMNS = ("model", "kind", "net params", "decoder params", "sampling", "train min", "s/image", "FD", "FD_inf",
           "precision", "recall")


def columns(scorer) -> tuple[str, ...]:
    return (*COLUMNS, *scorer.accuracy_columns, "CLIP")


def cells(row: dict, scorer) -> list[str]:
    parameters, training = row.get("parameters") or {}, row.get("training") or {}
    return [row["model"], row["kind"], number(parameters.get("network"), ","),
            number(parameters.get("first_stage_decoder"), ","),
            sampling_text(row["sampling"]) if "sampling" in row else "-", number(training.get("minutes"), ".1f"),
            number(row.get("seconds_per_image_batched"), ".4f"), format(row["frechet_distance"], scorer.fd_format),
            number(row["fd_inf"], scorer.fd_format), f"{row['precision']:.3f}", f"{row['recall']:.3f}",
            *scorer.accuracy_cells(row), number(row.get("clip_score"), ".2f")]


def table(results: dict, scorer) -> str:
    rows = [cells(r, scorer) for r in [*results["rows"], results["floor"]]]
    names = columns(scorer)
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(names)]

    def line(values: list[str]) -> str:  # text columns left, numbers right
        return "  ".join(v.ljust(w) if i < 5 else v.rjust(w) for i, (v, w) in enumerate(zip(values, widths)))

    lines = [line(names), "-" * len(line(names)), *(line(r) for r in rows), scorer.floor_line(results)]
    return "\n".join(lines)


def markdown(results: dict, scorer) -> str:
    rows = [cells(r, scorer) for r in [*results["rows"], results["floor"]]]
    names = columns(scorer)
    lines = ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def draw_grid(results: dict, out: Path, labels=fashion_mnist.CLASS_NAMES, mode: str = "L", scale: int = 3) -> Path:
    """A row of samples for each model (and the real images), one a column (a class: `labels`,
    each of one or more lines), the model's name on the left."""
    rows = [*results["rows"], results["floor"]]
    strips = [Image.open(io.BytesIO(base64.b64decode(r["samples_png"]))).convert(mode) for r in rows]
    cell, count = strips[0].height * scale, len(labels)
    ink = (lambda v: v) if mode == "L" else (lambda v: (v, v, v))  # noqa: E731
    try:  # Pillow's own scalable font (Pillow >= 10.1 with FreeType): no font file needed
        font = ImageFont.load_default(size=13)
    except (TypeError, ImportError):
        font = ImageFont.load_default()
    lines = max(label.count("\n") + 1 for label in labels)
    label_width, header = 200, 18 + 17 * (lines - 1)  # 13-pixel text, Pillow's 4 pixels between lines
    grid = Image.new(mode, (label_width + count * cell, header + len(rows) * cell), ink(255))
    draw = ImageDraw.Draw(grid)
    for c, name in enumerate(labels):
        draw.text((label_width + c * cell + 2, 2), name, fill=ink(0), font=font)
    for i, (row, strip) in enumerate(zip(rows, strips)):
        top = header + i * cell
        grid.paste(strip.resize((count * cell, cell), Image.NEAREST), (label_width, top))
        draw.text((4, top + cell // 2 - 15), row["model"], fill=ink(0), font=font)
        draw.text((4, top + cell // 2 + 2), row["kind"], fill=ink(96), font=font)
    out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(out)
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=("fashion-mnist", "shapes"), default="fashion-mnist")
    parser.add_argument("--models", nargs="+", default=None,
                        help="shipped names or model folders (default: the dataset's shipped models present)")
    parser.add_argument("--per-class", type=int, default=100, help="fashion-mnist: images of each class prompt")
    parser.add_argument("--per-combination", type=int, default=25,
                        help="shapes: images of each of the 48 combinations' captions")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=None, help="the diffusion models' steps (default: each one's)")
    parser.add_argument("--clip", default="clip-small", help="a CLIP for the CLIP score; 'none' to leave it out")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None, help="default: docs/results/family-DATASET.json")
    parser.add_argument("--grid", type=Path, default=None, help="default: docs/images/family-DATASET.png")
    parser.add_argument("--markdown", action="store_true", help="print the table as markdown too")
    args = parser.parse_args(argv)
    args.per_prompt = args.per_class if args.dataset == "fashion-mnist" else args.per_combination
    if args.per_prompt < 2 or (args.steps is not None and args.steps < 1):
        parser.error("need --per-class (--per-combination) >= 2 (precision and recall need neighbours) and "
                     "--steps >= 1")
    args.out = args.out or Path(f"docs/results/family-{args.dataset}.json")
    args.grid = args.grid or Path(f"docs/images/family-{args.dataset}.png")
    return args


def make_scorer(args: argparse.Namespace, clip):
    if args.dataset == "fashion-mnist":
        return Scorer(args.per_class), DEFAULT_MODELS
    from .family_shapes import DEFAULT_SHAPES_MODELS, ShapesScorer  # here: family_shapes builds on this module

    return ShapesScorer(args.per_combination, clip), DEFAULT_SHAPES_MODELS


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    clip, clip_note = load_clip(args.clip)
    clip_name = None if clip is None else args.clip
    scorer, names = make_scorer(args, clip)
    models = args.models or default_models(names)
    stored = stored_rows(args.out)
    results = {"settings": {**scorer.counts(), "seed": args.seed, "steps": args.steps, "clip": clip_note,
                            "metric": scorer.metric,
                            "parameters": "network: the denoiser / generator / transformer; first_stage_decoder: "
                                          "what decodes its latents or codes (the frozen text encoder not counted)",
                            "seconds": "one generate() call for all images, batched, at each model's batch size"},
               "floor": scorer.floor_row(), "rows": []}
    for name in models:
        folder = model_folder(name)
        steps = None if family_kind(resolve_model(name)) else args.steps  # --steps is the diffusion models'
        key = row_key(folder, args.per_prompt, args.seed, steps, clip_name, scorer.count_name)
        row = next((r for r in stored if r.get("key") == key), None)
        if row is None:
            print(f"measuring {name} ...", flush=True)
            row = measure(name, key, scorer, clip, args.steps)
        results["rows"].append(row)
        # until the run is over, rows of models not reached yet stay in the file
        pending = [r for r in stored if r.get("key") not in [done["key"] for done in results["rows"]]]
        write_json({**results, "rows": results["rows"] + pending}, args.out)
    write_json(results, args.out)
    print(table(results, scorer))
    if args.markdown:
        print()
        print(markdown(results, scorer))
    print(f"written {args.out} and {draw_grid(results, args.grid, scorer.grid_labels, scorer.grid_mode)}")
    return 0 if all(math.isfinite(r["frechet_distance"]) for r in results["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
