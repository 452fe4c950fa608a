"""Hashes of what every shipped model makes for every task, at fixed seeds and settings: a
refactor that should change nothing is checked against hashes recorded before it.

    .venv/bin/python scripts/golden_outputs.py record docs/results/golden-outputs.json
    .venv/bin/python scripts/golden_outputs.py check docs/results/golden-outputs.json

Floats depend on the CPU's kernels, so the file records the CPU model and a check on another
CPU says so instead of failing. One thread, so that reductions split the same way each time.
Only the public API and the CLI are used, so the script runs unchanged across the refactor.
"""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def digest(value) -> str:
    """sha256 of images' pixels (PIL list) or a tensor's bytes, 16 hex digits."""
    h = hashlib.sha256()
    if isinstance(value, torch.Tensor):
        h.update(str(tuple(value.shape)).encode() + str(value.dtype).encode())
        h.update(value.detach().contiguous().cpu().numpy().tobytes())
    else:
        for image in value:
            h.update(f"{image.mode}{image.size}".encode() + np.asarray(image).tobytes())
    return h.hexdigest()[:16]


def inputs():
    from ldmkit.data.fashion_mnist import load_fashion_mnist

    x, _ = load_fashion_mnist("test", limit=1)
    image = Image.fromarray(((x[0, 0].numpy() + 1) * 127.5).round().astype(np.uint8))  # 32x32 sneaker-ish item
    mask = np.zeros((32, 32), np.uint8)
    mask[:, 16:] = 255
    small = image.resize((8, 8), Image.BOX)
    return image, Image.fromarray(mask), small


def outputs() -> dict[str, str]:
    from ldmkit import Pipeline

    image, mask, small = inputs()
    results = {}
    fm = Pipeline.from_pretrained("fashion-mnist-f4")
    for output in ("pil", "latent"):
        results[f"fashion-mnist-f4/generate/{output}"] = digest(
            fm.generate(["a photo of a sneaker", "a photo of a bag"], num_images=2, seed=3, output=output))
        results[f"fashion-mnist-f4/generate-negative-rescale/{output}"] = digest(
            fm.generate("a photo of a dress", negative_prompt="a photo of a coat", num_images=2, seed=1,
                        sampler="euler_a", steps=12, guidance=4.0, guidance_rescale=0.5, output=output))
        results[f"fashion-mnist-f4/img2img/{output}"] = digest(
            fm.img2img(image, "a photo of a bag", strength=0.6, num_images=2, seed=5, output=output))
        results[f"fashion-mnist-f4/inpaint/{output}"] = digest(
            fm.inpaint(image, mask, "a photo of a sneaker", num_images=2, seed=7, output=output))
        results[f"fashion-mnist-f4/inpaint-resample/{output}"] = digest(
            fm.inpaint(image, mask, "a photo of a sneaker", num_images=1, seed=7, steps=6, resample=1, output=output))
        results[f"fashion-mnist-f4/outpaint/{output}"] = digest(
            fm.outpaint(image.crop((0, 0, 24, 32)), "a photo of a sneaker", right=8, num_images=1, seed=2,
                        output=output))
        results[f"shapes/generate/{output}"] = digest(Pipeline.from_pretrained("shapes").generate(
            "a blue triangle in the top right", num_images=2, seed=0, sampler="euler_a", guidance=3, output=output))
        results[f"fashion-mnist-inpaint/inpaint/{output}"] = digest(Pipeline.from_pretrained(
            "fashion-mnist-inpaint").inpaint(image, mask, "a photo of a sneaker", num_images=2, seed=4, output=output))
        results[f"fashion-mnist-x4/upscale/{output}"] = digest(Pipeline.from_pretrained(
            "fashion-mnist-x4").upscale(small, num_images=2, seed=6, output=output))
    with tempfile.TemporaryDirectory() as out:  # the README's command: PNG files, text chunks included
        subprocess.run([str(ROOT / ".venv/bin/ldmkit"), "generate", "a photo of a sneaker", "--num-images", "8",
                        "--seed", "0", "--out", out], check=True, capture_output=True,
                       env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
        for path in sorted(Path(out).glob("*.png")):
            results[f"cli/readme-generate/{path.name}"] = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
            results[f"cli/readme-generate/{path.name}/pixels"] = digest([Image.open(path)])
    return results


def main() -> None:
    mode, path = sys.argv[1], Path(sys.argv[2])
    torch.set_num_threads(1)
    found = outputs()
    if mode == "record":
        path.write_text(json.dumps({"cpu": cpu_model(), "torch": torch.__version__, "hashes": found}, indent=1) + "\n")
        print(f"recorded {len(found)} hashes in {path}")
        return
    recorded = json.loads(path.read_text())
    if recorded["cpu"] != cpu_model() or recorded["torch"] != torch.__version__:
        print(f"recorded on {recorded['cpu']} / torch {recorded['torch']}; this is {cpu_model()} / torch "
              f"{torch.__version__}: float results may differ, so record anew before a refactor here")
    differ = sorted(key for key in recorded["hashes"] if found.get(key) != recorded["hashes"][key])
    missing = sorted(set(found) - set(recorded["hashes"]))
    for key in differ:
        print(f"DIFFERS  {key}: {recorded['hashes'][key]} -> {found.get(key)}")
    print(f"{len(recorded['hashes']) - len(differ)} of {len(recorded['hashes'])} identical; "
          f"{len(missing)} new outputs not recorded")
    sys.exit(1 if differ else 0)


if __name__ == "__main__":
    main()
