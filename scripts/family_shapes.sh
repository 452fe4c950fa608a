#!/usr/bin/env bash
# The generative family on shapes (docs/family.md, the shapes table): the runs the shapes rows need
# that are not shipped yet, one after another on ONE thread (the other core stays free), each
# skipped when shipped and resumed exactly when stopped, so the queue may span sessions: run this
# again and it goes on. A finished model is copied into models/ at once, so that it outlives runs/.
# Usage: bash scripts/family_shapes.sh [RUNS_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-runs}"
L=.venv/bin/ldmkit
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
mkdir -p "$out"

ship() {  # ship RUN_MODEL_FOLDER MODELS_FOLDER: the trained folder, copied whole
  rm -rf "$2.partial" && cp -r "$1" "$2.partial" && mv "$2.partial" "$2"
}

# DALL-E's first stage: the shapes recipe as a VQ (512 codes, 8 x 8 a 32 x 32 image)
vq=models/autoencoders/shapes-vq-f4
if [ ! -d "$vq" ]; then
  [ -f "$out/shapes-vq-f4/metrics.json" ] || $L train-autoencoder --preset shapes-vq-f4 --out "$out/shapes-vq-f4"
  ship "$out/shapes-vq-f4/model" "$vq"
fi
# DALL-E: the transformer over [caption tokens, codes], the four held-out combinations never seen
if [ ! -d models/shapes-dalle ]; then
  [ -d "$out/dalle-shapes/model" ] || $L train-dalle --preset shapes --out "$out/dalle-shapes"
  ship "$out/dalle-shapes/model" models/shapes-dalle
fi
# the GAN and the VAE (compositional class embeddings: held-out combinations still have one)
for kind in gan vae; do
  if [ ! -d "models/shapes-$kind" ]; then
    [ -d "$out/$kind-shapes/model" ] || $L "train-$kind" --preset shapes --out "$out/$kind-shapes"
    ship "$out/$kind-shapes/model" "models/shapes-$kind"
  fi
done
# GLIDE: the 16x16 pixel-space base and its x2 upsampler, each shipped into models/shapes-glide as soon
# as it is trained, then the cascade's config.json; noise level 50 and the euler_a upsampler (the lowest
# errors of benchmarks.upsampler_consistency's three samplers)
if [ ! -f models/shapes-glide/config.json ]; then
  if [ ! -d models/shapes-glide/base ]; then
    [ -d "$out/glide-shapes/model" ] || $L train --preset shapes-glide --out "$out/glide-shapes"
    mkdir -p models/shapes-glide && ship "$out/glide-shapes/model" models/shapes-glide/base
  fi
  if [ ! -d models/shapes-glide/upsampler ]; then
    [ -d "$out/glide-x2-shapes/model" ] || $L train --preset shapes-glide-x2 --out "$out/glide-x2-shapes"
    ship "$out/glide-x2-shapes/model" models/shapes-glide/upsampler
  fi
  .venv/bin/python -c "from ldmkit.family import save_cascade
save_cascade('models/shapes-glide', 'base', 'upsampler', sampling={'noise_level': 50, 'upsampler_sampler': 'euler_a'},
             extra={'sampling_chosen_by': 'docs/results/upsampler-consistency-shapes-glide-v.json (euler_a: the lowest '
                    'consistency and reconstruction errors of three samplers)'})"
fi
# unCLIP: the prior (caption embedding -> clip-small image embedding) and the decoder on shapes-kl-f4
if [ ! -d models/shapes-unclip ]; then
  [ -d "$out/unclip-prior-shapes/model" ] || $L train-unclip-prior --preset shapes --out "$out/unclip-prior-shapes"
  [ -d "$out/unclip-decoder-shapes/model" ] || $L train --preset shapes-unclip-decoder \
    --out "$out/unclip-decoder-shapes"
  rm -rf models/shapes-unclip.partial && mkdir -p models/shapes-unclip.partial
  cp -r "$out/unclip-prior-shapes/model" models/shapes-unclip.partial/prior
  cp -r "$out/unclip-decoder-shapes/model" models/shapes-unclip.partial/decoder
  # named inside the folder; the guidance the sweep chose (docs/results/family-unclip-shapes-guidance-sweep.json)
  $L make-unclip models/shapes-unclip.partial --prior prior --decoder decoder --prior-guidance 4 --prior-steps 25 \
    --decoder-guidance 3 --steps 20 --sampler dpmpp_2m
  mv models/shapes-unclip.partial models/shapes-unclip
fi
