"""BAPO (Xi et al. 2025, arXiv 2510.18927): the clipped surrogate, the two contribution measures, the bound
search (termination, exit condition, no-op cases), reductions to fixed-bound PPO and to vanilla PG, and the
Entropy-Clip rule on a tabular softmax."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minirlvr.baselines import PPOClipConfig, ppo_terms
from minirlvr.core import entropy_from_logits, policy_covariance, ppo_clip_per_token
from minirlvr.exact import first_order_entropy_change
from minirlvr.methods.bapo import (BapoConfig, active_mask, bapo_loss, clipped_surrogate, code_pos_neg_ratio,
                                   grid_steps, positive_share, search_bounds)
from minirlvr.registry import get_recipe, make_config
from minirlvr.rollout import PolicyOutput, RolloutBatch

AGG = ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]


def make_batch(mask, seed=0, gap=0.5, adv=None):
    """RolloutBatch + PolicyOutput (logp a float64 leaf with grad); per-row advantages unless `adv` [B, T]."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.as_tensor(mask).long()
    B, T = mask.shape
    old_logp = -torch.rand(B, T, generator=g, dtype=torch.float64) * 3
    if adv is None:
        adv = torch.randn(B, 1, generator=g, dtype=torch.float64).expand(B, T) * mask
    logp = (old_logp + gap * torch.randn(B, T, generator=g, dtype=torch.float64)).requires_grad_(True)
    ent = torch.rand(B, T, generator=g, dtype=torch.float64)
    batch = RolloutBatch(prompt_ids=torch.ones(B, 2, dtype=torch.long), prompt_mask=torch.ones(B, 2, dtype=torch.long),
                         response_ids=torch.full((B, T), 5), response_mask=mask, old_logp=old_logp,
                         old_entropy=ent, group_ids=torch.arange(B), problems=[None] * B, texts=[""] * B,
                         truncated=torch.zeros(B, dtype=torch.bool), advantages=torch.as_tensor(adv).double(),
                         rewards=torch.zeros(B, dtype=torch.float64))
    return batch, PolicyOutput(logp=logp, entropy=ent, logits=torch.zeros(B, T, 3, dtype=torch.float64))


def loss_and_grad(fn, out):
    out.logp.grad = None
    loss, metrics = fn()
    loss.backward()
    return loss.detach(), out.logp.grad.clone(), metrics


shapes = st.tuples(st.integers(1, 5), st.integers(1, 8))
seeds = st.integers(0, 10 ** 6)


@st.composite
def ratio_cases(draw):
    """(ratio, adv, mask) [B, T] float64 with per-token signs mixed, ratios spread around 1."""
    B, T = draw(shapes)
    g = torch.Generator().manual_seed(draw(seeds))
    ratio = torch.exp(torch.randn(B, T, generator=g, dtype=torch.float64) * draw(st.sampled_from([0.1, 0.4, 1.0])))
    adv = torch.randn(B, T, generator=g, dtype=torch.float64) + draw(st.sampled_from([0.0, -0.5, -1.0]))
    mask = torch.rand(B, T, generator=g) < draw(st.sampled_from([0.5, 1.0]))
    return ratio, adv, mask


# ------------------------------------------------------------------ surrogate and measures

@given(st.lists(st.tuples(st.floats(1e-3, 50), st.floats(-5, 5)), min_size=1, max_size=30),
       st.floats(0.3, 1.0), st.floats(1.0, 4.0))
def test_surrogate_shortcut_is_the_ppo_min(pairs, c_low, c_high):
    r = torch.tensor([p[0] for p in pairs], dtype=torch.float64)
    A = torch.tensor([p[1] for p in pairs], dtype=torch.float64)
    s = clipped_surrogate(r, A, c_low, c_high)
    torch.testing.assert_close(s, torch.minimum(r * A, r.clamp(c_low, c_high) * A), rtol=0, atol=0)
    ppo, _, _ = ppo_clip_per_token(r.log(), torch.zeros_like(r), A, 1 - c_low, c_high - 1)  # loss = -surrogate
    torch.testing.assert_close(-ppo, s, rtol=1e-12, atol=1e-12)


@given(ratio_cases(), st.lists(st.floats(0.3, 1.0), min_size=2, max_size=2),
       st.lists(st.floats(1.0, 4.0), min_size=2, max_size=2), st.sampled_from([None, 3.0]))
def test_indicator_rho_non_decreasing_and_code_pn_opposite_in_c_low(case, lows, highs, c):
    ratio, adv, mask = case
    (l1, l2), (h1, h2) = sorted(lows), sorted(highs)
    rho = lambda lo, hi: positive_share(ratio, adv, mask, lo, hi, c)
    pn = lambda lo, hi: code_pos_neg_ratio(ratio, adv, mask, lo, hi)
    tol = 1e-12
    assert 0.0 <= rho(l1, h1) <= 1.0
    assert rho(l2, h1) >= rho(l1, h1) - tol and rho(l1, h2) >= rho(l1, h1) - tol
    assert pn(l2, h1) <= pn(l1, h1) * (1 + tol) + tol        # the code's value measure: non-increasing in c_low
    assert pn(l1, h2) >= pn(l1, h1) * (1 - tol) - tol        # ... and non-decreasing in c_high


def test_measures_on_a_hand_example():
    """One positive token clipped at 1.2, two negatives (one just above a- = 0.6)."""
    ratio = torch.tensor([[1.47, 1.0, 0.65]], dtype=torch.float64)
    adv, mask = torch.tensor([[1.0, -1.0, -1.0]], dtype=torch.float64), torch.ones(1, 3)
    assert active_mask(ratio, adv, mask, 0.6, 1.2).tolist() == [[False, True, True]]
    far = torch.tensor([[4.0]], dtype=torch.float64)                 # A < 0, r > c: the dual clip silences it
    assert active_mask(far, -torch.ones(1, 1), torch.ones(1, 1), 0.6, 1.2).item()
    assert not active_mask(far, -torch.ones(1, 1), torch.ones(1, 1), 0.6, 1.2, clip_ratio_c=3.0).item()
    assert positive_share(ratio, adv, mask, 0.6, 1.2) == 0.0
    assert positive_share(ratio, adv, mask, 0.7, 1.5) == pytest.approx(1.47 / 2.47)
    assert code_pos_neg_ratio(ratio, adv, mask, 0.6, 1.2) == pytest.approx(1.2 / 1.65, rel=1e-7)
    assert code_pos_neg_ratio(ratio, adv, mask, 0.9, 1.2) == pytest.approx(1.2 / 1.9, rel=1e-7)  # c_low up: N up
    # the indicator search drops the r = 0.65 negative, then opens c_high until the positive counts
    s = search_bounds(ratio, adv, mask, BapoConfig())
    assert (s["c_low"], s["c_high"], s["steps_low"], s["steps_high"]) == (0.9, pytest.approx(1.5), 6, 6)
    assert s["after"] == pytest.approx(1.47 / 2.47)
    # the value measure cannot be met (P <= 1.47 < N = 1.9): both bounds end at their maxima
    s = search_bounds(ratio, adv, mask, BapoConfig(measure="code_value"))
    assert (s["c_low"], s["c_high"], s["steps_low"], s["steps_high"]) == (0.9, 3.0, 6, 36)
    assert s["after"] < s["target"] == 1.0


# ------------------------------------------------------------------ the search

bound_cfgs = st.builds(lambda a_lo, w_lo, d_lo, a_hi, w_hi, d_hi, rho0, measure: BapoConfig(
    rho0=rho0, lower_start=a_lo, lower_max=min(1.0, a_lo + w_lo), lower_step=d_lo, upper_start=a_hi,
    upper_max=a_hi + w_hi, upper_step=d_hi, measure=measure),
    st.floats(0.3, 1.0), st.floats(0, 0.5), st.sampled_from([0.0, 0.01, 0.05, 0.1, 0.3]),
    st.floats(1.0, 2.0), st.floats(0, 2.0), st.sampled_from([0.0, 0.05, 0.1, 0.25]),
    st.floats(0.0, 0.95), st.sampled_from(["indicator", "code_value"]))


def measure_of(cfg, ratio, adv, mask, lo, hi):
    if cfg.measure == "indicator":
        return positive_share(ratio, adv, mask, lo, hi, cfg.clip_ratio_c)
    return code_pos_neg_ratio(ratio, adv, mask, lo, hi, cfg.eps)


@given(ratio_cases(), bound_cfgs)
def test_search_terminates_exits_correctly_and_stops_at_the_first_grid_point(case, cfg):
    ratio, adv, mask = case
    s = search_bounds(ratio, adv, mask, cfg)
    n_lo = grid_steps(cfg.lower_start, cfg.lower_max, cfg.lower_step)
    n_hi = grid_steps(cfg.upper_start, cfg.upper_max, cfg.upper_step)
    for n, a, b, d in ((n_lo, cfg.lower_start, cfg.lower_max, cfg.lower_step),
                       (n_hi, cfg.upper_start, cfg.upper_max, cfg.upper_step)):
        assert n <= (math.ceil(round((b - a) / d, 9)) if d > 0 and b > a else 0)
    assert s["steps_low"] <= n_lo and s["steps_high"] <= n_hi
    top_lo, top_hi = max(cfg.lower_start, cfg.lower_max), max(cfg.upper_start, cfg.upper_max)
    assert cfg.lower_start <= s["c_low"] <= top_lo and cfg.upper_start <= s["c_high"] <= top_hi
    assert s["after"] == measure_of(cfg, ratio, adv, mask, s["c_low"], s["c_high"])
    at_max = s["steps_low"] == n_lo and s["steps_high"] == n_hi
    assert s["after"] >= s["target"] or at_max                          # met, or nothing left to open
    if s["steps_high"] > 0:                                             # c_high moved only after c_low ran out
        assert s["steps_low"] == n_lo
    if s["steps_high"] > 1:                                             # the previous grid point was short
        prev = cfg.upper_start + (s["steps_high"] - 1) * cfg.upper_step
        assert measure_of(cfg, ratio, adv, mask, s["c_low"], prev) < s["target"]


@given(ratio_cases(), bound_cfgs)
def test_no_search_when_the_target_is_met_at_the_start(case, cfg):
    ratio, adv, mask = case
    s = search_bounds(ratio, adv, mask, cfg)
    if measure_of(cfg, ratio, adv, mask, cfg.lower_start, cfg.upper_start) >= s["target"]:
        assert (s["c_low"], s["c_high"], s["steps_low"], s["steps_high"]) == (cfg.lower_start, cfg.upper_start, 0, 0)
    s0 = search_bounds(ratio, adv, mask, BapoConfig(rho0=0.0, measure=cfg.measure))   # rho0 = 0: always met
    assert (s0["c_low"], s0["c_high"]) == (0.6, 1.2)


# ------------------------------------------------------------------ the loss

@pytest.mark.parametrize("agg", AGG)
@given(shape=shapes, seed=seeds, lo=st.floats(0.5, 1.0), hi=st.floats(1.0, 3.0), c=st.sampled_from([None, 3.0]))
@settings(max_examples=15)
def test_equal_ranges_give_fixed_bound_ppo_exactly(agg, shape, seed, lo, hi, c):
    batch, out = make_batch(torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) < 0.8, seed, gap=0.6)
    cfg = BapoConfig(lower_start=lo, lower_max=lo, upper_start=hi, upper_max=hi, clip_ratio_c=c, agg=agg)
    ppo = PPOClipConfig(clip_low=1 - lo, clip_high=hi - 1, clip_ratio_c=c, agg=agg)
    l1, g1, m = loss_and_grad(lambda: bapo_loss(out, batch, cfg, None), out)
    l2, g2, _ = loss_and_grad(lambda: ppo_terms(out, batch, ppo), out)
    assert torch.equal(l1, l2) and torch.equal(g1, g2)
    assert (m["c_low"], m["c_high"], m["search_steps"]) == (lo, hi, 0.0)


@given(shape=shapes, seed=seeds, cfg=bound_cfgs)
def test_on_policy_gradient_is_vanilla_pg_for_any_bounds(shape, seed, cfg):
    mask = torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) < 0.8
    batch, out = make_batch(mask, seed)
    out = PolicyOutput(logp=batch.old_logp.clone().requires_grad_(True), entropy=out.entropy, logits=out.logits)
    loss, grad, m = loss_and_grad(lambda: bapo_loss(out, batch, cfg, None), out)
    n = max(1, int(mask.sum()))
    torch.testing.assert_close(grad, -batch.advantages * mask / n, rtol=1e-12, atol=1e-15)   # token-mean PG
    A = batch.advantages[mask.bool()]
    want = float(A.clamp(min=0).sum() / A.abs().sum()) if float(A.abs().sum()) > 0 else 1.0
    assert m["rho_before"] == pytest.approx(want, abs=1e-12)   # every token active: rho = sum_{A>0}|A| / sum|A|


@given(shape=shapes, seed=seeds, cfg=bound_cfgs)
@settings(max_examples=20)
def test_loss_uses_the_searched_bounds_and_logs(shape, seed, cfg):
    batch, out = make_batch(torch.ones(*shape), seed, gap=0.8)
    ratio = (out.logp.detach() - batch.old_logp).exp()
    s = search_bounds(ratio, batch.advantages, batch.response_mask, cfg)
    ppo = PPOClipConfig(clip_low=1 - s["c_low"], clip_high=s["c_high"] - 1, clip_ratio_c=cfg.clip_ratio_c)
    l1, g1, m = loss_and_grad(lambda: bapo_loss(out, batch, cfg, None), out)
    l2, g2, m2 = loss_and_grad(lambda: ppo_terms(out, batch, ppo), out)
    assert torch.equal(l1, l2) and torch.equal(g1, g2)
    assert m["clipfrac_high"] == m2["clipfrac_high"] and m["clipfrac_low"] == m2["clipfrac_low"]
    assert m["rho_after"] >= m["rho_before"] - 1e-12 or cfg.measure == "code_value"
    assert all(math.isfinite(v) for v in m.values())


@pytest.mark.parametrize("measure", ["indicator", "code_value"])
@pytest.mark.parametrize("case", ["empty", "zero_adv", "one_token", "extreme", "all_negative"])
def test_edge_cases_are_finite(measure, case):
    mask = {"empty": torch.zeros(2, 3), "one_token": torch.tensor([[1, 0, 0]])}.get(case, torch.ones(2, 3))
    batch, out = make_batch(mask, 1, gap=50.0 if case == "extreme" else 0.5)
    if case == "zero_adv":
        batch.advantages = torch.zeros_like(batch.advantages)
    if case == "all_negative":
        batch.advantages = -batch.advantages.abs() - 0.1
    loss, grad, m = loss_and_grad(lambda: bapo_loss(out, batch, BapoConfig(measure=measure), None), out)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    assert all(math.isfinite(v) for v in m.values())
    if case in ("empty", "zero_adv"):
        assert float(loss) == 0.0 and m["search_steps"] == 0.0


# ------------------------------------------------------------------ the Entropy-Clip rule

@given(seed=seeds, V=st.integers(2, 12), scale=st.sampled_from([0.5, 2.0, 5.0]))
def test_entropy_clip_rule_first_order_and_clipping_low_prob_positives(seed, V, scale):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(V, generator=g, dtype=torch.float64) * scale
    A = torch.randn(V, generator=g, dtype=torch.float64)
    X = torch.rand(V, generator=g) < 0.7
    eta = 1e-5
    pi, logp = torch.softmax(z, -1), torch.log_softmax(z, -1)
    dH = first_order_entropy_change(z, A, "npg", eta, X.double())   # the shared tabular toolkit
    torch.testing.assert_close(dH, -eta * policy_covariance(pi, logp, A * X), rtol=1e-10, atol=1e-18)
    fd = entropy_from_logits(z + eta * A * X) - entropy_from_logits(z)            # the real change, small eta
    assert abs(float(fd - dH)) <= 1e-3 * abs(float(dH)) + 1e-13
    # clip (X = 0) the positive actions with log pi < -H: entropy falls more (or the same if there are none)
    low_pos = X & (A > 0) & (logp < -entropy_from_logits(z))
    dH_clipped = first_order_entropy_change(z, A, "npg", eta, (X & ~low_pos).double())
    gain = eta * (pi * A * (-entropy_from_logits(z) - logp))[low_pos].sum()      # exact, Cov is bilinear
    torch.testing.assert_close(dH - dH_clipped, gain, rtol=1e-9, atol=1e-20)
    if low_pos.any():
        assert float(dH_clipped) < float(dH)


# ------------------------------------------------------------------ config and recipe

def test_recipe_and_config():
    r = get_recipe("bapo")
    assert (r.rollout, r.advantage, r.loss) == ("plain", "grpo", "bapo")
    assert r.train_cfg == {"minibatches": 4, "ppo_epochs": 2}
    cfg = make_config(BapoConfig, r.loss_cfg)
    assert (cfg.rho0, cfg.lower_start, cfg.lower_max, cfg.upper_start, cfg.upper_max) == (0.5, 0.6, 0.9, 1.2, 3.0)
    assert (cfg.lower_step, cfg.upper_step, cfg.clip_ratio_c, cfg.agg) == (0.05, 0.05, 10.0, "token-mean")  # c of the baseline dapo_stale
    with pytest.raises(ValueError, match=r"^BapoConfig\.measure must be one of"):
        BapoConfig(measure="value")
    with pytest.raises(ValueError, match=r"^BapoConfig\.rho0 must be in \[0, 1\)"):
        BapoConfig(rho0=1.0)
    assert np.isclose(grid_steps(0.6, 0.9, 0.05), 6) and grid_steps(1.2, 3.0, 0.05) == 36
    assert grid_steps(0.9, 0.6, 0.05) == 0 and grid_steps(0.6, 0.9, 0.0) == 0
