"""Cui et al. 2025 (arXiv 2505.22617): covariance score, Clip-Cov, KL-Cov, entropy diagnostics, the
entropy-reward law. The independent side is numpy (float64) or autograd; minirlvr provides what is tested."""
from __future__ import annotations

import copy
import math
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from minirlvr.core import aggregate, group_advantages, ppo_clip_per_token
from minirlvr.methods.entropy_mechanism import (ClipCovConfig, KLCovConfig, clip_cov_loss, clip_cov_select,
                                                covariance_score, entropy_change_diagnostics, fit_entropy_law,
                                                kl_cov_loss, kl_cov_select)
from minirlvr.model import GPT, GPTConfig, save_checkpoint
from minirlvr.rollout import policy_forward, sample
from toy_tasks import Problem


# ------------------------------------------------------------------ random loss calls

@st.composite
def cases(draw, min_valid=1):
    """(out, batch) of float64 tensors; padding holds garbage (NaN / inf) to prove it is ignored."""
    B, T = draw(st.integers(1, 4)), draw(st.integers(1, 8))
    lengths = draw(st.lists(st.integers(0, T), min_size=B, max_size=B))
    if sum(lengths) < min_valid:
        lengths[0] = T
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    mask = np.arange(T)[None, :] < np.array(lengths)[:, None]
    old = -rng.exponential(1.5, (B, T))
    logp = np.minimum(old + rng.normal(0, draw(st.sampled_from([0.0, 0.1, 1.0])), (B, T)), 0.0)
    scale = draw(st.sampled_from([0.5, 1.0, 3.0]))
    per_row = draw(st.booleans())
    adv = scale * (np.repeat(rng.normal(size=(B, 1)), T, 1) if per_row else rng.normal(size=(B, T)))
    garbage = draw(st.sampled_from([0.0, np.nan, np.inf]))
    logp, old, adv = (np.where(mask, x, garbage) for x in (logp, old, adv))
    t = lambda x: torch.tensor(x, dtype=torch.float64)  # noqa: E731
    out = SimpleNamespace(logp=t(logp).requires_grad_(True))
    batch = SimpleNamespace(old_logp=t(old), advantages=t(adv), response_mask=torch.tensor(mask, dtype=torch.long))
    return out, batch


def np_valid(batch, logp):
    m = batch.response_mask.numpy().astype(bool)
    return m, logp.detach().numpy()[m], batch.advantages.numpy()[m], batch.old_logp.numpy()[m]


def np_score(l, a):
    return (l - l.mean()) * (a - a.mean())


def ppo_np(l, old, a, eps_l, eps_h):
    r = np.exp(l - old)
    un, cl = -a * r, -a * np.clip(r, 1 - eps_l, 1 + eps_h)
    return np.maximum(un, cl), cl > un, r


def grad_of(loss, out):
    (g,) = torch.autograd.grad(loss, out.logp)
    return g


# ------------------------------------------------------------------ covariance score

@given(case=cases(), dl=st.floats(-50, 50), da=st.floats(-50, 50))
def test_covariance_score_algebra(case, dl, da):
    out, batch = case
    m, l, a, _ = np_valid(batch, out.logp)
    c = covariance_score(out.logp, batch.advantages, batch.response_mask)
    assert not c.requires_grad
    assert (c[~torch.from_numpy(m)] == 0).all()                      # 0 on padding, even over NaN / inf
    np.testing.assert_allclose(c.sum().item(), len(l) * np.cov(l, a, bias=True)[0, 1], atol=1e-9)
    np.testing.assert_allclose(c.numpy()[m], np_score(l, a), atol=1e-12)
    c2 = covariance_score(out.logp + dl, batch.advantages + da, batch.response_mask)
    np.testing.assert_allclose(c2.numpy(), c.numpy(), atol=1e-9)    # centred: shift-invariant


# ------------------------------------------------------------------ Clip-Cov

@given(case=cases(), ratio=st.sampled_from([0.0, 1e-4, 0.05, 0.2, 0.5, 1.0]), lb=st.floats(-1.5, 1.5),
       width=st.floats(1e-6, 4.0),  # > 0: the config needs cov_lb < cov_ub
       eps=st.sampled_from([0.2, 1.0]), seed=st.integers(0, 1000))
def test_clip_cov_selection_gradient_and_value(case, ratio, lb, width, eps, seed):
    out, batch = case
    cfg = ClipCovConfig(clip_ratio=ratio, cov_lb=lb, cov_ub=lb + width, clip_low=eps, clip_high=eps, seed=seed)
    m, l, a, old = np_valid(batch, out.logp)
    N = len(l)
    L, clipped, r = ppo_np(l, old, a, eps, eps)
    c = np_score(l, a)
    cand = (c > lb) & (c < lb + width) & ~clipped
    # the loss's pick is the helper's pick with the same seed
    _, _, clipped_t = ppo_clip_per_token(out.logp.detach(), batch.old_logp, batch.advantages, eps, eps)
    sel, n_cand = clip_cov_select(covariance_score(out.logp, batch.advantages, batch.response_mask), clipped_t,
                                  batch.response_mask, ratio, lb, lb + width, torch.Generator().manual_seed(seed))
    s = sel.numpy()[m]
    assert not sel.numpy()[~m].any()                                  # never padding
    assert n_cand == cand.sum()
    assert s.sum() == min(cand.sum(), max(1, math.floor(ratio * N)))
    assert (cand[s]).all()                                            # strictly inside the band, not PPO-clipped
    loss, met = clip_cov_loss(out, batch, cfg, None)
    assert met["n_selected"] == s.sum()
    np.testing.assert_allclose(loss.item(), np.where(s, 0.0, L).sum() / N, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(met["cov_mean"], c.mean(), atol=1e-10)
    np.testing.assert_allclose(met["clipfrac"], clipped.mean(), atol=1e-12)
    g = grad_of(loss, out).numpy()
    assert (g[sel.numpy()] == 0).all()                               # stopped exactly on the selected tokens
    free = ~s & ~clipped
    np.testing.assert_allclose(g[m][free], -a[free] * r[free] / N, rtol=1e-10, atol=1e-15)
    assert (g[m][free & (a != 0)] != 0).all()                        # ... and only there
    assert (g[~m] == 0).all()


@given(case=cases(), eps=st.sampled_from([0.2, 1.0]))
def test_clip_cov_without_band_tokens_is_plain_ppo(case, eps):
    out, batch = case
    cfg = ClipCovConfig(clip_ratio=0.5, cov_lb=1e6, cov_ub=1e7, clip_low=eps, clip_high=eps)
    loss, met = clip_cov_loss(out, batch, cfg, None)
    ppo_mat, _, _ = ppo_clip_per_token(out.logp, batch.old_logp, batch.advantages, eps, eps)
    ppo = aggregate(ppo_mat, batch.response_mask, "token-mean")
    assert met["n_selected"] == 0 and met["cov_candidates"] == 0
    assert loss.item() == ppo.item()
    assert torch.equal(grad_of(loss, out), grad_of(ppo, out))


@given(case=cases(), seed=st.integers(0, 2 ** 31))
def test_clip_cov_same_seed_same_selection(case, seed):
    out, batch = case
    cfg = ClipCovConfig(clip_ratio=0.3, cov_lb=-10.0, cov_ub=10.0, seed=seed)
    grads = [grad_of(clip_cov_loss(out, batch, cfg, None)[0], out) for _ in range(2)]
    ctx = lambda: SimpleNamespace(generator=torch.Generator().manual_seed(seed), step=0)  # noqa: E731
    grads += [grad_of(clip_cov_loss(out, batch, cfg, ctx())[0], out) for _ in range(2)]
    assert torch.equal(grads[0], grads[1]) and torch.equal(grads[2], grads[3])


@pytest.mark.parametrize("ratio", [0.0, 2e-4, 0.013, 0.07, 0.2, 0.5, 1.0])
def test_selected_counts_on_a_large_call(ratio):
    """n = min(|C|, max(1, floor(ratio N))) and k = max(1, floor(ratio N)) on N = 197 tokens, all in the band."""
    g = torch.Generator().manual_seed(0)
    mask = torch.ones(10, 20, dtype=torch.long)
    mask[0, 17:] = 0
    logp = -torch.rand(10, 20, generator=g, dtype=torch.float64) * 3
    batch = SimpleNamespace(old_logp=logp.clone(), advantages=torch.randn(10, 20, generator=g, dtype=torch.float64),
                            response_mask=mask)
    out = SimpleNamespace(logp=logp.requires_grad_(True))
    want = max(1, math.floor(ratio * 197))
    _, met = clip_cov_loss(out, batch, ClipCovConfig(clip_ratio=ratio, cov_lb=-1e9, cov_ub=1e9), None)
    assert met["n_selected"] == want and met["cov_candidates"] == 197
    _, met = kl_cov_loss(out, batch, KLCovConfig(kl_ratio=ratio), None)
    assert met["n_selected"] == want


def test_clip_cov_seeds_differ():
    """With many candidates and few picks, different seeds pick different tokens."""
    c = torch.linspace(1.1, 4.9, 200).view(10, 20)
    mask, no_clip = torch.ones(10, 20), torch.zeros(10, 20, dtype=torch.bool)
    picks = {tuple(clip_cov_select(c, no_clip, mask, 0.01, 1.0, 5.0, torch.Generator().manual_seed(s))[0]
                   .flatten().nonzero().flatten().tolist()) for s in range(5)}
    assert len(picks) > 1 and all(len(p) == 2 for p in picks)


# ------------------------------------------------------------------ KL-Cov

@given(case=cases(), ratio=st.sampled_from([1e-4, 2e-3, 0.1, 0.3, 1.0, 5.0]), beta=st.sampled_from([0.0, 0.1, 1.0]))
def test_kl_cov_top_k_value_and_gradient(case, ratio, beta):
    out, batch = case
    m, l, a, old = np_valid(batch, out.logp)
    N = len(l)
    c = np_score(l, a)
    k = min(N, max(1, math.floor(ratio * N)))
    sel = kl_cov_select(covariance_score(out.logp, batch.advantages, batch.response_mask), batch.response_mask, ratio)
    assert not sel.numpy()[~m].any()
    s = sel.numpy()[m]
    assert s.sum() == k
    np.testing.assert_allclose(np.sort(c[s]), np.sort(c)[::-1][:k][::-1], atol=1e-12)  # = numpy's top-k values
    # the config takes a fraction in [0, 1]; a ratio above 1 selects every token, as 1.0 does
    loss, met = kl_cov_loss(out, batch, KLCovConfig(kl_ratio=min(ratio, 1.0), ppo_kl_coef=beta), None)
    assert met["n_selected"] == k
    r = np.exp(l - old)
    expect = (-a * r + beta * np.abs(l - old) * s).sum() / N          # no PPO clip at all
    np.testing.assert_allclose(loss.item(), expect, rtol=1e-10, atol=1e-12)
    g = grad_of(loss, out).numpy()
    np.testing.assert_allclose(g[m], (-a * r + beta * np.sign(l - old) * s) / N, rtol=1e-10, atol=1e-15)
    assert (g[~m] == 0).all()


@given(case=cases(), ratio=st.sampled_from([2e-3, 0.2, 1.0]))
def test_kl_cov_reductions(case, ratio):
    out, batch = case
    m, l, a, old = np_valid(batch, out.logp)
    N = len(l)
    loss0, _ = kl_cov_loss(out, batch, KLCovConfig(kl_ratio=ratio, ppo_kl_coef=0.0), None)
    np.testing.assert_allclose(loss0.item(), (-a * np.exp(l - old)).sum() / N, rtol=1e-10, atol=1e-12)
    # on-policy (logp == old_logp): d|x|/dx = 0 at 0, so the gradient is the vanilla PG gradient -A / N
    on = SimpleNamespace(logp=batch.old_logp.clone().requires_grad_(True))
    g = grad_of(kl_cov_loss(on, batch, KLCovConfig(kl_ratio=ratio, ppo_kl_coef=1.0), None)[0], on).numpy()
    np.testing.assert_allclose(g[m], -a / N, rtol=1e-12, atol=1e-15)


# ------------------------------------------------------------------ extreme inputs

def extreme_cases():
    t = lambda x: torch.tensor(x, dtype=torch.float64)  # noqa: E731
    yield (t([[-1e4, -5e3], [-1e4, 0.0]]), t([[0.0, -1e4], [-1.0, -1e4]]), t([[1e6, 1e6], [-1e6, -1e6]]),
           torch.tensor([[1, 1], [1, 0]]))                                           # huge gaps and advantages
    yield t([[-1.0, -2.0], [-3.0, -4.0]]), t([[-1.0, -2.0], [-3.0, -4.0]]), t([[1.0, 1.0], [0.0, 0.0]]), \
        torch.tensor([[0, 0], [1, 0]])                                               # all-masked row, one-token response
    yield t([[float("nan")]]), t([[float("inf")]]), t([[float("nan")]]), torch.tensor([[0]])  # nothing valid


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_extreme_inputs_stay_finite(dtype):
    for logp, old, adv, mask in extreme_cases():
        for loss_fn, cfg in [(clip_cov_loss, ClipCovConfig(clip_ratio=0.5, cov_lb=-1e12, cov_ub=1e12)),
                             (clip_cov_loss, ClipCovConfig()), (kl_cov_loss, KLCovConfig(kl_ratio=0.5))]:
            out = SimpleNamespace(logp=logp.to(dtype).requires_grad_(True))
            batch = SimpleNamespace(old_logp=old.to(dtype), advantages=adv.to(dtype), response_mask=mask)
            loss, met = loss_fn(out, batch, cfg, None)
            g = grad_of(loss, out)
            assert torch.isfinite(loss) and all(math.isfinite(v) for v in met.values()), (loss_fn, met)
            assert torch.isfinite(g[mask.bool()]).all()
            assert torch.isfinite(covariance_score(out.logp, batch.advantages, mask)).all()


# ------------------------------------------------------------------ entropy-reward law

@given(a=st.floats(0.05, 2.0), b=st.floats(0.2, 3.0), n=st.integers(5, 40), lo=st.floats(0.05, 1.0),
       span=st.floats(0.5, 2.0), seed=st.integers(0, 1000))
def test_law_fit_recovers_parameters(a, b, n, lo, span, seed):
    H = np.linspace(lo, lo + span, n)
    exact = fit_entropy_law(H, -a * np.exp(H) + b)
    np.testing.assert_allclose([exact["a"], exact["b"]], [a, b], rtol=1e-8, atol=1e-8)
    assert exact["rmse"] < 1e-8
    noise = 1e-3 * np.random.default_rng(seed).standard_normal(n)
    fit = fit_entropy_law(list(H), list(-a * np.exp(H) + b + noise))
    assert abs(fit["a"] - a) < 0.02 and abs(fit["b"] - b) < 0.05
    assert fit["ceiling"] == pytest.approx(fit["b"] - fit["a"])
    assert fit["rmse"] < 3e-3


@pytest.mark.parametrize("H, R", [([1.0], [0.5]), ([], []), ([1.0, np.nan], [0.1, 0.2]),
                                  ([1.0, 2.0], [0.1, np.inf]), ([1.0, 2.0, 3.0], [0.1, 0.2]),
                                  ([1.0, 1.0, 1.0], [0.1, 0.2, 0.3])])
def test_law_fit_rejects_bad_input(H, R):
    with pytest.raises(ValueError):
        fit_entropy_law(H, R)


# ------------------------------------------------------------------ entropy diagnostics on a tiny GPT

def make_batch(seed: int):
    torch.manual_seed(seed)
    model = GPT(GPTConfig(d_model=32, n_layers=2, n_heads=2, context=32)).double()
    with torch.no_grad():  # sharper than GPT init (a near-uniform policy has a ~0 first-order term)
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.2)
    prob = Problem(task="x", prompt="12+34=", answer="46", difficulty=1, data=(12, 34))
    batch = sample(model, [prob, prob], 4, 8, generator=torch.Generator().manual_seed(seed))
    batch.rewards = torch.tensor([1.0, 0, 1, 0, 0, 1, 1, 0])
    batch.advantages = group_advantages(batch.rewards, batch.group_ids)[:, None] * batch.response_mask
    return model, batch


@pytest.mark.parametrize("seed", [0, 1])
def test_diagnostics_match_first_order(seed):
    model, batch = make_batch(seed)
    d0 = entropy_change_diagnostics(model, batch)
    assert abs(d0["dH_measured"]) < 1e-6 and abs(d0["dH_first_order"]) < 1e-6
    m, l, a, _ = np_valid(batch, batch.old_logp)
    np.testing.assert_allclose(d0["cov_logp_adv"], np.cov(l, a, bias=True)[0, 1], atol=1e-6)
    loss, _ = clip_cov_loss(policy_forward(model, batch), batch, ClipCovConfig(), None)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    norm = torch.sqrt(sum((g ** 2).sum() for g in grads))
    gaps, rels = [], []
    for eta in (1e-2, 5e-3, 2.5e-3):  # SGD steps of parameter-norm eta along the normalised gradient
        moved = copy.deepcopy(model)
        with torch.no_grad():
            for p, g in zip(moved.parameters(), grads):
                p -= eta * g / norm
        d = entropy_change_diagnostics(moved, batch)
        gaps.append(abs(d["dH_measured"] - d["dH_first_order"]))
        rels.append(gaps[-1] / abs(d["dH_measured"]))
    assert gaps[0] / gaps[1] > 3.0 and gaps[1] / gaps[2] > 3.0  # second order: ~4x per halving, 2x if linear
    assert rels[-1] < 0.25


# ------------------------------------------------------------------ the trainer runs both recipes

@pytest.mark.parametrize("recipe", ["clip_cov", "kl_cov"])
def test_recipes_train_two_steps(recipe, tmp_path):
    from minirlvr.sft import default_checkpoint
    from minirlvr.trainer import TrainConfig, train
    init = default_checkpoint("addition")
    if not os.path.isfile(init):  # no shipped base yet: a tiny random policy exercises the same code
        torch.manual_seed(0)
        init = str(tmp_path / "random.pt")
        save_checkpoint(init, GPT(GPTConfig(d_model=32, n_layers=2, n_heads=2, context=32)))
    cfg = TrainConfig(recipe=recipe, steps=2, prompts_per_step=4, group_size=4, eval_every=0, progress=False,
                      out_dir=str(tmp_path), entropy_diagnostics=True, init=init, lr=1e-4,
                      overrides={f"loss.{'clip_ratio' if recipe == 'clip_cov' else 'kl_ratio'}": 0.1})
    hist = train(cfg)["history"]
    assert len(hist) == 2
    keys = ["loss", "n_selected", "cov_mean", "cov_logp_adv", "dH_measured", "dH_first_order"]
    keys += ["cov_candidates", "clipfrac"] if recipe == "clip_cov" else ["kl_penalty"]
    for rec in hist:
        assert all(k in rec and math.isfinite(rec[k]) for k in keys), rec
