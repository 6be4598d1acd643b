"""Shared cases for the sequence-ratio baselines' tests (test_gspo, test_cispo, test_gmpo, test_sapo):
random float64 loss calls and a (value, gradient) runner."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch
from hypothesis import strategies as st

seeds = st.integers(0, 10 ** 6)


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


def check_on_policy_gradient_is_grpos(loss_fn, cfg, agg: str, seed: int, B: int, T: int) -> None:
    """At r = 1 (old = current) the loss takes the plain policy gradient of PPO-clip with aggregation `agg`."""
    from minirlvr.baselines import PPOClipConfig, ppo_clip_loss
    logp, batch = make(seed, B, T, 0.0)
    batch.old_logp = logp.detach().clone()
    _, g_ref, _ = run(ppo_clip_loss, PPOClipConfig(agg=agg), logp, batch)
    torch.testing.assert_close(run(loss_fn, cfg, logp, batch)[1], g_ref)


def check_finite_and_zero_on_empty_mask(loss_fn, cfg) -> None:
    """Finite value and gradient at log-ratios of ~30 with an empty row; exactly 0 with an all-empty mask."""
    logp, batch = make(0, 3, 4, 30.0, empty_row=True)
    value, grad, _ = run(loss_fn, cfg, logp, batch)
    assert torch.isfinite(value) and torch.isfinite(grad).all()
    batch.response_mask = torch.zeros_like(batch.response_mask)
    value, grad, _ = run(loss_fn, cfg, logp, batch)
    assert float(value) == 0.0 and float(grad.abs().sum()) == 0.0
