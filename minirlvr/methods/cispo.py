"""CISPO: Clipped IS-weight Policy Optimization, from MiniMax-M1 (MiniMax, 2025, arXiv 2506.13585).
In TRL as loss_type="cispo", in verl as policy loss `cispo`.

Stage changed: loss. PPO clips the update (a clipped token gets no gradient at all); CISPO keeps every token's
REINFORCE gradient and clips, then stops the gradient of, its importance weight:

  r_{i,t}  = pi_theta(y_{i,t}) / pi_old(y_{i,t})
  rhat     = clip(r, 1 - eps_l, 1 + eps_h)           (eps_l = None: no lower bound, the paper's setting)
  J_CISPO  = (1 / sum_i |o_i|) sum_i sum_t sg(rhat_{i,t}) A_{i,t} log pi_theta(y_{i,t})     (token-mean)
  grad     = sg(rhat) A grad log pi   -- inside the band equal to PPO's unclipped gradient A r grad log pi.

Conventions: TRL clamps r at an absolute maximum `epsilon_high` (ScaleRL's eps_max, recommended 5.0) with no
lower bound = clip_low None, clip_high = eps_max - 1 here; verl clamps to [1 - eps_l, 1 + eps_h]. The loss value
is -sg(rhat) A log pi, which is not a ratio objective: its value is not comparable with PPO's, its gradient is.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from ..core import aggregate, clamped_log_ratio, masked_mean
from ..registry import Recipe, check_range, register, register_recipe

PAPER = "MiniMax 2025, MiniMax-M1: Scaling Test-Time Compute Efficiently with Lightning Attention (CISPO), arXiv 2506.13585"


@dataclass
class CISPOConfig:
    clip_low: float | None = None   # eps_l: weight floor 1 - eps_l; None = no floor (the paper)
    clip_high: float = 4.0          # eps_h: weight ceiling 1 + eps_h (TRL's recommended eps_max 5.0 = 1 + 4.0)
    agg: Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum",
                 "seq-mean-token-sum-norm"] = "token-mean"   # the paper's 1 / sum |o_i|

    def __post_init__(self):
        check_range(self, "clip_low", lo=0.0, hi=1.0)
        check_range(self, "clip_high", lo=0.0)


def cispo_weight(logp: torch.Tensor, old_logp: torch.Tensor, clip_low: float | None, clip_high: float):
    """(rhat = clip(r, 1 - eps_l, 1 + eps_h) detached, r detached) [B, T]."""
    r = clamped_log_ratio(logp.detach(), old_logp).exp()
    return r.clamp(min=None if clip_low is None else 1.0 - clip_low, max=1.0 + clip_high), r


@register("loss", "cispo", config=CISPOConfig, paper=PAPER)
def cispo_loss(out, batch, cfg: CISPOConfig, ctx):
    mask = batch.response_mask
    rhat, r = cispo_weight(out.logp, batch.old_logp, cfg.clip_low, cfg.clip_high)
    loss = aggregate(-rhat * batch.advantages * out.logp, mask, cfg.agg)
    return loss, {"pg_loss": float(loss.detach()), "clipfrac": float(masked_mean((rhat != r).float(), mask)),
                  "ratio_mean": float(masked_mean(r, mask))}


register_recipe(Recipe("cispo", paper=PAPER, advantage="grpo", loss="cispo"))
