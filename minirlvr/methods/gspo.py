"""GSPO: Group Sequence Policy Optimization (Zheng et al., Qwen team, 2025, arXiv 2507.18071).
In TRL as GRPOConfig(importance_sampling_level="sequence"), in verl as policy loss `gspo`.

Stage changed: loss. The importance ratio of a response is the geometric mean of its token ratios
(length-normalised sequence likelihood ratio), and the PPO clip acts on that one number:

  l_{i,t} = log pi_theta(y_{i,t}) - log pi_old(y_{i,t}),   L_i = sum_t m_{i,t}  (response length)
  s_i     = exp( (1/L_i) sum_t m_{i,t} l_{i,t} )                                   (sequence ratio)
  J_GSPO  = (1/G) sum_i min( s_i A_i, clip(s_i, 1 - eps_l, 1 + eps_h) A_i )

Token form (GSPO-token, the paper's eq. for per-token advantages, and verl's implementation):
  s_{i,t} = sg[s_i] * pi_theta(y_{i,t}) / sg[pi_theta(y_{i,t})]    (value s_i; gradient s_i grad log pi_t)
  loss    = agg_t( max(-A_{i,t} s_{i,t}, -A_{i,t} clip(s_{i,t}, 1 - eps_l, 1 + eps_h)) ),  agg = seq-mean-token-mean
With a sequence-level advantage (A_{i,t} = A_i) and seq-mean-token-mean, the token form has exactly the value
and gradient of J_GSPO (tested). With 1-token responses s_i = r_i: GSPO = PPO-clip (tested).

Defaults: eps_l = 3e-4, eps_h = 4e-4 (the paper's; a sequence ratio moves far less than a token ratio), no KL.
The log of s_{i,t} is clamped at 10 before exp (verl does the same).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from ..core import aggregate, masked_mean
from ..registry import Recipe, check_range, register, register_recipe

PAPER = "Zheng et al. 2025, Group Sequence Policy Optimization (GSPO), arXiv 2507.18071"


def sequence_log_ratio(logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(1/L_i) sum_t m (log pi - log pi_old) per row [B]; 0 for an empty row. Carries the gradient of logp."""
    return masked_mean(logp - old_logp, mask, dim=-1)


@dataclass
class GSPOConfig:
    clip_low: float = 3e-4    # eps_l on the sequence ratio s_i
    clip_high: float = 4e-4   # eps_h
    agg: Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum",
                 "seq-mean-token-sum-norm"] = "seq-mean-token-mean"   # the paper's (and verl's recommended)

    def __post_init__(self):
        check_range(self, "clip_low", lo=0.0, hi=1.0)
        check_range(self, "clip_high", lo=0.0)


@register("loss", "gspo", config=GSPOConfig, paper=PAPER)
def gspo_loss(out, batch, cfg: GSPOConfig, ctx):
    mask = batch.response_mask
    log_s = sequence_log_ratio(out.logp, batch.old_logp, mask).detach()             # log s_i, no gradient
    log_s_tok = (out.logp - out.logp.detach() + log_s[:, None]).clamp(max=10.0)      # value log s_i, grad of log pi_t
    s = log_s_tok.exp()
    adv = batch.advantages
    unclipped, clipped_val = -adv * s, -adv * s.clamp(1.0 - cfg.clip_low, 1.0 + cfg.clip_high)
    loss = aggregate(torch.maximum(unclipped, clipped_val), mask, cfg.agg)
    seq_s = log_s.exp()
    rows = mask.sum(-1) > 0
    return loss, {"pg_loss": float(loss.detach()),
                  "clipfrac": float(masked_mean((clipped_val > unclipped).float(), mask)),
                  "seq_ratio_mean": float(seq_s[rows].mean()) if bool(rows.any()) else 1.0,
                  "seq_ratio_max_dev": float((seq_s[rows] - 1).abs().max()) if bool(rows.any()) else 0.0}


register_recipe(Recipe("gspo", paper=PAPER, advantage="grpo", loss="gspo"))
