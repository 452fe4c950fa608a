"""The packaged MiniLM text encoder."""

import pytest
import torch

from ldmkit.conditioning import TextEncoder


@pytest.fixture(scope="module")
def encoder():
    return TextEncoder.minilm()


def sentence_embedding(encoder, prompts):
    states, mask = encoder(prompts)  # mean over real tokens, as sentence-transformers pools
    pooled = (states * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    return torch.nn.functional.normalize(pooled, dim=-1)


def test_states_and_mask(encoder):
    states, mask = encoder(["a red circle in the top left", ""])
    assert states.shape == (2, 32, 384) and encoder.width == 384
    assert mask[0].sum() == 9 and mask[1].sum() == 2  # [CLS] words [SEP]; "" is [CLS][SEP]
    assert torch.isfinite(states).all()


def test_pretrained_weights_carry_meaning(encoder):
    """Random weights would not rank these: the real model puts paraphrases closest."""
    e = sentence_embedding(
        encoder, ["a photo of a sneaker", "a picture of a running shoe", "a red triangle in the corner"]
    )
    assert (e[0] @ e[1]).item() > (e[0] @ e[2]).item() + 0.2


def test_bad_input(encoder, tmp_path):
    with pytest.raises(ValueError, match="list of strings"):
        encoder("a photo")
    with pytest.raises(FileNotFoundError, match="not a transformers model folder"):
        TextEncoder.from_folder(tmp_path)
