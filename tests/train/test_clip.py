"""The small CLIP: its loss is symmetric and its temperature capped at 100, a tiny one learns to
match a few pairs (with either text tower), batches never hold a caption twice, a run stopped and
resumed equals an uninterrupted one, its folder loads as ldmkit.CLIP, a transformers CLIPModel
folder loads into the same interface with transformers' own numbers, and the CLIP score is
torchmetrics' definition."""

import json
import math
from dataclasses import replace

import pytest
import torch
from PIL import Image
from resume_checks import assert_resume_is_exact

import ldmkit
from ldmkit.data import shapes
from ldmkit.metrics.clip_score import clip_score, clip_scores
from ldmkit.model.clip import CLIP
from ldmkit.nets.clip import CLIPConfig, SmallCLIP, contrastive_loss
from ldmkit.storage import CheckpointError
from ldmkit.train.clip import distinct_captions, train_clip
from ldmkit.train.clip_config import CLIP_PRESETS, TINY_CLIP, CLIPDataConfig
from ldmkit.utils.images import to_pil

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = CLIP_PRESETS["tiny"]


def unit_rows(n, d, seed):
    return torch.nn.functional.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_the_loss_is_symmetric_and_is_infonce_both_ways():
    images, texts, scale = unit_rows(6, 8, 0), unit_rows(6, 8, 1), torch.tensor(math.log(20.0))
    loss = contrastive_loss(images, texts, scale)
    assert torch.allclose(loss, contrastive_loss(texts, images, scale))  # swapping the towers changes nothing
    order = torch.randperm(6, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(loss, contrastive_loss(images[order], texts[order], scale))  # nor reordering the pairs
    logits = 20 * images @ texts.T
    by_hand = -(logits.log_softmax(1).diag().mean() + logits.log_softmax(0).diag().mean()) / 2
    assert torch.allclose(loss, by_hand)
    matched = contrastive_loss(images, images, torch.tensor(math.log(100.0)))
    assert matched < loss  # pairs that agree cost less


def test_the_temperature_starts_at_0_07_and_is_capped_at_100():
    model = SmallCLIP(TINY_CLIP)
    assert math.isclose(model.logit_scale.exp().item(), 1 / 0.07, rel_tol=1e-5)
    images, texts = unit_rows(4, 16, 3), unit_rows(4, 16, 4)
    at_cap = contrastive_loss(images, texts, torch.tensor(math.log(100.0)))
    assert torch.equal(contrastive_loss(images, texts, torch.tensor(math.log(1000.0))), at_cap)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(1000.0))
    model.clamp_logit_scale_()
    assert math.isclose(model.logit_scale.exp().item(), 100.0, rel_tol=1e-5)
    with pytest.raises(ValueError, match="max_logit_scale"):
        CLIPConfig(init_temperature=0.001)


def test_batches_keep_the_first_image_of_each_caption():
    ids = torch.tensor([3, 1, 3, 2, 1, 0, 2])
    assert distinct_captions(ids, 10).tolist() == [0, 1, 3, 5]
    assert distinct_captions(ids, 2).tolist() == [0, 1]


PAIRS = [("red", "circle", "top left"), ("green", "square", "bottom right"), ("blue", "triangle", "top right"),
         ("yellow", "circle", "bottom left")]


@pytest.mark.parametrize("text", ["transformer", "minilm"])
def test_a_tiny_clip_learns_to_match_a_few_pairs(text):
    torch.manual_seed(0)
    model = SmallCLIP(replace(TINY_CLIP, text=text, text_width=64))
    clip = CLIP.from_small_clip(model)
    gen = torch.Generator().manual_seed(0)
    pixels = torch.stack([shapes.render(*c, gen=gen) for c in PAIRS])              # (4, 3, 32, 32)
    captions = [shapes.caption(*c) for c in PAIRS]
    with torch.no_grad():
        tokens, mask = clip.text_inputs(captions)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(150):
        loss = contrastive_loss(model.encode_image(pixels), model.encode_text(tokens, mask), model.logit_scale)
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.clamp_logit_scale_()
        losses.append(loss.item())
    assert losses[-1] < 0.05 * losses[0]
    similarity = clip.encode_image([to_pil(x) for x in pixels]) @ clip.encode_text(captions).T   # (4, 4)
    assert similarity.argmax(1).tolist() == [0, 1, 2, 3] and similarity.argmax(0).tolist() == [0, 1, 2, 3]


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    torch.set_num_threads(1)
    run = tmp_path_factory.mktemp("clip-run")
    return run, train_clip(TINY, run, progress=False)


def test_resume_after_a_stop_equals_an_uninterrupted_run(whole, tmp_path):
    assert_resume_is_exact(train_clip, TINY, whole[0], tmp_path)


def test_the_run_folder_and_the_saved_clip(whole):
    run, summary = whole
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4] and all(2 <= r["pairs"] <= TINY.batch_size for r in records)
    assert all(0 <= r[k] <= 1 for r in records if r["step"] in (2, 4) for k in ("shapes_top1", "fashion_zero_shot"))
    assert (run / "training.png").is_file() and summary["saved"] == str(run / "model")
    for folder in (run / "model", run / "checkpoints" / "step-00000002"):
        clip = ldmkit.CLIP.from_pretrained(folder)
        images = clip.encode_image([Image.new("RGB", (40, 48), (255, 0, 0)), Image.new("L", (32, 32), 90)])
        texts = clip.encode_text(["a photo of a bag", "a red circle in the top left", "a photo of a bag"])
        assert images.shape == (2, 16) and texts.shape == (3, 16)
        assert torch.allclose(images.norm(dim=1), torch.ones(2)) and torch.allclose(texts.norm(dim=1), torch.ones(3))
        assert torch.equal(texts[0], texts[2])


def test_bad_clip_folders_and_configs_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="no CLIP at"):
        CLIP.from_pretrained(tmp_path / "nothing")
    (tmp_path / "config.json").write_text('{"type": "autoencoder"}')
    with pytest.raises(CheckpointError, match="holds no CLIP"):
        CLIP.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="data.path"):
        CLIPDataConfig(datasets=("folder",))
    with pytest.raises(ValueError, match="distinct datasets"):
        CLIPDataConfig(datasets=("shapes", "mnist"))


def test_a_transformers_clip_folder_loads_into_the_same_interface(tmp_path):
    from transformers import CLIPConfig as HFConfig
    from transformers import CLIPModel

    from benchmarks.sd_models import BOS, EOS, VOCAB, write_tokenizer

    torch.manual_seed(0)
    config = HFConfig(
        text_config=dict(vocab_size=len(VOCAB), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=16, bos_token_id=BOS, eos_token_id=EOS,
                         pad_token_id=EOS),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=24, patch_size=8),
        projection_dim=16)
    reference = CLIPModel(config).eval()
    reference.save_pretrained(tmp_path)
    write_tokenizer(tmp_path, max_length=16)
    processor = image_processor(size={"shortest_edge": 24}, crop_size={"height": 24, "width": 24})
    processor.save_pretrained(tmp_path)
    clip = CLIP.from_pretrained(tmp_path)
    prompts = ["a lower photo of a cat", "newer"]
    ids, mask = clip.text_inputs(prompts)
    pooled = lambda output: output if isinstance(output, torch.Tensor) else output.pooler_output
    with torch.no_grad():
        expected = pooled(reference.get_text_features(input_ids=ids, attention_mask=mask.long()))
        torch.testing.assert_close(clip.encode_text(prompts), torch.nn.functional.normalize(expected, dim=-1))
        image = Image.new("RGB", (30, 24), (200, 40, 10))  # one colour: no resampling differences
        pixels = processor(images=[image], return_tensors="pt")["pixel_values"]  # transformers' preparation
        assert pixels.shape == (1, 3, 24, 24)
        torch.testing.assert_close(clip.prepare(torch.tensor([200, 40, 10]).view(1, 3, 1, 1).expand(1, 3, 24, 30)
                                                / 127.5 - 1), pixels, atol=1e-5, rtol=1e-5)
        expected = torch.nn.functional.normalize(pooled(reference.get_image_features(pixel_values=pixels)), dim=-1)
        torch.testing.assert_close(clip.encode_image([image]), expected, atol=1e-5, rtol=1e-4)


def image_processor(**settings):
    """transformers' CLIP image preparation, in its PIL version (the default one needs torchvision)."""
    try:
        from transformers import CLIPImageProcessorPil as Processor
    except ImportError:  # transformers < 5
        from transformers import CLIPImageProcessor as Processor
    return Processor(**settings)


def test_the_clip_score_is_torchmetrics_definition():
    images, texts = unit_rows(5, 8, 5), unit_rows(5, 8, 6)
    cosines = (images * texts).sum(1)
    assert torch.allclose(clip_scores(images * 3, texts), 100 * cosines)  # any norm: cosines
    assert math.isclose(clip_score(images, texts), max(100 * cosines.mean().item(), 0.0), rel_tol=1e-6)
    assert clip_score(images, -images) == 0.0  # the mean is clamped at 0
    with pytest.raises(ValueError, match="one caption embedding per image"):
        clip_scores(images, texts[:3])


def test_the_command_trains_one(tmp_path, capsys):
    from ldmkit.apps.cli import main

    assert main(["train-clip", "--preset", "tiny", "--out", str(tmp_path), "--steps", "2"]) == 0
    assert "done:" in capsys.readouterr().out and (tmp_path / "model" / "model.safetensors").is_file()


def test_a_folder_of_captioned_images_trains_one(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    gen = torch.Generator().manual_seed(0)
    for k, combo in enumerate(PAIRS):
        to_pil(shapes.render(*combo, size=48, gen=gen)).save(folder / f"{k}.png")
        (folder / f"{k}.txt").write_text(shapes.caption(*combo))
    config = replace(TINY, data=CLIPDataConfig(datasets=("folder",), path=str(folder)), batch_size=4)
    summary = train_clip(config, tmp_path / "run", progress=False)
    assert summary["captions"] == 4 and summary["images"] == 4 and "shapes_top1" not in summary
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()
