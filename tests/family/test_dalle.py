"""The miniature DALL-E: position i sees tokens <= i only and predicts token i+1 from the right
vocabulary (text positions words, image positions codes, the last text position the first code);
the loss weighs text 1/8 and image 7/8 with padding left out; sampling draws each image from its
own generator (the same alone or in a batch, with or without the KV cache), top-k and top-p
restrict the draw; a tiny model overfits four pairs; a stopped and resumed run equals an
uninterrupted one; the generator refuses unknown words by name and reranks with a CLIP."""

import json

import pytest
import torch
from resume_checks import assert_resume_is_exact, logged
from torch.nn import functional as F

from ldmkit.family.dalle import CaptionVocabulary, DalleGenerator, decode_codes
from ldmkit.model.clip import CLIP
from ldmkit.nets.clip import CLIPConfig, SmallCLIP
from ldmkit.nets.dalle import (
    IMAGE_WEIGHT,
    PAD_ID,
    TEXT_WEIGHT,
    DalleConfig,
    DalleTransformer,
    dalle_loss,
    draw_codes,
    filtered_probabilities,
    sample_codes,
)
from ldmkit.train.dalle import train_dalle
from ldmkit.train.dalle_config import DALLE_PRESETS, DalleTrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = DALLE_PRESETS["tiny"]
SMALL = DalleConfig(text_vocab_size=11, text_length=5, codebook_size=16, grid=(2, 3), width=32, layers=2, heads=2)
L, N = SMALL.text_length, SMALL.image_tokens


def small_model(seed: int = 0) -> DalleTransformer:
    """A random model whose predictions are far from uniform (GPT-2's init makes them nearly so)."""
    torch.manual_seed(seed)
    model = DalleTransformer(SMALL).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape))
    return model


def pairs(batch: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Text ids (B, L) ending in padding, codes (B, h, w)."""
    gen = torch.Generator().manual_seed(seed)
    text = torch.randint(1, SMALL.text_vocab_size, (batch, L), generator=gen)
    text[:, 3:] = PAD_ID
    return text, torch.randint(SMALL.codebook_size, (batch, *SMALL.grid), generator=gen)


def by_position(model: DalleTransformer, text: torch.Tensor, codes: torch.Tensor) -> list[torch.Tensor]:
    """The logits of sequence positions 0 .. L+N-2, each (B, V) or (B, K)."""
    logits = model(text, codes)
    return [*logits.text.unbind(1), *logits.image.unbind(1)]


def with_token(text: torch.Tensor, codes: torch.Tensor, j: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The pair with sequence token j (text first, then codes row by row) changed."""
    text, codes = text.clone(), codes.clone().flatten(1)
    if j < L:
        text[:, j] = text[:, j] % (SMALL.text_vocab_size - 1) + 1
    else:
        codes[:, j - L] = (codes[:, j - L] + 1) % SMALL.codebook_size
    return text, codes.view(-1, *SMALL.grid)


def test_position_i_sees_no_later_token():
    model, (text, codes) = small_model(), pairs(2)
    before = by_position(model, text, codes)
    for j in (1, 2, L - 1, L, L + 2, L + N - 2):  # words, the last word, codes
        after = by_position(model, *with_token(text, codes, j))
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(before[:j], after[:j])), j
        assert not torch.allclose(before[j], after[j]), j  # position j reads token j


def test_text_positions_predict_words_and_image_positions_codes():
    model, (text, codes) = small_model(), pairs(2)
    logits = model(text, codes)
    assert logits.text.shape == (2, L - 1, SMALL.text_vocab_size)  # positions 0..L-2: the next word
    assert logits.image.shape == (2, N, SMALL.codebook_size)  # positions L-1..L+N-2: codes c_0..c_{N-1}
    # the last text position predicts the first code: from the text alone, over the codebook
    first = model(text, codes[:, :0]).image
    assert first.shape == (2, 1, SMALL.codebook_size) and torch.allclose(first[:, 0], logits.image[:, 0], atol=1e-6)
    other_codes = (codes + 1) % SMALL.codebook_size
    assert torch.allclose(model(text, other_codes).image[:, 0], logits.image[:, 0], atol=1e-6)
    with pytest.raises(ValueError, match=r"text must be token ids \(B, 5\)"):
        model(text[:, :3], codes)


def test_the_loss_weighs_text_one_eighth_and_image_seven_eighths():
    model, (text, codes) = small_model(), pairs(3)
    logits = model(text, codes)
    losses = dalle_loss(logits, text, codes)
    # by hand: -log p of each target, averaged over each kind's tokens; padded text targets left out
    text_nll = -logits.text.log_softmax(-1).gather(-1, text[:, 1:, None])[..., 0]     # (B, L-1)
    real = text[:, 1:] != PAD_ID
    text_loss = text_nll[real].mean()
    image_loss = -logits.image.log_softmax(-1).gather(-1, codes.flatten(1)[..., None]).mean()
    assert TEXT_WEIGHT == 1 / 8 and IMAGE_WEIGHT == 7 / 8
    assert torch.allclose(losses.text, text_loss) and torch.allclose(losses.image, image_loss)
    assert torch.allclose(losses.loss, text_loss / 8 + 7 * image_loss / 8)
    assert not torch.allclose(losses.text, text_nll.mean())  # padding would have counted


def generators(seeds) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in seeds]


def recomputed(model, text, seeds, temperature=1.0, top_k=None, top_p=None, greedy=False) -> torch.Tensor:
    """Codes drawn without a cache: the whole sequence run again for every code."""
    gens, codes = generators(seeds), torch.zeros(len(text), 0, dtype=torch.long)
    for j in range(N):
        logits = model(text, codes).image[:, j]
        probs = filtered_probabilities(logits, temperature, top_k, top_p)
        code = logits.argmax(-1) if greedy else draw_codes(probs, gens)
        codes = torch.cat([codes, code[:, None]], dim=1)
    return codes.view(-1, *SMALL.grid)


def test_an_image_is_its_generators_alone_and_the_cache_changes_nothing():
    model, (text, _) = small_model(), pairs(3)
    batch = sample_codes(model, text, generators([5, 6, 7]))
    assert batch.shape == (3, *SMALL.grid)
    assert torch.equal(sample_codes(model, text[1:2], generators([6])), batch[1:2])  # alone = in a batch
    assert torch.equal(sample_codes(model, text, generators([5, 6, 7])), batch)  # a seed, the same codes
    assert not torch.equal(sample_codes(model, text, generators([8, 9, 10])), batch)
    assert torch.equal(recomputed(model, text, [5, 6, 7]), batch)  # KV cache = full recomputation
    assert torch.equal(recomputed(model, text, [1, 2, 3], 0.7, 5, 0.9),
                       sample_codes(model, text, generators([1, 2, 3]), 0.7, 5, 0.9))


def test_top_k_and_top_p_restrict_the_draw():
    model, (text, _) = small_model(), pairs(3)
    greedy = recomputed(model, text, [0, 0, 0], greedy=True)
    assert torch.equal(sample_codes(model, text, generators([1, 2, 3]), top_k=1), greedy)
    assert torch.equal(sample_codes(model, text, generators([1, 2, 3]), top_p=1e-6), greedy)
    for top_k, top_p in ((3, None), (None, 0.5)):
        codes = sample_codes(model, text, generators([4, 5, 6]), top_k=top_k, top_p=top_p)
        logits = model(text, codes).image                                          # (B, N, K): each code's
        kept = filtered_probabilities(logits.flatten(0, 1), 1.0, top_k, top_p) > 0
        assert kept.gather(1, codes.flatten()[:, None]).all()
        assert kept.sum(1).min() >= 1 and (top_k is None or kept.sum(1).max() == top_k)
    for bad in (dict(top_k=0), dict(top_k=17), dict(top_k=2.5)):
        with pytest.raises(ValueError, match=r"top_k must be a whole number in \[1, 16\]"):
            sample_codes(model, text, generators([1, 2, 3]), **bad)
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match=r"top_p must be in \(0, 1\]"):
            sample_codes(model, text, generators([1, 2, 3]), top_p=bad)
    with pytest.raises(ValueError, match="temperature"):
        sample_codes(model, text, generators([1, 2, 3]), temperature=0)
    with pytest.raises(ValueError, match="one generator per image"):
        sample_codes(model, text, generators([1]))


def test_a_tiny_model_learns_four_pairs_by_heart():
    config = DalleConfig(text_vocab_size=8, text_length=4, codebook_size=32, grid=(4, 4), width=64, layers=2, heads=4)
    text = torch.tensor([[1, 2, 3, 0], [1, 4, 3, 0], [1, 2, 5, 0], [6, 7, 0, 0]])
    codes = torch.randint(32, (4, 4, 4), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    model = DalleTransformer(config)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    for _ in range(80):
        losses = dalle_loss(model(text, codes), text, codes)
        opt.zero_grad()
        losses.loss.backward()
        opt.step()
    assert losses.image.item() < 0.05, losses.image.item()
    assert torch.equal(sample_codes(model, text, generators(range(4)), top_k=1), codes)  # greedy: each its own


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    torch.set_num_threads(1)
    run = tmp_path_factory.mktemp("dalle-run")
    return run, train_dalle(TINY, run, progress=False)


def test_resume_after_a_stop_equals_an_uninterrupted_run(whole, tmp_path):
    run, summary = whole
    assert_resume_is_exact(train_dalle, TINY, run, tmp_path)
    records = logged(run / "log.jsonl", ("seconds_per_step",))
    assert [r["step"] for r in records if "eval_image_loss" in r] == [2, 4]
    for name in ("loss.png", "samples/step_000002.png", "samples/step_000004.png"):
        assert (run / name).is_file(), name
    meta = json.loads((run / "model" / "config.json").read_text())
    assert meta["kind"] == "dalle" and meta["autoencoder"] == "models/autoencoders/fmnist-vq-f4"
    assert meta["dataset"] == "fashion-mnist" and meta["training"]["steps"] == 4
    assert meta["dalle"]["grid"] == [8, 8] and meta["dalle"]["codebook_size"] == 512
    assert meta["dalle"]["text_vocab_size"] == len(meta["vocabulary"]["tokens"]) == summary["vocabulary_size"]


def test_the_generator_seeds_each_image_and_refuses_unknown_words(whole):
    run, _ = whole
    dalle = DalleGenerator.from_folder(run / "model")
    prompts = ["a photo of a bag", "a photo of a coat"]
    codes = dalle.generate(prompts, num_images=2, seed=3, output="codes", top_k=50)
    assert codes.shape == (4, 8, 8)
    alone = dalle.generate("a photo of a coat", seed=3 + 1 * 2 + 1, output="codes", top_k=50)  # prompt 1, image 1
    assert torch.equal(alone[0], codes[3])
    images = dalle.generate(prompts, num_images=1, seed=3, output="pil")
    assert len(images) == 2 and images[0].size == (32, 32)
    assert dalle.generate(prompts[0], output="tensor").shape == (1, 1, 32, 32)
    with pytest.raises(ValueError, match=r"never saw.*\['zebra', 'cat'\].*has \d+ tokens"):
        dalle.generate("a photo of a zebra cat")
    with pytest.raises(ValueError, match="pass clip="):
        dalle.generate(prompts[0], rerank=2)
    description = dalle.describe()
    assert description["kind"] == "dalle" and description["parameters"] > 0 and dalle.to("cpu") is dalle
    half = dalle.to(dtype=torch.bfloat16).generate(prompts[0], output="tensor")  # nothing assumes float32
    assert half.dtype == torch.float32 and half.isfinite().all() and dalle.describe()["dtype"] == "bfloat16"
    vocabulary = CaptionVocabulary.from_captions(["a photo of a bag", "a photo of a sneaker"])
    with pytest.raises(ValueError, match=r"\['cat'\].*7 tokens"):  # [PAD] ##er a bag of photo sneak
        vocabulary.encode(["a photo of a cat"], 8)
    with pytest.raises(ValueError, match=r"\['sneak'\]"):  # its one piece is known, the word is not
        vocabulary.encode(["a sneak"], 8)
    assert vocabulary.encode(["A Bag"], 4).tolist() == [[vocabulary.ids["a"], vocabulary.ids["bag"], 0, 0]]


def test_reranking_keeps_the_candidate_clip_prefers(whole):
    run, _ = whole
    dalle = DalleGenerator.from_folder(run / "model")
    torch.manual_seed(0)
    clip = CLIP.from_small_clip(SmallCLIP(CLIPConfig(patch_size=8, image_width=32, image_layers=1, image_heads=2,
                                                     text_width=32, text_layers=1, text_heads=2, embed_dim=16)))
    prompt = "a photo of a bag"
    best = dalle.generate(prompt, seed=7, rerank=2, clip=clip, output="codes")[0]
    text = dalle.vocabulary.encode([prompt], dalle.config.text_length).repeat(2, 1)
    candidates = sample_codes(dalle.model, text, generators([7, 7 + 1_000_003]))  # rerank's candidates 0 and 1
    scores = clip.scores(decode_codes(dalle.autoencoder, candidates), [prompt, prompt])
    assert torch.equal(best, candidates[int(scores.argmax())])


def test_bad_runs_are_refused_and_the_command_trains_one(tmp_path, capsys):
    with pytest.raises(ValueError, match="unknown dataset"):
        DalleTrainConfig(dataset="mnist")
    with pytest.raises(ValueError, match="heads"):
        DalleTrainConfig(width=30, heads=4)
    with pytest.raises(ValueError, match="VQ one"):
        train_dalle(DalleTrainConfig(autoencoder="models/autoencoders/fmnist-kl-f4"), tmp_path / "kl")
    with pytest.raises(FileNotFoundError, match="train-autoencoder"):
        train_dalle(DalleTrainConfig(autoencoder=str(tmp_path / "no-vq-here")), tmp_path / "none")
    from ldmkit.apps.cli import main

    assert main(["train-dalle", "--preset", "tiny", "--out", str(tmp_path / "cli"), "--steps", "1"]) == 0
    assert "done:" in capsys.readouterr().out and (tmp_path / "cli" / "model" / "model.safetensors").is_file()


def test_top_k_mask_keeps_exactly_k_and_temperature_sharpens():
    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0]])
    assert (filtered_probabilities(logits, top_k=2) > 0).tolist() == [[True, True, False, False]]
    cold, warm = filtered_probabilities(logits, 0.5), filtered_probabilities(logits, 2.0)
    assert cold[0, 0] > F.softmax(logits, -1)[0, 0] > warm[0, 0]
