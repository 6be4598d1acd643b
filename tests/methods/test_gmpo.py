"""GMPO (Zhao et al. 2025, arXiv 2507.20673): exact facts against independent computations. The same loss against TRL's and verl's own code:
tests/integrations/test_baseline_twins.py."""
from __future__ import annotations

import numpy as np
import torch
from hypothesis import given
from hypothesis import strategies as st

from minirlvr.baselines import PPOClipConfig, ppo_clip_loss
from minirlvr.methods.gmpo import GMPOConfig, gmpo_loss
from seq_ratio_cases import check_finite_and_zero_on_empty_mask, check_on_policy_gradient_is_grpos, make, run, seeds


@given(seed=seeds, B=st.integers(1, 6), spread=st.sampled_from([0.0, 0.1, 1.0]))
def test_gmpo_on_one_token_responses_is_ppo_clip_with_log_space_bounds(seed, B, spread):
    logp, batch = make(seed, B, 1, spread)
    eps_l, eps_h = 0.4, 0.3
    a = run(gmpo_loss, GMPOConfig(clip_low=eps_l, clip_high=eps_h), logp, batch)
    ppo = PPOClipConfig(clip_low=1 - float(np.exp(-eps_l)), clip_high=float(np.exp(eps_h)) - 1, agg="seq-mean-token-mean")
    b = run(ppo_clip_loss, ppo, logp, batch)
    torch.testing.assert_close(a[0], b[0])
    torch.testing.assert_close(a[1], b[1])


@given(seed=seeds, B=st.integers(1, 6), T=st.integers(2, 9))
def test_gmpo_geometric_mean_never_exceeds_the_arithmetic_one(seed, B, T):
    """AM-GM on each row's clipped ratios: rho_i <= mean_t r*_t (the outlier-robustness GMPO is about)."""
    logp, batch = make(seed, B, T, 1.0)
    m = batch.response_mask
    lr = (logp - batch.old_logp).detach()
    sgn = torch.sign(batch.advantages)
    star = sgn * torch.minimum(sgn * lr, sgn * lr.clamp(-0.4, 0.4))
    L = m.sum(-1)
    geo = torch.exp((star * m).sum(-1) / L)
    arith = (star.exp() * m).sum(-1) / L
    assert bool((geo <= arith + 1e-12).all())
    value, _, metrics = run(gmpo_loss, GMPOConfig(), logp, batch)
    torch.testing.assert_close(value, -(batch.advantages[:, 0] * geo).mean())


@given(seed=seeds, B=st.integers(1, 6), T=st.integers(1, 9))
def test_on_policy_the_gradient_is_grpos(seed, B, T):
    check_on_policy_gradient_is_grpos(gmpo_loss, GMPOConfig(), "seq-mean-token-mean", seed, B, T)


def test_finite_on_extreme_ratios_and_zero_on_an_empty_mask():
    check_finite_and_zero_on_empty_mask(gmpo_loss, GMPOConfig())
