"""Harnessing Uncertainty: Entropy-Modulated Policy Gradients for Long-Horizon LLM Agents (EMPG) --
Wang et al. 2025, arXiv 2509.09265. Official code: none released as a repository; the project page
(empgseed-seed.github.io) shows pseudocode `compute_empg_advantage(tokenizer, batch, k=1.0, k_f=1.0, zeta=0.1)`
whose first part (step entropies, min-max, g, f) was readable here; the part that writes A_mod onto the tokens
and any final normalisation was not. This module is therefore "EMPG-style" where marked (R) below.

Stage changed: advantage only (the loss is the recipe's PPO-clip on the per-token modulated advantages).

Motivation (paper Prop. 1, exact; `expected_score_norm_sq`): for pi = softmax(z) and a ~ pi,
  grad_z log pi(a) = e_a - pi,   E_a ||e_a - pi||^2 = sum_a pi_a ||e_a - pi||^2 = 1 - sum_a pi_a^2 = 1 - exp(-H_2(pi)),
H_2 = -log sum pi^2 the Renyi-2 entropy: the expected score norm grows with entropy, so plain PG makes small
updates on confident steps and large noisy ones on uncertain steps. EMPG rescales each step's share of A.

Symbols (response i, step k; a step is a segment of the response, here `segments.step_ids`: ";" closes a
step, the tokens after the last ";" (the "#answer" and EOS) are the final step; chain "[7+6]13;[13+7]20;#20"
has 3 steps. The paper's step is one think-act turn of an agent (R: the toy adaptation of the card)):
  A_i        = (r_i - mean_g r) / (std_g r + eps)                      GRPO (core.group_advantages, as `grpo`)
  H_{i,k}    = mean over step k's tokens of batch.old_entropy          rollout policy pi_T, no gradient
  Ht_{i,k}   = (H_{i,k} - min H) / (max H - min H + 1e-8)             min / max over ALL steps of the batch
  g_{i,k}    = exp(-k Ht_{i,k}) / mean_{steps of batch} exp(-k Ht)     so the batch mean of g is 1 exactly
  f_{i,k}    = exp(-k_f Ht_{i,k})                                      future-clarity of step k
  A_mod(i,k) = g_{i,k} A_i + zeta f_{i,k+1}                            f_{i,K_i} := 0 (the last step: no bonus)
  renorm (R) "none": A_mod;  "mean": A_mod - mean_steps A_mod;  "zscore": (A_mod - mean) / (std + eps),
             mean / population std over all steps of the batch (each step counted once, as the min-max and g)
  A_{i,t}    = the final value of the step of token t (0 off the response mask)
Properties (tested): Ht in [0, 1) with min 0; g > 0, strictly decreasing in H, in (e^-k / mean g~, 1 / mean g~];
k = zeta = 0 with renorm "none" is GRPO exactly (bitwise); with zeta = 0, A_mod has the sign of A_i and |A_mod|
is larger on more confident steps (confident successes amplified, confident errors penalised harder); equal
entropies give g = f = 1, so A_mod = A + zeta on every step but the last; rows of all-equal groups (A = 0) still
get +zeta f_next >= 0 before the renormalisation (the bias the card warns of: it favours more steps).
Pitfalls: the min-max is batch-global, so one very uncertain step rescales every other step's Ht; its 1e-8 lets
near-equal entropies (gap << 1e-8) fade to Ht ~ 0 smoothly; the mean renorm moves rows of all-equal groups
off 0 (by -mean A_mod), so with renorm on, `empg` never leaves a degenerate group untouched.

Card vs paper / pseudocode: the card's items 2-6 match the readable pseudocode (k, k_f = 1.0, zeta = 0.1, eps
1e-8, min-max and mean over the flat list of all steps of the batch). The paper (appendix S21-S23) writes the
same g with the mean over sum_j T_j steps, and says that a "final batch-level normalization (e.g., zero-mean
normalization)" follows, without the formula: renorm is our flag (card item 7), default "mean" over steps (R).
Deviations: (1) g's denominator has no +1e-8: mean exp(-k Ht) >= 1 / N_steps since the least-entropic step has
Ht = 0, so the guard is never needed, and without it mean(g) = 1 and the k = 0 reduction are exact; (2) steps
come from the ";" rule, not from chat-template turns; (3) computed in float64, cast to the rewards' dtype;
(4) the zscore std is the population std (numpy's default; the paper's form is unknown). Scope note
(card): chain's responses have 3-5 steps of 3-8 tokens, far from the paper's long agent horizons.
Logged: empg/g_mean (1 by construction when any step exists), empg/g_low / g_high (mean g over steps with Ht
< / >= 1/2), empg/corr_g_entropy (Pearson over the batch's steps, < 0), empg/steps_per_response, empg/H_step
(mean step entropy), empg/H_range (max - min), empg/bonus (mean zeta f_next), empg/shift (the mean removed
by renorm), empg/frac_flipped (steps whose final sign differs from a nonzero A_i).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from ..core import group_advantages, pearson
from ..registry import Recipe, check_range, register, register_recipe
from ..segments import step_ids, step_mean

PAPER = ("Wang et al. 2025, Harnessing Uncertainty: Entropy-Modulated Policy Gradients for Long-Horizon LLM "
         "Agents (EMPG), arXiv 2509.09265")
MINMAX_EPS = 1e-8   # the pseudocode's epsilon in the min-max denominator


def expected_score_norm_sq(logits: torch.Tensor) -> torch.Tensor:
    """E_{a~pi} ||grad_z log pi(a)||^2 = 1 - sum_a pi_a^2 for pi = softmax(logits); [..., V] -> [...]."""
    p = torch.softmax(logits, dim=-1)
    return 1.0 - (p * p).sum(-1)


def renyi2_entropy(logits: torch.Tensor) -> torch.Tensor:
    """H_2(pi) = -log sum_a pi_a^2; [..., V] -> [...]."""
    return -torch.logsumexp(2.0 * torch.log_softmax(logits, dim=-1), dim=-1)


@dataclass
class EmpgConfig:
    k: float = 1.0                                      # gradient-scaling temperature (0: g = 1)
    k_f: float = 1.0                                    # future-clarity temperature (0: f = 1)
    zeta: float = 0.1                                   # weight of the future-clarity bonus (project page 0.1)
    renorm: Literal["none", "mean", "zscore"] = "mean"  # final batch normalisation over steps (R)
    eps: float = 1e-6                                   # GRPO group std eps, and the zscore std eps

    def __post_init__(self):
        check_range(self, "k", lo=0.0)
        check_range(self, "k_f", lo=0.0)
        check_range(self, "zeta", lo=0.0)
        check_range(self, "eps", lo=0.0, lo_open=True)
        if self.renorm not in ("none", "mean", "zscore"):
            raise ValueError(f"EmpgConfig.renorm must be 'none', 'mean' or 'zscore', got {self.renorm!r}")


def empg_terms(batch, cfg: EmpgConfig) -> dict[str, torch.Tensor]:
    """Every quantity of the module docstring for one rollout (CPU, float64, no grad).
    Per row [B]: adv (A_i), n_steps. Per token [B, T] (0 off the mask): steps (step index, -1 off the mask),
    H, Ht, g, f_next (f of the next step, 0 on the last), mod (A_mod before renorm), shaped (final, rewards' dtype).
    first [B, T] bool marks each step's first token. Per step [N] (one entry per step of the batch, row-major):
    step_H, step_g, step_mod, step_final, step_row (its response)."""
    m = batch.response_mask.cpu().bool()
    adv = group_advantages(batch.rewards.cpu(), batch.group_ids.cpu(), "std", cfg.eps)   # exactly grpo's A
    with torch.no_grad():
        steps = step_ids(batch.response_ids.cpu(), m)                                    # [B, T]
        first = m & (steps != torch.nn.functional.pad(steps, (1, 0), value=-1)[:, :-1])  # one token per step
        n_steps = steps.max(1).values + 1 if steps.shape[1] else torch.zeros(m.shape[0], dtype=torch.long)
        zero = torch.zeros(m.shape, dtype=torch.float64)
        H = step_mean(batch.old_entropy.detach().cpu().double(), steps)                  # H_{i,k} on its tokens
        Ht, g, f_next, mod = zero.clone(), zero.clone(), zero.clone(), zero.clone()
        if bool(first.any()):
            lo, hi = H[first].min(), H[first].max()
            Ht = torch.where(m, (H - lo) / (hi - lo + MINMAX_EPS), zero)
            e = torch.exp(-cfg.k * Ht)
            g = torch.where(m, e / e[first].mean(), zero)        # mean over steps >= 1/N: no guard needed
            f = torch.exp(-cfg.k_f * Ht)
            table = torch.zeros(m.shape[0], int(n_steps.max()) + 1, dtype=torch.float64)  # f_{i,s}; 0 past the end
            rows = torch.arange(m.shape[0])[:, None].expand_as(steps)
            table[rows[first], steps[first]] = f[first]
            f_next = torch.where(m, table.gather(1, (steps + 1).clamp(min=0)), zero)
            mod = torch.where(m, g * adv.double()[:, None] + cfg.zeta * f_next, zero)
        final = mod
        if cfg.renorm != "none" and bool(first.any()):
            vals = mod[first]
            final = mod - vals.mean()
            if cfg.renorm == "zscore":
                final = final / (vals.std(correction=0) + cfg.eps)
            final = torch.where(m, final, zero)
        shaped = final.to(adv.dtype)
    return dict(adv=adv, n_steps=n_steps, steps=steps, first=first, H=H, Ht=Ht, g=g, f_next=f_next, mod=mod,
                shaped=shaped, step_H=H[first], step_g=g[first], step_mod=mod[first], step_final=final[first],
                step_row=torch.nonzero(first)[:, 0])


def log_diagnostics(ctx, terms: dict, batch, cfg: EmpgConfig) -> None:
    """empg/* numbers of this step (module docstring); a mean over no steps is 0."""
    sg, sh, first = terms["step_g"], terms["step_H"], terms["first"]
    low = terms["Ht"][first] < 0.5

    def mean(x):
        return float(x.mean()) if x.numel() else 0.0

    a = terms["adv"].double()[terms["step_row"]]
    flipped = (a != 0) & (torch.sign(terms["step_final"]) != torch.sign(a))
    has = batch.response_mask.cpu().bool().any(1)
    ctx.log(**{"empg/g_mean": mean(sg), "empg/g_low": mean(sg[low]), "empg/g_high": mean(sg[~low]),
               "empg/corr_g_entropy": pearson(sg, sh),
               "empg/steps_per_response": mean(terms["n_steps"][has].double()),
               "empg/H_step": mean(sh), "empg/H_range": float(sh.max() - sh.min()) if sh.numel() else 0.0,
               "empg/bonus": mean(cfg.zeta * terms["f_next"][first]),
               "empg/shift": mean(terms["step_mod"]) if cfg.renorm != "none" else 0.0,
               "empg/frac_flipped": float(flipped.double().sum() / (a != 0).sum()) if bool((a != 0).any()) else 0.0})


@register("advantage", "empg", config=EmpgConfig, paper=PAPER + " (EMPG-style: steps = ';' segments)",
          needs={"groups"})
def empg_advantage(batch, cfg: EmpgConfig, ctx):
    """A_{i,t} [B, T] (module docstring) from the rollout's per-token entropies batch.old_entropy."""
    terms = empg_terms(batch, cfg)
    log_diagnostics(ctx, terms, batch, cfg)
    return terms["shaped"].to(batch.response_mask.device)


_LOSS = {"agg": "seq-mean-token-mean"}   # the `grpo` recipe's loss: only the advantage differs
_CARD = {"k": 1.0, "k_f": 1.0, "zeta": 0.1, "renorm": "mean"}
register_recipe(Recipe("empg", paper=PAPER + " (EMPG-style; card / project-page k 1, k_f 1, zeta 0.1, mean-centred "
                       "over steps; run with --task chain; vs grpo)", advantage="empg", advantage_cfg=dict(_CARD),
                       loss_cfg=dict(_LOSS)))
register_recipe(Recipe("empg_zeta0", paper=PAPER + " (EMPG-style, ablation: zeta 0, gradient scaling only; run with "
                       "--task chain; vs grpo)", advantage="empg", advantage_cfg={**_CARD, "zeta": 0.0},
                       loss_cfg=dict(_LOSS)))
