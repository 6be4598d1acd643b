"""Evaluation metrics: accuracy, unbiased pass@k, token-entropy statistics, lengths."""
from __future__ import annotations


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


def efficiency_metrics(lengths: torch.Tensor, correct: torch.Tensor, truncated: torch.Tensor,
                       budgets: tuple[int, ...] = ()) -> dict[str, float]:
    """Token-efficiency of a set of sampled attempts: lengths [B] (tokens, EOS included), correct [B] (bool),
    truncated [B] (bool: hit the length limit without EOS).

      len_mean        mean tokens per attempt
      len_correct     mean tokens of the correct attempts (left out if there is none: a logged NaN would make
                      two identical histories compare unequal)
      truncation_rate share of attempts cut at the length limit
      cost_of_pass    expected tokens spent to get one correct answer by independent attempts:
                      len_mean / success rate (Kapoor et al.'s cost-of-pass in tokens; inf if no success)
      acc@{b}tok      accuracy when an attempt longer than b tokens counts as wrong (a token budget)
    Plotting len_mean against accuracy over runs gives the (length, accuracy) frontier (plots.plot_frontier).
    """
    lengths, correct, truncated = lengths.double().cpu(), correct.bool().cpu(), truncated.bool().cpu()
    if lengths.numel() == 0:
        raise ValueError("efficiency_metrics needs at least one attempt")
    acc = float(correct.double().mean())
    out = {"len_mean": float(lengths.mean()),
           **({"len_correct": float(lengths[correct].mean())} if correct.any() else {}),
           "truncation_rate": float(truncated.double().mean()),
           "cost_of_pass": float(lengths.mean()) / acc if acc > 0 else float("inf")}
    for b in budgets:
        out[f"acc@{b}tok"] = float((correct & (lengths <= b)).double().mean())
    return out


@torch.no_grad()
def evaluate_policy(policy, task, problems, k: int, max_new_tokens: int, seed: int) -> dict[str, float]:
    """Greedy accuracy, pass@1..k at temperature 1 from k samples per problem (unbiased), the mean
    token entropy of those samples and their token efficiency (`efficiency_metrics`, with budgets of a
    quarter and a half of max_new_tokens). The same `seed` gives the same samples. When the problems
    span several difficulty levels, also greedy_acc@d{level}, pass@1@d{level} and pass@k@d{level} per level."""
    gen = torch.Generator(device=next(policy.parameters()).device).manual_seed(seed)
    batch = sample(policy, problems, k, max_new_tokens, temperature=1.0, generator=gen)
    correct = torch.tensor([task.reward(p, t) for p, t in zip(batch.problems, batch.texts)]) > 0.5
    greedy = sample(policy, problems, 1, max_new_tokens, greedy=True)
    out = {"greedy_acc": float(np.mean([task.reward(p, t) > 0.5 for p, t in zip(greedy.problems, greedy.texts)]))}
    for kk in range(1, k + 1):
        out[f"pass@{kk}"] = pass_at_k_groups(correct, batch.group_ids.cpu(), kk)
    out["entropy"] = entropy_stats(batch.old_entropy, batch.response_mask)["entropy"]
    out.update(efficiency_metrics(batch.lengths, correct, batch.truncated,
                                  budgets=(max(1, max_new_tokens // 4), max(1, max_new_tokens // 2))))
    levels = sorted({p.difficulty for p in problems})
    if len(levels) > 1:
        greedy_ok = np.array([task.reward(p, t) > 0.5 for p, t in zip(greedy.problems, greedy.texts)])
        sample_level = torch.tensor([p.difficulty for p in batch.problems])
        for d in levels:
            rows = sample_level == d
            out[f"greedy_acc@d{d}"] = float(greedy_ok[[p.difficulty == d for p in greedy.problems]].mean())
            out[f"pass@1@d{d}"] = pass_at_k_groups(correct[rows], batch.group_ids.cpu()[rows], 1)
            if k > 1:
                out[f"pass@{k}@d{d}"] = pass_at_k_groups(correct[rows], batch.group_ids.cpu()[rows], k)
    return out


def step_sensitivity(policy, task, lr: float = 1e-4, prompts: int = 16, group_size: int = 8,
                     seed: int = 0) -> dict[str, float]:
    """How far ONE fresh-Adam RL step moves a policy: the number to look at before choosing an RL lr.

    On one GRPO rollout (`prompts` x `group_size` samples of train problems at T = 1):
      g          = grad_theta L_GRPO at ratio 1,  L = seq-mean-token-mean of -A_i log pi(y_t)
      grad_norm  = ||g||_2
      theta'     = theta - lr * sign(g)        (Adam's first step: m / sqrt(v) = g / |g| elementwise)
      step_kl    = (1/B) sum_i sum_t KL(pi(.|y_i,<t) || pi'(.|y_i,<t))
                 = an unbiased estimate of the sequence-level KL(pi || pi') (chain rule), on the sampled rows.
    A base on which step_kl at lr 1e-4 is ~1 nat is too sharp for that lr: one step rewrites it.
    Returns {"step_kl", "grad_norm"} (plain floats); the policy itself is not changed.
    """
    import copy
    import torch.nn.functional as F
    from .core import group_advantages
    from .rollout import policy_forward
    gen = torch.Generator(device=next(policy.parameters()).device).manual_seed(seed)
    problems = task.sample(prompts, np.random.default_rng(seed), split="train")
    batch = sample(policy, problems, group_size, task.max_new_tokens, temperature=1.0, generator=gen)
    rewards = torch.tensor([task.reward(p, t) for p, t in zip(batch.problems, batch.texts)], dtype=torch.float32)
    adv = group_advantages(rewards, batch.group_ids.cpu()).to(batch.response_mask.device)
    moved = copy.deepcopy(policy)
    moved.zero_grad(set_to_none=True)
    out = policy_forward(moved, batch)
    mask = batch.response_mask.float()
    per_seq = (-adv[:, None] * out.logp * mask).sum(1) / mask.sum(1).clamp(min=1)
    per_seq.mean().backward()
    grads = [p.grad for p in moved.parameters() if p.grad is not None]
    grad_norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))) if grads else 0.0
    with torch.no_grad():
        for p in moved.parameters():
            if p.grad is not None:
                p -= lr * p.grad.sign()
        before = F.log_softmax(policy_forward(policy, batch).logits, -1)
        after = F.log_softmax(policy_forward(moved, batch).logits, -1)
        kl_tok = (before.exp() * (before - after)).sum(-1)
        step_kl = float((kl_tok * mask).sum(1).mean())
    return {"step_kl": step_kl, "grad_norm": grad_norm}
