"""Shared math for every method: log-probs, entropy, masked aggregation, KL
estimators, ratios, group statistics. No method logic lives here.

Conventions
-----------
* Masks are 0/1 tensors of the same shape as the values they mask; a masked
  value is ignored even when it is NaN or inf.
* `logits` are [..., V]; reductions over the vocabulary use the last dim.
* Everything is pure torch and works in float32 and float64.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")


def _probs_and_safe_logp(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """pi = softmax(z) and log pi with 0 where pi == 0 (so that 0 * log 0 = 0 in
    values AND gradients; a plain where() would leak NaN gradients from -inf)."""
    logp = F.log_softmax(logits, dim=-1)
    probs = logp.exp()
    return probs, logp.masked_fill(probs == 0, 0.0)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of softmax(logits) over the last dim.

    H(z) = -sum_v pi_v log pi_v,   pi = softmax(z).

    Stable for logits of +-1e4 (log_softmax subtracts the max) and for -inf
    entries (they contribute 0 * log 0 = 0, with a finite gradient). Each row
    needs at least one finite logit. Shape [..., V] -> [...].
    """
    probs, logp = _probs_and_safe_logp(logits)
    return -(probs * logp).sum(-1)


def logprobs_from_logits(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log pi(token) = z_token - logsumexp(z). logits [..., V], tokens [...] -> [...]."""
    if logits.shape[:-1] != tokens.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and tokens {tuple(tokens.shape)} disagree on the leading dims")
    logp = F.log_softmax(logits, dim=-1)
    return logp.gather(-1, tokens.long().unsqueeze(-1)).squeeze(-1)


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    """sum(x * mask) where masked-out entries are ignored even if non-finite."""
    x = torch.where(mask.bool(), x, torch.zeros((), dtype=x.dtype, device=x.device))
    return x.sum() if dim is None else x.sum(dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    """sum(x * mask) / sum(mask) over `dim` (all dims if None). An empty mask gives 0, not NaN."""
    if x.shape != mask.shape:
        raise ValueError(f"masked_mean: values {tuple(x.shape)} and mask {tuple(mask.shape)} differ in shape")
    count = mask.to(x.dtype).sum() if dim is None else mask.to(x.dtype).sum(dim)
    return masked_sum(x, mask, dim) / count.clamp(min=1)


def aggregate(loss_mat: torch.Tensor, mask: torch.Tensor, mode: str = "token-mean",
              max_len: int | None = None) -> torch.Tensor:
    """Reduce a per-token loss [B, T] to a scalar (verl's `loss_agg_mode` names).

    token-mean               sum_{i,t} m L / sum_{i,t} m          (DAPO; every token weighs the same)
    seq-mean-token-mean      (1/B') sum_i [sum_t m L / sum_t m]    (GRPO paper; B' = rows with a valid token)
    seq-mean-token-sum       (1/B) sum_i sum_t m L
    seq-mean-token-sum-norm  (1/B) sum_i sum_t m L / max_len       (Dr.GRPO: a constant length normaliser)

    `max_len` defaults to T. verl's seq-mean-token-sum-norm sums over rows
    instead of averaging; ours divides by B as well, so the scale does not grow
    with the batch (a constant factor, nothing else differs).
    """
    if loss_mat.dim() != 2 or loss_mat.shape != mask.shape:
        raise ValueError(f"aggregate expects loss_mat and mask of one shape [B, T], got "
                         f"{tuple(loss_mat.shape)} and {tuple(mask.shape)}")
    if mode == "token-mean":
        return masked_mean(loss_mat, mask)
    seq_sum = masked_sum(loss_mat, mask, dim=-1)
    if mode == "seq-mean-token-mean":
        count = mask.to(loss_mat.dtype).sum(-1)
        has_tokens = count > 0
        per_seq = seq_sum / count.clamp(min=1)
        return per_seq[has_tokens].sum() / has_tokens.sum().clamp(min=1)
    if mode == "seq-mean-token-sum":
        return seq_sum.mean()
    if mode == "seq-mean-token-sum-norm":
        return seq_sum.mean() / float(max_len or loss_mat.shape[-1])
    raise ValueError(f"unknown aggregation mode {mode!r}; known modes: {', '.join(AGG_MODES)}")


def group_advantages(rewards: torch.Tensor, group_ids: torch.Tensor, scale: str = "std",
                     eps: float = 1e-6) -> torch.Tensor:
    """Outcome advantages normalised within each group of responses to one prompt.

    GRPO  (scale="std"):  A_i = (r_i - mean_g r) / (std_g r + eps)   (unbiased std, as torch/verl/TRL)
    Dr.GRPO (scale="none"): A_i = r_i - mean_g r

    rewards [B], group_ids [B] (any integer labels) -> [B]. A group of one
    response has advantage 0; an all-equal group has advantage exactly 0.
    """
    if scale not in ("std", "none"):
        raise ValueError(f"unknown scale {scale!r}; use 'std' (GRPO) or 'none' (Dr.GRPO)")
    if rewards.dim() != 1 or rewards.shape != group_ids.shape:
        raise ValueError(f"rewards and group_ids must both be [B], got {tuple(rewards.shape)} and {tuple(group_ids.shape)}")
    mean, std = group_mean_std(rewards, group_ids)
    centred = rewards - mean
    return centred / (std + eps) if scale == "std" else centred


def group_mean_std(values: torch.Tensor, group_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-element group mean and unbiased group std (0 for groups of one). [B] -> ([B], [B])."""
    _, inverse = torch.unique(group_ids, return_inverse=True)
    n_groups = int(inverse.max()) + 1 if inverse.numel() else 0
    count = torch.zeros(n_groups, dtype=values.dtype, device=values.device).index_add_(0, inverse, torch.ones_like(values))
    # mean = ref + mean(v - ref) with ref = the group's first value: exact (so centred values and
    # std are exactly 0) for an all-equal group, where sum(v) / n is not (0.1 * 3 / 3 != 0.1)
    idx = torch.arange(values.numel(), device=values.device)
    first = torch.full((n_groups,), values.numel(), dtype=torch.long, device=values.device)
    first = first.scatter_reduce_(0, inverse, idx, reduce="amin")
    ref = values[first][inverse]
    total = torch.zeros_like(count).index_add_(0, inverse, values - ref)
    mean = ref + (total / count)[inverse]
    sq = torch.zeros_like(count).index_add_(0, inverse, (values - mean) ** 2)
    var = sq / (count - 1).clamp(min=1)
    return mean, var.sqrt()[inverse]


def policy_covariance(probs: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cov_{a~pi}(x_a, y_a) = sum_a pi_a x_a y_a - (sum_a pi_a x_a)(sum_a pi_a y_a) over the last dim.
    Entries with pi_a = 0 are ignored (so x = log pi may hold -inf there)."""
    keep = probs > 0
    zero = torch.zeros((), dtype=probs.dtype, device=probs.device)
    x = torch.where(keep, x, zero)
    y = torch.where(keep, y, zero)
    return (probs * x * y).sum(-1) - (probs * x).sum(-1) * (probs * y).sum(-1)


def entropy_change_first_order(logits: torch.Tensor, delta_logits: torch.Tensor) -> torch.Tensor:
    """First-order change of the softmax entropy when logits move by delta.

    H(z + d) - H(z) = <dH/dz, d> + O(|d|^2),  dH/dz_a = -pi_a (log pi_a + H),
    so the first-order term is  -Cov_{a~pi}(log pi_a, d_a).
    Shift-invariant in d (softmax is). [..., V] x [..., V] -> [...].
    """
    if logits.shape != delta_logits.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and delta_logits {tuple(delta_logits.shape)} differ in shape")
    probs, logp = _probs_and_safe_logp(logits)
    return -policy_covariance(probs, logp, delta_logits)


def kl_estimate(logp: torch.Tensor, ref_logp: torch.Tensor, kind: str = "k3") -> torch.Tensor:
    """Per-token estimators of KL(pi || ref) from tokens sampled from pi (Schulman, 2020).

    k1 = log pi - log ref                      (unbiased, can be negative)
    k2 = (log pi - log ref)^2 / 2              (biased, low variance)
    k3 = exp(log ref - log pi) - (log ref - log pi) - 1   (unbiased, >= 0)

    The log-ratio is clamped to [-20, 20] before exp() so k3 stays finite.
    """
    log_ratio = logp - ref_logp
    if kind == "k1":
        return log_ratio
    if kind == "k2":
        return 0.5 * log_ratio ** 2
    if kind == "k3":
        neg = (-log_ratio).clamp(-20.0, 20.0)
        return torch.expm1(neg) - neg  # = exp(neg) - neg - 1; expm1 keeps it >= 0 in float32 for small |neg|
    raise ValueError(f"unknown KL estimator {kind!r}; known: k1, k2, k3")


def clamped_log_ratio(logp: torch.Tensor, old_logp: torch.Tensor, bound: float = 20.0) -> torch.Tensor:
    """log r = log pi - log pi_old, clamped to [-bound, bound] so exp() cannot overflow (e^20 ~ 5e8,
    far beyond any clip range, so the clamp never changes a clipped loss)."""
    return (logp - old_logp).clamp(-bound, bound)


def ppo_clip_per_token(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
                       clip_low: float = 0.2, clip_high: float = 0.2,
                       clip_ratio_c: float | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token PPO-clip loss (to minimise) with decoupled bounds and optional dual clip.

    r = exp(logp - old_logp)
    L = max(-A r, -A clip(r, 1 - eps_low, 1 + eps_high))               (PPO; DAPO's clip-higher when eps_high > eps_low)
    dual clip (Ye et al. 2020), only for A < 0:  L = min(L, -A c)       (c > 1 bounds the loss of huge ratios)

    Returns (loss [B, T], ratio [B, T], clipped [B, T] bool: the clipped branch is active,
    i.e. the token's gradient is zero because of clipping).
    """
    ratio = clamped_log_ratio(logp, old_logp).exp()
    unclipped = -advantages * ratio
    clipped_val = -advantages * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    loss = torch.maximum(unclipped, clipped_val)
    clipped = clipped_val > unclipped
    if clip_ratio_c is not None:
        if clip_ratio_c <= 1.0:
            raise ValueError(f"dual-clip constant must be > 1, got {clip_ratio_c}")
        dual = -advantages * clip_ratio_c
        use_dual = (advantages < 0) & (dual < loss)
        loss = torch.where(use_dual, dual, loss)
        clipped = clipped | use_dual
    return loss, ratio, clipped
