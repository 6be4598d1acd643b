"""The Policy Cliff: A Theoretical Analysis of Reward-Policy Maps in Large Language Models
(Xu, 2025, arXiv 2507.20150). Official code: none found.

Stage: none -- theory utilities on a single-state bandit (the reward -> optimal policy map), for tests and a
notebook cell. Registers nothing.

Symbols: V actions, reward vector r [V], alpha >= 0 the entropy-regularisation strength, H(pi) the Shannon
entropy (nats), TV(p, q) = 1/2 ||p - q||_1, e_i the i-th unit vector.

  Unregularised optimum   Pi*(r) = {pi : supp pi in argmax_a r_a}; `hard_optimal` picks the uniform one
                          (uniform tie-breaking over {a : r_a >= max r - tol}).
  Cliff                   if |argmax r| >= 2, for every eps > 0 the optimum of r + eps e_i is the point mass
                          on i: TV(hard(r + eps e_i), hard(r)) = 1 - 1/k for a k-way tie (1/2 for two), however
                          small eps is; and TV = 1 between the point masses of r + eps e_i and r + eps e_j.
  Regularised optimum     pi_alpha(r) = argmax_pi <pi, r> + alpha H(pi) = softmax(r / alpha), unique for alpha > 0.
  Jacobian                d pi_alpha / d r = (diag(pi) - pi pi^T) / alpha          (symmetric PSD, rows sum to 0)
  Spectrum                eigenvalues of diag(pi) - pi pi^T lie in [0, 1/2]: v^T(.)v = Var_{a~pi}(v_a) and a
                          variable whose values have sum_a v_a^2 = 1 has variance <= (max - min)^2 / 4 <= 1/2
  Lipschitz               ||pi_alpha(r) - pi_alpha(r')||_2 <= ||r - r'||_2 / (2 alpha)     (mean-value theorem)
  Limits                  alpha -> 0: pi_alpha -> uniform on argmax r, with
                            TV(pi_alpha, hard(r)) <= ((V - k) / k) exp(-gap / alpha),
                            k = |argmax r|, gap = max r - (largest non-maximal r);
                          alpha -> inf: pi_alpha -> uniform
  Entropy                 dH(pi_alpha)/d alpha = Var_{pi_alpha}(r) / alpha^3 >= 0: H non-decreasing in alpha
  Effective reward        with several reward terms r_eff(w) = w r1 + (1 - w) r2 all of the above applies to
                          r_eff; the hard policy jumps only at weights w where r_eff has a tie.

Card vs paper: the card (and this module) states the bandit (single-state) versions; the paper's exact
theorem statements and MDP versions were not retrieved, so the constants here are the standard bandit facts
(numerically checked in the tests), not quotations of the paper's theorems. Pitfall: stability is of the
regularised OPTIMUM, not of finite-step RL dynamics; the Lipschitz constant 1/(2 alpha) buys stability
with stochasticity.
"""
from __future__ import annotations

import numpy as np
import torch

from ..core import entropy_from_logits
from ..exact import softmax_fisher

PAPER = "Xu 2025, The Policy Cliff: A Theoretical Analysis of Reward-Policy Maps in LLMs, arXiv 2507.20150"


def _r(r) -> torch.Tensor:
    return torch.as_tensor(r, dtype=torch.float64)


def _logits(r, alpha: float) -> torch.Tensor:
    """(r - max r) / alpha: the max entry is 0 and the rest -> -inf as alpha -> 0 (never inf - inf = NaN)."""
    r = _r(r)
    return (r - r.max(-1, keepdim=True).values) / alpha


def hard_optimal(r, tol: float = 0.0) -> torch.Tensor:
    """Uniform over the (near-)argmax set {a : r_a >= max r - tol}: the alpha = 0 policy. [..., V] -> [..., V]."""
    r = _r(r)
    on = (r >= r.max(-1, keepdim=True).values - tol).to(r.dtype)
    return on / on.sum(-1, keepdim=True)


def soft_optimal(r, alpha: float) -> torch.Tensor:
    """pi_alpha(r) = softmax(r / alpha); alpha = 0 gives hard_optimal(r). [..., V] -> [..., V]."""
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    return hard_optimal(r) if alpha == 0 else torch.softmax(_logits(r, alpha), dim=-1)


def softmax_jacobian(r, alpha: float) -> torch.Tensor:
    """d pi_alpha / d r = (diag(pi) - pi pi^T) / alpha, [V] -> [V, V] (alpha > 0)."""
    if not alpha > 0:
        raise ValueError(f"the Jacobian needs alpha > 0, got {alpha}")
    return softmax_fisher(_logits(r, alpha)) / alpha      # d softmax(z)/dz at z = r / alpha, times dz/dr = 1/alpha


def lipschitz_bound(r, r_prime, alpha: float) -> float:
    """||r - r'||_2 / (2 alpha): the bound on ||pi_alpha(r) - pi_alpha(r')||_2 (alpha > 0)."""
    if not alpha > 0:
        raise ValueError(f"the Lipschitz bound needs alpha > 0, got {alpha}")
    return float(torch.linalg.vector_norm(_r(r) - _r(r_prime))) / (2 * alpha)


def tv_distance(p, q) -> torch.Tensor:
    """TV(p, q) = 1/2 sum_a |p_a - q_a| over the last dim."""
    return 0.5 * (_r(p) - _r(q)).abs().sum(-1)


def policy_entropy(r, alpha: float) -> float:
    """H(pi_alpha(r)) in nats (alpha = 0: log of the argmax-set size)."""
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    return float(entropy_from_logits(torch.log(hard_optimal(r)) if alpha == 0 else _logits(r, alpha)))


def cliff_curve(eps, alphas=(0.0, 0.1, 0.5), r=(1.0, 1.0, 0.0), direction: int = 0) -> dict[float, np.ndarray]:
    """TV(pi_alpha(r + eps e_direction), pi_alpha(r)) for each eps of the grid and each alpha (0 = hard).
    The default r has a two-way tie (actions 0 and 1) and a worse third action.
    Returns {alpha: TV [len(eps)]}: the hard curve is 1/2 for every eps > 0 (a cliff), a soft one is
    ~ eps * ||J e_direction||_1 / 2 near 0 (linear)."""
    r, eps = _r(r), _r(np.asarray(eps, dtype=np.float64))
    e = torch.zeros_like(r)
    e[direction] = 1.0
    out = {}
    for alpha in alphas:
        base = soft_optimal(r, alpha)
        out[alpha] = tv_distance(soft_optimal(r + eps[:, None] * e, alpha), base).numpy()
    return out


def weight_scan(w, r1, r2, alpha: float) -> np.ndarray:
    """pi_alpha(w r1 + (1 - w) r2) for each weight of the grid w: [len(w), V] (alpha = 0: hard policy)."""
    w = _r(np.asarray(w, dtype=np.float64))[:, None]
    return soft_optimal(w * _r(r1) + (1 - w) * _r(r2), alpha).numpy()
