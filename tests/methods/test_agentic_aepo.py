"""AEPO's update half (Dong et al. 2025, arXiv 2510.14545): the gradient-preserving clip changes no loss
value and only the gradient of positive tokens above 1 + eps_h; the entropy-aware advantage; reductions to
dual-clip PPO (ppo_terms) with the flags off; edge cases."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minirlvr.baselines import PPOClipConfig, ppo_terms
from minirlvr.core import aggregate, ppo_clip_per_token
from minirlvr.methods.agentic_aepo import (AgenticAepoConfig, agentic_aepo_loss, entropy_aware_advantage,
                                           gp_clip_per_token, standardized_entropy)
from minirlvr.registry import get_recipe, make_config
from minirlvr.rollout import PolicyOutput, RolloutBatch

AGG = ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]
shapes = st.tuples(st.integers(1, 5), st.integers(1, 8))
seeds = st.integers(0, 10 ** 6)


def make_batch(mask, seed=0, gap=0.5, dtype=torch.float64):
    """RolloutBatch + PolicyOutput (logp and entropy leaves with grad), per-token advantages of both signs."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.as_tensor(mask).long()
    B, T = mask.shape
    old_logp = (-torch.rand(B, T, generator=g, dtype=torch.float64) * 3).to(dtype)
    adv = (torch.randn(B, T, generator=g, dtype=torch.float64) * mask).to(dtype)
    logp = (old_logp + gap * torch.randn(B, T, generator=g, dtype=torch.float64).to(dtype)).requires_grad_(True)
    ent = (torch.rand(B, T, generator=g, dtype=torch.float64) * 2).to(dtype).requires_grad_(True)
    batch = RolloutBatch(prompt_ids=torch.ones(B, 2, dtype=torch.long), prompt_mask=torch.ones(B, 2, dtype=torch.long),
                         response_ids=torch.full((B, T), 5), response_mask=mask, old_logp=old_logp,
                         old_entropy=ent.detach(), group_ids=torch.arange(B), problems=[None] * B, texts=[""] * B,
                         truncated=torch.zeros(B, dtype=torch.bool), advantages=adv,
                         rewards=torch.zeros(B, dtype=torch.float64))
    return batch, PolicyOutput(logp=logp, entropy=ent, logits=torch.zeros(B, T, 3, dtype=dtype))


def loss_and_grad(fn, out):
    out.logp.grad = None
    loss, metrics = fn()
    loss.backward()
    return loss.detach(), out.logp.grad.clone(), metrics


cases = st.builds(lambda shape, seed, keep, gap: (shape, seed, keep, gap), shapes, seeds,
                  st.sampled_from([0.6, 1.0]), st.sampled_from([0.1, 0.5, 1.0]))


def build(case, dtype=torch.float64):
    shape, seed, keep, gap = case
    mask = torch.rand(*shape, generator=torch.Generator().manual_seed(seed + 1)) < keep
    return make_batch(mask, seed, gap, dtype)


# ------------------------------------------------------------------ the gradient-preserving clip

@given(case=cases, eps_l=st.floats(0.0, 0.9), eps_h=st.floats(0.0, 2.0), c=st.sampled_from([None, 3.0, 10.0]),
       dtype=st.sampled_from([torch.float32, torch.float64]))
def test_values_equal_dual_clip_ppo_and_gradient_differs_only_above_the_upper_bound(case, eps_l, eps_h, c, dtype):
    batch, out = build(case, dtype)
    A, m = batch.advantages, batch.response_mask
    gp, r1, clip1 = gp_clip_per_token(out.logp, batch.old_logp, A, eps_l, eps_h, c)
    pp, r2, clip2 = ppo_clip_per_token(out.logp, batch.old_logp, A, eps_l, eps_h, c)
    assert torch.equal(gp, pp) and torch.equal(r1, r2) and torch.equal(clip1, clip2)   # bitwise: no value changes
    n = max(1, int(m.sum()))
    g_gp = torch.autograd.grad(aggregate(gp, m), out.logp)[0]
    g_pp = torch.autograd.grad(aggregate(pp, m), out.logp)[0]
    region = m.bool() & (A > 0) & (r1.detach() > 1 + eps_h)
    assert torch.equal(g_gp[~region], g_pp[~region])
    torch.testing.assert_close(g_gp[region], -A[region] * (1 + eps_h) / n)                  # -A (1 + eps_h) / N
    assert (g_pp[region] == 0).all()


@pytest.mark.parametrize("agg", AGG)
@given(case=cases, adv_scaling=st.booleans())
@settings(max_examples=15)
def test_loss_value_is_ppo_on_the_scaled_advantage_and_gradient_matches(agg, case, adv_scaling):
    batch, out = build(case)
    cfg = AgenticAepoConfig(agg=agg, adv_scaling=adv_scaling, grad_preserving_clip=True)
    A = entropy_aware_advantage(batch.advantages, out.entropy, batch.response_mask, cfg.alpha) if adv_scaling \
        else batch.advantages
    scaled = RolloutBatch(**{**batch.__dict__, "advantages": A})
    l1, g1, m = loss_and_grad(lambda: agentic_aepo_loss(out, batch, cfg, None), out)
    l2, g2, _ = loss_and_grad(lambda: ppo_terms(out, scaled, cfg), out)
    assert torch.equal(l1, l2)
    gp, ratio, _ = gp_clip_per_token(out.logp, batch.old_logp, A, cfg.clip_low, cfg.clip_high, cfg.clip_ratio_c)
    g3 = torch.autograd.grad(aggregate(gp, batch.response_mask, agg), out.logp)[0]         # the tensor-bound form
    torch.testing.assert_close(g1, g3, rtol=1e-12, atol=1e-15)
    region = batch.response_mask.bool() & (A > 0) & (ratio.detach() > 1 + cfg.clip_high)
    assert torch.equal(g1[~region], g2[~region])
    if agg == "token-mean":                                                              # the card's formula
        n = max(1, int(batch.response_mask.sum()))
        torch.testing.assert_close(g1[region], -A[region] * (1 + cfg.clip_high) / n)
    assert m["frac_pos_above_clip"] == int(region.sum()) / max(1, int((batch.response_mask.bool() & (A > 0)).sum()))


@pytest.mark.parametrize("agg", AGG)
@given(case=cases, c=st.sampled_from([None, 3.0]))
@settings(max_examples=15)
def test_both_flags_off_is_ppo_terms_exactly(agg, case, c):
    batch, out = build(case)
    cfg = AgenticAepoConfig(agg=agg, clip_ratio_c=c, adv_scaling=False, grad_preserving_clip=False)
    l1, g1, _ = loss_and_grad(lambda: agentic_aepo_loss(out, batch, cfg, None), out)
    ppo = PPOClipConfig(clip_low=0.2, clip_high=0.28, clip_ratio_c=c, agg=agg)
    l2, g2, _ = loss_and_grad(lambda: ppo_terms(out, batch, ppo), out)
    assert torch.equal(l1, l2) and torch.equal(g1, g2)


# ------------------------------------------------------------------ the entropy-aware advantage

@given(case=cases, alpha=st.floats(0.0, 2.0))
def test_advantage_scaling_properties(case, alpha):
    batch, out = build(case)
    m, A, H = batch.response_mask.bool(), batch.advantages, out.entropy
    scale = 1 + alpha * standardized_entropy(H, m)
    if m.any():
        assert float(scale[m].mean()) == pytest.approx(1.0, abs=1e-12)               # mean (1 + alpha Hhat) = 1
    assert torch.equal(entropy_aware_advantage(A, H, m, 0.0), A)                       # alpha = 0: A~ = A
    At = entropy_aware_advantage(A, H, m, alpha)
    assert not At.requires_grad                                                         # Hhat is detached
    nz = m & (A != 0)
    h, ratio = H.detach()[nz], (At / torch.where(nz, A, torch.ones_like(A)))[nz]
    order = torch.argsort(h)
    assert (ratio[order].diff() >= -1e-12).all()                                        # A~/A increasing in H
    if alpha > 1e-3 and int(m.sum()) > 1 and float(H.detach()[m].std()) > 0:
        hs, rs = h[order], ratio[order]
        assert (rs.diff()[hs.diff() > 1e-9] > 0).all()                                  # strictly, for distinct H


def test_standardisation_edge_cases():
    H = torch.tensor([[0.3, 0.7, 9.0]])
    one = torch.tensor([[1, 0, 0]])
    assert standardized_entropy(H, one).tolist() == [[0.0, 0.0, 0.0]]                  # one token: Hhat = 0
    assert standardized_entropy(torch.full((2, 3), 0.4), torch.ones(2, 3)).abs().max() == 0   # std 0 -> 1
    assert standardized_entropy(H, torch.zeros(1, 3)).abs().max() == 0                  # empty
    two = torch.tensor([[1, 1, 0]])
    torch.testing.assert_close(standardized_entropy(H, two), torch.tensor([[-0.7071068, 0.7071068, 0.0]]))


# ------------------------------------------------------------------ edge cases, recipes

@pytest.mark.parametrize("case", ["empty", "zero_adv", "one_token", "extreme", "equal_entropy"])
@pytest.mark.parametrize("flags", [(True, True), (True, False), (False, True)])
def test_edge_cases_are_finite(case, flags):
    mask = {"empty": torch.zeros(2, 3), "one_token": torch.tensor([[0, 1, 0]])}.get(case, torch.ones(2, 3))
    batch, out = make_batch(mask, 3, gap=60.0 if case == "extreme" else 0.5, dtype=torch.float32)
    if case == "zero_adv":
        batch.advantages = torch.zeros_like(batch.advantages)
    if case == "equal_entropy":
        out = PolicyOutput(logp=out.logp, entropy=torch.full_like(out.entropy, 0.5), logits=out.logits)
    cfg = AgenticAepoConfig(adv_scaling=flags[0], grad_preserving_clip=flags[1])
    loss, grad, m = loss_and_grad(lambda: agentic_aepo_loss(out, batch, cfg, None), out)
    assert torch.isfinite(loss) and torch.isfinite(grad).all() and all(math.isfinite(v) for v in m.values())
    if case in ("empty", "zero_adv"):
        assert float(loss) == 0.0 and float(grad.abs().max()) == 0.0
    assert out.entropy.grad is None                                                      # no gradient through H


def test_on_policy_only_the_advantage_scaling_acts():
    batch, out = make_batch(torch.ones(3, 4), 5)
    out = PolicyOutput(logp=batch.old_logp.clone().requires_grad_(True), entropy=out.entropy, logits=out.logits)
    g = {}
    for clip in (True, False):
        cfg = AgenticAepoConfig(grad_preserving_clip=clip)
        _, g[clip], m = loss_and_grad(lambda: agentic_aepo_loss(out, batch, cfg, None), out)
        assert m["frac_pos_above_clip"] == 0.0
    assert torch.equal(g[True], g[False])
    At = entropy_aware_advantage(batch.advantages, out.entropy, batch.response_mask)
    torch.testing.assert_close(g[True], -At / 12)                                        # token-mean PG on A~


def test_recipes_and_config():
    want = {"agentic_aepo": (True, True), "aepo_adv_only": (True, False), "aepo_clip_only": (False, True)}
    for name, flags in want.items():
        r = get_recipe(name)
        assert (r.rollout, r.advantage, r.loss) == ("plain", "grpo", "agentic_aepo")
        assert r.train_cfg == {"minibatches": 4, "ppo_epochs": 2}
        cfg = make_config(AgenticAepoConfig, r.loss_cfg)
        assert (cfg.adv_scaling, cfg.grad_preserving_clip) == flags
        assert (cfg.clip_low, cfg.clip_high, cfg.clip_ratio_c, cfg.agg) == (0.2, 0.28, 10.0, "token-mean")  # dapo_stale's
        assert cfg.alpha == 0.2
    assert AgenticAepoConfig().clip_ratio_c == 3.0  # the derivative code's c stays the config default
    assert make_config(AgenticAepoConfig, {"adv_scaling": "false"}).adv_scaling is False
    with pytest.raises(ValueError, match=r"^AgenticAepoConfig\.alpha must be >= 0"):
        AgenticAepoConfig(alpha=-0.1)
