"""Foreign formats in and out: Stable Diffusion single files and diffusers folders, read into
a model's parts (ldmkit.model.ModelParts) and written from them."""
