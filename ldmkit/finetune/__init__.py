"""Adapters: small sets of weights beside a frozen model, in the file layouts other Stable
Diffusion tools read and write.

- lora.py: low-rank adapters W + (alpha / r) B A on the layer groups a network names
  (attention, feed-forward, convolutions); merge / unmerge; lora_formats.py: kohya and diffusers
  (PEFT) layouts;
- textual_inversion.py: new token embeddings in the text encoder; A1111 (.pt / .safetensors)
  and diffusers (learned_embeds) layouts;
- hypernetwork.py: small MLPs on the keys' and values' context in cross-attention, as in the SD
  web UIs (A1111 layout), applied with a strength;
- scoped.py: adapters for one request, taken off afterwards (a shared model stays as it was).

Training them (and DreamBooth, which trains the network itself with prior preservation) is
ldmkit.train.finetune; the `ldmkit finetune` command is in ldmkit.apps.
"""
