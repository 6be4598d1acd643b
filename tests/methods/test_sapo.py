"""SAPO (Gao et al. 2025, arXiv 2511.20347): exact facts against independent computations. The same loss against TRL's and verl's own code:
tests/integrations/test_baseline_twins.py."""
from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st

from minirlvr.methods.sapo import SAPOConfig, sapo_gate, sapo_loss
from seq_ratio_cases import check_finite_and_zero_on_empty_mask, check_on_policy_gradient_is_grpos, seeds


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
    check_on_policy_gradient_is_grpos(sapo_loss, SAPOConfig(), "seq-mean-token-mean", seed, B, T)


def test_finite_on_extreme_ratios_and_zero_on_an_empty_mask():
    check_finite_and_zero_on_empty_mask(sapo_loss, SAPOConfig())
