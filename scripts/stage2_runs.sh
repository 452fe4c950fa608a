#!/usr/bin/env bash
# The runs behind models/fashion-mnist-f4, models/shapes and docs/stage2.md, one after another
# (never two torch processes at once on a 2-core machine): about 75 minutes on 2 CPU cores.
# Usage: bash scripts/stage2_runs.sh [RUNS_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-runs}"
L=.venv/bin/ldmkit

# the shapes first stage (RGB, f = 4), then shipped as models/autoencoders/shapes-kl-f4
[ -f "$out/shapes-kl-f4/metrics.json" ] || $L train-autoencoder --preset shapes-kl-f4 --out "$out/shapes-kl-f4"
# the metric network of `ldmkit evaluate`, shipped as ldmkit/metrics/weights/fmnist-classifier
[ -f "$out/fmnist-classifier/config.json" ] || $L train-classifier --out "$out/fmnist-classifier"
# (evaluate reads the shipped copy: cp -r "$out/fmnist-classifier" ldmkit/metrics/weights/ to use a new one)
# the two diffusion models, shipped as models/fashion-mnist-f4 and models/shapes
[ -d "$out/fashion-mnist/model" ] || $L train --preset fashion-mnist --out "$out/fashion-mnist"
[ -d "$out/shapes/model" ] || $L train --preset shapes --out "$out/shapes"

mkdir -p docs/results
$L evaluate --model "$out/fashion-mnist/model" --guidance 1 1.5 2 3 --out docs/results/fashion-mnist-guidance.json
$L evaluate --model "$out/shapes/model" --guidance 1 3 5 --out docs/results/shapes-guidance.json

# a sharper decoder for the same latents (encoder frozen, PatchGAN + feature matching), then the
# shipped fashion-mnist folder decodes with it
[ -f "$out/fmnist-kl-f4-gan-decoder/metrics.json" ] || $L train-autoencoder --preset fmnist-kl-f4-gan-decoder --out "$out/fmnist-kl-f4-gan-decoder"
.venv/bin/python scripts/first_stage_distance.py models/autoencoders/fmnist-kl-f4 "$out/fmnist-kl-f4-gan-decoder/model"
$L evaluate --model "$out/fashion-mnist/model" --autoencoder "$out/fmnist-kl-f4-gan-decoder/model" --guidance 1.5 2 3 \
  --out docs/results/fashion-mnist-gan-decoder-guidance.json
.venv/bin/python scripts/swap_decoder.py "$out/fashion-mnist/model" "$out/fmnist-kl-f4-gan-decoder/model" models/fashion-mnist-f4
