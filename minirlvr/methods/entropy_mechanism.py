"""The Entropy Mechanism of Reinforcement Learning for Reasoning Language Models
(Cui et al., 2025, arXiv 2505.22617). Code: PRIME-RL/Entropy-Mechanism-of-RL; in verl as `clip_cov` / `kl_cov`.

Stages changed: loss (Clip-Cov, KL-Cov); plus analysis: probe "entropy_change" (per-step entropy diagnostics,
`--probe entropy_change`) and the entropy-reward law.

Symbols: z = logits at one position, pi = softmax(z), H = -sum_a pi_a log pi_a; per valid token j of a
loss call (N valid tokens): l_j = log pi_theta(o_j) under the CURRENT policy, l_old_j at rollout time,
r_j = exp(l_j - l_old_j), A_j = advantage; TM(X) = sum_j m_j X_j / sum_j m_j (token-mean).

  Entropy change     H(softmax(z + dz)) - H(z) = -Cov_{a~pi}(log pi_a, dz_a) + O(|dz|^2)   (core.entropy_change_first_order)
  Vanilla PG (tabular softmax, step eta):  dz_a = eta pi_a A_a -> dH ~ -eta Cov_pi(log pi_a, pi_a A_a)
  Natural PG:                              dz_a = eta A_a      -> dH ~ -eta Cov_pi(log pi_a, A_a)
      (positive covariance = confident-and-rewarded tokens = entropy goes DOWN)
  Centred covariance score (selection only, no gradient), means over the valid tokens of the loss call:
      c_j = (l_j - mean l)(A_j - mean A);  sum_j c_j = N * Cov_batch(l, A)   (not a correlation)
  Clip-Cov  L_j = max(-A r, -A clip(r, 1-eps_l, 1+eps_h)); C = {valid, not PPO-clipped, lb < c_j < ub};
            zero the loss of n = min(|C|, max(1, floor(rho N))) tokens drawn uniformly from C;
            loss = TM(L) with the zeroed tokens still in the denominator.
  KL-Cov    k = max(1, floor(kappa N)) tokens with the largest c get  -A r + beta |l - l_old|,
            all others -A r (NO PPO clip); loss = TM(L).
  Law       R = -a exp(H) + b  (H: mean rollout entropy, R: accuracy); predicted ceiling R(0) = b - a.

Facts users trip on (official code vs paper):
  * Ratios are FRACTIONS here. Clip-Cov's `clip_ratio` (2e-4) is a fraction in the original code and verl.
    The original KL-Cov takes `k_percent` (scripts: 0.2 for 7B, 0.02 for 32B) and divides it by 100, so
    its 7B value is kappa = 2e-3; verl's `kl_cov_ratio` is a fraction (default 2e-4). We use kappa = 2e-3.
  * Clip-Cov runs PPO with eps_l = eps_h = 1 (ratio clamped to [0, 2]: clipping essentially off) and no dual
    clip (the scripts pass clip_ratio_c = 10, which these losses ignore). KL-Cov has no clipping at all.
  * The paper writes the KL-Cov penalty as a KL; the code uses |log r| of the sampled token. Its subgradient
    is 0 at r = 1, so KL-Cov is a plain PG step on the first (on-policy) minibatch of a rollout: it needs
    several minibatches per rollout (the trainer's default of 4) to do anything.
  * c uses the current l (detached) and the statistics of one loss call (a minibatch), not of the rollout.
  * The original Clip-Cov logs the fraction of Cov-zeroed tokens under the name `pg_clipfrac`; here that
    is `n_selected` (a count) and `clipfrac` is the PPO-clip fraction.
  * At toy scale (~1-2k tokens per loss call) the official rho / kappa select 1-4 tokens and c rarely lands
    in (1, 5): try `--set loss.kl_ratio=0.02`, or `--set loss.clip_ratio=0.02` with cov_lb / cov_ub set
    from the distribution of `covariance_score` on a batch (e.g. its 90-99th percentile band).
  * Clip-Cov's random pick uses ctx.generator (the trainer's seeded one) or, with ctx=None, a generator
    seeded with cfg.seed, so it is reproducible; the original draws from torch's unseeded global RNG.
  * The paper's runs add DAPO dynamic sampling: `--rollout dynamic` gives that.
  * `entropy_change_diagnostics` measures dH on the tokens the step just trained on (the rollout batch),
    which falls much faster than the entropy of fresh samples; `dH_first_order` uses the actual logit change
    of the network, so it matches `dH_measured` to first order; it is not the tabular PG/NPG prediction.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from ..core import aggregate, clamped_log_ratio, entropy_change_first_order, masked_mean, ppo_clip_per_token
from ..registry import Recipe, check_range, register, register_recipe
from ..rollout import policy_forward

PAPER = "Cui et al. 2025, The Entropy Mechanism of RL for Reasoning Language Models, arXiv 2505.22617"
AggMode = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]


def covariance_score(logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """c_j = (l_j - mean l)(A_j - mean A) over the valid tokens; detached; 0 off the mask. [B,T] -> [B,T]."""
    logp, advantages, valid = logp.detach(), advantages.detach(), mask.bool()
    c = (logp - masked_mean(logp, mask)) * (advantages - masked_mean(advantages, mask))
    return torch.where(valid, c, torch.zeros((), dtype=c.dtype, device=c.device))


def _n_valid(mask: torch.Tensor) -> int:
    return int(mask.bool().sum())


def clip_cov_select(c: torch.Tensor, clipped: torch.Tensor, mask: torch.Tensor, ratio: float, lb: float,
                    ub: float, generator: torch.Generator) -> tuple[torch.Tensor, int]:
    """Clip-Cov's random pick: n = min(|C|, max(1, floor(ratio N))) tokens of C = {valid, not clipped,
    lb < c < ub}, uniformly without replacement. Returns (selected bool [B,T], |C|)."""
    eligible = mask.bool() & ~clipped & (c > lb) & (c < ub)
    cand = torch.nonzero(eligible.flatten()).squeeze(1)
    n = min(cand.numel(), max(1, math.floor(ratio * _n_valid(mask))))
    perm = torch.randperm(cand.numel(), generator=generator, device=generator.device).to(cand.device)
    selected = torch.zeros(eligible.numel(), dtype=torch.bool, device=c.device)
    selected[cand[perm[:n]]] = True
    return selected.view_as(eligible), cand.numel()


def kl_cov_select(c: torch.Tensor, mask: torch.Tensor, ratio: float) -> torch.Tensor:
    """KL-Cov's pick: the k = max(1, floor(ratio N)) valid tokens with the largest c (k <= N). -> bool [B,T]."""
    valid = mask.bool().flatten()
    N = int(valid.sum())
    selected = torch.zeros_like(valid)
    if N:
        k = min(N, max(1, math.floor(ratio * N)))
        idx = torch.nonzero(valid).squeeze(1)
        selected[idx[torch.topk(c.flatten()[idx], k).indices]] = True
    return selected.view_as(mask)


@dataclass
class ClipCovConfig:
    clip_ratio: float = 2e-4   # rho: FRACTION of the valid tokens whose gradient is stopped (clip_cov_ratio)
    cov_lb: float = 1.0        # omega_low: candidates need c > cov_lb (strict)
    cov_ub: float = 5.0        # omega_high: candidates need c < cov_ub (strict)
    clip_low: float = 1.0      # PPO eps_low; 1.0 = the official runs (ratio floor 0: clipping essentially off)
    clip_high: float = 1.0     # PPO eps_high; 1.0 = the official runs (ratio ceiling 2)
    agg: AggMode = "token-mean"  # the paper's aggregation
    seed: int = 0              # seeds the random pick when no trainer context (ctx=None) is given

    def __post_init__(self):
        check_range(self, "clip_ratio", lo=0.0, hi=1.0)
        check_range(self, "cov_lb")
        check_range(self, "cov_ub")
        if not self.cov_lb < self.cov_ub:  # the band (cov_lb, cov_ub) would be empty
            raise ValueError(f"ClipCovConfig.cov_lb must be < cov_ub, got cov_lb={self.cov_lb!r}, "
                             f"cov_ub={self.cov_ub!r}")
        check_range(self, "clip_low", lo=0.0, hi=1.0)
        check_range(self, "clip_high", lo=0.0)


@register("loss", "clip_cov", config=ClipCovConfig, paper=PAPER)
def clip_cov_loss(out, batch, cfg: ClipCovConfig, ctx):
    mask = batch.response_mask
    pg_mat, ratio, clipped = ppo_clip_per_token(out.logp, batch.old_logp, batch.advantages,
                                                cfg.clip_low, cfg.clip_high)
    c = covariance_score(out.logp, batch.advantages, mask)
    gen = getattr(ctx, "generator", None) or torch.Generator().manual_seed(cfg.seed)
    selected, n_cand = clip_cov_select(c, clipped, mask, cfg.clip_ratio, cfg.cov_lb, cfg.cov_ub, gen)
    pg_mat = torch.where(selected, torch.zeros((), dtype=pg_mat.dtype, device=pg_mat.device), pg_mat)
    loss = aggregate(pg_mat, mask, cfg.agg)
    n = max(_n_valid(mask), 1)
    return loss, {"pg_loss": float(loss.detach()), "n_selected": float(selected.sum()),
                  "cov_mean": float(c.sum()) / n, "cov_candidates": float(n_cand),
                  "clipfrac": float(masked_mean(clipped.to(ratio.dtype), mask))}


@dataclass
class KLCovConfig:
    kl_ratio: float = 2e-3     # kappa: FRACTION of valid tokens penalised (original 7B: k_percent=0.2 -> /100)
    ppo_kl_coef: float = 1.0   # beta of the |log r| penalty (original and verl's function default; verl YAML: 0.1)
    agg: AggMode = "token-mean"  # the paper's aggregation

    def __post_init__(self):
        check_range(self, "kl_ratio", lo=0.0, hi=1.0)
        check_range(self, "ppo_kl_coef", lo=0.0)


@register("loss", "kl_cov", config=KLCovConfig, paper=PAPER)
def kl_cov_loss(out, batch, cfg: KLCovConfig, ctx):
    mask = batch.response_mask
    log_ratio = clamped_log_ratio(out.logp, batch.old_logp)
    pg_mat = -batch.advantages * log_ratio.exp()                  # unclipped policy gradient
    c = covariance_score(out.logp, batch.advantages, mask)
    selected = kl_cov_select(c, mask, cfg.kl_ratio)
    penalty = cfg.ppo_kl_coef * log_ratio.abs()
    pg_mat = torch.where(selected, pg_mat + penalty, pg_mat)
    loss = aggregate(pg_mat, mask, cfg.agg)
    n = max(_n_valid(mask), 1)
    return loss, {"pg_loss": float(loss.detach()), "n_selected": float(selected.sum()),
                  "cov_mean": float(c.sum()) / n,
                  "kl_penalty": float(masked_mean(penalty.detach(), selected & mask.bool()))}


@torch.no_grad()
def entropy_change_diagnostics(policy, batch) -> dict[str, float]:
    """After a step's updates, on the rollout batch it trained on (one no-grad forward pass):
    cov_logp_adv    mean_j c_j with l = old_logp (the batch covariance driving the entropy change)
    dH_measured     TM(H_new - H_old): the actual entropy change on these tokens
    dH_first_order  TM(-Cov_pi_old(log pi_old, z_new - z_old)): its first-order value from the real logit change
    Tokens just trained on, not fresh prompts (entropy falls much faster on them)."""
    mask, out = batch.response_mask, {}
    if batch.advantages is not None:
        out["cov_logp_adv"] = float(masked_mean(covariance_score(batch.old_logp, batch.advantages, mask), mask))
    was_training = policy.training
    policy.eval()
    new = policy_forward(policy, batch)
    policy.train(was_training)
    out["dH_measured"] = float(masked_mean(new.entropy - batch.old_entropy.to(new.entropy), mask))
    if batch.old_logits is not None:
        old = batch.old_logits.to(new.logits)
        out["dH_first_order"] = float(masked_mean(entropy_change_first_order(old, new.logits - old), mask))
    return out


@register("probe", "entropy_change", paper=PAPER)
def entropy_change_probe(policy, batch, cfg, ctx) -> dict[str, float]:
    """entropy_change_diagnostics as a probe: TrainConfig(probes=("entropy_change",)) or --probe entropy_change
    (the deprecated TrainConfig.entropy_diagnostics / --diagnostics run it every step)."""
    return entropy_change_diagnostics(policy, batch)


def fit_entropy_law(H, R) -> dict[str, float]:
    """Least squares of R = -a exp(H) + b over pairs (H_k, R_k); ceiling = R(0) = b - a."""
    H, R = np.asarray(H, dtype=np.float64).ravel(), np.asarray(R, dtype=np.float64).ravel()
    if H.shape != R.shape:
        raise ValueError(f"fit_entropy_law: H and R differ in length ({H.size} vs {R.size})")
    if H.size < 2:
        raise ValueError(f"fit_entropy_law needs at least 2 (H, R) points, got {H.size}")
    if not (np.isfinite(H).all() and np.isfinite(R).all()):
        raise ValueError("fit_entropy_law: H and R must be finite (got NaN or inf)")
    X = np.stack([-np.exp(H), np.ones_like(H)], axis=1)
    (a, b), _, rank, _ = np.linalg.lstsq(X, R, rcond=None)
    if rank < 2:
        raise ValueError("fit_entropy_law needs at least 2 distinct entropy values")
    rmse = float(np.sqrt(np.mean((X @ np.array([a, b]) - R) ** 2)))
    return {"a": float(a), "b": float(b), "ceiling": float(b - a), "rmse": rmse}


# The configs above keep the official defaults; the recipes use toy-scale values, because a loss call
# here has ~130 tokens (official runs: 1e5-1e6), where rho = 2e-4 or kappa = 2e-3 pick a single token.
# ratio 0.02 is inside the card's suggested toy range (0.01-0.05); the Clip-Cov band (0.5, 5) starts near
# the 90th percentile of c on the addition base policy's rollouts (tutorial 02, measured before any run).
TOY_SCALE = "toy-scale thresholds (official defaults in the config dataclasses)"
register_recipe(Recipe("clip_cov", paper=f"{PAPER}; {TOY_SCALE}", rollout="plain", reward="verifier",
                       advantage="grpo", loss="clip_cov",
                       loss_cfg={"agg": "token-mean", "clip_ratio": 0.02, "cov_lb": 0.5, "cov_ub": 5.0}))
register_recipe(Recipe("kl_cov", paper=f"{PAPER}; {TOY_SCALE}", rollout="plain", reward="verifier",
                       advantage="grpo", loss="kl_cov", loss_cfg={"agg": "token-mean", "kl_ratio": 0.02}))
