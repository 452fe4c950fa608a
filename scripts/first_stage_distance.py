"""Frechet distance (on the shipped Fashion-MNIST classifier's features, against the 10,000 test
images) of first-stage reconstructions of 2,000 training images: the lowest distance any
diffusion model on that autoencoder can reach. Usage (docs/stage2.md):

    .venv/bin/python scripts/first_stage_distance.py models/autoencoders/fmnist-kl-f4 runs/ablation-gan-fm/model
"""

import json
import sys
from pathlib import Path

import torch

from ldmkit.data import load_fashion_mnist
from ldmkit.metrics import classify, feature_frechet_distance, load_fmnist_classifier
from ldmkit.model import load_autoencoder


def main(folders: list[str]) -> None:
    classifier = load_fmnist_classifier()
    test_features, _ = classify(classifier, load_fashion_mnist("test")[0])
    real, _ = load_fashion_mnist("train", limit=2000)
    print(f"floor (real images): {feature_frechet_distance(classify(classifier, real)[0], test_features):.3f}")
    for folder in folders:
        autoencoder = load_autoencoder(folder)
        with torch.no_grad():
            rebuilt = torch.cat([autoencoder.from_latent(autoencoder.to_latent(x)).clamp(-1, 1)
                                 for x in real.split(250)])
        psnr = json.loads((Path(folder) / "config.json").read_text()).get("metrics", {}).get("psnr")
        distance = feature_frechet_distance(classify(classifier, rebuilt)[0], test_features)
        print(f"{folder}: first-stage distance {distance:.3f}, PSNR {psnr:.2f} dB")


if __name__ == "__main__":
    main(sys.argv[1:] or ["models/autoencoders/fmnist-kl-f4"])
