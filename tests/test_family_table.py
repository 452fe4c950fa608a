"""benchmarks.family_table: a tiny GAN, the shipped diffusion model and a KL first stage's prior
side by side on a few images, every column filled (but the unconditional prior's agreement), the
grid drawn, and a rerun reusing the stored rows without generating."""

import functools
import json
from dataclasses import replace

import pytest

import benchmarks.family_table as family_table
from ldmkit.data import load_fashion_mnist
from ldmkit.family import GANGenerator, VAEGenerator
from ldmkit.family.vae import save_vae_pointer
from ldmkit.metrics import classify, load_fmnist_classifier
from ldmkit.pipelines import Pipeline
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
