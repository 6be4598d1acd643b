"""BAPO: Stabilizing Off-Policy RL for LLMs via Balanced Policy Optimization with Adaptive Clipping --
Xi et al. 2025, arXiv 2510.18927. Official code: WooooDyy/BAPO, a verl re-implementation (the paper's runs
used an internal framework): recipe/bapo/policy_loss.py (loss "bapo"), config.py, config/bapo_trainer.yaml,
run_bapo_example.sh.

Stage changed: loss (PPO clip bounds searched anew for every loss call). Rollout, reward, advantage: GRPO's.

Idea: with stale data, negative-advantage tokens dominate the PPO gradient, and a fixed upper bound clips
low-probability positive tokens first (they move fastest), which removes entropy-raising updates. BAPO
raises the clip bounds until positive tokens carry a target share rho0 of the gradient.

Symbols, per valid token j of one loss call (= one optimizer minibatch here):
  r_j = exp(clamp(l_j - l_old_j, -20, 20))   ratio of the current to the sampling policy (core.clamped_log_ratio)
  A_j                                         GRPO advantage;  c_low < 1 < c_high: RATIO bounds (not 1 -+ eps)
  s_j = min(r A, clip(r, c_low, c_high) A) = A min(r, c_high) if A >= 0, A max(r, c_low) if A < 0
  X_j = 1[A > 0, r <= c_high] + 1[A < 0, r >= c_low]          the token carries gradient (set to 0
        also where the dual clip silences it: A < 0, r > c; independent of the bounds, c > 1)
  rho = sum_{A>0} X r|A| / sum_j X r|A|     positive share (measure="indicator", the paper's intent; 1 if
        the denominator is 0); non-decreasing in c_high (more positives) and in c_low (fewer negatives)
  P = sum_j max(s_j, 0),  N = sum_j max(-s_j, 0),  P/N vs tau = rho0 / (1 - rho0)   (measure="code_value",
        the official code: P / (N + 1e-8), inf if N = 0)
Search (per loss call, on detached r): c_low = a-, c_high = a+;
  while m < target and c_low < b-:  c_low  <- min(c_low + d-, b-)      (lower first, as the code)
  while m < target and c_high < b+: c_high <- min(c_high + d+, b+)
so at exit m >= target or both bounds are at b, after at most ceil((b- - a-)/d-) + ceil((b+ - a+)/d+) steps.
Loss: dual-clip PPO with [c_low, c_high] = core.ppo_clip_per_token with eps_low = 1 - c_low,
eps_high = c_high - 1 (via baselines.ppo_terms), min(., -c A) for A < 0 (c = 3), token-mean.
Entropy-Clip rule (tabular softmax, natural-PG step restricted to active actions, dz_a = eta A_a X_a):
  dH = -eta Cov_{a~pi}(log pi_a, A_a X_a) + O(eta^2)        (exact.first_order_entropy_change, kind="npg", mask=X)
Zeroing X on a positive action with log pi_a < -H raises the covariance by pi_a A_a (-H - log pi_a) > 0,
i.e. clipping low-probability positive tokens lowers entropy.

Card vs paper/official code:
  * The two measures move OPPOSITE ways in c_low: with clamped values s, a negative token below c_low
    counts as c_low |A|, so raising c_low raises N and P/N never improves; whenever P/N < tau the code
    pushes c_low to b- and only c_high helps. The indicator rho (default) drops those tokens instead.
    The paper text defining rho was not retrieved (card: medium confidence).
  * Defaults follow the README (the paper's values): rho0 0.5, c_low in [0.6, 0.9], c_high in [1.2, 3.0],
    step 0.05 (config.py's default steps). The code's config.py target is P/N = 1 (= rho0 0.5); its YAML
    uses [0.6, 0.8] x [1.2, 2.0]; run_bapo_example.sh uses [0.8, 0.95] (step 0.05) x [1.2, 2.0] (step
    0.1) with adv_ratio_target=0.5, which is P/N >= 0.5, i.e. rho >= 1/3, not rho0 = 0.5.
  * The code's dual clip c is verl's clip_ratio_c (default 3.0); its aggregation verl's default token-mean.
  * X also drops dual-clipped tokens (A < 0, r > c: no gradient); the card's X omits the dual clip (the
    same with clip_ratio_c=None). The bounds reach ppo_clip_per_token as eps; 1 - (1 - c_low) and
    (c_high - 1) + 1 are exact for c_low in [0.5, 1], c_high in [1, 4), so search and loss use one bound.
  * The code steps c <- min(c + d, b); here c_k = a + k d, snapped to b within 1e-9 (the same grid
    without accumulated rounding). b < a or d = 0 means no search on that side, as in the code.
  * The code all-reduces P and N over data-parallel ranks; here one loss call is the whole minibatch.
  * Not verified: whether the paper's Algorithm 1 steps both bounds jointly; the code (and this) does
    lower first, then upper.
Metrics: c_low, c_high, search_steps(_low/_high), rho_before / rho_after (the indicator rho at (a-, a+)
and at the searched bounds, whatever the measure), pn_before / pn_after (code_value: the code's P/N),
frac_active, and ppo_terms' clipfrac, clipfrac_high, clipfrac_low at the searched bounds.
Pitfalls: on-policy (first minibatch, r = 1) BAPO is vanilla PG whatever the bounds; it only acts with
staleness, hence the recipe's 4 minibatches x 2 epochs. A wider c_high lets positive tokens move far.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from ..baselines import DAPO_PPO, STALE, PPOClipConfig, ppo_terms
from ..core import clamped_log_ratio, masked_mean
from ..registry import Recipe, check_range, register, register_recipe

PAPER = ("Xi et al. 2025, BAPO: Stabilizing Off-Policy RL for LLMs via Balanced Policy Optimization "
         "with Adaptive Clipping, arXiv 2510.18927")
MEASURES = ("indicator", "code_value")


def clipped_surrogate(ratio: torch.Tensor, adv: torch.Tensor, c_low: float, c_high: float) -> torch.Tensor:
    """s = A min(r, c_high) for A >= 0, A max(r, c_low) for A < 0  (= min(rA, clip(r, c_low, c_high) A))."""
    return torch.where(adv >= 0, adv * ratio.clamp(max=c_high), adv * ratio.clamp(min=c_low))


def active_mask(ratio: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor, c_low: float, c_high: float,
                clip_ratio_c: float | None = None) -> torch.Tensor:
    """X: valid tokens whose clipped loss has a non-zero gradient (dual clip included when c is given). bool [B, T]."""
    X = ((adv > 0) & (ratio <= c_high)) | ((adv < 0) & (ratio >= c_low))
    if clip_ratio_c is not None:
        X = X & ~((adv < 0) & (ratio > clip_ratio_c))
    return X & mask.bool()


def positive_share(ratio, adv, mask, c_low, c_high, clip_ratio_c=None) -> float:
    """rho = sum_{A>0} X r|A| / sum X r|A| (float64 sums); 1.0 if no token carries gradient."""
    w = torch.where(active_mask(ratio, adv, mask, c_low, c_high, clip_ratio_c),
                    (ratio * adv).abs().double(), torch.zeros((), dtype=torch.float64, device=ratio.device))
    pos, total = float(torch.where(adv > 0, w, torch.zeros_like(w)).sum()), float(w.sum())
    return pos / total if total > 0 else 1.0


def code_pos_neg_ratio(ratio, adv, mask, c_low, c_high, eps: float = 1e-8) -> float:
    """The official measure P / (N + eps) of the clamped values s (inf if N = 0)."""
    s = torch.where(mask.bool(), clipped_surrogate(ratio, adv, c_low, c_high).double(),
                    torch.zeros((), dtype=torch.float64, device=ratio.device))
    P, N = float(s.clamp(min=0).sum()), float((-s).clamp(min=0).sum())
    return math.inf if N <= 0 else P / (N + eps)


def grid_steps(start: float, stop: float, step: float) -> int:
    """Steps of the grid start + k step (snapped to stop) needed to reach stop: ceil((stop - start) / step)."""
    return 0 if stop <= start or step <= 0 else math.ceil((stop - start) / step - 1e-9)


def search_bounds(ratio, adv, mask, cfg: "BapoConfig") -> dict:
    """The bound search of the module docstring on detached ratios. Returns c_low, c_high, the measure
    before / after, the target and the steps taken on each side."""
    if cfg.measure == "indicator":
        def measure(lo, hi): return positive_share(ratio, adv, mask, lo, hi, cfg.clip_ratio_c)
        target = cfg.rho0
    else:
        def measure(lo, hi): return code_pos_neg_ratio(ratio, adv, mask, lo, hi, cfg.eps)
        target = cfg.rho0 / (1.0 - cfg.rho0)
    c = {"low": cfg.lower_start, "high": cfg.upper_start}
    m = before = measure(c["low"], c["high"])
    steps = {}
    for side, start, stop, step in (("low", cfg.lower_start, cfg.lower_max, cfg.lower_step),
                                    ("high", cfg.upper_start, cfg.upper_max, cfg.upper_step)):
        n, k = grid_steps(start, stop, step), 0
        while m < target and k < n:
            k += 1
            c[side] = stop if k == n else start + k * step
            m = measure(c["low"], c["high"])
        steps[side] = k
    return {"c_low": c["low"], "c_high": c["high"], "before": before, "after": m, "target": target,
            "steps_low": steps["low"], "steps_high": steps["high"]}


@dataclass
class BapoConfig:
    rho0: float = 0.5                 # target positive share (README positive_contribution_target)
    lower_start: float = 0.6          # a-: c_low at the start of every search (a ratio, not eps)
    lower_max: float = 0.9            # b-: the largest c_low
    lower_step: float = 0.05          # d-
    upper_start: float = 1.2          # a+
    upper_max: float = 3.0            # b+
    upper_step: float = 0.05          # d+
    measure: Literal["indicator", "code_value"] = "indicator"
    eps: float = 1e-8                 # code_value only: P / (N + eps)
    clip_ratio_c: float | None = 3.0  # dual clip for A < 0 (verl's default); None: off
    agg: Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum",
                 "seq-mean-token-sum-norm"] = "token-mean"

    def __post_init__(self):
        check_range(self, "rho0", lo=0.0, hi=1.0, hi_open=True)     # rho0 = 1 would be tau = inf
        for name in ("lower_start", "lower_max"):
            check_range(self, name, lo=0.0, hi=1.0, lo_open=True)   # 0 < c_low <= 1
        for name in ("upper_start", "upper_max"):
            check_range(self, name, lo=1.0)                          # c_high >= 1
        for name in ("lower_step", "upper_step", "eps"):
            check_range(self, name, lo=0.0)
        check_range(self, "clip_ratio_c", lo=1.0, lo_open=True)
        if self.measure not in MEASURES:
            raise ValueError(f"BapoConfig.measure must be one of {MEASURES}, got {self.measure!r}")


@register("loss", "bapo", config=BapoConfig, paper=PAPER)
def bapo_loss(out, batch, cfg: BapoConfig, ctx):
    """Search [c_low, c_high] on this loss call, then dual-clip PPO with those ratio bounds."""
    mask, adv = batch.response_mask, batch.advantages
    ratio = clamped_log_ratio(out.logp.detach(), batch.old_logp).exp()
    s = search_bounds(ratio, adv, mask, cfg)
    ppo = PPOClipConfig(clip_low=1.0 - s["c_low"], clip_high=s["c_high"] - 1.0,
                        clip_ratio_c=cfg.clip_ratio_c, agg=cfg.agg)
    loss, metrics = ppo_terms(out, batch, ppo)
    metrics.update(c_low=s["c_low"], c_high=s["c_high"], search_steps=float(s["steps_low"] + s["steps_high"]),
                   search_steps_low=float(s["steps_low"]), search_steps_high=float(s["steps_high"]),
                   rho_before=positive_share(ratio, adv, mask, cfg.lower_start, cfg.upper_start, cfg.clip_ratio_c),
                   rho_after=positive_share(ratio, adv, mask, s["c_low"], s["c_high"], cfg.clip_ratio_c),
                   frac_active=float(masked_mean(active_mask(ratio, adv, mask, s["c_low"], s["c_high"],
                                                             cfg.clip_ratio_c).double(), mask.double())))
    if cfg.measure == "code_value":
        metrics.update(pn_before=min(s["before"], 1e6), pn_after=min(s["after"], 1e6))  # inf -> 1e6 for logs
    return loss, metrics


register_recipe(Recipe("bapo", paper=PAPER + " (README defaults; WP2 staleness: 4 minibatches x 2 epochs)",
                       rollout="plain", advantage="grpo", loss="bapo",
                       loss_cfg={"rho0": 0.5, "lower_start": 0.6, "lower_max": 0.9, "upper_start": 1.2,
                                 "upper_max": 3.0, "measure": "indicator", "agg": "token-mean",
                                 "clip_ratio_c": DAPO_PPO["clip_ratio_c"]},  # as the baseline dapo_stale
                       train_cfg=dict(STALE)))
