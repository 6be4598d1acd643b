"""UCAS (arXiv 2510.10649): the self-certainty identity, an explicit per-row loop written after the
official `compute_ucas_advantage`, the exact GRPO reduction, sign safety, monotonicity of the modifier,
all-equal groups (-gamma lamhat), the batch-global min-max, invariances, edge cases and short runs."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minirlvr.baselines import GRPOAdvantageConfig, grpo_advantage
from minirlvr.methods.ucas import (UcasConfig, confidence_modifier, minmax_normalise, self_certainty, ucas_advantage,
                                   ucas_terms)
from minirlvr.registry import get_recipe, get_stage, make_config
from minirlvr.rollout import RolloutBatch

# ------------------------------------------------------------------ helpers


@st.composite
def rewards_st(draw, sizes=(2, 3, 4, 8), max_q=4, levels=(0.0, 1.0)):
    """(rewards [B] list, G)."""
    G, Q = draw(st.sampled_from(sizes)), draw(st.integers(1, max_q))
    return draw(st.lists(st.sampled_from(levels), min_size=G * Q, max_size=G * Q)), G


def make_batch(rewards, G, seed=0, V=7, T=5, scale=3.0, temperature=1.0, one_token=False, empty=False,
               dtype=torch.float64):
    """RolloutBatch with random tempered logits old_logits [B, T, V] and sampled ids."""
    g = torch.Generator().manual_seed(seed)
    B = len(rewards)
    lengths = torch.ones(B, dtype=torch.long) if one_token else torch.randint(1, T + 1, (B,), generator=g)
    mask = (torch.arange(T)[None, :] < lengths[:, None]).long() * (0 if empty else 1)
    z = (torch.randn(B, T, V, generator=g, dtype=torch.float64) * scale).to(dtype)
    ids = torch.randint(0, V, (B, T), generator=g)
    return RolloutBatch(prompt_ids=torch.ones(B, 2, dtype=torch.long), prompt_mask=torch.ones(B, 2, dtype=torch.long),
                        response_ids=ids, response_mask=mask, old_logp=torch.zeros(B, T, dtype=dtype),
                        old_entropy=torch.zeros(B, T, dtype=dtype), group_ids=torch.arange(B) // G,
                        problems=[None] * B, texts=[""] * B, truncated=torch.zeros(B, dtype=torch.bool),
                        temperature=temperature, old_logits=z, rewards=torch.tensor(rewards, dtype=dtype))


def fake_ctx(policy=None):
    logged = {}
    return SimpleNamespace(log=lambda **kw: logged.update(kw), logged=logged, policy=policy)


def run(batch, **cfg):
    ctx = fake_ctx()
    return ucas_advantage(batch, UcasConfig(**cfg), ctx), ctx.logged


def reference(batch, beta_pos=0.25, beta_neg=0.35, gamma=0.05, eps=1e-6, norm_by_std=True):
    """A plain loop in numpy, step by step as the official compute_ucas_advantage (groups of >= 2)."""
    z = batch.old_logits.double().numpy()
    m = batch.response_mask.numpy().astype(bool)
    r, gid, ids = batch.rewards.double().numpy(), batch.group_ids.numpy(), batch.response_ids.numpy()
    B, T, V = z.shape
    zmax = z.max(-1, keepdims=True)
    cert = (zmax[..., 0] + np.log(np.exp(z - zmax).sum(-1))) - z.mean(-1)
    C = np.array([sum(cert[i, t] for t in range(T) if m[i, t]) for i in range(B)])
    A, Cz = np.zeros(B), np.zeros(B)
    for g in set(gid.tolist()):
        idx = [i for i in range(B) if gid[i] == g]
        for vals, out in ((r, A), (C, Cz)):
            mu, sd = np.mean(vals[idx]), np.std(vals[idx], ddof=1)
            for i in idx:
                out[i] = (vals[i] - mu) / (sd + eps) if norm_by_std else vals[i] - mu
    lam = np.array([[z[i, t, ids[i, t]] * batch.temperature for t in range(T)] for i in range(B)])
    lo, hi = lam[m].min(), lam[m].max()
    lam_hat = np.where(m, 0.5, 0.0) if np.isclose(hi, lo) else np.where(m, (lam - lo) / (hi - lo + eps), 0.0)
    out = np.zeros((B, T))
    for i in range(B):
        a1 = A[i] * (math.exp(-beta_pos * Cz[i]) if A[i] > 0 else math.exp(beta_neg * Cz[i]))
        for t in range(T):
            u = a1 - gamma * lam_hat[i, t]
            out[i, t] = (max(u, 0.0) if a1 > 0 else u) if m[i, t] else 0.0
    return out, A, Cz, lam_hat


# ------------------------------------------------------------------ identities and the reference loop

@given(st.integers(2, 40), st.lists(st.floats(-30, 30), min_size=40, max_size=40), st.floats(-50, 50))
def test_self_certainty_is_kl_from_uniform_plus_log_v(V, vals, shift):
    z = torch.tensor(vals[:V], dtype=torch.float64)
    c = self_certainty(z)
    kl = (torch.full((V,), 1 / V, dtype=torch.float64) * (-math.log(V) - torch.log_softmax(z, -1))).sum()
    assert c.item() == pytest.approx(kl.item() + math.log(V), rel=1e-12, abs=1e-10)
    assert c.item() >= math.log(V) - 1e-12
    assert self_certainty(z + shift).item() == pytest.approx(c.item(), abs=1e-9)    # shift-invariant
    assert self_certainty(torch.full((V,), shift, dtype=torch.float64)).item() == pytest.approx(math.log(V), abs=1e-12)


@settings(max_examples=30)
@given(rewards_st(levels=(0.0, 1.0, 0.5)), st.integers(0, 10_000), st.floats(0, 2), st.floats(0, 2),
       st.floats(0, 1), st.booleans(), st.sampled_from([1.0, 0.7]))
def test_matches_the_explicit_official_loop(case, seed, bp, bn, gamma, norm, temp):
    rewards, G = case
    batch = make_batch(rewards, G, seed, temperature=temp)
    terms = ucas_terms(batch, UcasConfig(beta_pos=bp, beta_neg=bn, gamma=gamma, norm_by_std=norm))
    out, A, Cz, lam_hat = reference(batch, bp, bn, gamma, norm_by_std=norm)
    np.testing.assert_allclose(terms["adv"].numpy(), A, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(terms["conf_z"].numpy(), Cz, rtol=1e-9, atol=1e-6)  # eps-sized std: z-score of noise
    np.testing.assert_allclose(terms["lam_hat"].numpy(), lam_hat, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(terms["shaped"].numpy(), out, rtol=1e-9, atol=1e-6)


@given(rewards_st(), st.integers(0, 10_000), st.sampled_from([torch.float32, torch.float64]), st.floats(0.1, 3))
def test_zero_coefficients_or_both_stages_off_is_grpo_exactly(case, seed, dtype, coef):
    rewards, G = case
    batch = make_batch(rewards, G, seed, dtype=dtype)
    grpo = grpo_advantage(batch, GRPOAdvantageConfig(eps=1e-6), None)
    zero, _ = run(batch, beta_pos=0.0, beta_neg=0.0, gamma=0.0)
    off, _ = run(batch, beta_pos=coef, beta_neg=coef, gamma=coef, stage1=False, stage2=False)
    assert zero.dtype == grpo.dtype and torch.equal(zero, grpo) and torch.equal(off, grpo)
    # one stage off == its coefficients at zero
    assert torch.equal(run(batch, stage1=False)[0], run(batch, beta_pos=0.0, beta_neg=0.0)[0])
    assert torch.equal(run(batch, stage2=False)[0], run(batch, gamma=0.0)[0])


# ------------------------------------------------------------------ signs, monotonicity, degenerate groups

@given(rewards_st(levels=(0.0, 1.0, 0.3)), st.integers(0, 10_000), st.floats(0, 5), st.floats(0, 5), st.floats(0, 5))
def test_sign_safety(case, seed, bp, bn, gamma):
    rewards, G = case
    batch = make_batch(rewards, G, seed)
    t = ucas_terms(batch, UcasConfig(beta_pos=bp, beta_neg=bn, gamma=gamma))
    m, Ahat, a1 = batch.response_mask.bool(), t["shaped"], t["adv1"][:, None].expand_as(t["shaped"])
    pos, neg = (t["adv"] > 0)[:, None] & m, (t["adv"] < 0)[:, None] & m
    assert bool((Ahat[pos] >= 0).all())                                          # A > 0 => Ahat >= 0
    assert bool((a1[neg] < 0).all()) and bool((Ahat[neg] <= a1[neg]).all())     # A < 0 => Ahat <= A' < 0
    assert bool((Ahat[neg] >= a1[neg] - gamma - 1e-12).all())                   # ... and Ahat >= A' - gamma
    assert bool((Ahat[~m] == 0).all())


@given(st.lists(st.integers(-300, 300), min_size=2, max_size=12, unique=True), st.floats(0.01, 3), st.floats(0.01, 3),
       st.floats(0.1, 3))
def test_modifier_monotone_in_confidence(cz, bp, bn, a):
    cz = torch.tensor(sorted(cz), dtype=torch.float64) / 100     # distinct by >= 0.01
    pos = confidence_modifier(torch.full_like(cz, a), cz, bp, bn)
    neg = -a * confidence_modifier(torch.full_like(cz, -a), cz, bp, bn)
    assert bool((pos[1:] < pos[:-1]).all())              # less confident correct -> larger credit
    assert bool((neg.abs()[1:] > neg.abs()[:-1]).all())  # more confident wrong -> larger blame
    assert bool((confidence_modifier(torch.zeros_like(cz), cz, bp, bn) > 0).all())


@given(rewards_st(sizes=(2, 4, 8)), st.integers(0, 10_000), st.floats(0.01, 1))
def test_all_equal_groups_get_minus_gamma_lamhat(case, seed, gamma):
    rewards, G = case
    rewards = [rewards[(i // G) * G] for i in range(len(rewards))]          # every group all-equal
    batch = make_batch(rewards, G, seed)
    t = ucas_terms(batch, UcasConfig(gamma=gamma))
    m = batch.response_mask.bool()
    _, _, _, lam_hat = reference(batch, gamma=gamma)
    assert bool((t["adv"] == 0).all()) and bool((t["adv1"] == 0).all())
    np.testing.assert_allclose(t["shaped"].numpy(), -gamma * lam_hat, rtol=1e-12, atol=1e-15)
    assert bool((t["shaped"][m] <= 0).all())
    assert torch.equal(run(batch, gamma=gamma, mask_degenerate=True)[0], torch.zeros_like(t["shaped"]))


def test_mask_degenerate_only_touches_all_equal_groups():
    batch = make_batch([1.0, 1.0, 0.0, 1.0, 0.0, 0.0], 2, seed=3)
    full, masked = run(batch)[0], run(batch, mask_degenerate=True)[0]
    assert not masked[:2].any() and not masked[4:].any()
    degenerate = full[:2][batch.response_mask[:2].bool()]          # -gamma lamhat: <= 0, 0 at the batch-min logit
    assert torch.equal(masked[2:4], full[2:4]) and bool((degenerate <= 0).all()) and bool((degenerate < 0).any())


@given(st.integers(0, 10_000), st.floats(0.01, 100))
def test_minmax_is_batch_global(seed, scale):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(6, 5, generator=g, dtype=torch.float64) * scale
    mask = (torch.rand(6, 5, generator=g) < 0.7).long()
    mask[0, 0] = 1
    y = minmax_normalise(x, mask)
    v = mask.bool()
    assert bool((y[~v] == 0).all()) and bool((y[v] >= 0).all()) and bool((y[v] < 1).all())
    lo, hi = x[v].min(), x[v].max()
    if hi > lo:
        assert y[v].min() == 0 and torch.allclose(y[v], (x[v] - lo) / (hi - lo + 1e-6))
    assert torch.equal(minmax_normalise(torch.full((3, 4), scale, dtype=torch.float64), mask[:3, :4]),
                       0.5 * mask[:3, :4].double())
    assert torch.equal(minmax_normalise(x, torch.zeros_like(mask)), torch.zeros_like(x))


# ------------------------------------------------------------------ invariances

@given(rewards_st(), st.integers(0, 10_000), st.floats(0.5, 5), st.floats(-3, 3), st.floats(-20, 20))
def test_invariances(case, seed, a, b, shift):
    rewards, G = case
    batch = make_batch(rewards, G, seed)
    base, _ = run(batch)
    perm = torch.randperm(batch.size, generator=torch.Generator().manual_seed(seed))
    assert torch.allclose(run(batch.select(perm))[0], base[perm], rtol=1e-12, atol=1e-12)      # row order
    affine = make_batch([a * r + b for r in rewards], G, seed)
    assert torch.allclose(run(affine)[0], base, rtol=1e-4, atol=1e-4)        # r -> a r + b (up to eps)
    batch.old_logits = batch.old_logits + shift                              # one batch-wide constant
    assert torch.allclose(run(batch)[0], base, rtol=1e-9, atol=1e-9)


@given(rewards_st(), st.integers(0, 10_000))
def test_vocab_permutation_and_per_position_shift(case, seed):
    rewards, G = case
    batch = make_batch(rewards, G, seed)
    base, stage1 = run(batch)[0], run(batch, stage2=False)[0]
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(batch.old_logits.shape[-1], generator=g)
    inv = torch.argsort(perm)
    relabel = make_batch(rewards, G, seed)
    relabel.old_logits, relabel.response_ids = batch.old_logits[..., perm], inv[batch.response_ids]
    assert torch.allclose(run(relabel)[0], base, rtol=1e-9, atol=1e-9)
    shifted = make_batch(rewards, G, seed)
    shifted.old_logits = batch.old_logits + 10 * torch.randn(batch.old_logits.shape[:2] + (1,), generator=g,
                                                             dtype=torch.float64)
    assert torch.allclose(run(shifted, stage2=False)[0], stage1, rtol=1e-7, atol=1e-7)  # c ignores the logit gauge


# ------------------------------------------------------------------ edge cases, length, fallback

@pytest.mark.parametrize("kw", [dict(scale=1e4, dtype=torch.float32), dict(one_token=True), dict(empty=True),
                                dict(scale=0.0)])
def test_edge_cases_stay_finite(kw):
    batch = make_batch([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0], 4, seed=1, **kw)
    for cfg in (dict(), dict(beta_pos=1e3, beta_neg=1e3, gamma=1e3), dict(conf_agg="mean")):
        adv, logged = run(batch, **cfg)
        assert bool(torch.isfinite(adv).all()) and all(math.isfinite(v) for v in logged.values())
        assert bool((adv[batch.response_mask == 0] == 0).all())
        if kw.get("empty"):
            assert torch.equal(adv, torch.zeros_like(adv))


def test_one_token_confidence_and_sum_vs_mean():
    batch = make_batch([1.0, 0.0, 1.0, 0.0], 2, seed=5)
    m = batch.response_mask.double()
    t_sum, t_mean = ucas_terms(batch, UcasConfig()), ucas_terms(batch, UcasConfig(conf_agg="mean"))
    V = batch.old_logits.shape[-1]
    assert bool((t_sum["conf"] >= m.sum(1) * math.log(V) - 1e-12).all())           # sum: >= length * log V
    assert torch.allclose(t_mean["conf"], t_sum["conf"] / m.sum(1))
    one = make_batch([1.0, 0.0], 2, seed=5, one_token=True)
    assert torch.allclose(ucas_terms(one, UcasConfig())["conf"], self_certainty(one.old_logits[:, 0].double()))


def test_no_gradient_and_forward_fallback():
    batch = make_batch([1.0, 0.0, 0.0, 1.0], 2, seed=2)
    P, T = batch.prompt_ids.shape[1], batch.response_ids.shape[1]
    full = torch.randn(4, P + T, batch.old_logits.shape[-1], dtype=torch.float64, requires_grad=True)
    batch.temperature = 0.8
    batch.old_logits = full[:, P - 1:P - 1 + T] / 0.8
    with_logits = ucas_advantage(batch, UcasConfig(), fake_ctx())
    assert not with_logits.requires_grad
    batch.old_logits = None
    policy = lambda ids, mask, output_hidden=False: full                         # noqa: E731
    assert torch.allclose(ucas_advantage(batch, UcasConfig(), fake_ctx(policy)), with_logits, atol=1e-6)


def test_diagnostics():
    rewards = [1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]          # group 0 mixed, group 1 all-equal
    batch = make_batch(rewards, 4, seed=11)
    _, logged = run(batch, stage2=False)
    assert logged["ucas/slope_pos"] < 0                          # less confident correct -> more credit
    assert logged["ucas/adv_zero"] == 0 and logged["ucas/adv_neg"] < 0 < logged["ucas/adv_pos"]
    _, logged = run(batch)
    assert logged["ucas/adv_zero"] < 0 and logged["ucas/conf_token"] >= math.log(batch.old_logits.shape[-1])
    assert 0 <= logged["ucas/frac_clamped"] <= 1 and -1 <= logged["ucas/corr_conf_len"] <= 1


# ------------------------------------------------------------------ registry, recipes, runs

def test_registry_recipes_and_bad_values():
    entry = get_stage("advantage", "ucas")
    assert entry.needs_for(UcasConfig()) == {"groups"} and entry.config is UcasConfig
    assert (UcasConfig().beta_pos, UcasConfig().beta_neg, UcasConfig().gamma) == (0.25, 0.35, 0.05)
    grpo = get_recipe("grpo")
    for name, s1, s2 in (("ucas", True, True), ("ucas_stage1", True, False), ("ucas_stage2", False, True)):
        r = get_recipe(name)
        cfg = make_config(UcasConfig, r.advantage_cfg)
        assert (r.advantage, cfg.stage1, cfg.stage2) == ("ucas", s1, s2)
        assert (r.loss, r.loss_cfg, r.rollout, r.reward, r.train_cfg) == (grpo.loss, grpo.loss_cfg, grpo.rollout,
                                                                          grpo.reward, grpo.train_cfg)
    for field, value in (("beta_pos", -0.1), ("gamma", -1.0), ("eps", 0.0), ("conf_agg", "median")):
        with pytest.raises(ValueError, match=field) as e:
            make_config(UcasConfig, {field: value}, "advantage")
        assert "\n" not in str(e.value)


def small(tmp_path, ckpt, **kw):
    from minirlvr.trainer import TrainConfig
    base = dict(task="addition", steps=2, prompts_per_step=4, group_size=4, minibatches=2, eval_every=0,
                progress=False, out_dir=str(tmp_path), init=ckpt, max_new_tokens=6, save_every=1)
    base.update(kw)
    return TrainConfig(**base)


def test_short_run_and_zero_coefficients_run_is_the_grpo_run(tmp_path, tiny_ckpt):
    from minirlvr.trainer import train
    hist = train(small(tmp_path, tiny_ckpt, recipe="ucas", name="u"))["history"]
    assert len(hist) == 2 and all("ucas/adv_pos" in h for h in hist)
    assert all(math.isfinite(v) for h in hist for v in h.values() if isinstance(v, float))
    a = train(small(tmp_path, tiny_ckpt, recipe="grpo", name="g"))["history"]
    zero = {"advantage.beta_pos": 0.0, "advantage.beta_neg": 0.0, "advantage.gamma": 0.0}
    b = train(small(tmp_path, tiny_ckpt, recipe="ucas", name="z", overrides=zero))["history"]
    for ha, hb in zip(a, b):
        assert (ha["loss"], ha["grad_norm"], ha["reward"]) == (hb["loss"], hb["grad_norm"], hb["reward"])
