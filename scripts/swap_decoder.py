"""Write a model folder that decodes with another first stage of the same latent space.

    .venv/bin/python scripts/swap_decoder.py runs/fashion-mnist/model runs/fmnist-kl-f4-gan-decoder/model \
        models/fashion-mnist-f4
"""

import sys

from ldmkit import Pipeline

STANDARD = {"type", "name", "model", "autoencoder", "defaults", "class_names", "text_encoder"}

if __name__ == "__main__":
    model, decoder, out = sys.argv[1:4]
    pipe = Pipeline.from_pretrained(model, autoencoder=decoder)
    extra = {k: v for k, v in pipe.meta.items() if k not in STANDARD}
    pipe.save_pretrained(out, extra={**extra, "first_stage_from": decoder})
    print(f"wrote {out}: {model} decoding with {decoder}")
