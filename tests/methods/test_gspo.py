"""GSPO (Zheng et al. 2025, arXiv 2507.18071): exact facts against independent computations. The same loss against TRL's and verl's own code:
tests/integrations/test_baseline_twins.py."""
from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st

from minirlvr.baselines import PPOClipConfig, ppo_clip_loss
from minirlvr.methods.gspo import GSPOConfig, gspo_loss
from seq_ratio_cases import check_finite_and_zero_on_empty_mask, check_on_policy_gradient_is_grpos, make, run, seeds


@given(seed=seeds, B=st.integers(1, 6), spread=st.sampled_from([0.0, 1e-4, 0.1, 1.0]))
def test_gspo_on_one_token_responses_is_ppo_clip(seed, B, spread):
    logp, batch = make(seed, B, 1, spread)
    cfg = GSPOConfig(clip_low=0.2, clip_high=0.28)
    ppo = PPOClipConfig(clip_low=0.2, clip_high=0.28, agg="seq-mean-token-mean")
    a, b = run(gspo_loss, cfg, logp, batch), run(ppo_clip_loss, ppo, logp, batch)
    torch.testing.assert_close(a[0], b[0])
    torch.testing.assert_close(a[1], b[1])


@given(seed=seeds, B=st.integers(1, 6), T=st.integers(1, 9), spread=st.sampled_from([0.0, 1e-4, 0.05, 1.0]),
       empty_row=st.booleans())
def test_gspo_token_form_equals_the_sequence_objective(seed, B, T, spread, empty_row):
    """Value and gradient of agg_seq-mean-token-mean(GSPO-token) == -(1/B') sum_i min(s_i A_i, clip(s_i) A_i)
    with s_i = exp(mean_t log r) carrying its gradient (the paper's J_GSPO)."""
    logp, batch = make(seed, B + empty_row, T, spread, empty_row=empty_row)
    cfg = GSPOConfig(clip_low=3e-4, clip_high=4e-4)
    value, grad, _ = run(gspo_loss, cfg, logp, batch)
    m = batch.response_mask
    L = m.sum(-1)
    rows = L > 0
    s = torch.exp(((logp - batch.old_logp) * m).sum(-1) / L.clamp(min=1))
    A = batch.advantages[:, 0]
    J = torch.minimum(s * A, s.clamp(1 - 3e-4, 1 + 4e-4) * A)[rows].sum() / rows.sum()
    (grad_ref,) = torch.autograd.grad(-J, logp)
    torch.testing.assert_close(value, -J.detach())
    torch.testing.assert_close(grad, grad_ref)


@given(seed=seeds, B=st.integers(1, 6), T=st.integers(1, 9))
def test_on_policy_the_gradient_is_grpos(seed, B, T):
    check_on_policy_gradient_is_grpos(gspo_loss, GSPOConfig(), "seq-mean-token-mean", seed, B, T)


def test_finite_on_extreme_ratios_and_zero_on_an_empty_mask():
    check_finite_and_zero_on_empty_mask(gspo_loss, GSPOConfig())
