"""Unlocking Exploration in RLVR: Uncertainty-aware Advantage Shaping for Deeper Reasoning (UCAS)
-- Xie et al. 2025, arXiv 2510.10649. Official code: xvolcano02/UCAS (verl fork), read at commit b122ff2:
core_algos.py `compute_ucas_advantage`, `_normalize_kl_certainty`; torch_functional.py
`self_certainty_from_logits`; dp_actor.py (the sampled token's logit is gathered BEFORE the division by T).

Stage changed: advantage only (the loss is the recipe's PPO-clip on the shaped per-token advantages).

Idea: GRPO gives every token of a response one advantage. UCAS reshapes it with the model's own logits:
(1) per response, a correct response the model was UNsure of gets more credit, a wrong one it was sure
of gets more blame; (2) per token, a small penalty grows with the sampled token's raw logit, and a clamp
keeps a positive response's tokens from turning negative.

Symbols (response i of group g, position t, m the response mask, z_{i,t} in R^V the RAW logits, T the
sampling temperature; batch.old_logits holds z / T from the sampler, so no gradient flows anywhere)
  c_{i,t} = logsumexp_v(z_v / T) - (1/V) sum_v z_v / T          token self-certainty (tempered logits)
          = KL(U || pi_{i,t}) + log V  >= log V                 (= iff pi_{i,t} is uniform; shift-invariant)
  C_i     = sum_t m c_{i,t}            a SUM over tokens, as the code (conf_agg="mean": / sum_t m, ablation)
  A_i     = (r_i - mean_g r) / (std_g r + eps)                   GRPO, unbiased std (core.group_advantages)
  Chat_i  = (C_i - mean_g C) / (std_g C + eps)                   the same z-score, within the group
  M_i     = exp(-beta+ Chat_i) if A_i > 0 else exp(beta- Chat_i)           stage 1 (beta+ 0.25, beta- 0.35)
  A'_i    = A_i M_i
  lam_{i,t} = z_{i,t}[o_{i,t}]         raw logit of the sampled token (= old_logits * T)
  lamhat  = (lam - min) / (max - min + eps), min / max over ALL valid tokens of the batch; 0.5 on valid
            tokens if isclose(max, min) (torch defaults), 0 on padding                 (_normalize_kl_certainty)
  u_{i,t} = A'_i - gamma lamhat_{i,t}                                              stage 2 (gamma 0.05)
  Ahat_{i,t} = max(u_{i,t}, 0) if A'_i > 0 else u_{i,t};  0 off the mask
Consequences (tested): beta+ = beta- = gamma = 0 is GRPO exactly; A > 0 => Ahat >= 0; A < 0 =>
A' - gamma <= Ahat <= A' < 0; an all-equal group has A = A' = 0, so Ahat = -gamma lamhat <= 0 (every
token of a degenerate group is pushed down a little; mask_degenerate=True zeroes those rows instead).
norm_by_std=False is the code's Dr.GRPO switch: A = r - mean_g r and Chat = C - mean_g C (no std at all).

Card vs paper/official code: the card matches the code at b122ff2 on every formula above (the paper's
equations were not readable here). The card's "G = 16, 1024 prompts" is the 7B script; the 1.5B script uses
G = 8 and 512 prompts (minibatch 128, lr 1e-6, token-mean, verl's dual clip c = 3). The first release
(f8db352) was a different method: a per-token MEAN of log(1/V) - log pi as confidence, beta = 0.25 on both
sides, gamma = 0.01, a per-ROW min-max and no clamp; we follow the newer code. Deliberate differences:
(1) the clamp tests A_i > 0 instead of A'_i > 0 (identical since M > 0, but safe when A M underflows);
(2) the exponent of M is clipped to [-50, 50] (never binding for sane beta: |Chat| <= (G - 1) / sqrt G), so
A' stays finite; (3) a group of one response gets A = Chat = 0 here, (r, C) / (1 + eps) there (UCAS needs
G >= 2 anyway); (4) the code's V = vocabulary of the logits, here the toy vocabulary; (5) C and lamhat are
computed in float64. Recipes keep the `grpo` recipe's loss (seq-mean-token-mean, no dual clip) and the
library regime (no staleness), so `ucas*` vs `grpo` differ in the advantage stage only.
Pitfalls: C is a sum, so longer responses look more confident (C >= length * log V; ucas/corr_conf_len
is corr(Chat, within-group length)); lamhat depends on the logit gauge (adding a constant to one position's
logits changes it, softmax does not see it), only a batch-wide constant cancels; the min-max is batch-global,
not per group; min-max is scale-invariant, so raw vs tempered logits change lamhat only through eps and the
isclose fallback (the raw/tempered distinction matters for c, not for lamhat).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from ..core import group_advantages, group_mean_std, masked_mean, pearson
from ..registry import Recipe, check_range, register, register_recipe
from ..rollout import policy_forward

PAPER = ("Xie et al. 2025, Unlocking Exploration in RLVR: Uncertainty-aware Advantage Shaping for Deeper "
         "Reasoning (UCAS), arXiv 2510.10649")
EXP_MAX = 50.0   # |exponent| of M at most this: exp(50) ~ 5e21, finite in float32


def self_certainty(logits: torch.Tensor) -> torch.Tensor:
    """c = logsumexp(z) - mean(z) over the last dim ([..., V] -> [...]) = KL(U || softmax z) + log V."""
    return torch.logsumexp(logits, dim=-1) - logits.mean(dim=-1)


def minmax_normalise(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Batch-global min-max of x over the valid entries [B, T] -> [B, T]: in [0, 1) there, 0 off the mask;
    0.5 on the valid entries if max and min are torch.isclose. An empty mask gives zeros."""
    valid = mask.bool()
    if not bool(valid.any()):
        return torch.zeros_like(x)
    lo, hi = x[valid].min(), x[valid].max()
    if torch.isclose(hi, lo):
        return 0.5 * valid.to(x.dtype)
    return torch.where(valid, (x - lo) / (hi - lo + eps), torch.zeros_like(x))


def confidence_modifier(adv: torch.Tensor, conf_z: torch.Tensor, beta_pos: float, beta_neg: float) -> torch.Tensor:
    """M_i = exp(-beta+ Chat_i) if A_i > 0 else exp(beta- Chat_i), exponent clipped to +-EXP_MAX. [B] -> [B]."""
    expo = torch.where(adv > 0, -beta_pos * conf_z, beta_neg * conf_z)
    return torch.exp(expo.clamp(-EXP_MAX, EXP_MAX))


@dataclass
class UcasConfig:
    eps: float = 1e-6                          # added to both group stds and to the min-max range
    beta_pos: float = 0.25                     # beta+: correct responses, M = exp(-beta+ Chat)
    beta_neg: float = 0.35                     # beta-: the rest (A <= 0), M = exp(beta- Chat)
    gamma: float = 0.05                        # token penalty on the min-max raw logit
    stage1: bool = True                        # response-level confidence modifier (False: M = 1)
    stage2: bool = True                        # token-level penalty + clamp (False: gamma = 0)
    conf_agg: Literal["sum", "mean"] = "sum"   # C_i: sum over tokens (official) or mean (length ablation)
    norm_by_std: bool = True                   # verl norm_adv_by_std_in_grpo (False: centre A and C only)
    mask_degenerate: bool = False              # rows of all-equal-reward groups get Ahat = 0, not -gamma lamhat

    def __post_init__(self):
        check_range(self, "eps", lo=0.0, lo_open=True)
        check_range(self, "beta_pos", lo=0.0)
        check_range(self, "beta_neg", lo=0.0)
        check_range(self, "gamma", lo=0.0)
        if self.conf_agg not in ("sum", "mean"):
            raise ValueError(f"UcasConfig.conf_agg must be 'sum' or 'mean', got {self.conf_agg!r}")


def ucas_terms(batch, cfg: UcasConfig, logits: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Every quantity of the module docstring for one rollout (CPU, no grad): per row [B] adv (A),
    conf (C), conf_z (Chat), modifier (M), adv1 (A'); per token [B, T] certainty (c), lam_hat and
    shaped (Ahat, in the rewards' dtype). `logits`: tempered z / T [B, T, V] (default batch.old_logits)."""
    logits = batch.old_logits if logits is None else logits
    m = batch.response_mask.cpu().bool()
    gids, rewards = batch.group_ids.cpu(), batch.rewards.cpu()
    scale = "std" if cfg.norm_by_std else "none"
    with torch.no_grad():
        z = logits.detach().cpu().double()
        zero = torch.zeros((), dtype=z.dtype)
        cert = torch.where(m, self_certainty(z), zero)                                     # c [B, T]
        conf = cert.sum(1) / (m.sum(1).clamp(min=1) if cfg.conf_agg == "mean" else 1)      # C [B]
        adv = group_advantages(rewards, gids, scale, cfg.eps)                              # A, exactly grpo's
        conf_z = group_advantages(conf, gids, scale, cfg.eps)                              # Chat
        a64 = adv.double()
        modifier = (confidence_modifier(a64, conf_z, cfg.beta_pos, cfg.beta_neg) if cfg.stage1
                    else torch.ones_like(a64))
        adv1 = a64 * modifier                                                              # A'
        tokens = batch.response_ids.cpu().long().unsqueeze(-1)
        lam = z.gather(-1, tokens).squeeze(-1) * float(batch.temperature)                   # raw logit
        lam_hat = minmax_normalise(lam, m, cfg.eps)
        gamma = cfg.gamma if cfg.stage2 else 0.0
        u = adv1[:, None] - gamma * lam_hat
        shaped = torch.where((a64 > 0)[:, None], u.clamp(min=0.0), u)
        if cfg.mask_degenerate:
            shaped = torch.where((group_mean_std(rewards, gids)[1] == 0)[:, None], zero, shaped)
        shaped = torch.where(m, shaped, zero).to(adv.dtype)
    return dict(adv=adv, conf=conf, conf_z=conf_z, modifier=modifier, adv1=adv1, certainty=cert,
                lam_hat=lam_hat, shaped=shaped)


def _slope(x: torch.Tensor, y: torch.Tensor) -> float:
    """Least-squares slope of y on x (0 with < 2 points or constant x)."""
    if x.numel() < 2:
        return 0.0
    dx = x - x.mean()
    var = (dx * dx).sum()
    return float((dx * (y - y.mean())).sum() / var) if var > 0 else 0.0


def log_diagnostics(ctx, terms: dict, batch) -> None:
    """ucas/* numbers for this step: mean Ahat over the tokens of rows with A > 0 (correct responses of mixed
    groups), A < 0 and A = 0 (all-equal groups); mean c per token and C per row; mean M by sign of A; the slope
    of a row's mean Ahat on Chat over A > 0 rows; corr(Chat, length - mean_g length), the length confound
    inside groups; the fraction of A > 0 tokens whose clamp binds (u <= 0). A mean over no rows is 0."""
    m = batch.response_mask.cpu().bool()
    length = group_advantages(m.sum(1).double(), batch.group_ids.cpu(), "none")
    adv, shaped = terms["adv"].double(), terms["shaped"].double()
    rows = {"pos": adv > 0, "neg": adv < 0, "zero": adv == 0}
    row_mean = masked_mean(shaped, m, dim=1)
    out = {f"ucas/adv_{k}": float(masked_mean(shaped, m & r[:, None])) for k, r in rows.items()}
    out.update({f"ucas/modifier_{k}": float(masked_mean(terms["modifier"], r)) for k, r in rows.items() if k != "zero"})
    pos = rows["pos"] & m.any(1)
    out.update({"ucas/conf_token": float(masked_mean(terms["certainty"], m)),
                "ucas/conf_seq": float(terms["conf"].mean()) if terms["conf"].numel() else 0.0,
                "ucas/slope_pos": _slope(terms["conf_z"][pos], row_mean[pos]),
                "ucas/corr_conf_len": pearson(terms["conf_z"], length),
                "ucas/frac_clamped": float(masked_mean((shaped == 0).double(), m & rows["pos"][:, None]))})  # u <= 0
    ctx.log(**out)


@register("advantage", "ucas", config=UcasConfig, paper=PAPER, needs={"groups"})
def ucas_advantage(batch, cfg: UcasConfig, ctx):
    """Ahat [B, T] (module docstring) from the rollout's logits; a no-grad forward of ctx.policy if absent."""
    logits = batch.old_logits
    if logits is None:   # before the first update the current policy is the sampler
        with torch.no_grad():
            logits = policy_forward(ctx.policy, batch).logits
    terms = ucas_terms(batch, cfg, logits)
    log_diagnostics(ctx, terms, batch)
    return terms["shaped"].to(batch.response_mask.device)


_LOSS = {"agg": "seq-mean-token-mean"}   # the `grpo` recipe's loss: only the advantage differs
_OFFICIAL = {"beta_pos": 0.25, "beta_neg": 0.35, "gamma": 0.05}
register_recipe(Recipe("ucas", paper=PAPER + " (full, official beta+ 0.25 / beta- 0.35 / gamma 0.05; vs grpo)",
                       advantage="ucas", advantage_cfg=dict(_OFFICIAL), loss_cfg=dict(_LOSS)))
register_recipe(Recipe("ucas_stage1", paper=PAPER + " (ablation: response-level modifier only; vs grpo)",
                       advantage="ucas", advantage_cfg={**_OFFICIAL, "stage2": False}, loss_cfg=dict(_LOSS)))
register_recipe(Recipe("ucas_stage2", paper=PAPER + " (ablation: token-level penalty + clamp only; vs grpo)",
                       advantage="ucas", advantage_cfg={**_OFFICIAL, "stage1": False}, loss_cfg=dict(_LOSS)))
