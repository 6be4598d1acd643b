"""Evaluation metrics: accuracy, unbiased pass@k, token-entropy statistics, lengths."""
from __future__ import annotations

from math import comb

import numpy as np
import torch

from .core import masked_mean
from .rollout import sample


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct (Chen et al., 2021):

        pass@k = 1 - C(n - c, k) / C(n, k)

    i.e. the probability that a uniformly chosen k-subset of the n samples holds
    at least one correct one. Requires 0 <= c <= n and 1 <= k <= n.
    """
    if not (0 <= c <= n) or not (1 <= k <= n):
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    # product form avoids huge binomials: C(n-c,k)/C(n,k) = prod_{i=n-c+1}^{n} (1 - k/i)
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def pass_at_k_groups(correct: torch.Tensor, group_ids: torch.Tensor, k: int) -> float:
    """Mean pass@k over groups; correct [B] (bool / 0-1), group_ids [B]. Each group needs >= k samples."""
    vals = []
    for g in torch.unique(group_ids):
        sel = correct[group_ids == g]
        vals.append(pass_at_k(int(sel.numel()), int(sel.bool().sum()), k))
    return float(np.mean(vals)) if vals else float("nan")


def accuracy(rewards: torch.Tensor, threshold: float = 0.5) -> float:
    """Fraction of responses with reward above `threshold` (rewards are 0/1 for the toy verifiers)."""
    return float((rewards > threshold).float().mean()) if rewards.numel() else float("nan")


def entropy_stats(entropy: torch.Tensor, mask: torch.Tensor, percentiles=(10, 50, 90)) -> dict[str, float]:
    """Mean and percentiles of per-token entropy over response tokens (mask == 1)."""
    vals = entropy[mask.bool()].detach().float()
    out = {"entropy": float(masked_mean(entropy.detach().float(), mask))}
    for q in percentiles:
        out[f"entropy_p{q}"] = float(torch.quantile(vals, q / 100)) if vals.numel() else float("nan")
    return out


def length_stats(response_mask: torch.Tensor, truncated: torch.Tensor | None = None) -> dict[str, float]:
    """Mean / max response length in tokens (EOS included), and the truncation rate."""
    lengths = response_mask.sum(1).float()
    out = {"completion_length": float(lengths.mean()), "completion_length_max": float(lengths.max())}
    if truncated is not None:
        out["truncated_frac"] = float(truncated.float().mean())
    return out


@torch.no_grad()
def evaluate_policy(policy, task, problems, k: int, max_new_tokens: int, seed: int) -> dict[str, float]:
    """Greedy accuracy, pass@1..k at temperature 1 from k samples per problem (unbiased), and the
    mean token entropy of those samples. The same `seed` gives the same samples."""
    gen = torch.Generator(device=next(policy.parameters()).device).manual_seed(seed)
    batch = sample(policy, problems, k, max_new_tokens, temperature=1.0, generator=gen)
    correct = torch.tensor([task.reward(p, t) for p, t in zip(batch.problems, batch.texts)]) > 0.5
    greedy = sample(policy, problems, 1, max_new_tokens, greedy=True)
    out = {"greedy_acc": float(np.mean([task.reward(p, t) > 0.5 for p, t in zip(greedy.problems, greedy.texts)]))}
    for kk in range(1, k + 1):
        out[f"pass@{kk}"] = pass_at_k_groups(correct, batch.group_ids.cpu(), kk)
    out["entropy"] = entropy_stats(batch.old_entropy, batch.response_mask)["entropy"]
    return out
