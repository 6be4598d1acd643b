"""CISPO (MiniMax-M1, 2025, arXiv 2506.13585): exact facts against independent computations. The same loss against TRL's and verl's own code:
tests/integrations/test_baseline_twins.py."""
from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st

from minirlvr.baselines import PPOClipConfig, ppo_clip_loss
from minirlvr.methods.cispo import CISPOConfig, cispo_loss
from seq_ratio_cases import check_finite_and_zero_on_empty_mask, check_on_policy_gradient_is_grpos, make, run, seeds


@given(seed=seeds, B=st.integers(1, 5), T=st.integers(1, 8), per_row=st.booleans())
def test_cispo_gradient_is_ppos_unclipped_one_inside_the_band_and_kept_outside(seed, B, T, per_row):
    logp, batch = make(seed, B, T, 1.0, per_row=per_row)
    _, g_cispo, _ = run(cispo_loss, CISPOConfig(clip_low=0.2, clip_high=0.28, agg="token-mean"), logp, batch)
    _, g_free, _ = run(ppo_clip_loss, PPOClipConfig(clip_low=1.0, clip_high=1e9, agg="token-mean"), logp, batch)
    r = (logp - batch.old_logp).exp().detach()
    m, A = batch.response_mask, batch.advantages
    inside = (r >= 0.8) & (r <= 1.28)
    torch.testing.assert_close(g_cispo[inside], g_free[inside])           # = -A r / N there
    # outside the band the weight is clamped, never zeroed (PPO would zero a clipped token): -A clamp(r) / N
    n = m.sum()
    expected = -A * r.clamp(0.8, 1.28) * m / n
    torch.testing.assert_close(g_cispo, expected)


def test_cispo_without_a_floor_keeps_small_weights():
    logp, batch = make(3, 4, 6, 2.0)
    _, g, _ = run(cispo_loss, CISPOConfig(clip_low=None, clip_high=4.0), logp, batch)
    r = (logp - batch.old_logp).exp().detach()
    m, A = batch.response_mask, batch.advantages
    torch.testing.assert_close(g, -A * r.clamp(max=5.0) * m / m.sum())
    assert bool(((r < 0.5) & m.bool()).any())                            # the case exists on this batch


@given(seed=seeds, B=st.integers(1, 6), T=st.integers(1, 9))
def test_on_policy_the_gradient_is_grpos(seed, B, T):
    check_on_policy_gradient_is_grpos(cispo_loss, CISPOConfig(), "token-mean", seed, B, T)


def test_finite_on_extreme_ratios_and_zero_on_an_empty_mask():
    check_finite_and_zero_on_empty_mask(cispo_loss, CISPOConfig())
