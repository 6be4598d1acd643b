"""GSPO, CISPO, GMPO, SAPO (the baselines TRL and verl offer beside GRPO): exact reductions and gradient facts,
each against an independent computation. Cross-checks with TRL's and verl's own code: tests/integrations."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch
from hypothesis import given
from hypothesis import strategies as st

from minirlvr.baselines import PPOClipConfig, ppo_clip_loss
from minirlvr.methods.cispo import CISPOConfig, cispo_loss
from minirlvr.methods.gmpo import GMPOConfig, gmpo_loss
from minirlvr.methods.gspo import GSPOConfig, gspo_loss
from minirlvr.methods.sapo import SAPOConfig, sapo_gate, sapo_loss


def make(seed: int, B: int, T: int, spread: float = 0.5, per_row: bool = True, empty_row: bool = False):
    """(logp leaf, batch) in float64: per-row (sequence-level) advantages unless per_row=False."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, T + 1, B)
    if empty_row:
        lengths[0] = 0
    mask = torch.tensor(np.arange(T)[None] < lengths[:, None], dtype=torch.float64)
    old = torch.tensor(-rng.exponential(1.5, (B, T)))
    logp = (old + torch.tensor(rng.normal(0, spread, (B, T)))).clamp(max=0.0).requires_grad_(True)
    adv = torch.tensor(rng.normal(size=(B, 1)) if per_row else rng.normal(size=(B, T))) * torch.ones(B, T,
                                                                                                    dtype=torch.float64)
    batch = SimpleNamespace(response_mask=mask, old_logp=old, advantages=adv * mask)
    return logp, batch


def run(loss_fn, cfg, logp, batch):
    loss, metrics = loss_fn(SimpleNamespace(logp=logp, entropy=None), batch, cfg, None)
    (grad,) = torch.autograd.grad(loss, logp)
    return loss.detach(), grad, metrics


seeds = st.integers(0, 10 ** 6)


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
def test_on_policy_every_baseline_takes_grpos_gradient(seed, B, T):
    """At r = 1 (old = current) GSPO, GMPO, SAPO and CISPO all give the plain policy gradient of GRPO's
    seq-mean-token-mean PPO-clip (CISPO: with its token-mean aggregation, vs PPO token-mean)."""
    logp, batch = make(seed, B, T, 0.0)
    batch.old_logp = logp.detach().clone()
    _, g_ref, _ = run(ppo_clip_loss, PPOClipConfig(agg="seq-mean-token-mean"), logp, batch)
    for fn, cfg in ((gspo_loss, GSPOConfig()), (gmpo_loss, GMPOConfig()), (sapo_loss, SAPOConfig())):
        torch.testing.assert_close(run(fn, cfg, logp, batch)[1], g_ref)
    _, g_tok, _ = run(ppo_clip_loss, PPOClipConfig(agg="token-mean"), logp, batch)
    torch.testing.assert_close(run(cispo_loss, CISPOConfig(), logp, batch)[1], g_tok)


@given(r=st.floats(0.0, 50.0), tau=st.floats(0.1, 20.0), sign=st.sampled_from([-1.0, 1.0]))
def test_sapo_gate_slope_is_4_sigma_1_minus_sigma_in_0_1(r, tau, sign):
    ratio = torch.tensor([r], dtype=torch.float64, requires_grad=True)
    adv = torch.tensor([sign], dtype=torch.float64)
    (slope,) = torch.autograd.grad(sapo_gate(ratio, adv, tau, tau).sum(), ratio)
    sig = torch.sigmoid(torch.tensor(tau * (r - 1.0), dtype=torch.float64))
    torch.testing.assert_close(slope[0], 4 * sig * (1 - sig))
    assert 0.0 <= float(slope) <= 1.0 + 1e-12


def test_losses_stay_finite_on_extreme_ratios_and_empty_masks():
    logp, batch = make(0, 3, 4, 30.0, empty_row=True)
    for fn, cfg in ((gspo_loss, GSPOConfig()), (gmpo_loss, GMPOConfig()), (sapo_loss, SAPOConfig()),
                    (cispo_loss, CISPOConfig())):
        value, grad, _ = run(fn, cfg, logp, batch)
        assert torch.isfinite(value) and torch.isfinite(grad).all(), fn.__name__
        batch0 = SimpleNamespace(response_mask=torch.zeros_like(batch.response_mask), old_logp=batch.old_logp,
                                 advantages=batch.advantages)
        value, grad, _ = run(fn, cfg, logp, batch0)
        assert float(value) == 0.0 and float(grad.abs().sum()) == 0.0, fn.__name__
