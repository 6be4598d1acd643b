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

import math
from collections import Counter

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


def empirical_entropy(samples: list, bits: bool = False) -> float:
    """Shannon entropy of the empirical distribution of `samples` (any hashables, e.g. final answers):
    -sum_a phat(a) log phat(a), phat(a) = #{a} / n; natural log, or log2 with bits=True. >= 0 (no -0.0).
    Used for answer entropy (invisible_leash: per problem, nats; copo: per group, bits)."""
    n = len(samples)
    if n == 0:
        raise ValueError("empirical_entropy needs at least one sample")
    log = math.log2 if bits else math.log
    return max(0.0, -sum(c / n * log(c / n) for c in Counter(samples).values()))  # max(0.0, .): no -0.0


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

    B' = rows with at least one valid token (sum_t m > 0), B = all rows, max_len defaults to T:

    token-mean               sum_{i,t} m L / sum_{i,t} m                    (DAPO; every token weighs the same)
    seq-mean-token-mean      (1/B') sum_{i in B'} [sum_t m L / sum_t m]     (GRPO paper)
    seq-mean-token-sum       (1/B') sum_i sum_t m L
    seq-mean-token-sum-norm  (1/B)  sum_i sum_t m L / max_len               (Dr.GRPO: a constant normaliser)

    An empty mask (or B = 0) gives 0, never NaN. A row with no valid token (e.g. one a pg_mask left
    empty) changes nothing in the first three modes: it is not in B'. In -norm it only enters the
    constant B (the value times B is unchanged).

    verl (`core_algos.agg_loss`, current main, called without its global-batch arguments):
      token-mean               masked sum / mask sum                               (same)
      seq-mean-token-mean      sum of row means over rows with mask sum > 0,
                               divided by the number of such rows                  (same; B')
      seq-mean-token-sum       sum of row sums, divided by the number of rows
                               with mask sum > 0                                   (same; B')
      seq-mean-token-sum-norm  sum of ALL row sums / loss_scale_factor (default T);
                               no row count at all                                 (verl = ours * B)
    We keep the 1/B in -norm so the loss scale does not grow with the batch; B is a shape constant
    like max_len, so the normaliser stays data-independent as in verl. Other differences: verl's row
    means divide by (count + 1e-8) (a no-op for a counted row in float32); an all-empty mask gives NaN
    there (0 here); verl can swap its local counts for global ones (`batch_num_tokens`,
    `global_batch_size`, times `dp_size`) to normalise over the whole data-parallel batch, and its actor
    scales each micro-batch loss by 1/gradient_accumulation. None of that is modelled here: one loss
    call is one local batch.
    """
    if loss_mat.dim() != 2 or loss_mat.shape != mask.shape:
        raise ValueError(f"aggregate expects loss_mat and mask of one shape [B, T], got "
                         f"{tuple(loss_mat.shape)} and {tuple(mask.shape)}")
    if mode == "token-mean":
        return masked_mean(loss_mat, mask)
    seq_sum = masked_sum(loss_mat, mask, dim=-1)
    count = mask.to(loss_mat.dtype).sum(-1)
    n_rows = (count > 0).sum().clamp(min=1)  # B'
    if mode == "seq-mean-token-mean":
        return (seq_sum / count.clamp(min=1)).sum() / n_rows  # an empty row's mean is 0 / 1 = 0
    if mode == "seq-mean-token-sum":
        return seq_sum.sum() / n_rows
    if mode == "seq-mean-token-sum-norm":
        return seq_sum.sum() / max(loss_mat.shape[0], 1) / float(max_len or loss_mat.shape[-1])
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


def kl_estimate(logp: torch.Tensor, ref_logp: torch.Tensor, kind: str = "k3",
                clamp: float | None = None) -> torch.Tensor:
    """Per-token estimators of KL(pi || ref) from tokens sampled from pi (Schulman, 2020).

    k1 = log pi - log ref                      (unbiased, can be negative)
    k2 = (log pi - log ref)^2 / 2              (biased, low variance)
    k3 = exp(log ref - log pi) - (log ref - log pi) - 1   (unbiased, >= 0)

    For k3 the log-ratio is clamped to [-20, 20] before exp() so it stays finite (verl does the same).
    `clamp` (None: off) then clamps the estimate to [-clamp, clamp]; verl's `kl_penalty_forward` clamps
    its k3 ("low_var_kl") to [-10, 10] (k3 >= 0, so this cuts k3 > 10, i.e. log ref - log pi above ~2.61
    or below ~-11, where the gradient becomes 0) and clamps neither k1 nor k2 (nor "abs"): so
    `kind="k3", clamp=10.0` is verl's k3; a clamp on k1 / k2 is our extension.
    """
    if clamp is not None and not clamp > 0:
        raise ValueError(f"kl_estimate: clamp must be > 0 or None, got {clamp}")
    log_ratio = logp - ref_logp
    if kind == "k1":
        est = log_ratio
    elif kind == "k2":
        est = 0.5 * log_ratio ** 2
    elif kind == "k3":
        neg = (-log_ratio).clamp(-20.0, 20.0)
        est = torch.expm1(neg) - neg  # = exp(neg) - neg - 1; expm1 keeps it >= 0 in float32 for small |neg|
    else:
        raise ValueError(f"unknown KL estimator {kind!r}; known: k1, k2, k3")
    return est if clamp is None else est.clamp(-clamp, clamp)


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


def pearson(x: torch.Tensor, y: torch.Tensor) -> float:
    """Pearson correlation of two [N] vectors (float64): cov(x, y) / (std x std y); 0.0 when N < 2 or
    either side is constant (a diagnostic that must stay a finite number in the step's record)."""
    x, y = x.reshape(-1).double(), y.reshape(-1).double()
    if x.numel() < 2:
        return 0.0
    dx, dy = x - x.mean(), y - y.mean()
    den = float((dx.square().sum() * dy.square().sum()).sqrt())
    return float((dx * dy).sum()) / den if den > 0 else 0.0
