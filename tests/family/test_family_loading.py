"""The generative family behind the common front door: Pipeline.from_pretrained opens a GAN or a
DALL-E folder as its own generator, and `ldmkit generate` writes their PNGs with their settings,
refusing the settings that belong to the other kind of model."""

from dataclasses import replace

import pytest

from ldmkit.apps.cli import main
from ldmkit.family import DalleGenerator, GANGenerator, family_kind
from ldmkit.pipelines import Pipeline
from ldmkit.train.dalle import train_dalle
from ldmkit.train.dalle_config import DALLE_PRESETS
from ldmkit.train.gan import train_gan
from ldmkit.train.gan_config import GAN_PRESETS
from ldmkit.utils.images import read_png_metadata

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def gan_folder(tmp_path_factory):
    run = tmp_path_factory.mktemp("gan")
    train_gan(replace(GAN_PRESETS["tiny"], steps=1), run, progress=False)
    return run / "model"


def test_from_pretrained_opens_a_gan_and_generate_writes_its_settings(gan_folder, tmp_path, capsys):
    assert family_kind(gan_folder) == "gan" and family_kind(tmp_path) is None
    assert isinstance(Pipeline.from_pretrained(gan_folder), GANGenerator)
    out = tmp_path / "out"
    assert main(["generate", "a photo of a bag", "--model", str(gan_folder), "--num-images", "2", "--seed", "5",
                 "--truncation", "1.5", "--out", str(out)]) == 0
    first = read_png_metadata(out / "00000_seed5.png")
    assert (first["kind"], first["prompt"], first["truncation"], first["seed"]) == ("gan", "a photo of a bag",
                                                                                     "1.5", "5")
    assert (out / "00001_seed6.png").is_file() and (out / "grid_00000.png").is_file()


@pytest.mark.parametrize("extra, says", [(["--steps", "5"], "steps"), (["--top-k", "3"], "top_k"),
                                         (["--rerank", "2"], "rerank")])
def test_a_gan_refuses_the_settings_of_other_models(gan_folder, tmp_path, capsys, extra, says):
    assert main(["generate", "bag", "--model", str(gan_folder), "--out", str(tmp_path), *extra]) == 2
    error = capsys.readouterr().err
    assert "gan model" in error and says in error and not list(tmp_path.glob("*.png"))


def test_a_diffusion_model_refuses_family_settings(tmp_path, capsys):
    assert main(["generate", "bag", "--model", "fashion-mnist", "--truncation", "1", "--out", str(tmp_path)]) == 2
    assert "truncation" in capsys.readouterr().err


def test_a_dalle_folder_samples_with_top_k_through_the_command(tmp_path):
    train_dalle(replace(DALLE_PRESETS["tiny"], steps=1), tmp_path / "run", progress=False)
    folder = tmp_path / "run" / "model"
    assert isinstance(Pipeline.from_pretrained(folder), DalleGenerator)
    assert main(["generate", "a photo of a bag", "--model", str(folder), "--top-k", "4", "--temperature", "0.9",
                 "--out", str(tmp_path / "out")]) == 0
    text = read_png_metadata(tmp_path / "out" / "00000_seed0.png")
    assert (text["kind"], text["top_k"], text["temperature"]) == ("dalle", "4", "0.9")
