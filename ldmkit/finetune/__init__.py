"""Fine-tuning a trained latent diffusion model to a new subject or style.

Four methods, each a small set of trainable weights beside a frozen model (DreamBooth excepted),
saved in the file layouts other Stable Diffusion tools read:
- lora.py: low-rank adapters W + (alpha / r) B A on the attention projections (optionally the
  feed-forward and convolution layers); kohya and diffusers (PEFT) layouts; merge / unmerge;
- textual_inversion.py: new token embeddings in the text encoder, everything else frozen;
  A1111 (.pt / .safetensors) and diffusers (learned_embeds) layouts;
- hypernetwork.py: small MLPs on the keys' and values' context in cross-attention, as in the
  SD web UIs (A1111 layout), applied with a strength;
- dreambooth.py: the UNet itself trained on a few images with a rare identifier and the prior-
  preservation loss on class images the model generates first.
train.py is the loop all four share; concepts.py the new concepts taught to the shapes model
and how often a generation shows them.
"""
