"""benchmarks.sampler_curve at a tiny size: every cell, honest UNet call counts, resume."""

import json
import math

import pytest
import torch

import benchmarks.sampler_curve as sampler_curve


def test_tiny_sampler_curve_and_resume(tmp_path, monkeypatch, capsys, one_thread):
    out, png = tmp_path / "curve.json", tmp_path / "curve.png"
    argv = ["--per-class", "2", "--chunk", "1", "--samplers", "ddim", "dpmpp_2m", "--steps", "5", "10",
            "--reference-steps", "20", "--out", str(out), "--plot", str(png)]
    assert sampler_curve.main(argv) == 0
    results = json.loads(out.read_text())
    assert png.stat().st_size > 0
    cells = {(c["sampler"], c["steps"]): c for c in results["cells"]}
    assert set(cells) == {("ddim", 5), ("ddim", 10), ("dpmpp_2m", 5), ("dpmpp_2m", 10)}
    reference = results["reference"]
    assert (reference["sampler"], reference["steps"]) == ("ddpm", 20)
    for cell in [reference, *cells.values(), results["floor"]]:
        assert math.isfinite(cell["frechet_distance"]) and cell["frechet_distance"] > 0
        assert cell["fd_inf"] is None and cell["fd_inf_halves"] == [None, None]  # too few images (and features)
    for cell in [reference, *cells.values()]:
        # one UNet call per step for the 10 images of a chunk together, the unconditional and
        # conditional halves of guidance in the same call (2 x 10 rows); one call a step
        assert cell["nfe"] == cell["steps"] and cell["unet_rows_per_call"] == 2 * 10
        assert cell["fd_over_reference"] == cell["frechet_distance"] / reference["frechet_distance"]
        assert cell["fd_inf_over_reference"] is None
        assert 0 <= cell["class_agreement"] <= 1 and cell["seconds"] > 0
    assert results["floor"]["images"] == 20 and results["settings"]["guidance"] == 3.0
    cache = tmp_path / "curve-features"
    assert sorted(p.name for p in (cache / "ddim-10").iterdir()) == ["chunk0000.safetensors", "chunk0001.safetensors"]

    with pytest.raises(SystemExit, match="exists"):  # hours of work are not overwritten without --resume
        sampler_curve.main(argv)

    # --pool scores two runs' images together: 40 a cell, and the reference exactly 1 against itself
    other = tmp_path / "seed100.json"
    assert sampler_curve.main([*argv[:-4], "--seed", "100", "--samplers", "ddim", "--steps", "5", "--out", str(other),
                               "--plot", str(tmp_path / "seed100.png")]) == 0
    capsys.readouterr()
    assert sampler_curve.main(["--pool", str(out), str(other)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("2 runs pooled; reference ddpm 20 steps: 40 images")
    assert [line.split()[:3] for line in lines[2:]] == [["ddim", "5", "40"]]  # the cells both runs have

    # resume: a file missing one cell gets that cell only, from its cached chunks when they are
    # there; a cell killed half-way generates its missing chunk only; a complete file, nothing
    generated, generate = [], sampler_curve.Pipeline.generate

    def counted_generate(pipe, prompts, **kwargs):
        generated.append((kwargs["sampler"], kwargs["steps"], kwargs["seed"]))
        return generate(pipe, prompts, **kwargs)

    monkeypatch.setattr(sampler_curve.Pipeline, "generate", counted_generate)

    def drop_ddim_10():
        results["cells"] = [c for c in results["cells"] if (c["sampler"], c["steps"]) != ("ddim", 10)]
        out.write_text(json.dumps(results))

    drop_ddim_10()
    assert sampler_curve.main([*argv, "--resume"]) == 0
    assert generated == []
    (cache / "ddim-10" / "chunk0001.safetensors").unlink()
    drop_ddim_10()
    assert sampler_curve.main([*argv, "--resume"]) == 0
    assert generated == [("ddim", 10, 10)]  # chunk 1: seeds 10..19
    resumed = {(c["sampler"], c["steps"]): c for c in json.loads(out.read_text())["cells"]}
    assert set(resumed) == set(cells)
    assert resumed[("ddim", 10)]["frechet_distance"] == cells[("ddim", 10)]["frechet_distance"]  # same seeds and images
    assert sampler_curve.main([*argv, "--resume"]) == 0
    assert generated == [("ddim", 10, 10)]

    # a damaged chunk file is reported, not used; so is one made with other settings
    (cache / "ddim-10" / "chunk0001.safetensors").write_bytes(b"not a safetensors file")
    drop_ddim_10()
    with pytest.raises(SystemExit, match="not a readable chunk"):
        sampler_curve.main([*argv, "--resume"])
    other = ["--out", str(tmp_path / "other.json"), "--cache", str(cache), "--guidance", "2.0"]
    with pytest.raises(SystemExit, match="holds another chunk"):
        sampler_curve.main([*argv[:-4], "--plot", str(png), *other])


def test_frechet_scores_give_fd_inf_and_its_halves_when_the_images_are_enough():
    gen = torch.Generator().manual_seed(0)
    features, test = torch.randn(600, 8, generator=gen, dtype=torch.float64) + 0.3, torch.randn(5000, 8, generator=gen)
    scores = sampler_curve.frechet_scores(features, test, halves=300)
    assert scores["frechet_distance"] > scores["fd_inf"] > 0  # the small-sample bias is positive
    assert len(scores["fd_inf_halves"]) == 2 and all(0 < h < 2 * scores["fd_inf"] for h in scores["fd_inf_halves"])
    assert sampler_curve.frechet_scores(features[:12], test, halves=6)["fd_inf"] is None  # subsets of 6 rows, 8 wide
