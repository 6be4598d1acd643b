"""SAPO: Soft Adaptive Policy Optimization (Gao et al., Qwen team, 2025, arXiv 2511.20347).
In TRL as loss_type="sapo", in verl as policy loss `sapo`.

Stage changed: loss. The hard PPO clip (gradient exactly 0 outside [1 - eps, 1 + eps]) becomes a smooth,
temperature-controlled gate: tokens far off-policy are down-weighted, not cut off.

  r = pi_theta(y_t) / pi_old(y_t),   tau = tau_pos if A > 0 else tau_neg
  f(r) = (4 / tau) sigmoid(tau (r - 1))            per-token surrogate, loss = agg( -f(r) A )
  df/dr = 4 sigmoid(u)(1 - sigmoid(u)),  u = tau (r - 1):  = 1 at r = 1 (on-policy: the plain policy gradient,
  as PPO's), decays like 4 e^{-tau |r - 1|} away from it, and is always in (0, 1].
A larger tau_neg than tau_pos (1.05 vs 1.0, the paper's) damps negative-advantage tokens faster: their ratios
are the ones that blow up. Aggregation seq-mean-token-mean (verl hard-codes it; TRL's "sapo" uses it too).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from ..core import aggregate, clamped_log_ratio, masked_mean
from ..registry import Recipe, check_range, register, register_recipe

PAPER = "Gao et al. 2025, Soft Adaptive Policy Optimization (SAPO), arXiv 2511.20347"


@dataclass
class SAPOConfig:
    tau_pos: float = 1.0     # gate temperature for A > 0
    tau_neg: float = 1.05    # gate temperature for A <= 0
    agg: Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum",
                 "seq-mean-token-sum-norm"] = "seq-mean-token-mean"

    def __post_init__(self):
        check_range(self, "tau_pos", lo=0.0, lo_open=True)
        check_range(self, "tau_neg", lo=0.0, lo_open=True)


def sapo_gate(ratio: torch.Tensor, advantages: torch.Tensor, tau_pos: float, tau_neg: float) -> torch.Tensor:
    """f(r) = (4 / tau) sigmoid(tau (r - 1)), tau by the sign of A. [B, T] -> [B, T]."""
    tau = torch.where(advantages > 0, torch.full_like(ratio, tau_pos), torch.full_like(ratio, tau_neg))
    return torch.sigmoid(tau * (ratio - 1.0)) * (4.0 / tau)


@register("loss", "sapo", config=SAPOConfig, paper=PAPER)
def sapo_loss(out, batch, cfg: SAPOConfig, ctx):
    mask = batch.response_mask
    ratio = clamped_log_ratio(out.logp, batch.old_logp).exp()
    loss = aggregate(-sapo_gate(ratio, batch.advantages, cfg.tau_pos, cfg.tau_neg) * batch.advantages, mask, cfg.agg)
    return loss, {"pg_loss": float(loss.detach()), "ratio_mean": float(masked_mean(ratio.detach(), mask))}


register_recipe(Recipe("sapo", paper=PAPER, advantage="grpo", loss="sapo"))
