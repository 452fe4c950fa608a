"""The unCLIP diffusion prior: the token layout [text states, text embedding, time, noised image
embedding, prior token] with causal attention (no slot reads a later one, padded text is read by no
other slot) and its output the prior token's; diffusers' PriorTransformer with the same weights
gives the same output; the normalisation round-trips; captions are dropped at the configured rate;
a tiny prior learns four text -> image embedding pairs; a seed samples the same embedding alone or in
a batch; a stopped and resumed run equals an uninterrupted one; bad inputs are refused clearly."""

import functools
import json

import pytest
import torch
from resume_checks import assert_resume_is_exact, logged
from torch.nn import functional as F

from ldmkit.diffusion import ScheduleConfig, diffusion_loss, make_schedule
from ldmkit.family.unclip_prior import TextCondition, UnclipPrior, sample_image_embeddings
from ldmkit.nets.unclip_prior import PriorConfig, PriorTransformer, prior_attention_mask
from ldmkit.train.unclip_prior import drop_captions, embedding_statistics, evaluate_saved_prior, train_unclip_prior
from ldmkit.train.unclip_prior_config import PRIOR_PRESETS, UnclipPriorTrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = PRIOR_PRESETS["tiny"]
SMALL = PriorConfig(embedding_dim=12, text_state_dim=12, text_length=5, width=16, layers=2, heads=2)
L, E = SMALL.text_length, SMALL.embedding_dim
SCHED = make_schedule(ScheduleConfig(kind="cosine"))


def random_prior(config: PriorConfig = SMALL, seed: int = 0) -> PriorTransformer:
    """Random weights everywhere (the zero-initialised output projection too) and statistics."""
    torch.manual_seed(seed)
    prior = PriorTransformer(config).eval()
    with torch.no_grad():
        for p in prior.parameters():
            p.normal_(0, 0.3)
    prior.set_statistics(torch.randn(config.embedding_dim), torch.rand(config.embedding_dim) + 0.5)
    return prior


def conditions(batch: int, config: PriorConfig = SMALL, seed: int = 0) -> TextCondition:
    """Random token states with the last two text slots padded, and unit text embeddings."""
    gen = torch.Generator().manual_seed(seed)
    mask = torch.ones(batch, config.text_length, dtype=torch.bool)
    mask[:, -2:] = False
    return TextCondition(torch.randn(batch, config.text_length, config.text_state_dim, generator=gen), mask,
                         F.normalize(torch.randn(batch, config.embedding_dim, generator=gen), dim=1))


def last_states(prior: PriorTransformer, x_t, condition: TextCondition) -> torch.Tensor:
    """The last block's output at every slot (B, N, D)."""
    seen = []
    hook = prior.transformer_blocks[-1].register_forward_hook(lambda module, args, out: seen.append(out))
    prior(x_t, 500, **condition.inputs())
    hook.remove()
    return seen[0]


def test_network_shapes_and_the_causal_mask():
    prior, condition = random_prior(), conditions(3)
    x_t = torch.randn(3, E)
    assert prior(x_t, torch.tensor([0, 10, 999]), **condition.inputs()).shape == (3, E)
    mask = prior_attention_mask(condition.mask)
    assert mask.shape == (3, 1, L + 4, L + 4)
    full = prior_attention_mask(torch.ones(1, L, dtype=torch.bool))[0, 0]
    assert torch.equal(full, torch.ones(L + 4, L + 4, dtype=torch.bool).tril())  # j <= i, nothing else hidden
    assert mask[0, 0, -1, : L - 2].all() and mask[0, 0, -1, L:].all()  # the prior token sees every real slot
    padded_keys = mask[0, 0, :, L - 2 : L]  # (N, 2): who reads the two padded slots
    assert padded_keys.nonzero().tolist() == [[L - 2, 0], [L - 1, 1]]  # each itself only

    before = last_states(prior, x_t, condition)
    noised = last_states(prior, x_t + 1, condition)  # slot L + 2
    assert torch.allclose(before[:, : L + 2], noised[:, : L + 2], atol=1e-6)  # earlier slots never see it
    assert not torch.allclose(before[:, L + 2 :], noised[:, L + 2 :])  # it and the prior token do
    text = TextCondition(condition.states, condition.mask, condition.embedding.flip(0))  # slot L
    changed = last_states(prior, x_t, text)
    assert torch.allclose(before[:, :L], changed[:, :L], atol=1e-6) and not torch.allclose(before[:, -1],
                                                                                           changed[:, -1])
    padded = condition.states.clone()
    padded[:, -1] += 5  # a padded token: no other slot reads it
    states = last_states(prior, x_t, TextCondition(padded, condition.mask, condition.embedding))
    assert torch.allclose(torch.cat([before[:, : L - 1], before[:, L:]], 1),
                          torch.cat([states[:, : L - 1], states[:, L:]], 1), atol=1e-6)


def test_diffusers_prior_transformer_with_the_same_weights_agrees():
    from diffusers import PriorTransformer as DiffusersPrior

    torch.manual_seed(0)
    reference = DiffusersPrior(num_attention_heads=2, attention_head_dim=8, num_layers=2, embedding_dim=E,
                               num_embeddings=L).eval()
    with torch.no_grad():
        for p in reference.parameters():
            p.normal_(0, 0.3)
    ours = PriorTransformer(SMALL).eval()
    ours.load_state_dict(reference.state_dict())  # every name and shape the same
    condition, x_t, t = conditions(3), torch.randn(3, E), torch.tensor([3, 500, 999])
    condition.mask[2, 1:] = False  # a caption of one token
    expected = reference(x_t, t, proj_embedding=condition.embedding, encoder_hidden_states=condition.states,
                         attention_mask=condition.mask).predicted_image_embedding
    with torch.no_grad():
        assert torch.allclose(ours(x_t, t, **condition.inputs()), expected, atol=1e-5)
        assert torch.allclose(ours.unnormalise(x_t), reference.post_process_latents(x_t), atol=1e-6)


def test_normalisation_round_trips_and_standardises_the_training_set():
    embeddings = F.normalize(torch.randn(500, E) + torch.linspace(-1, 1, E), dim=1)
    prior = PriorTransformer(SMALL)
    prior.set_statistics(*embedding_statistics(embeddings))
    x0 = prior.normalise(embeddings)
    assert torch.allclose(x0.mean(0), torch.zeros(E), atol=1e-5) and torch.allclose(x0.std(0), torch.ones(E),
                                                                                     atol=1e-4)
    assert torch.allclose(prior.unnormalise(x0), embeddings, atol=1e-6)
    assert torch.equal(PriorTransformer(SMALL).normalise(embeddings), embeddings)  # before statistics: identity
    with pytest.raises(ValueError, match="std must be finite and > 0"):
        prior.set_statistics(torch.zeros(E), torch.zeros(E))
    with pytest.raises(ValueError, match=r"statistics must be \(12,\)"):
        prior.set_statistics(torch.zeros(E + 1), torch.ones(E + 1))
    with pytest.raises(ValueError, match="at least 2"):
        embedding_statistics(embeddings[:1])


def test_captions_are_dropped_to_the_null_at_the_rate():
    rows = torch.arange(200_000) % 10
    dropped = drop_captions(rows, 10, 0.1, torch.Generator().manual_seed(0))
    null = dropped == 10
    assert abs(null.float().mean().item() - 0.1) < 0.003
    assert torch.equal(dropped[~null], rows[~null])  # the others keep their caption
    assert not (drop_captions(rows, 10, 0.0, torch.Generator()) == 10).any()


def test_a_tiny_prior_learns_four_text_to_image_pairs():
    torch.manual_seed(0)
    config = PriorConfig(embedding_dim=16, text_state_dim=8, text_length=4, width=64, layers=2, heads=4)
    gen, K = torch.Generator().manual_seed(0), 4
    table = conditions(K + 1, config)  # row K: the null caption
    targets = F.normalize(torch.randn(K, 16, generator=gen), dim=1)
    prior = PriorTransformer(config)
    prior.set_statistics(*embedding_statistics(targets))
    opt = torch.optim.AdamW(prior.parameters(), lr=2e-3)
    for _ in range(150):
        pairs = torch.randint(K, (32,), generator=gen)
        rows = drop_captions(pairs, K, 0.1, gen)
        loss = diffusion_loss(functools.partial(prior, **table.rows(rows).inputs()), prior.normalise(targets[pairs]),
                              SCHED, "x0", gen=gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    prior.eval()
    rows = torch.arange(K).repeat_interleave(3)
    for guidance in (1.0, 3.0):
        generators = [torch.Generator().manual_seed(k) for k in range(len(rows))]
        sampled = sample_image_embeddings(prior, SCHED, table.rows(rows), table.rows(slice(K, None)), generators,
                                          steps=10, guidance=guidance)
        assert F.cosine_similarity(sampled, targets[rows], dim=1).min() > 0.95, guidance


def test_a_seed_samples_the_same_embedding_alone_or_in_a_batch():
    prior, condition, null = random_prior(), conditions(3), conditions(1, seed=1)
    seeds = [5, 6, 7]
    for eta in (0.0, 1.0):
        generators = [torch.Generator().manual_seed(s) for s in seeds]
        batch = sample_image_embeddings(prior, SCHED, condition, null, generators, steps=5, guidance=3.0, eta=eta)
        assert batch.shape == (3, E) and batch.isfinite().all()
        for row, seed in enumerate(seeds):
            alone = sample_image_embeddings(prior, SCHED, condition.rows(slice(row, row + 1)), null,
                                            [torch.Generator().manual_seed(seed)], steps=5, guidance=3.0, eta=eta)
            assert torch.allclose(alone[0], batch[row], atol=1e-5), (eta, row)
    again = sample_image_embeddings(prior, SCHED, condition, null, [torch.Generator().manual_seed(s) for s in seeds],
                                    steps=5, guidance=3.0)
    assert torch.equal(again, sample_image_embeddings(prior, SCHED, condition, null,
                                                      [torch.Generator().manual_seed(s) for s in seeds],
                                                      steps=5, guidance=3.0))


def test_bad_inputs_are_refused_clearly():
    prior, condition, null = random_prior(), conditions(2), conditions(1)
    inputs = condition.inputs()
    with pytest.raises(ValueError, match=r"noised image embeddings are \(B, 12\); got \(2, 13\)"):
        prior(torch.randn(2, E + 1), 0, **inputs)
    with pytest.raises(ValueError, match=r"text embeddings are \(B, 12\)"):
        prior(torch.randn(2, E), 0, **(inputs | {"text_embedding": torch.randn(2, 8)}))
    with pytest.raises(ValueError, match=r"token states must be \(B, 5, 12\).*pad or cut"):
        prior(torch.randn(2, E), 0, **(inputs | {"text_states": torch.randn(2, 7, E)}))
    with pytest.raises(ValueError, match="disagree on the batch"):
        prior(torch.randn(3, E), 0, **inputs | {"text_mask": torch.ones(3, L, dtype=torch.bool)})
    gens = [torch.Generator(), torch.Generator()]
    with pytest.raises(ValueError, match="guidance must be >= 1"):
        sample_image_embeddings(prior, SCHED, condition, null, gens, guidance=0.5)
    with pytest.raises(ValueError, match="steps must be"):
        sample_image_embeddings(prior, SCHED, condition, null, gens, steps=0)
    with pytest.raises(ValueError, match="one per embedding"):
        sample_image_embeddings(prior, SCHED, condition, null, gens[:1])
    with pytest.raises(ValueError, match="heads"):
        UnclipPriorTrainConfig(width=30, heads=4)
    with pytest.raises(ValueError, match="unknown dataset"):
        UnclipPriorTrainConfig(dataset="mnist")
    with pytest.raises(ValueError, match="guidance and eval_guidance must be >= 1"):
        UnclipPriorTrainConfig(eval_guidance=(0.0,))


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    run = tmp_path_factory.mktemp("unclip-prior") / "whole"
    return run, train_unclip_prior(TINY, run, progress=False)


def test_resume_after_a_stop_equals_an_uninterrupted_run(whole, tmp_path):
    run, summary = whole
    assert_resume_is_exact(train_unclip_prior, TINY, run, tmp_path)
    records = logged(run / "log.jsonl", ("seconds_per_step",))
    assert [r["step"] for r in records if "cosine_g2" in r] == [2, 4] and (run / "loss.png").is_file()
    meta = json.loads((run / "model" / "config.json").read_text())
    assert meta["kind"] == "unclip-prior" and meta["clip"] == "clip-small" and meta["training"]["steps"] == 4
    assert meta["prior"]["embedding_dim"] == 128 and meta["prior"]["text_length"] == 24
    for key in ("cosine_g2", "retrieval_g2", "cosine_samples_g2", "cosine_text", "cosine_images", "cosine_oracle",
                "retrieval_images"):
        assert 0 <= summary[key] <= 1, key
    assert summary["cosine_oracle"] >= summary["cosine_text"]  # no single vector beats the mean's direction


def test_the_saved_prior_samples_by_seed_and_evaluates(whole):
    run, _ = whole
    prior = UnclipPrior.from_folder(run / "model")
    prompts = ["a photo of a bag", "a photo of a coat"]
    embeddings = prior.image_embeddings(prompts, num_per_prompt=2, seed=3, steps=4)
    assert embeddings.shape == (4, 128)
    alone = prior.image_embeddings("a photo of a coat", seed=3 + 1 * 2 + 1, steps=4)  # prompt 1, sample 1
    assert torch.allclose(alone[0], embeddings[3], atol=1e-5)
    with pytest.raises(ValueError, match="guidance must be >= 1"):
        prior.image_embeddings(prompts, guidance=0.0)
    measured = evaluate_saved_prior(run / "model", eval_images=16, per_caption=1, guidance=(1.0,))
    assert {"cosine_g1", "retrieval_g1", "cosine_text", "retrieval_oracle"} <= set(measured)


def test_the_command_trains_one(tmp_path, capsys):
    from ldmkit.apps.cli import main

    assert main(["train-unclip-prior", "--preset", "tiny", "--out", str(tmp_path / "cli"), "--steps", "1"]) == 0
    assert "done:" in capsys.readouterr().out and (tmp_path / "cli" / "model" / "model.safetensors").is_file()
