"""CANON: Conditional Advantage Estimation for Reinforcement Learning in Large Reasoning Models --
Chen et al. 2025, arXiv 2509.23962. Official code: biuboomc/CANON (verl fork; core_algos.py
`compute_dr_entropy_per_token_group_outcome_advantage`, `compute_dr_length_on_mean_group_outcome_advantage`,
`..._annel_...`, `compute_dr_random_group_outcome_advantage`; dapo_ray_trainer.py; scripts/setups.sh).

Stage changed: advantage only (the loss is plain PPO-clip). Idea: split each prompt's G responses into
halves by a target metric M and baseline each response on the OTHER half (inter-group: which direction of
M pays off) and on its OWN half (intra-group: who is best among responses with the same trend). No
directional prior on M, no std normalisation. Dr.GRPO is the 50/50 mix.

Symbols (one group of G >= 2 responses, r_i scalar reward, m_{i,t} response mask)
  M_i      metric, no gradient: "entropy" (1/L_i) sum_t m_{i,t} H_{i,t}, H = batch.old_entropy, the entropy
           of the rollout policy pi_T (verl: the old-log-prob pass); "length" L_i = sum_t m_{i,t};
           "random" M_i = 0, so the tie rule alone decides the split
  split    sort by M ascending; Lo = the first floor(G/2), Hi = the other ceil(G/2) (odd G: Hi is larger)
  ties     "random": ascending (M, u_i), u_i ~ U[0, 1) from a stream private to CANON, seeded by
           (run seed = ctx.generator.initial_seed(), kept in ctx.state["canon"], RL step): reproducible,
           identical after a resume, and it never advances ctx.rng / ctx.generator, so problems and
           samples match a baseline run of the same seed. "stable": row order, the official Python sort.
  mu_lo, mu_hi   mean reward of Lo, Hi;  mu in [0, 1] the mix (paper Eq. 5 "mu", code `_lambda`);
  alpha    asymmetry (paper Eq. 8);  b offset (code `beta`, 0 in every script);  Z the normaliser
entropy / random form:
  i in Hi:  A_i = [ mu (r_i - alpha mu_lo + b) + (1 - mu)(r_i - mu_hi) ] / Z
  i in Lo:  A_i = [ mu (alpha r_i - mu_hi - b) + (1 - mu)(r_i - mu_lo) ] / Z
length form (alpha on the other side, as the official length function):
  i in Hi:  A_i = [ mu (alpha r_i - mu_lo + b) + (1 - mu)(r_i - mu_hi) ] / Z
  i in Lo:  A_i = [ mu (r_i - alpha mu_hi - b) + (1 - mu)(r_i - mu_lo) ] / Z
annealed schedule (official `dr_entropy_token_budget_annel`): mu_t = mean reward of the whole batch
("first intra, later inter"); the official function has no alpha / b (= alpha 1, b 0 here).
Z = ctx.max_new_tokens (normalize="max_new_tokens"; official: data.max_response_length when loss_agg_mode
is seq-mean-token-sum, else 1) or 1 (normalize="none"). A_{i,t} = A_i m_{i,t} (baselines.broadcast).

Exact properties (tests): alpha 1, b 0, mu 1/2, even G -> r_i - mean_g r (Dr.GRPO). Group sum =
mu (|Hi| - |Lo|)(mu_hi - alpha mu_lo + b) / Z [length form: (alpha mu_hi - mu_lo + b)], so 0 for
every even G, alpha, b. With alpha 1, b 0: A_i = mu (r_i - mean of the other half) + (1 - mu)(r_i - mean
of its own half), symmetric in Hi / Lo, hence M -> -M changes nothing whenever the partition is swapped:
even G and no tie ACROSS the median (ties inside a half are harmless); odd G moves the median response.
All-equal rewards c: A = +-mu (c (1 - alpha) + b) / Z, i.e. 0 iff alpha 1 and b 0 (or mu 0).

Card vs paper/official code: the card's formulas, defaults (alpha 1, mu 1, b 0, seq-mean-token-sum,
clip 0.2 / 0.28) and Z rule match the code. Also verl's dual clip c = 3 (its default) is on; setups.sh
uses 512 prompts / 32-prompt minibatches (16 stale steps per rollout), the recipes keep the library regime.
Deviations: (1) ties are broken at random by default (the official stable sort decides length ties by row
order, which in verl is the order after its seqlen balancing); ties="stable" restores it. (2) A group of
one response is refused (official: means 0, A = r / Z). (3) The official dr_random splits by row index;
metric="random" with ties="random" draws a seeded uniform half instead (ties="stable" is the official
one). (4) The annealed mu_t is clamped to [0, 1] (no-op for 0/1 rewards). Cosine-restart schedules: not
implemented. Metrics: canon/gap = mean over groups of mu_hi - mu_lo, canon/frac_hi_better (mu_hi > mu_lo),
canon/frac_lo_better, canon/metric_gap (mean M_hi - M_lo), canon/frac_tied_median (M ties across the median),
canon/frac_tie_decides (... among responses of different reward: only there can the tie rule move
mu_lo, mu_hi), canon/mu.
Baseline: `canon --set advantage.mu=0.5` IS Dr.GRPO with the same loss and Z (exact, tested). The library's
`dr_grpo` recipe differs in the loss only: clip 0.2 / 0.2 without dual clip, and seq-mean-token-sum-norm
divides by the batch's response width T instead of a constant max_new_tokens.
Toy note (addition base): entropy ties across the median are common (identical responses), but they
rarely matter (equal rewards: canon/frac_tie_decides ~ 0 in a 3-step smoke run). Length ties decide ~85% of
the groups on `addition` (all lengths tied at the median): there canon_length is nearly the random-split
control; it needs a verbose base (PLAN: addition_verbose).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from ..baselines import broadcast
from ..core import group_mean_std, masked_mean
from ..registry import Recipe, check_range, register, register_recipe

PAPER = "CANON: Conditional Advantage Estimation for RL in Large Reasoning Models, Chen et al. 2025, arXiv 2509.23962"
_SALT = 0xCA707  # separates CANON's tie stream from any other stream seeded by (seed, step)


@dataclass
class CanonConfig:
    metric: Literal["entropy", "length", "random"] = "entropy"  # what splits the group
    mu: float = 1.0                  # inter-group weight (paper mu, code _lambda); 1 - mu: intra-group
    alpha: float = 1.0               # asymmetry of Eq. 8 (1: symmetric, no direction preferred)
    b: float = 0.0                   # offset favouring Hi (code beta; 0 in the official scripts)
    mu_schedule: Literal["constant", "annealed"] = "constant"   # annealed: mu_t = batch mean reward
    ties: Literal["random", "stable"] = "random"                # stable: row order (official)
    normalize: Literal["max_new_tokens", "none"] = "max_new_tokens"  # Z (use "none" with token-mean)

    def __post_init__(self):
        check_range(self, "mu", lo=0.0, hi=1.0)
        check_range(self, "alpha", lo=0.0)
        check_range(self, "b")
        for name, ok in (("metric", ("entropy", "length", "random")), ("mu_schedule", ("constant", "annealed")),
                         ("ties", ("random", "stable")), ("normalize", ("max_new_tokens", "none"))):
            if getattr(self, name) not in ok:
                raise ValueError(f"CanonConfig.{name} must be one of {ok}, got {getattr(self, name)!r}")


def response_metric(batch, kind: str) -> torch.Tensor:
    """M_i per row [B] float64 (no gradient): mean old entropy over valid tokens, length, or 0 ("random")."""
    mask = batch.response_mask
    if kind == "entropy":
        return masked_mean(batch.old_entropy.detach().double(), mask.double(), dim=1).cpu()
    if kind == "length":
        return mask.sum(1).double().cpu()
    if kind == "random":
        return torch.zeros(mask.shape[0], dtype=torch.float64)
    raise ValueError(f"unknown CANON metric {kind!r}; use entropy, length or random")


def tie_keys(seed: int, step: int, n: int) -> torch.Tensor:
    """n keys u ~ U[0, 1) [n] float64 from CANON's own stream, a pure function of (seed, step)."""
    return torch.from_numpy(np.random.default_rng([int(seed), int(step), _SALT]).random(n))


def split_high(metric: torch.Tensor, group_ids: torch.Tensor, keys: torch.Tensor | None = None):
    """(hi [B] bool, order [B]): hi_i = row i is in its group's upper half, Lo = the first floor(n_g / 2)
    rows of the group in ascending (metric, key) order; keys None: row order breaks ties (stable sort).
    order lists the rows group by group, each group sorted."""
    B = metric.numel()
    _, inv = torch.unique(group_ids.cpu(), return_inverse=True)
    counts = torch.bincount(inv)
    if counts.numel() and int(counts.min()) < 2:
        raise ValueError("CANON needs at least 2 responses per prompt (group_size >= 2); got a group of 1")
    order = torch.arange(B)                       # successive stable sorts = lexicographic (group, M, key, row)
    if keys is not None:
        order = order[torch.sort(keys[order], stable=True).indices]
    order = order[torch.sort(metric[order], stable=True).indices]
    order = order[torch.sort(inv[order], stable=True).indices]
    start = torch.cumsum(counts, 0) - counts      # first sorted position of each group
    rank = torch.empty(B, dtype=torch.long)
    rank[order] = torch.arange(B) - start[inv[order]]
    return rank >= (counts // 2)[inv], order


def half_means(values: torch.Tensor, hi: torch.Tensor, group_ids: torch.Tensor):
    """(lo [n_groups], hi [n_groups], inverse [B]): per-group means of `values` over Lo and Hi (exact for
    all-equal values: core.group_mean_std)."""
    _, inv = torch.unique(group_ids.cpu(), return_inverse=True)
    own, _ = group_mean_std(values, inv * 2 + hi.long())
    table = torch.zeros(int(inv.max()) + 1, 2, dtype=values.dtype).index_put_((inv, hi.long()), own)
    return table[:, 0], table[:, 1], inv


def canon_values(rewards: torch.Tensor, hi: torch.Tensor, group_ids: torch.Tensor, mu: float, alpha: float = 1.0,
                 b: float = 0.0, length_form: bool = False) -> torch.Tensor:
    """A_i * Z per row [B] float64 from the split (module doc equations)."""
    r = rewards.detach().cpu().double()
    lo_g, hi_g, inv = half_means(r, hi, group_ids)
    mu_lo, mu_hi = lo_g[inv], hi_g[inv]
    a_r, a_lo = (alpha, 1.0) if length_form else (1.0, alpha)      # Hi: a_r r - a_lo mu_lo
    b_r, b_hi = (1.0, alpha) if length_form else (alpha, 1.0)      # Lo: b_r r - b_hi mu_hi
    inter = torch.where(hi, a_r * r - a_lo * mu_lo + b, b_r * r - b_hi * mu_hi - b)
    intra = r - torch.where(hi, mu_hi, mu_lo)
    return mu * inter + (1 - mu) * intra


@register("advantage", "canon", config=CanonConfig, paper=PAPER, needs={"groups"})
def canon_advantage(batch, cfg: CanonConfig, ctx) -> torch.Tensor:
    """CANON advantage broadcast to tokens [B, T]; logs the per-step split statistics."""
    gids, r = batch.group_ids.cpu(), batch.rewards.detach().cpu().double()
    M = response_metric(batch, cfg.metric)
    keys = None
    if cfg.ties == "random":
        state = ctx.state.setdefault("canon", {})
        seed = state.setdefault("seed", int(ctx.generator.initial_seed()))
        keys = tie_keys(seed, ctx.step, M.numel())
    hi, order = split_high(M, gids, keys)
    mu = min(1.0, max(0.0, float(r.mean()))) if cfg.mu_schedule == "annealed" else cfg.mu
    Z = float(ctx.max_new_tokens) if cfg.normalize == "max_new_tokens" else 1.0
    adv = canon_values(r, hi, gids, mu, cfg.alpha, cfg.b, length_form=cfg.metric == "length") / Z

    lo_g, hi_g, inv = half_means(r, hi, gids)
    m_lo, m_hi, _ = half_means(M, hi, gids)
    counts = torch.bincount(inv)
    start, mid = torch.cumsum(counts, 0) - counts, counts // 2
    v = M[order][start + mid - 1]                        # a tie across the median among rows of different
    tied = (v == M[order][start + mid])                  # reward: only then can the tie rule move mu_lo, mu_hi
    at = tied[inv] & (M == v[inv])
    r_max = torch.full_like(v, -torch.inf).scatter_reduce(0, inv[at], r[at], "amax")
    r_min = torch.full_like(v, torch.inf).scatter_reduce(0, inv[at], r[at], "amin")
    ctx.log(**{"canon/gap": float((hi_g - lo_g).mean()), "canon/frac_hi_better": float((hi_g > lo_g).double().mean()),
               "canon/frac_lo_better": float((hi_g < lo_g).double().mean()),
               "canon/metric_gap": float((m_hi - m_lo).mean()), "canon/frac_tied_median": float(tied.double().mean()),
               "canon/frac_tie_decides": float((tied & (r_max > r_min)).double().mean()),
               "canon/mu": mu})
    return broadcast(adv.to(batch.rewards.dtype), batch)


# official loss settings: seq-mean-token-sum (with Z = max response length in A), clip 0.2 / 0.28, verl's dual
# clip c = 3; no KL, no entropy bonus. The library's default trainer regime (no extra staleness).
CANON_PPO = {"clip_low": 0.2, "clip_high": 0.28, "clip_ratio_c": 3.0, "agg": "seq-mean-token-sum"}
register_recipe(Recipe("canon", paper=PAPER + " (entropy split, mu 1, alpha 1, b 0)", advantage="canon",
                       advantage_cfg={"metric": "entropy", "mu": 1.0, "alpha": 1.0, "b": 0.0},
                       loss_cfg=dict(CANON_PPO)))
register_recipe(Recipe("canon_drgrpo", paper=PAPER + " (mu 1/2: exactly Dr.GRPO, with CANON's loss -- its baseline)",
                       advantage="canon", advantage_cfg={"metric": "entropy", "mu": 0.5, "alpha": 1.0, "b": 0.0},
                       loss_cfg=dict(CANON_PPO)))
register_recipe(Recipe("canon_random_split", paper=PAPER + " (control: a seeded random half instead of the metric)",
                       advantage="canon", advantage_cfg={"metric": "random", "mu": 1.0, "alpha": 1.0, "b": 0.0},
                       loss_cfg=dict(CANON_PPO)))
register_recipe(Recipe("canon_length", paper=PAPER + " (length split, mu 1, alpha 1, b 0)", advantage="canon",
                       advantage_cfg={"metric": "length", "mu": 1.0, "alpha": 1.0, "b": 0.0},
                       loss_cfg=dict(CANON_PPO)))
