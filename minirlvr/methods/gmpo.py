"""GMPO: Geometric-Mean Policy Optimization (Zhao et al., 2025, arXiv 2507.20673). In verl as `geo_mean`.

Stage changed: loss. GRPO maximises the ARITHMETIC mean over tokens of clipped ratios; one outlier token ratio
can dominate it. GMPO maximises the GEOMETRIC mean, with the clip applied per token in log space:

  l_{i,t} = log pi_theta(y_{i,t}) - log pi_old(y_{i,t})
  lc      = clip(l, -eps_l, eps_h)                                        (log space: ratio in [e^-eps_l, e^eps_h])
  l*      = sgn(A) min(sgn(A) l, sgn(A) lc)       (the pessimistic side, as PPO's min, decided by the sign of A)
  rho_i   = exp( (1/L_i) sum_t m_{i,t} l*_{i,t} )                         (geometric mean of clipped ratios)
  J_GMPO  = (1/G) sum_i A_i rho_i,     A_i = (1/L_i) sum_t m A_{i,t}      (sequence-level advantage)
Loss = -(1/B) sum_i A_i rho_i: a plain mean over rows (verl's `geo_mean` ignores loss_agg_mode; so does this).
With 1-token responses GMPO = PPO-clip with bounds e^-eps_l, e^eps_h (tested). Defaults eps_l = eps_h = 0.4
(the paper's wider clip (e^-0.4, e^0.4), which the geometric mean tolerates).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core import masked_mean
from ..registry import Recipe, check_range, register, register_recipe

PAPER = "Zhao et al. 2025, Geometric-Mean Policy Optimization (GMPO), arXiv 2507.20673"


@dataclass
class GMPOConfig:
    clip_low: float = 0.4    # eps_l: log-ratio floor -eps_l
    clip_high: float = 0.4   # eps_h: log-ratio ceiling eps_h

    def __post_init__(self):
        check_range(self, "clip_low", lo=0.0)
        check_range(self, "clip_high", lo=0.0)


@register("loss", "gmpo", config=GMPOConfig, paper=PAPER)
def gmpo_loss(out, batch, cfg: GMPOConfig, ctx):
    mask = batch.response_mask
    log_r = (out.logp - batch.old_logp).clamp(-20.0, 20.0)
    sgn = torch.sign(batch.advantages)
    log_rc = log_r.clamp(-cfg.clip_low, cfg.clip_high)
    log_star = sgn * torch.minimum(sgn * log_r, sgn * log_rc)
    rho = torch.exp(masked_mean(log_star, mask, dim=-1))             # geometric mean of the clipped ratios
    adv_seq = masked_mean(batch.advantages, mask, dim=-1)
    loss = (-adv_seq * rho).mean() if rho.numel() else out.logp.sum() * 0
    clipped = (log_r != log_rc) & mask.bool()
    return loss, {"pg_loss": float(loss.detach()),
                  "clipfrac_high": float(masked_mean((clipped & (batch.advantages > 0)).float(), mask)),
                  "clipfrac_low": float(masked_mean((clipped & (batch.advantages < 0)).float(), mask)),
                  "geo_ratio_mean": float(rho.detach().mean()) if rho.numel() else 1.0}


register_recipe(Recipe("gmpo", paper=PAPER, advantage="grpo", loss="gmpo"))
