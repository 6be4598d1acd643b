"""Agentic Entropy-Balanced Policy Optimization (AEPO) -- Dong et al. 2025, arXiv 2510.14545.
Official code: the paper points to dongguanting/ARPO (AEPO folder; mirrored as RUC-NLPIR/ARPO), whose public
copies lack that folder. Evidence used: a derivative verl project that ships AEPO's update rule as
`compute_policy_loss_entropy_balanced_clipping` (flags enable_entropy_balanced_clipping /
enable_entropy_balanced_advantage), which matches the paper's description.

Stage changed: loss (entropy-aware advantage + gradient-preserving upper clip). ONLY THE UPDATE HALF:
the paper's entropy-balanced rollout (global samples m = k sigmoid(beta (H_root - H_tool)), branching at
tool calls with a penalty on consecutive high-entropy branches) needs tool calls and is out of scope;
rollout here is plain sampling.

Idea: PPO's upper clip silences exactly the tokens that move fastest -- low-probability, high-entropy
positive tokens -- and gives high-entropy tokens no more weight than confident ones. AEPO keeps a rescaled
gradient beyond the upper bound (a stop-gradient trick that changes no loss value) and scales
advantages up with the token's entropy.

Symbols, per valid token j of one loss call (N valid tokens; sg = stop-gradient):
  l_j, l_old_j   log pi_theta / log pi_old of the sampled token;  r_j = exp(clamp(l_j - l_old_j, -20, 20))
  H_j            entropy of the CURRENT policy at the training temperature (out.entropy of this forward
                 pass, as the derivative code, which receives the actor's entropy), detached
  Hhat_j = (H_j - mean H) / std H    over the N valid tokens, unbiased std; std = 0 -> 1; N = 1 -> Hhat = 0
  A~_j = A_j (1 + alpha Hhat_j),  alpha = 0.2   (adv_scaling);  mean_j (1 + alpha Hhat_j) = 1
  u_j = (1 + eps_h) r_j / sg(r_j)   a TENSOR bound: value 1 + eps_h, gradient (1 + eps_h) dl_j
  L_j = max(-A~ r, -A~ clip(r, 1 - eps_l, u)),  then for A~ < 0:  L_j = min(L_j, -c A~)   (c = 3)
  loss = token-mean(L)
Net effect vs dual-clip PPO on A~ (identical loss values everywhere):
  A~ > 0, r > 1 + eps_h:  dL/dl = -A~ (1 + eps_h) instead of 0 (the only change; d loss/dl = that / N, token-mean)
  A~ < 0 or inside the band: unchanged (the lower bound is a constant: PPO's zero gradient below 1 - eps_l)
Implementation: ppo_terms on A~ (PPO value, KL / entropy terms, metrics) plus agg(L_gp - L_ppo) on the
tokens A~ > 0, r > 1 + eps_h, which is exactly 0 in value and carries the gradient difference (agg is linear).
Flags: adv_scaling, grad_preserving_clip switch each half; both off = ppo_terms exactly.

Card vs paper/official code:
  * alpha = 0.2 is hard-coded in the derivative code (a setting here). Its std() is NaN for one valid token
    (NaN advantages); here Hhat = 0 then. It does not clamp the log-ratio; here +-20 as everywhere.
  * Clip ranges for the reasoning runs were not confirmed; eps_l / eps_h = 0.2 / 0.28 (DAPO's), c = 3 (the
    derivative function's default, verl's clip_ratio_c). The issue's DAPO-like control `dapo_stale` uses
    c = 10: compare against it with `--set loss.clip_ratio_c=3` (or run these recipes with both flags off).
    c only acts on A~ < 0 tokens with r > c (logged as `dualclip_frac`).
  * Statistics per loss call (here = the optimizer minibatch; verl: per micro-batch).
  * The derivative clamps r to the tensor bounds (1 - eps_l, u); here where(r > 1 + eps_h, u, max(r, 1 - eps_l)):
    the same values, but no gradient leaks into u where both bounds tie (eps_l = eps_h = 0).
Metrics (also with the clip off, for the ablations): frac_pos_above_clip = #(A~ > 0, r > 1 + eps_h) / #(A~ > 0)
(the tokens that now carry gradient), entropy_pos_above_clip (their mean H), entropy_valid_mean,
adv_scale_abs_mean = mean |A~ - A|, dualclip_frac, plus ppo_terms' clipfrac / clipfrac_high / clipfrac_low.
Pitfalls: a Python-float upper bound would lose the gradient path (the bound must be a tensor); the trick
is one-sided (doing it at the lower bound too is GPPO, another method); AEPO here is unrelated to the
"AEPO" of arbitrary-entropy PO. The clip half acts only on tokens past 1 + eps_h (few at low staleness:
see frac_pos_above_clip); on-policy (r = 1) only the advantage scaling acts.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import torch

from ..baselines import DAPO_PPO, STALE, PPOClipConfig, ppo_terms, reference_if_kl
from ..core import aggregate, clamped_log_ratio, masked_mean, ppo_clip_per_token
from ..registry import Recipe, check_range, register, register_recipe

PAPER = "Dong et al. 2025, Agentic Entropy-Balanced Policy Optimization, arXiv 2510.14545"


def standardized_entropy(entropy: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Hhat = (H - mean H) / std H over the valid tokens (unbiased std; std = 0 or one token -> std 1),
    detached; 0 off the mask. [B, T] -> [B, T]."""
    h, valid = entropy.detach(), mask.bool()
    zero = torch.zeros((), dtype=h.dtype, device=h.device)
    if int(valid.sum()) == 0:
        return torch.zeros_like(h)
    vals = h[valid]
    mean = vals.mean()
    std = vals.std() if vals.numel() > 1 else torch.ones((), dtype=h.dtype, device=h.device)
    std = torch.where(std > 0, std, torch.ones_like(std))
    return torch.where(valid, (h - mean) / std, zero)


def entropy_aware_advantage(adv: torch.Tensor, entropy: torch.Tensor, mask: torch.Tensor,
                            alpha: float = 0.2) -> torch.Tensor:
    """A~ = A (1 + alpha Hhat), Hhat detached (only the advantage's size changes, not the gradient path)."""
    return adv * (1 + alpha * standardized_entropy(entropy, mask))


def gp_clip_per_token(logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, clip_low: float = 0.2,
                      clip_high: float = 0.28, clip_ratio_c: float | None = 3.0):
    """Dual-clip PPO (core.ppo_clip_per_token) with the gradient-preserving TENSOR upper bound
    u = (1 + eps_h) r / sg(r) where PPO's upper clip binds (A > 0, r > 1 + eps_h): the same value
    -A (1 + eps_h) (r / sg(r) is exactly 1.0), gradient -A (1 + eps_h) dl instead of 0. Everywhere else
    PPO unchanged (ties r = 1 + eps_h included). Returns (loss, ratio, clipped) with PPO's `clipped`."""
    loss, ratio, clipped = ppo_clip_per_token(logp, old_logp, adv, clip_low, clip_high, clip_ratio_c)
    upper = (1.0 + clip_high) * (ratio / ratio.detach())
    above = (adv > 0) & (ratio.detach() > 1.0 + clip_high)
    return torch.where(above, -adv * upper, loss), ratio, clipped


@dataclass
class AgenticAepoConfig(PPOClipConfig):
    clip_low: float = 0.2               # eps_l (constant lower bound 1 - eps_l)
    clip_high: float = 0.28             # eps_h (DAPO clip-higher; the gradient-preserving bound)
    clip_ratio_c: float | None = 3.0    # dual clip for A~ < 0 (derivative code / verl default)
    agg: Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum",
                 "seq-mean-token-sum-norm"] = "token-mean"
    alpha: float = 0.2                  # entropy weight of A~ = A (1 + alpha Hhat)
    adv_scaling: bool = True            # entropy-aware advantage on / off
    grad_preserving_clip: bool = True   # gradient-preserving upper clip on / off

    def __post_init__(self):
        super().__post_init__()
        check_range(self, "alpha", lo=0.0)


@register("loss", "agentic_aepo", config=AgenticAepoConfig, paper=PAPER, needs=reference_if_kl)
def agentic_aepo_loss(out, batch, cfg: AgenticAepoConfig, ctx):
    mask = batch.response_mask
    adv = entropy_aware_advantage(batch.advantages, out.entropy, mask, cfg.alpha) if cfg.adv_scaling \
        else batch.advantages
    loss, metrics = ppo_terms(out, replace(batch, advantages=adv), cfg)
    ratio = clamped_log_ratio(out.logp.detach(), batch.old_logp).exp()
    above = mask.bool() & (adv > 0) & (ratio > 1.0 + cfg.clip_high)   # clipped by PPO; carry gradient with gp
    if cfg.grad_preserving_clip:
        gp, _, _ = gp_clip_per_token(out.logp, batch.old_logp, adv, cfg.clip_low, cfg.clip_high, cfg.clip_ratio_c)
        ppo, _, _ = ppo_clip_per_token(out.logp, batch.old_logp, adv, cfg.clip_low, cfg.clip_high, cfg.clip_ratio_c)
        loss = loss + aggregate(torch.where(above, gp - ppo, torch.zeros_like(gp)), mask, cfg.agg, cfg.max_len)
    h, pos = out.entropy.detach(), mask.bool() & (adv > 0)
    dual = mask.bool() & (adv < 0) & (ratio > cfg.clip_ratio_c) if cfg.clip_ratio_c else torch.zeros_like(pos)
    metrics.update(frac_pos_above_clip=float(above.sum()) / max(1, int(pos.sum())),
                   entropy_pos_above_clip=float(masked_mean(h, above)),
                   entropy_valid_mean=float(masked_mean(h, mask)),
                   adv_scale_abs_mean=float(masked_mean((adv - batch.advantages).abs().detach(), mask)),
                   dualclip_frac=float(masked_mean(dual.to(h.dtype), mask)))
    return loss, metrics


# Recipes: the stale regime and DAPO's PPO settings of the baseline `dapo_stale` (incl. its dual clip c = 10,
# not the derivative code's 3, which stays the config default), so each recipe differs from it only in AEPO's
# halves. c only acts on A < 0 tokens with r > c (logged: dualclip_frac).
_LOSS = {**DAPO_PPO, "alpha": 0.2}
for _name, _adv, _clip, _what in (("agentic_aepo", True, True, "both halves"),
                                  ("aepo_adv_only", True, False, "ablation: entropy-aware advantage only"),
                                  ("aepo_clip_only", False, True, "ablation: gradient-preserving clip only")):
    register_recipe(Recipe(_name, paper=f"{PAPER} ({_what}; update half only, plain rollout)", rollout="plain",
                           advantage="grpo", loss="agentic_aepo", train_cfg=dict(STALE),
                           loss_cfg={**_LOSS, "adv_scaling": _adv, "grad_preserving_clip": _clip}))
