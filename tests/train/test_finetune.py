"""The fine-tuning loop on the shipped shapes model: each method trains, saves a file that
reloads to the same generations, resumes exactly; the concept data and its measurement; the
command line; bad input."""

import json

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from ldmkit import Pipeline
from ldmkit.apps.adapters import apply_adapters, split_option
from ldmkit.apps.cli import main
from ldmkit.apps.concepts import PALETTE, concept_accuracy, concept_caption, write_concept_images
from ldmkit.data import shapes
from ldmkit.train.finetune import finetune
from ldmkit.train.finetune_config import FinetuneConfig
from ldmkit.utils.images import from_pil, read_png_metadata

pytestmark = pytest.mark.usefixtures("one_thread")
PROMPT = "a red ring in the top left"
SMALL = dict(steps=3, batch_size=4, checkpoint_every=2)


@pytest.fixture(scope="module")
def teaching(tmp_path_factory):
    return write_concept_images(tmp_path_factory.mktemp("ring"), "ring", count=6)


def test_teaching_images_and_the_measurement_agree(teaching):
    """Rendered rings are read as rings, the known shapes never; captions name the concept by
    the chosen word; a new colour is read with the wider palette."""
    pngs = sorted(teaching.glob("*.png"))
    assert len(pngs) == 6
    assert (teaching / "000.txt").read_text().strip() == "a red ring in the top left"
    for png in pngs:
        assert shapes.read_attributes(from_pil(Image.open(png), 3), rings=True)[1] == "ring"
    for k, combo in enumerate(shapes.COMBINATIONS):
        assert shapes.read_attributes(shapes.render(*combo, gen=torch.Generator().manual_seed(k)), rings=True) == combo
    purple = shapes.render("purple", "square", "top right", gen=torch.Generator().manual_seed(0))
    assert shapes.read_attributes(purple, PALETTE)[0] == "purple" and shapes.read_attributes(purple)[0] is None
    assert concept_caption(("blue", "ring", "top right"), "ring", "<ring>") == "a blue <ring> in the top right"
    assert concept_caption(("orange", "square", "top right"), "orange").startswith("an orange square")
    assert concept_caption(("yellow", "triangle", "top left"), "thing", "<thing>") == "a <thing> in the top left"
    with pytest.raises(ValueError, match="unknown concept 'star'"):
        write_concept_images(teaching, "star")


def test_the_shipped_model_does_not_know_rings():
    """The baseline the fine-tuning results are measured against: rings are drawn as circles."""
    result = concept_accuracy(Pipeline.from_pretrained("shapes"), "ring", per_combination=1, steps=8)
    assert result["images"] == 16 and result["shows_concept"] == 0 and result["colour"] >= 0.9


def _generate(pipe):
    prompt = PROMPT.replace("ring", "<ring>") if "<ring>" in pipe.text_encoder.tokenizer.get_vocab() else PROMPT
    return pipe.generate(prompt, seed=0, steps=4, output="tensor")


@pytest.mark.parametrize("method", ["lora", "hypernetwork", "textual-inversion"])
def test_each_method_trains_and_its_file_reloads(method, teaching, tmp_path):
    extra = {"token": "<ring>", "initializer": "circle"} if method == "textual-inversion" else {}
    pipe = Pipeline.from_pretrained("shapes")
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    summary = finetune(pipe, FinetuneConfig(method=method, data=str(teaching), **SMALL, **extra), tmp_path,
                       progress=False)
    assert all(torch.equal(v, pipe.unet.state_dict()[k]) for k, v in before.items())  # the UNet stays frozen
    tuned = _generate(pipe)
    fresh = Pipeline.from_pretrained("shapes")
    plain = _generate(fresh) if method != "textual-inversion" else None
    option = {"lora": "loras", "hypernetwork": "hypernetworks", "textual-inversion": "embeddings"}[method]
    saved = summary["saved"] + (":<ring>" if method == "textual-inversion" else "")
    apply_adapters(fresh, **{option: [saved]})
    assert torch.equal(_generate(fresh), tuned)  # the file carries all that was learned
    if plain is not None:
        assert not torch.equal(plain, tuned)
    assert (tmp_path / "samples.png").is_file() and (tmp_path / "loss.png").is_file()


def test_dreambooth_trains_the_unet_with_its_prior(teaching, tmp_path):
    config = FinetuneConfig(method="dreambooth", data=str(teaching), class_prompts=("a red circle in the top left",),
                            class_images=4, **SMALL)
    pipe = Pipeline.from_pretrained("shapes")
    summary = finetune(pipe, config, tmp_path, progress=False)
    assert (tmp_path / "class_images.png").is_file()
    reloaded = Pipeline.from_pretrained(summary["saved"])
    assert torch.equal(_generate(reloaded), _generate(pipe))
    assert not torch.equal(_generate(reloaded), _generate(Pipeline.from_pretrained("shapes")))


def test_a_stopped_run_resumes_exactly(teaching, tmp_path):
    config = FinetuneConfig(method="lora", data=str(teaching), steps=4, batch_size=4, checkpoint_every=2)
    finetune(Pipeline.from_pretrained("shapes"), config, tmp_path / "split", progress=False, max_steps=2)
    finetune(Pipeline.from_pretrained("shapes"), config, tmp_path / "split", progress=False)
    finetune(Pipeline.from_pretrained("shapes"), config, tmp_path / "whole", progress=False)
    split, whole = (load_file(tmp_path / run / "lora.safetensors") for run in ("split", "whole"))
    assert split.keys() == whole.keys() and all(torch.equal(split[k], whole[k]) for k in whole)


def test_bad_input_is_named(teaching, tmp_path):
    with pytest.raises(ValueError, match="unknown fine-tuning method 'lokr'"):
        FinetuneConfig(method="lokr", data=".")
    with pytest.raises(ValueError, match="needs class_prompts"):
        FinetuneConfig(method="dreambooth", data=".")
    pipe = Pipeline.from_pretrained("shapes")
    with pytest.raises(ValueError, match="needs an initializer"):
        finetune(pipe, FinetuneConfig(method="textual-inversion", data=str(teaching), steps=1), tmp_path,
                 progress=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no readable images in"):
        finetune(pipe, FinetuneConfig(method="lora", data=str(empty), steps=1), tmp_path / "run", progress=False)
    with pytest.raises(ValueError, match="text-conditioned model"):
        finetune(Pipeline.from_pretrained("fashion-mnist-x4"), FinetuneConfig(method="lora", data=str(teaching)),
                 tmp_path)
    with pytest.raises(ValueError, match="SCALE with a number"):
        apply_adapters(pipe, loras=["missing.safetensors:strong"])
    with pytest.raises(FileNotFoundError):
        apply_adapters(pipe, loras=["missing.safetensors"])
    assert split_option("a/b.safetensors:0.5", "1") == ("a/b.safetensors", "0.5")
    assert split_option("a/b.safetensors", "1") == ("a/b.safetensors", "1")


def test_command_line(teaching, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["finetune", "lora", "--data", str(teaching), "--out", str(run), "--steps", "2",
                 "--set", "batch_size=2", "--set", "rank=2"]) == 0
    assert "lora.safetensors" in capsys.readouterr().out
    out = tmp_path / "images"
    assert main(["generate", PROMPT, "--model", "shapes", "--num-images", "1", "--steps", "2", "--out", str(out),
                 "--lora", f"{run / 'lora.safetensors'}:0.5"]) == 0
    [png] = out.glob("00000_*.png")
    assert read_png_metadata(png)["loras"] == json.dumps(["lora.safetensors:0.5"])
    assert main(["finetune", "lora", "--data", str(teaching), "--out", str(run), "--set", "rank"]) == 2
    assert "--set takes key=value" in capsys.readouterr().err
