"""SAPO (Gao et al. 2025, arXiv 2511.20347): exact facts against independent computations. The same loss against TRL's and verl's own code:
tests/integrations/test_baseline_twins.py."""
from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st

from minirlvr.baselines import PPOClipConfig, ppo_clip_loss
from minirlvr.methods.sapo import SAPOConfig, sapo_gate, sapo_loss
from seq_ratio_cases import make, run, seeds


@given(r=st.floats(0.0, 50.0), tau=st.floats(0.1, 20.0), sign=st.sampled_from([-1.0, 1.0]))
def test_sapo_gate_slope_is_4_sigma_1_minus_sigma_in_0_1(r, tau, sign):
    ratio = torch.tensor([r], dtype=torch.float64, requires_grad=True)
    adv = torch.tensor([sign], dtype=torch.float64)
    (slope,) = torch.autograd.grad(sapo_gate(ratio, adv, tau, tau).sum(), ratio)
    sig = torch.sigmoid(torch.tensor(tau * (r - 1.0), dtype=torch.float64))
    torch.testing.assert_close(slope[0], 4 * sig * (1 - sig))
    assert 0.0 <= float(slope) <= 1.0 + 1e-12


@given(seed=seeds, B=st.integers(1, 6), T=st.integers(1, 9))
def test_on_policy_the_gradient_is_grpos(seed, B, T):
    """At r = 1 (old = current) the loss takes the plain policy gradient of PPO-clip with the same aggregation
    (seq-mean-token-mean)."""
    logp, batch = make(seed, B, T, 0.0)
    batch.old_logp = logp.detach().clone()
    _, g_ref, _ = run(ppo_clip_loss, PPOClipConfig(agg="seq-mean-token-mean"), logp, batch)
    torch.testing.assert_close(run(sapo_loss, SAPOConfig(), logp, batch)[1], g_ref)


def test_finite_on_extreme_ratios_and_zero_on_an_empty_mask():
    logp, batch = make(0, 3, 4, 30.0, empty_row=True)
    value, grad, _ = run(sapo_loss, SAPOConfig(), logp, batch)
    assert torch.isfinite(value) and torch.isfinite(grad).all()
    batch.response_mask = torch.zeros_like(batch.response_mask)
    value, grad, _ = run(sapo_loss, SAPOConfig(), logp, batch)
    assert float(value) == 0.0 and float(grad.abs().sum()) == 0.0
