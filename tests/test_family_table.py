"""benchmarks.family_table: a tiny GAN, the shipped diffusion model and a KL first stage's prior
side by side on a few images, every column filled (but the unconditional prior's agreement), the
grid drawn, and a rerun reusing the stored rows without generating; the shapes table likewise on a
tiny shapes model, split into seen and held-out combinations by the model's own holdout."""

import functools
import json
from dataclasses import replace
from types import SimpleNamespace

import pytest
from PIL import Image

import benchmarks.family_shapes as family_shapes
import benchmarks.family_table as family_table
from ldmkit.data import load_fashion_mnist, shapes
from ldmkit.family import GANGenerator, VAEGenerator
from ldmkit.family.vae import save_vae_pointer
from ldmkit.metrics import classify, load_fmnist_classifier
from ldmkit.pipelines import Pipeline
from ldmkit.train.diffusion import train_diffusion
from ldmkit.train.diffusion_config import DIFFUSION_PRESETS, DiffusionDataConfig
from ldmkit.train.gan import train_gan
from ldmkit.train.gan_config import GAN_PRESETS

pytestmark = pytest.mark.usefixtures("one_thread")

ROW_FIELDS = {"model", "key", "kind", "parameters", "text_encoder", "sampling", "training",
              "seconds_per_image_batched", "images", "frechet_distance", "fd_inf", "fd_inf_halves", "precision",
              "recall", "class_agreement", "class_agreement_by_class", "clip_score", "measured_on", "samples_png"}


def count_generate_calls(monkeypatch) -> list:
    calls = []
    for cls in (Pipeline, GANGenerator, VAEGenerator):
        original = cls.generate

        @functools.wraps(original)  # the table reads a family model's sampling defaults off the signature
        def counted(self, *args, _original=original, **kwargs):
            calls.append(self.name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(cls, "generate", counted)
    return calls


def test_the_table_scores_a_gan_and_a_diffusion_model_and_reuses_its_rows(tmp_path, monkeypatch):
    train_gan(replace(GAN_PRESETS["tiny"], steps=1), tmp_path / "gan", progress=False)
    gan = str(tmp_path / "gan" / "model")
    prior = str(save_vae_pointer(tmp_path / "kl-prior", "models/autoencoders/fmnist-kl-f4", "fashion-mnist"))
    out, grid = tmp_path / "family.json", tmp_path / "family.png"
    argv = ["--models", "fashion-mnist-f4", gan, prior, "--per-class", "2", "--steps", "2", "--out", str(out),
            "--grid", str(grid), "--markdown"]
    calls = count_generate_calls(monkeypatch)
    # 1,000 test images stand in for the 10,000: the classifier's pass over all of them is most of
    # the run's time, and what is tested here is the table, not the metric
    test_features = classify(load_fmnist_classifier(), load_fashion_mnist("test", limit=1000)[0])[0]
    monkeypatch.setattr(family_table, "shipped_test_features", lambda device: test_features)
    assert family_table.main(argv) == 0
    assert len(calls) == 3
    results = json.loads(out.read_text())
    diffusion, generator, first_stage = results["rows"]
    for row in (diffusion, generator):
        assert ROW_FIELDS <= row.keys()
        assert row["images"] == 20 and row["frechet_distance"] > 0 and 0 <= row["class_agreement"] <= 1
        assert 0 <= row["precision"] <= 1 and 0 <= row["recall"] <= 1 and row["seconds_per_image_batched"] > 0
        assert row["parameters"]["network"] > 0 and row["training"]["minutes"] > 0
    assert diffusion["kind"] == "latent diffusion (unet)" and diffusion["parameters"]["first_stage_decoder"] > 0
    assert diffusion["sampling"] == {"steps": 2, "sampler": "dpmpp_2m", "guidance": 3.0}
    assert diffusion["key"] == {"folder": "models/fashion-mnist-f4", "weights": diffusion["key"]["weights"],
                                "per_class": 2, "seed": 0, "steps": 2, "clip": diffusion["key"]["clip"]}
    assert generator["kind"] == "GAN" and generator["parameters"]["first_stage_decoder"] is None
    assert generator["sampling"] == {"truncation": "inf"} and generator["key"]["steps"] is None
    assert first_stage["images"] == 20 and first_stage["class_agreement"] is None and first_stage["clip_score"] is None
    assert first_stage["parameters"]["network"] is None and first_stage["parameters"]["first_stage_decoder"] > 0
    assert first_stage["kind"].startswith("VAE (KL first stage") and first_stage["sampling"] == {"temperature": 1.0}
    floor = results["floor"]
    assert floor["images"] == 20 and floor["frechet_distance"] > 0 and floor["as_evaluate"]["frechet_distance"] > 0
    assert grid.stat().st_size > 0

    assert family_table.main(argv) == 0  # the same settings: both rows read back, nothing generated
    assert len(calls) == 3 and json.loads(out.read_text())["rows"] == results["rows"]

    assert family_table.main(argv[:1] + argv[2:3] + argv[4:] + ["--seed", "1"]) == 0  # another seed: the GAN again
    assert calls[3:] == ["model"] and json.loads(out.read_text())["rows"][0]["key"]["seed"] == 1

    train_gan(replace(GAN_PRESETS["tiny"], steps=2), tmp_path / "gan", progress=False)  # retrained: measured again
    before = len(calls)  # the run's sample grids called generate too
    assert family_table.main(argv[:1] + argv[2:3] + argv[4:] + ["--seed", "1"]) == 0
    assert calls[before:] == ["model"]


def test_a_rows_key_hashes_the_parts_a_family_folder_names(tmp_path):
    """A cascade (or unCLIP) folder holds config.json alone: its key changes with its parts' weights,
    and a plain folder's key is the hash of its own config.json and weights, as before."""
    import hashlib

    for part in ("base", "upsampler"):
        (tmp_path / part).mkdir()
        (tmp_path / part / "config.json").write_text("{}")
        (tmp_path / part / "model.safetensors").write_bytes(b"weights of " + part.encode())
    (tmp_path / "config.json").write_text(json.dumps({"kind": "cascade", "base": "base", "upsampler": "upsampler"}))
    before = family_table.fingerprint(str(tmp_path))
    (tmp_path / "upsampler" / "model.safetensors").write_bytes(b"retrained")
    assert family_table.fingerprint(str(tmp_path)) != before
    plain = tmp_path / "base"
    expected = hashlib.sha256(b"{}" + b"weights of base").hexdigest()[:16]
    assert family_table.fingerprint(str(plain)) == expected


def test_the_shapes_table_splits_by_the_models_holdout_and_reuses_its_rows(tmp_path, monkeypatch):
    holdout = (("red", "circle", "top left"), ("blue", "square", "bottom left"))  # not the default four
    config = replace(DIFFUSION_PRESETS["tiny"], autoencoder="models/autoencoders/shapes-kl-f4", steps=1,
                     data=DiffusionDataConfig(dataset="shapes", limit=16, holdout=holdout), sample_every=100)
    train_diffusion(config, tmp_path / "run", progress=False)
    model = str(tmp_path / "run" / "model")
    out, grid = tmp_path / "shapes.json", tmp_path / "shapes.png"
    argv = ["--dataset", "shapes", "--models", model, "--per-combination", "2", "--steps", "2", "--out", str(out),
            "--grid", str(grid), "--markdown"]
    calls = count_generate_calls(monkeypatch)
    monkeypatch.setattr(family_shapes, "FD_PER_COMBINATION", 4)  # 192 renders for FD, not 10,080: a test of the table
    assert family_table.main(argv) == 0
    assert len(calls) == 1
    results = json.loads(out.read_text())
    (row,) = results["rows"]
    assert row["key"] == {"folder": model, "weights": row["key"]["weights"], "per_combination": 2, "seed": 0,
                          "steps": 2, "clip": "clip-small"}
    assert row["images"] == 96 and row["frechet_distance"] > 0 and 0 <= row["precision"] <= 1
    assert 0 <= row["recall"] <= 1 and row["clip_score"] is not None and row["parameters"]["network"] > 0
    assert row["holdout"] == [list(c) for c in holdout]
    seen, held_out = row["attribute_accuracy"]["seen"], row["attribute_accuracy"]["held_out"]
    assert seen["images"] == 92 and held_out["images"] == 4 and 0 <= seen["all"] <= 1 and 0 <= held_out["all"] <= 1
    floor = results["floor"]  # renders: the attribute reader reads every one right, split by the default holdout
    assert floor["images"] == 96 and floor["holdout"] == [list(c) for c in shapes.COMBINATIONS
                                                         if c in shapes.DEFAULT_HOLDOUT]
    assert floor["attribute_accuracy"]["seen"]["all"] == floor["attribute_accuracy"]["held_out"]["all"] == 1
    assert floor["reference_floor"]["frechet_distance"] >= 0 and results["settings"]["images"] == 96
    # the renders through the latent rows' autoencoder: close to them, not equal, and farther from the FD set
    first = floor["first_stage"]
    assert first["autoencoder"] == family_shapes.FIRST_STAGE and 0 < first["mse"] < 0.05
    assert first["frechet_distance"] > floor["frechet_distance"] and 0 <= first["precision"] <= 1
    with Image.open(grid) as image:
        assert image.mode == "RGB" and image.width == 200 + 12 * 32 * 3

    assert family_table.main(argv) == 0  # the same settings: read back, nothing generated
    assert len(calls) == 1 and json.loads(out.read_text())["rows"] == results["rows"]
    with pytest.raises(SystemExit, match="trained on 'fashion-mnist'"):
        family_table.main([*argv[:3], "fashion-mnist-f4", *argv[4:]])


def test_shapes_accuracy_is_split_by_the_holdout_given():
    """Renders with the held-out combinations' images blanked: all seen ones read right, no held-out one."""
    images = family_shapes.render_set(2, 0)  # (96, 3, 32, 32), combination-major
    holdout = {("green", "circle", "top right"), ("yellow", "square", "bottom right")}
    for k, combo in enumerate(shapes.COMBINATIONS):
        if combo in holdout:
            images[2 * k : 2 * k + 2] = -1
    split = family_shapes.split_accuracy(images, 2, holdout)
    assert split["seen"] == {"images": 92, "colour": 1.0, "shape": 1.0, "quadrant": 1.0, "all": 1.0}
    assert split["held_out"]["images"] == 4 and split["held_out"]["all"] == 0
    assert family_shapes.split_accuracy(images, 2, set())["held_out"] is None


def test_a_family_models_holdout_is_read_where_its_trainer_records_it():
    """A diffusion model's train.data.holdout, the family trainers' train.shapes_holdout, and for a
    model of parts (unCLIP, a cascade) the union of its parts'."""
    from ldmkit.apps.evaluate import model_holdout

    a, b = ("red", "circle", "top left"), ("blue", "square", "bottom left")
    assert model_holdout(SimpleNamespace(meta={"train": {"data": {"holdout": [list(a)]}}})) == {a}
    assert model_holdout(SimpleNamespace(kind="dalle", meta={"train": {"shapes_holdout": [list(b)]}})) == {b}
    unclip = SimpleNamespace(kind="unclip", meta={}, prior=SimpleNamespace(meta={"train": {"shapes_holdout": [a]}}),
                             decoder=SimpleNamespace(meta={"train": {"data": {"holdout": [b]}}}))
    assert model_holdout(unclip) == {a, b}
    assert model_holdout(SimpleNamespace(meta={})) == set()
