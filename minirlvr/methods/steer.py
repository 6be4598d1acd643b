"""STEER -- Rethinking Entropy Interventions in RLVR: An Entropy Change Perspective, 2025, arXiv 2510.10150.
Official code: zz-haooo/STEER (verl v0.4.1 fork): verl/trainer/ppo/core_algos.py `compute_token_weights`,
`compute_policy_loss_with_entropy` (loss_mode "entropy_control"); workers/actor/dp_actor.py; run/run_*.sh.

Stage changed: loss (a detached per-token weight on DAPO's dual-clip PPO loss). Rollout plain, reward the
verifier, advantage GRPO -- what the official scripts run (no dynamic sampling, no overlong shaping).

Idea: split the entropy change of one update into token contributions, estimate each token's contribution
Omega, and damp the tokens that move entropy most (large |Omega|) while boosting the quiet ones, so the
per-step entropy change stays moderate in both directions.

Symbols, per valid token j of ONE loss call (here: the whole optimizer minibatch, see below):
  p_j = exp(l_j)      current-policy probability of the sampled token, clamped to [1e-8, 1 - 1e-8]
  q_j = exp(l_old_j)  rollout-policy probability, clamped to [1e-8, 1]
  H_j                 entropy of the ROLLOUT policy at that position (batch.old_entropy; verl stores it in
                      the old-log-prob pass), never the current one
  A_j                 advantage (GRPO), r_j = exp(clamp(l_j - l_old_j, -20, 20))

  Omega_j = (A_j / q_j) p_j (1 - p_j) (log p_j + H_j)            no grad; non-finite -> 0
  Single-logit sensitivity: dH/dz_k = -p_k (log p_k + H), so moving only the sampled logit by
  eps_j = eta A_j (1 - p_j) / q_j changes H by -eta Omega_j + O(eta^2): Omega > 0 lowers entropy.
  (For reference: one gradient step on A r moves ALL logits of the position, dz_v = eta A (p/q)(1[v=k] - pi_v),
  and changes H by -eta A (p/q)[p (log p + H) - sum_v pi_v^2 (log pi_v + H)] to first order; Omega is the
  code's quantity, not this one -- the paper's theorem was not retrieved. Both identities are tested.)

  a_j = |Omega_j|, m = min_j a_j, M = max_j a_j over the valid tokens of the loss call
  linear (default):  w_j = clip(lam_max - (a_j - m)/(M - m) (lam_max - lam_min), lam_min, lam_max);
                     M = m: every w_j = (lam_min + lam_max) / 2
  exp:               w_j = clip(exp(-kappa a_j), lam_min, 1),  kappa = -ln(lam_min) / max(M, 0.02)
                     (the ceiling is 1, not lam_max: the official code ignores lam_max here)
  w = 0 at padding; detached.

  L_j  = max(-A r, -A clip(r, 1 - eps_l, 1 + eps_h));  A < 0: L_j = min(L_j, -c A)     (core.ppo_clip_per_token)
  loss = sum_j m_j w_j L_j / sum_j m_j        (token count, NOT sum w: baselines.ppo_terms with token_weight=w)
Defaults (run_linear.sh): eps_l 0.2, eps_h 0.28, c 10, token-mean, lam 0.8 / 1.2; run_exp.sh: exp, lam_min 0.8.

Card vs paper/official code (read: core_algos.py, dp_actor.py, the four run/*.sh, commit b31df71):
  * Verified as the card says: Omega, both clamps, non-finite -> 0, |Omega|, the linear map with the
    midpoint on M = m, the exp map with the 0.02 floor and the [lam_min, 1] clamp, dual clip only for A < 0,
    log-ratio clamp +-20, w multiplies the per-token loss and the aggregation divides by the mask count,
    entropy = the stored `entropys` of the old-log-prob pass, the actor's 0.95 / 1.05 fallback.
  * c: the function's default is 3.0, but all four scripts pass clip_ratio_c = 10.0 -> 10 here.
  * Scope of min / max: verl computes w per MICRO-batch (8 responses on one GPU in the scripts). Here a
    loss call is one optimizer minibatch (the trainer does not micro-batch): 32 rows at 16 x 8 prompts with
    4 minibatches. The weights depend on that size; documented, not emulated.
  * Validation (ours; verl checks nothing): lam_min in (0, 1], lam_max >= 1 -- the weights bracket 1, and
    the exp map needs lam_min <= 1. The functions accept any 0 < lam_min <= lam_max.
  * Omega is set to 0 at padding too, and w has the dtype of logp (verl: float32). Not ported: verl's extra
    clip-position statistics (max-prob ratios).
Pitfalls: lam_max > 1 raises the mean weight (effective lr) above DAPO's -- watch `w_mean`. At toy scale
most tokens are near-certain (p ~ 1, so |Omega| ~ 0 and w ~ lam_max): a 3-step `steer` run on addition
logged w_mean ~ 1.19, i.e. ~19% more step than `dapo_stale`. With r ~ 1 the reweighting is small, hence
the stale regime (2 epochs x 4 minibatches) of the recipes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from ..baselines import DAPO, DAPO_PPO, STALE, PPOClipConfig, ppo_terms, reference_if_kl
from ..core import masked_mean
from ..registry import Recipe, check_range, register, register_recipe

PAPER = "Rethinking Entropy Interventions in RLVR: An Entropy Change Perspective, 2025, arXiv 2510.10150"
MODES = ("linear", "exp")
EXP_FLOOR = 0.02  # kappa = -ln(lam_min) / max(M, 0.02): small batches of tiny |Omega| are not blown up


def entropy_change_score(logp: torch.Tensor, old_logp: torch.Tensor, old_entropy: torch.Tensor,
                         advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Omega [B, T] = (A / q) p (1 - p) (log p + H_old), detached; 0 where non-finite and at padding."""
    with torch.no_grad():
        p = logp.detach().exp().clamp(1e-8, 1.0 - 1e-8)
        q = old_logp.detach().to(p).exp().clamp(1e-8, 1.0)
        omega = advantages.to(p) / q * p * (1.0 - p) * (p.log() + old_entropy.to(p))
        keep = torch.isfinite(omega) & mask.bool()
        return torch.where(keep, omega, torch.zeros((), dtype=omega.dtype, device=omega.device))


def steer_weights(omega: torch.Tensor, mask: torch.Tensor, lam_min: float = 0.8, lam_max: float = 1.2,
                  mode: str = "linear") -> torch.Tensor:
    """w [B, T] from |Omega| over all valid tokens at once (module docstring); 0 at padding, detached."""
    if not 0.0 < lam_min <= lam_max:
        raise ValueError(f"need 0 < lam_min <= lam_max, got lam_min={lam_min}, lam_max={lam_max}")
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; use one of {MODES}")
    if mode == "exp" and lam_min > 1.0:
        raise ValueError(f"mode 'exp' needs lam_min <= 1 (its weights lie in [lam_min, 1]), got {lam_min}")
    a, valid = omega.detach().abs(), mask.bool()
    w = torch.zeros_like(a)
    if not bool(valid.any()):
        return w
    v = a[valid]
    lo, hi = v.min(), v.max()
    if mode == "linear":
        if hi > lo:  # (v - lo) / (hi - lo) in [0, 1] first: finite even when hi - lo is subnormal
            wv = lam_max - (v - lo) / (hi - lo) * (lam_max - lam_min)
        else:
            wv = torch.full_like(v, (lam_min + lam_max) / 2)
        wv = wv.clamp(lam_min, lam_max)
    else:
        kappa = -math.log(lam_min) / hi.clamp(min=EXP_FLOOR)
        wv = torch.exp(-kappa * v).clamp(lam_min, 1.0)
    w[valid] = wv
    return w


@dataclass
class SteerConfig(PPOClipConfig):
    """DAPO's PPO settings as run/run_linear.sh passes them, plus the weight map."""
    clip_low: float = 0.2              # eps_l (clip_ratio_low)
    clip_high: float = 0.28            # eps_h (clip_ratio_high)
    clip_ratio_c: float | None = 10.0  # dual clip for A < 0 (scripts: 10.0; function default 3.0)
    agg: Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"] = "token-mean"
    kl_coef: float = 0.0               # use_kl_loss=False
    entropy_coef: float = 0.0          # entropy_coeff=0
    mode: Literal["linear", "exp"] = "linear"  # policy_loss.linear = True / False
    lambda_min: float = 0.8            # token_weight_min: the weight of the largest |Omega|
    lambda_max: float = 1.2            # token_weight_max: the weight of the smallest |Omega| (linear only)

    def __post_init__(self):
        super().__post_init__()
        check_range(self, "lambda_min", lo=0.0, hi=1.0, lo_open=True)
        check_range(self, "lambda_max", lo=1.0)
        if self.mode not in MODES:
            raise ValueError(f"SteerConfig.mode must be one of {MODES}, got {self.mode!r}")


def _valid_stats(x: torch.Tensor, mask: torch.Tensor) -> tuple[float, float, float]:
    v = x.detach()[mask.bool()]
    return (float(v.min()), float(v.mean()), float(v.max())) if v.numel() else (0.0, 0.0, 0.0)


@register("loss", "steer", config=SteerConfig, paper=PAPER, needs=reference_if_kl)
def steer_loss(out, batch, cfg: SteerConfig, ctx):
    """token-mean(w * dual-clip PPO); w from Omega over the valid tokens of this minibatch."""
    mask = batch.response_mask
    omega = entropy_change_score(out.logp, batch.old_logp, batch.old_entropy, batch.advantages, mask)
    w = steer_weights(omega, mask, cfg.lambda_min, cfg.lambda_max, cfg.mode)
    loss, metrics = ppo_terms(out, batch, cfg, token_weight=w)
    w_min, w_mean, w_max = _valid_stats(w, mask)
    metrics.update(w_min=w_min, w_mean=w_mean, w_max=w_max,
                   omega_mean=float(masked_mean(omega, mask)), omega_abs_mean=float(masked_mean(omega.abs(), mask)),
                   # -Omega: first-order entropy change per unit step (single-logit model), token-mean;
                   # the weighted one is what this update's reweighting aims at
                   dH_pred=-float(masked_mean(omega, mask)), dH_pred_weighted=-float(masked_mean(w * omega, mask)))
    return loss, metrics


# Recipes: all in the WP2 stale regime (2 epochs x 4 minibatches = 8 optimizer steps per rollout), plain
# rollout, verifier reward, GRPO advantage, so each STEER run differs from its baseline in the weights only.
_EXTREME_PPO = {**DAPO_PPO, "clip_low": 0.99, "clip_high": 5.0}  # run_*_extreme.sh: clipping nearly off
register_recipe(Recipe("steer", paper=PAPER + " (linear 0.8 / 1.2; baseline: dapo_stale)", loss="steer",
                       loss_cfg={**DAPO_PPO, "mode": "linear", "lambda_min": 0.8, "lambda_max": 1.2},
                       train_cfg=dict(STALE)))
register_recipe(Recipe("steer_exp", paper=PAPER + " (exp, lambda_min 0.8; baseline: dapo_stale)", loss="steer",
                       loss_cfg={**DAPO_PPO, "mode": "exp", "lambda_min": 0.8, "lambda_max": 1.0},
                       train_cfg=dict(STALE)))
register_recipe(Recipe("steer_extreme", paper=PAPER + " (linear, eps 0.99 / 5; baseline: dapo_extreme)",
                       loss="steer", loss_cfg={**_EXTREME_PPO, "mode": "linear", "lambda_min": 0.8, "lambda_max": 1.2},
                       train_cfg=dict(STALE)))
register_recipe(Recipe("dapo_extreme", loss="ppo_clip", loss_cfg=dict(_EXTREME_PPO), train_cfg=dict(STALE),
                       paper=DAPO + " -- its loss at STEER's extreme eps 0.99 / 5 (c 10, token-mean), plain "
                       "rollout, stale regime: the baseline of steer_extreme"))
