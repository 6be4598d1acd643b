"""Beyond the 80/20 Rule: High-Entropy Minority Tokens Drive Effective Reinforcement
Learning for LLM Reasoning -- Wang et al. 2025, arXiv 2506.01939.

Stage changed: loss (a token mask on the policy-gradient term of DAPO). Rollout,
reward and advantage are DAPO's (dynamic sampling, overlong penalty, GRPO).

Idea: most chain-of-thought tokens are generated with entropy ~0; a minority of
high-entropy "forking" tokens choose the reasoning direction. Training on the top
rho = 20% highest-entropy tokens of each batch matches full DAPO (beats it at scale);
training on the bottom 80% only hurts.

Symbols
  m_{i,t}    1 on response token t of response i (response_mask); N = sum m
  H_{i,t}    entropy of the CURRENT policy pi_T = softmax(z / T) at the training
             temperature, -sum_v pi log pi (out.entropy), detached: it only picks tokens
  tau_rho    the (1 - rho)-quantile of {H_{i,t} : m_{i,t} = 1} over the loss call
  M_{i,t}    1[H_{i,t} >= tau_rho] * m_{i,t}; here exactly k = max(1, ceil(rho N))
             tokens (top-k, as the official code), so ties cannot inflate the count
  L_{i,t}    DAPO per-token loss max(-A r, -A clip(r, 1 - eps_l, 1 + eps_h)),
             dual-clipped at -A c for A < 0 (core.ppo_clip_per_token)

  paper / TRL  (normalizer="all", default):  loss = sum M L / sum m
  official verl (normalizer="selected"):     loss = sum M L / sum M     (~ 1/rho larger)
For other `agg` modes, "all" multiplies L by M and keeps cfg.agg over m (the row means
of seq-mean-token-mean still divide by every response token), while "selected"
runs cfg.agg of the PG term over m * M as verl does (row means over a row's selected
tokens; rows without a selected token are left out of the row count of seq-mean-token-mean
and seq-mean-token-sum, as in verl's agg_loss); KL / entropy terms, when on, still cover m.
Only seq-mean-token-sum-norm counts no tokens and no non-empty rows (core.aggregate), so
there the two coincide.

Selection, over ALL valid tokens of one loss call (= one optimizer step here):
  top     the k = max(1, ceil(rho N)) highest-entropy tokens
  bottom  the floor(rho N) = N - ceil((1 - rho) N) lowest-entropy tokens, defined as the
          complement of top(1 - rho); so top(rho) and bottom(1 - rho) partition the valid
          tokens for every rho in (0, 1] ("bottom 80%" = rho 0.8). bottom(1) = all tokens,
          while top(0) keeps one token (the max(1, .) of the official code).
  random  k = max(1, ceil(rho N)) valid tokens drawn uniformly without replacement
ceil/floor act on rho N rounded to 6 decimals (0.2 * 15 must not count as 3.0000000004
-> 4); the official int(rho N + 0.9999) agrees unless rho N has a fractional part in
(0, 1e-4]. Ties: one stable descending sort of H over the valid tokens in row-major
order, so among equal entropies the earlier token (lower row, then lower position) is
taken first by "top" and last by "bottom". A NaN entropy sorts as the largest.

Metrics: entropy_threshold (min entropy over the selected tokens: tau_rho for "top"),
frac_selected (sum M / sum m), entropy_selected_mean, entropy_unselected_mean (valid only).

Pitfalls: the normaliser changes the effective learning rate by ~1/rho (compare
ablations with one normaliser); the entropy must come from the current policy at the
training temperature, not from the sampler; verl selects per micro-batch, the paper
per batch; tiny vocabularies give many exactly tied near-zero entropies (hence top-k
with a deterministic tie-break rather than a >= threshold).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from ..baselines import PPOClipConfig, ppo_terms, reference_if_kl
from ..core import masked_mean
from ..registry import Recipe, check_range, register, register_recipe

PAPER = "Wang et al. 2025, Beyond the 80/20 Rule: High-Entropy Minority Tokens, arXiv 2506.01939"
SELECTS = ("top", "bottom", "random")


def _ceil(x: float) -> int:
    return math.ceil(round(x, 6))  # float noise (e.g. 0.2 * 15) must not add a token


def selection_size(n: int, rho: float, select: str = "top") -> int:
    """How many of n valid tokens `top_entropy_mask` selects (see the module docstring)."""
    if n == 0:
        return 0
    return n - _ceil((1.0 - rho) * n) if select == "bottom" else max(1, _ceil(rho * n))


def top_entropy_mask(entropy: torch.Tensor, mask: torch.Tensor, rho: float, select: str = "top",
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Bool [B, T]: the tokens of `mask` chosen by entropy (top / bottom) or at random, over
    all valid tokens at once. Padding is never chosen; the entropy is detached."""
    if not 0.0 <= rho <= 1.0:
        raise ValueError(f"rho must be in [0, 1], got {rho}")
    if select not in SELECTS:
        raise ValueError(f"unknown select {select!r}; use one of {SELECTS}")
    if entropy.shape != mask.shape:
        raise ValueError(f"entropy {tuple(entropy.shape)} and mask {tuple(mask.shape)} differ in shape")
    pos = mask.bool().flatten().nonzero().squeeze(1)      # flat indices of valid tokens, row-major
    n = pos.numel()
    out = torch.zeros(mask.numel(), dtype=torch.bool, device=mask.device)
    k = selection_size(n, rho, select)
    if k == 0:
        return out.view(mask.shape)
    if select == "random":
        dev = generator.device if generator is not None else "cpu"
        chosen = torch.randperm(n, generator=generator, device=dev)[:k].to(pos.device)
    else:
        h = entropy.detach().flatten()[pos]
        order = torch.sort(h, descending=True, stable=True).indices   # ties: earlier token first
        chosen = order[:k] if select == "top" else order[n - k:]
    out[pos[chosen]] = True
    return out.view(mask.shape)


@dataclass
class ForkingTokensConfig(PPOClipConfig):
    """DAPO's PPO settings (Qwen3-14B recipe of the official code) + the token selection."""
    clip_low: float = 0.2             # eps_low
    clip_high: float = 0.28           # eps_high (DAPO clip-higher)
    clip_ratio_c: float | None = 10.0  # dual clip for A < 0
    agg: Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"] = "token-mean"
    kl_coef: float = 0.0              # no KL (paper)
    entropy_coef: float = 0.0         # no entropy bonus (paper)
    rho: float = 0.2                  # fraction in (0, 1] of valid tokens kept (actor.entropy_top_ratio = 0.2)
    select: Literal["top", "bottom", "random"] = "top"  # bottom / random: the paper's ablations
    normalizer: Literal["all", "selected"] = "all"      # all: sum M L / sum m (paper, TRL); selected: / sum M (verl)
    seed: int = 0                     # for select="random" when no trainer context (ctx) is given

    def __post_init__(self):
        super().__post_init__()           # PPOClipConfig's checks
        check_range(self, "rho", lo=0.0, hi=1.0, lo_open=True)


@register("loss", "forking_tokens", config=ForkingTokensConfig, paper=PAPER, needs=reference_if_kl)
def forking_tokens_loss(out, batch, cfg: ForkingTokensConfig, ctx):
    """DAPO's loss on the selected (by default top-20% entropy) response tokens only."""
    gen = ctx.generator if ctx is not None else torch.Generator().manual_seed(cfg.seed)
    m = batch.response_mask
    h = out.entropy.detach()
    sel = top_entropy_mask(h, m, cfg.rho, cfg.select, generator=gen)
    if cfg.normalizer == "all":
        loss, metrics = ppo_terms(out, batch, cfg, token_weight=sel.to(out.logp.dtype))
    elif cfg.normalizer == "selected":  # verl: the PG term aggregated over m * M, KL / entropy over m
        loss, metrics = ppo_terms(out, batch, cfg, pg_mask=m * sel.to(m.dtype))
    else:
        raise ValueError(f"unknown normalizer {cfg.normalizer!r}; use 'all' or 'selected'")
    valid = m.bool()
    unsel = valid & ~sel
    metrics.update(
        entropy_threshold=float(h[sel].min()) if bool(sel.any()) else 0.0,  # tau_rho for select="top"
        frac_selected=float(sel.sum()) / max(1, int(valid.sum())),
        entropy_selected_mean=float(masked_mean(h, sel)),
        entropy_unselected_mean=float(masked_mean(h, unsel)))
    return loss, metrics


_DAPO_STAGES = dict(rollout="dynamic", reward="overlong", advantage="grpo", loss="forking_tokens")
_DAPO_LOSS = dict(clip_low=0.2, clip_high=0.28, clip_ratio_c=10.0, agg="token-mean")
register_recipe(Recipe("forking_tokens", paper=PAPER, **_DAPO_STAGES,
                       loss_cfg={**_DAPO_LOSS, "rho": 0.2, "select": "top"}))
register_recipe(Recipe("forking_tokens_bottom80", paper=PAPER + " (ablation: bottom 80%)", **_DAPO_STAGES,
                       loss_cfg={**_DAPO_LOSS, "rho": 0.8, "select": "bottom"}))
register_recipe(Recipe("forking_tokens_random20", paper=PAPER + " (ablation: random 20%)", **_DAPO_STAGES,
                       loss_cfg={**_DAPO_LOSS, "rho": 0.2, "select": "random"}))
