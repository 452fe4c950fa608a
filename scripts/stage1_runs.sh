#!/usr/bin/env bash
# The stage-1 runs behind docs/autoencoders.md, one after another (never two torch processes
# at once on a 2-core machine). Each run folder holds log.jsonl, loss.png, reconstructions.png,
# metrics.json and model/. Usage: bash scripts/stage1_runs.sh [RUNS_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-runs}"
train() { name=$1; shift; [ -f "$out/$name/metrics.json" ] || .venv/bin/ldmkit train-autoencoder --out "$out/$name" "$@"; }

train fmnist-kl-f4 --preset fmnist-kl-f4                       # the KL target run (4500 steps)
train fmnist-vq-f4 --preset fmnist-vq-f4 --steps 3000          # the VQ target run
# the effect of the GAN and perceptual terms, on a shorter schedule
train ablation-l1 --preset fmnist-kl-f4 --steps 1200
train ablation-gan --preset fmnist-kl-f4 --steps 1200 --set loss.gan_weight=0.5 --set loss.disc_start=400 \
  --set loss.perceptual=none
train ablation-gan-fm --preset fmnist-kl-f4 --steps 1200 --set loss.gan_weight=0.5 --set loss.disc_start=400 \
  --set loss.perceptual=disc_features
train photos-kl-f4 --preset photos-kl-f4 --steps 1000         # real RGB photos
