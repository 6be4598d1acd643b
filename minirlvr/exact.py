"""Exact tabular softmax bandits (float64 torch): the small lab bench that the analysis papers share
(clipping_bias, bapo's Entropy-Clip rule, policy_cliff). No networks, no sampling noise unless asked for.

Symbols: V arms; free logits z [V] (any leading batch dims [..., V]); pi = softmax(z);
A [V] a per-arm advantage; E_pi A = sum_a pi_a A_a; X [V] in {0, 1} a gradient-carrying mask
(1 = the arm still carries gradient, 0 = its gradient was clipped away); eta a step size.

Expected updates of the logits (A held fixed):
  PG   dz = eta pi (AX - E_pi[AX])  = eta grad_z E_{a~pi}[A_a X_a] = eta E_{a~pi}[A_a X_a grad_z log pi_a]
  NPG  dz = eta (AX - E_pi[AX])     natural gradient: the Fisher matrix of softmax logits is
                                    F = diag(pi) - pi pi^T and F (AX) = PG, so F^+ PG = AX up to a constant
                                    shift (softmax ignores it; we centre)
First-order entropy change (core.entropy_change_first_order):  dH = -Cov_pi(log pi, dz) + O(eta^2), so
  NPG  dH = -eta Cov_pi(log pi, A X)     the "Entropy-Clip rule": clipping deletes arms from the covariance
  PG   dH = -eta Cov_pi(log pi, pi (A X - E_pi[A X]))   (= -eta Cov_pi(log pi, pi A X) only if E_pi[A X] = 0:
                                                        the PG shift c pi is not a constant, NPG's c is)

Clipped surrogate over N sampled actions a_j with advantages A_j, r_j = pi(a_j) / pi_old(a_j):
  J(z) = (1/N) sum_j min(r_j A_j, clip(r_j, 1 - eps_l, 1 + eps_h) A_j)        (token-mean; J = -mean of
                                                                                  core.ppo_clip_per_token)
  grad_z J = (1/N) sum_j A_j r_j X_j (e_{a_j} - pi),
  X_j = 1 - 1[(A_j > 0 and r_j > 1 + eps_h) or (A_j < 0 and r_j < 1 - eps_l)]   (gradient_is_zero)
"No bound" on a side: clip_low = 1 (ratio floor 0, never binds as r > 0) and clip_high = None or inf.

simulate_bandit: GRPO on a V-armed bandit. Each step draws G arms from pi_old (the step's start policy),
rewards r_i (true: 1[a_i in correct]; random: Bernoulli(p), independent of the arm), A_i = GRPO group
advantage (core.group_advantages), then `inner_steps` gradient-ascent steps z <- z + lr grad_z J with
ratios against pi_old. The first inner step is on-policy (r = 1): clipping can only act from the second.
Randomness: per seed and step, one draw of 2G uniforms from that seed's numpy Generator: the first G pick
the arms by inverse CDF of pi_old, the next G give the random rewards (drawn for either reward kind).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .core import (clamped_log_ratio, entropy_change_first_order, entropy_from_logits, group_advantages,
                   ppo_clip_per_token)


def gradient_is_zero(ratio: torch.Tensor, adv: torch.Tensor, clip_low: float, clip_high: float) -> torch.Tensor:
    """Bool: the clipped surrogate gives this token no gradient, (A > 0 and r > 1 + eps_h) or (A < 0 and
    r < 1 - eps_l). Exactly where core.ppo_clip_per_token's gradient vanishes (A = 0 aside: its gradient
    A r dlogp is 0 anyway, but not because of clipping). The mask X of the module docstring is its negation."""
    return ((adv > 0) & (ratio > 1 + clip_high)) | ((adv < 0) & (ratio < 1 - clip_low))


def softmax_fisher(z: torch.Tensor) -> torch.Tensor:
    """F(pi) = diag(pi) - pi pi^T, pi = softmax(z): the Fisher matrix of softmax logits, which is also the
    Jacobian d pi / d z (symmetric PSD, rows sum to 0, eigenvalues in [0, 1/2]). [V] -> [V, V]."""
    pi = torch.softmax(z, dim=-1)
    return torch.diag(pi) - torch.outer(pi, pi)


def expected_direction(z: torch.Tensor, A: torch.Tensor, kind: str = "pg", mask: torch.Tensor | None = None):
    """The expected update direction of the logits (module docstring): PG pi (AX - E_pi AX) or NPG AX - E_pi AX.
    z, A, mask [..., V] -> [..., V]. mask None: X = 1."""
    pi = torch.softmax(z, dim=-1)
    a = A if mask is None else A * mask
    centred = a - (pi * a).sum(-1, keepdim=True)
    if kind == "npg":
        return centred
    if kind == "pg":
        return pi * centred
    raise ValueError(f"unknown kind {kind!r}; use 'pg' or 'npg'")


def softmax_bandit_step(z: torch.Tensor, A: torch.Tensor, kind: str = "pg", lr: float = 1.0,
                        mask: torch.Tensor | None = None) -> torch.Tensor:
    """One exact expected step z + lr * expected_direction(z, A, kind, mask). [..., V] -> [..., V]."""
    return z + lr * expected_direction(z, A, kind, mask)


def first_order_entropy_change(z: torch.Tensor, A: torch.Tensor, kind: str = "pg", lr: float = 1.0,
                               mask: torch.Tensor | None = None) -> torch.Tensor:
    """-Cov_pi(log pi, dz) for the step of softmax_bandit_step (NPG: -lr Cov_pi(log pi, A X)). [..., V] -> [...]."""
    return entropy_change_first_order(z, lr * expected_direction(z, A, kind, mask))


def _bounds(clip_low: float | None, clip_high: float | None) -> tuple[float, float]:
    low, high = 1.0 if clip_low is None else float(clip_low), math.inf if clip_high is None else float(clip_high)
    if not (0.0 <= low <= 1.0 and high >= 0.0):
        raise ValueError(f"clip_low must be in [0, 1] and clip_high >= 0, got {clip_low!r}, {clip_high!r}")
    return low, high


def clipped_surrogate(z, z_old, actions, adv, clip_low=0.2, clip_high=0.2) -> torch.Tensor:
    """J(z) per row (module docstring): z, z_old [..., V]; actions (int) and adv [..., N] -> [...].
    clip_low None = 1 (no floor), clip_high None = inf (no ceiling)."""
    low, high = _bounds(clip_low, clip_high)
    idx = torch.as_tensor(actions, dtype=torch.long, device=z.device)
    logp = F.log_softmax(z, dim=-1).gather(-1, idx)
    old = F.log_softmax(z_old, dim=-1).gather(-1, idx).detach()
    loss, _, _ = ppo_clip_per_token(logp, old, adv.to(z.dtype), low, high)
    return -loss.mean(-1)


def clipped_surrogate_grad_logits(z, z_old, actions, adv, clip_low=0.2, clip_high=0.2) -> torch.Tensor:
    """grad_z J in closed form (no autograd: the bandit loop calls it thousands of times), rows independent.
    -> [..., V] (an ascent direction). grad_z J = sum_j w_j (e_{a_j} - pi), w_j = dJ/dl_j = A_j r_j / N on
    tokens that core.ppo_clip_per_token leaves unclipped and whose log-ratio core's clamp passes through
    (|log r| <= 20), else 0; equal to autograd of `clipped_surrogate` (tested, including both edges)."""
    low, high = _bounds(clip_low, clip_high)
    idx = torch.as_tensor(actions, dtype=torch.long, device=z.device)
    logp = F.log_softmax(z.detach(), dim=-1).gather(-1, idx)
    old = F.log_softmax(z_old.detach(), dim=-1).gather(-1, idx)
    _, ratio, clipped = ppo_clip_per_token(logp, old, adv.to(z.dtype), low, high)
    live = ~clipped & (clamped_log_ratio(logp, old) == logp - old)      # the clamp's gradient is 1 only there
    w = torch.where(live, adv * ratio, torch.zeros_like(ratio)) / idx.shape[-1]
    return torch.zeros_like(z).scatter_add_(-1, idx, w) - torch.softmax(z.detach(), -1) * w.sum(-1, keepdim=True)


def simulate_bandit(V: int = 8, G: int = 8, steps: int = 300, inner_steps: int = 4, lr: float = 0.5,
                    clip_low: float | None = 0.2, clip_high: float | None = 0.2, reward: str = "random",
                    correct: Sequence[int] = (0,), seed: int | Sequence[int] = 0, p: float = 0.5,
                    z0: torch.Tensor | None = None) -> dict:
    """GRPO on a V-armed softmax bandit (module docstring), from logits z0 (default 0: uniform).

    `seed` an int, or a sequence of seeds run side by side (one numpy Generator each, rows independent: a
    seed's row equals its run alone). Returns numpy arrays, with a leading [S] dim iff a sequence was given:
      entropy [steps + 1]    H(pi) before the first step and after each step
      p_correct [steps + 1]  pi(correct set)
      z [V]                  the final logits
    """
    if reward not in ("random", "true"):
        raise ValueError(f"unknown reward {reward!r}; use 'random' or 'true'")
    if V < 2 or G < 2 or steps < 0 or inner_steps < 0 or not 0.0 <= p <= 1.0:
        raise ValueError(f"need V >= 2, G >= 2, steps >= 0, inner_steps >= 0, p in [0, 1]; "
                         f"got V={V}, G={G}, steps={steps}, inner_steps={inner_steps}, p={p}")
    _bounds(clip_low, clip_high)
    single = isinstance(seed, (int, np.integer))
    seeds = [int(seed)] if single else [int(s) for s in seed]
    rngs = [np.random.default_rng(s) for s in seeds]
    S = len(seeds)
    z = torch.zeros(S, V, dtype=torch.float64)
    if z0 is not None:
        z = torch.as_tensor(z0, dtype=torch.float64).expand(S, V).clone()
    good = torch.zeros(V, dtype=torch.bool)
    good[list(correct)] = True
    gids = torch.arange(S).repeat_interleave(G)

    def record(z):
        return entropy_from_logits(z), torch.softmax(z, -1)[:, good].sum(-1)

    H, pc = [None] * (steps + 1), [None] * (steps + 1)
    H[0], pc[0] = record(z)
    for step in range(steps):
        u = np.stack([rng.random((2, G)) for rng in rngs])              # [S, 2, G]: arms, random rewards
        cdf = torch.softmax(z, -1).cumsum(-1).numpy()
        actions = np.minimum((u[:, 0, :, None] >= cdf[:, None, :]).sum(-1), V - 1)   # inverse CDF: a ~ pi_old
        r = u[:, 1] < p if reward == "random" else good.numpy()[actions]
        adv = group_advantages(torch.as_tensor(r, dtype=torch.float64).reshape(-1), gids).view(S, G)
        a, z_old = torch.as_tensor(actions), z.clone()
        for _ in range(inner_steps):
            z = z + lr * clipped_surrogate_grad_logits(z, z_old, a, adv, clip_low, clip_high)
        H[step + 1], pc[step + 1] = record(z)
    out = {"entropy": torch.stack(H, -1).numpy(), "p_correct": torch.stack(pc, -1).numpy(), "z": z.numpy()}
    return {k: v[0] for k, v in out.items()} if single else out
