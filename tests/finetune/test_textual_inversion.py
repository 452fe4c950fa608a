"""Textual inversion on the packaged MiniLM and a tiny CLIP: new tokens, training that moves
nothing but the new rows, and the embedding files of the A1111 web UI and diffusers."""

import copy
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from transformers import CLIPTextConfig, CLIPTextModel

from benchmarks.sd_models import VOCAB, write_tokenizer
from ldmkit.autoencoders import Autoencoder, AutoencoderConfig
from ldmkit.conditioning import CLIPTextEncoder, TextEncoder, load_clip_tokenizer
from ldmkit.conditioning.text import expand_tokens
from ldmkit.finetune.textual_inversion import (
    TextualInversion,
    add_tokens,
    apply_embedding,
    input_embedding,
    load_embedding,
    save_embedding,
    vector_tokens,
)
from ldmkit.model import LatentDiffusionConfig, ModelParts
from ldmkit.nets import UNet
from ldmkit.nets.config import UNET_PRESETS
from ldmkit.pipelines import Pipeline
from ldmkit.storage import CheckpointError

pytestmark = pytest.mark.usefixtures("one_thread")

PLAIN = ["a lower photo of a cat", ""]  # prompts without any new token


@pytest.fixture(scope="module")
def minilm_base():
    return TextEncoder.minilm(16)


@pytest.fixture(scope="module")
def clip_base(tmp_path_factory):
    torch.manual_seed(0)
    config = CLIPTextConfig(vocab_size=len(VOCAB), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                            num_attention_heads=1, max_position_embeddings=16, projection_dim=64,
                            bos_token_id=len(VOCAB) - 4, eos_token_id=len(VOCAB) - 3)
    tokenizer = load_clip_tokenizer(write_tokenizer(tmp_path_factory.mktemp("clip-tokenizer"), max_length=16))
    return CLIPTextEncoder(CLIPTextModel(config), tokenizer)


@pytest.fixture(params=["minilm", "clip"])
def encoder(request, minilm_base, clip_base):
    return copy.deepcopy(minilm_base if request.param == "minilm" else clip_base)  # tests add tokens


def known_word(encoder) -> str:
    """A word that is one token in the encoder's vocabulary."""
    return "low" if isinstance(encoder, CLIPTextEncoder) else "cat"


def width(encoder) -> int:
    return input_embedding(encoder).embedding_dim


def embedding_key(encoder) -> str:
    names = ("word_embeddings.weight", "token_embedding.weight")  # BERT's, CLIP's
    return next(k for k in encoder.model.state_dict() if k.endswith(names))


def tiny_pipeline(encoder) -> Pipeline:
    unet = replace(UNET_PRESETS["tiny"], context_dim=encoder.width)
    kind = "clip" if isinstance(encoder, CLIPTextEncoder) else "minilm"
    first_stage = Autoencoder(AutoencoderConfig(base_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                                                norm_groups=8, mid_attention=False))
    config = LatentDiffusionConfig(net=unet, text_encoder=kind, image_size=16)
    return Pipeline(ModelParts(UNet(unet), first_stage, config, encoder))


def test_encode_is_forward_with_gradients(encoder):
    ours, reference = encoder.encode(PLAIN), encoder(PLAIN)
    assert torch.equal(ours[0], reference[0]) and not reference[0].requires_grad
    assert (ours[1] is None and reference[1] is None) or torch.equal(ours[1], reference[1])


@pytest.mark.parametrize("num_vectors", [1, 3])
def test_training_moves_only_the_new_rows(encoder, num_vectors):
    before = {k: v.clone() for k, v in encoder.model.state_dict().items()}
    key, rows = embedding_key(encoder), input_embedding(encoder).num_embeddings
    plain_before = encoder(PLAIN)[0]
    ti = TextualInversion(encoder, "<my-token>", known_word(encoder), num_vectors=num_vectors)
    start = before[key][encoder.tokenizer.convert_tokens_to_ids(encoder.tokenizer.tokenize(known_word(encoder)))[0]]
    assert ti.token_ids == list(range(rows, rows + num_vectors))
    assert ti.vectors.shape == (num_vectors, width(encoder)) and torch.equal(ti.vectors, start.expand(num_vectors, -1))
    assert [p.shape for p in ti.parameters()] == [(num_vectors, width(encoder))]

    captions = ["a photo of <my-token>", "<my-token> lower"]
    target = torch.randn(encoder(captions)[0].shape, generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.AdamW(ti.parameters(), lr=0.05, weight_decay=0.5)  # decay would shrink any row it got
    losses = []
    for _ in range(3):
        loss = F.mse_loss(ti.conditioning(captions)[0], target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] and (ti.vectors != start).any(dim=1).all()

    after = encoder.model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items() if k != key)
    assert torch.equal(after[key][:rows], before[key])
    assert torch.equal(after[key][rows:], start.expand(num_vectors, -1))  # the hook trains, not the matrix
    assert all(p.grad is None and not p.requires_grad for p in encoder.model.parameters())
    assert torch.equal(encoder(PLAIN)[0], plain_before)

    hooked = encoder(captions)[0]
    ti.merge()  # the learned vectors into the matrix; reads the same without the hook
    weight = input_embedding(encoder).weight
    assert torch.equal(weight[rows:], ti.vectors.detach()) and torch.equal(weight[:rows], before[key])
    assert torch.equal(encoder(captions)[0], hooked) and torch.equal(encoder(PLAIN)[0], plain_before)
    with pytest.raises(RuntimeError, match="merged"):
        ti.conditioning(captions)


def test_a_multi_vector_token_stands_for_all_its_tokens(encoder):
    vectors = torch.randn(3, width(encoder))
    ids = add_tokens(encoder, "<Cat-Toy>", vectors)
    assert vector_tokens("<Cat-Toy>", 3) == ["<Cat-Toy>", "<Cat-Toy>_1", "<Cat-Toy>_2"]
    assert torch.equal(input_embedding(encoder).weight[ids], vectors)
    prompt = "a <cat-toy> photo"  # the tokenizers lowercase, and so does the expansion's match
    if isinstance(encoder, CLIPTextEncoder):
        tokenized = encoder.tokenize([prompt])[0].tolist()
    else:
        tokenized = encoder.tokenizer(expand_tokens([prompt], encoder.token_expansions)).input_ids[0]
    assert [i for i in tokenized if i in ids] == ids
    expansions = encoder.token_expansions.copy()
    encoder.token_expansions.clear()  # else the first of the spelled-out three would expand too
    spelled_out = encoder(["a <Cat-Toy> <Cat-Toy>_1 <Cat-Toy>_2 photo"])[0]
    encoder.token_expansions.update(expansions)
    assert torch.equal(encoder([prompt])[0], spelled_out)
    assert not torch.equal(encoder(["a <cat-toy>_1 photo"])[0], spelled_out)  # one of the three, written out

    single = add_tokens(encoder, "<one>", torch.randn(width(encoder)))
    assert "<one>" not in encoder.token_expansions and len(single) == 1


def test_known_tokens_and_bad_initializers_are_refused(encoder):
    rows, vocabulary = input_embedding(encoder).num_embeddings, len(encoder.tokenizer)
    zeros = torch.zeros(width(encoder))
    word = known_word(encoder)
    with pytest.raises(ValueError, match=f"'{word}' is already in the tokenizer's vocabulary.*'<{word}>'"):
        add_tokens(encoder, word, zeros)
    add_tokens(encoder, "<my-token>", zeros)
    for again in ("<my-token>", "<MY-TOKEN>"):
        with pytest.raises(ValueError, match=f"'{again}' is already.*'{again[:-1]}-2>'"):
            add_tokens(encoder, again, zeros)
    add_tokens(encoder, "<z>_1", zeros)
    with pytest.raises(ValueError, match="'<z>_1' is already"):
        add_tokens(encoder, "<z>", torch.zeros(2, width(encoder)))  # its second token would be <z>_1
    with pytest.raises(ValueError, match="without spaces"):
        add_tokens(encoder, "my token", zeros)
    with pytest.raises(ValueError, match=f"768 wide.*in {width(encoder)} dimensions"):
        add_tokens(encoder, "<wide>", torch.zeros(768))
    with pytest.raises(ValueError, match=r"initializer 'a photo' is \d+ tokens \['a"):
        TextualInversion(encoder, "<new>", "a photo")
    assert input_embedding(encoder).num_embeddings == rows + 2 and len(encoder.tokenizer) == vocabulary + 2


@pytest.mark.parametrize("layout, name", [("a1111", "emb.pt"), ("a1111", "emb.safetensors"),
                                          ("diffusers", "learned_embeds.safetensors")])
@pytest.mark.parametrize("dim", [384, 64])  # MiniLM's width, the tiny CLIP's
def test_files_round_trip(tmp_path, layout, name, dim):
    for count in (1, 2):
        vectors = torch.randn(count, dim)
        path = save_embedding(tmp_path / name, "<my-token>", vectors, layout, step=500)
        token, back = load_embedding(path)
        assert token == "<my-token>" and torch.equal(back, vectors)
    if name.endswith(".pt"):  # the web UI's fields, readable without unpickling anything else
        with open(path, "rb") as f:
            data = torch.load(f, weights_only=True)
        assert set(data) == {"string_to_token", "string_to_param", "name", "step", "sd_checkpoint",
                             "sd_checkpoint_name"}
        assert data["string_to_param"]["*"].shape == (2, dim) and data["step"] == 500
    else:
        assert list(load_file(path)) == (["emb_params"] if layout == "a1111" else ["<my-token>"])


def test_other_files_of_the_same_layouts_are_read(tmp_path):
    vector = torch.randn(64)
    save_file({"<old>": vector}, tmp_path / "flat.safetensors")  # diffusers' (dim,) vectors
    torch.save({"<old>": vector}, tmp_path / "learned_embeds.bin")  # diffusers' older files
    save_file({"emb_params": vector[None]}, tmp_path / "kohya.safetensors")  # no name inside
    assert load_embedding(tmp_path / "flat.safetensors")[0] == "<old>"
    assert load_embedding(tmp_path / "learned_embeds.bin")[0] == "<old>"
    assert torch.equal(load_embedding(tmp_path / "learned_embeds.bin")[1], vector[None])
    assert load_embedding(tmp_path / "kohya.safetensors")[0] is None
    with pytest.raises(ValueError, match="layout is written as .pt or .safetensors"):
        save_embedding(tmp_path / "emb.bin", "<t>", vector)
    with pytest.raises(ValueError, match="unknown layout 'kohya'"):
        save_embedding(tmp_path / "emb.safetensors", "<t>", vector, layout="kohya")


def test_apply_embedding_teaches_the_pipeline(encoder, tmp_path):
    pipe = tiny_pipeline(encoder)
    plain = pipe.encode_prompts(["a my-style photo"])["context"]
    vectors = torch.randn(2, width(encoder))
    save_embedding(tmp_path / "my-style.pt", "<name-inside>", vectors)
    assert apply_embedding(pipe, tmp_path / "my-style.pt") == "my-style"  # A1111: the file's stem names it
    assert encoder.token_expansions == {"my-style": "my-style my-style_1"}
    assert torch.equal(input_embedding(encoder).weight[-2:], vectors.to(input_embedding(encoder).weight))
    save_embedding(tmp_path / "learned_embeds.safetensors", "<cat-toy>", vectors[:1], "diffusers")
    assert apply_embedding(pipe, tmp_path / "learned_embeds.safetensors") == "<cat-toy>"  # diffusers: the token inside
    assert apply_embedding(pipe, tmp_path / "learned_embeds.safetensors", token="<toy-2>") == "<toy-2>"
    assert torch.equal(pipe.encode_prompts(["<cat-toy>"])["context"], pipe.encode_prompts(["<toy-2>"])["context"])
    assert not torch.equal(pipe.encode_prompts(["a my-style photo"])["context"], plain)  # nothing cached
    z = pipe.generate("a photo of <cat-toy>", steps=2, seed=0, output="latent")
    assert torch.isfinite(z).all()

    save_embedding(tmp_path / "sd15.pt", "<sd15>", torch.randn(1, 768))
    with pytest.raises(ValueError, match=f"768-wide vectors but .* in {width(encoder)} dimensions"):
        apply_embedding(pipe, tmp_path / "sd15.pt")
    with pytest.raises(ValueError, match="'<cat-toy>' is already in the tokenizer's vocabulary"):
        apply_embedding(pipe, tmp_path / "learned_embeds.safetensors")


def test_bad_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt does not exist"):
        load_embedding(tmp_path / "nope.pt")
    with pytest.raises(FileNotFoundError, match="is a folder"):
        load_embedding(tmp_path)
    save_file({"clip_l": torch.randn(1, 768), "clip_g": torch.randn(1, 1280)}, tmp_path / "xl.safetensors")
    with pytest.raises(ValueError, match="SDXL embedding.*not supported"):
        load_embedding(tmp_path / "xl.safetensors")
    save_file({"a": torch.randn(2), "b": torch.randn(2)}, tmp_path / "lora.safetensors")
    with pytest.raises(ValueError, match=r"not a textual inversion embedding.*\['a', 'b'\]"):
        load_embedding(tmp_path / "lora.safetensors")


class _CreatesFileWhenUnpickled:
    """Stands in for code hidden in a pickle: unpickling it would create `marker`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def test_a_pt_needing_arbitrary_unpickling_is_refused(tmp_path):
    marker = tmp_path / "ran"
    trap = {"string_to_param": {"*": torch.randn(1, 64)}, "name": "trap", "extra": _CreatesFileWhenUnpickled(marker)}
    torch.save(trap, tmp_path / "trap.pt")
    with pytest.raises(CheckpointError, match="refused.*Nothing in it was run"):
        load_embedding(tmp_path / "trap.pt")
    assert not marker.exists()
