"""Adapters scoped to one request: a LoRA, an embedding and a hypernetwork put on a shared
pipeline for a `with` block leave it exactly as it was; two requests, one with adapters and one
without, interleaved, each get what they would get alone."""

import pytest
import torch
from safetensors.torch import save_file

from ldmkit import Pipeline
from ldmkit.finetune.hypernetwork import Hypernetwork, save_hypernetwork
from ldmkit.finetune.lora import LoRANetwork
from ldmkit.finetune.lora_formats import save_lora

pytestmark = pytest.mark.usefixtures("one_thread")
TOKEN = "<my-thing>"


@pytest.fixture(scope="module")
def pipe():
    return Pipeline.from_pretrained("fashion-mnist-f4")


@pytest.fixture(scope="module")
def files(pipe, tmp_path_factory):
    folder = tmp_path_factory.mktemp("adapters")
    network = LoRANetwork.create({"unet": pipe.net}, rank=4)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _, adapter in network.items():  # trained-looking: B != 0
            adapter.up.weight.copy_(0.2 * torch.randn(adapter.up.weight.shape, generator=g))
    lora = save_lora(network, folder / "lora.safetensors")
    embedding = folder / "thing.safetensors"
    save_file({TOKEN: torch.randn(1, 384, generator=g)}, str(embedding))  # diffusers' layout
    hypernetwork = Hypernetwork.create([384], layer_structure=(1, 2, 1))
    with torch.no_grad():
        for p in hypernetwork.parameters():
            p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return {"loras": [(lora, 0.8)], "embeddings": [(embedding, None)],
            "hypernetworks": [(save_hypernetwork(hypernetwork, folder / "hyper.safetensors"), 1.0)]}


def _latents(pipe, prompt):
    return pipe.generate(prompt, steps=3, seed=5, output="latent")


def test_interleaved_requests_each_get_their_own_adapters(pipe, files):
    state = {key: value.clone() for key, value in pipe.net.state_dict().items()}
    vocabulary = len(pipe.text_encoder.tokenizer)
    plain = _latents(pipe, f"a photo of a {TOKEN}")
    with pipe.adapters(**files) as tokens:
        assert tokens == [TOKEN]
        adapted = _latents(pipe, f"a photo of a {TOKEN}")
    assert not torch.allclose(adapted, plain, atol=1e-3)  # the adapters did something
    for _ in range(2):  # A, B, A, B: neither leaks into the other
        assert torch.equal(_latents(pipe, f"a photo of a {TOKEN}"), plain)
        with pipe.adapters(**files):
            assert torch.equal(_latents(pipe, f"a photo of a {TOKEN}"), adapted)
    assert len(pipe.text_encoder.tokenizer) == vocabulary and TOKEN not in pipe.text_encoder.tokenizer.get_vocab()
    assert all(torch.equal(value, state[key]) for key, value in pipe.net.state_dict().items())
    assert not any(module._forward_hooks or module._forward_pre_hooks for module in pipe.net.modules())


def test_adapters_come_off_when_the_request_fails(pipe, files):
    plain = _latents(pipe, "a photo of a bag")
    with pytest.raises(ValueError, match="steps must be"):
        with pipe.adapters(**files):
            pipe.generate("a photo of a bag", steps=0)
    assert torch.equal(_latents(pipe, "a photo of a bag"), plain)
