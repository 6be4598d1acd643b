"""Exploration v.s. Exploitation: Rethinking RLVR through Clipping, Entropy, and Spurious Reward
(Chen, Li, Li, Yin, Chen, Lin, 2025, arXiv 2512.16912; ICLR 2026). Official code: none found.
This module is a RECONSTRUCTION from the abstract, public summaries and the card; it is called
"clipping_bias" because the paper names no method.

Stages changed: reward (a spurious `random_bernoulli` reward) plus four clip-switch recipes of the GRPO
loss. No new objective: the paper explains what clipping does to entropy under spurious rewards.

Symbols: per token j of a loss call, r_j = pi_theta(o_j) / pi_old(o_j) the importance ratio, A_j the GRPO
advantage of its response, l_j = log pi_theta(o_j), eps_l / eps_h the lower / upper clip ranges;
for a softmax head with logits z: pi = softmax(z), H = -sum_a pi_a log pi_a.

  GRPO surrogate   J = TM_j min(r_j A_j, clip(r_j, 1 - eps_l, 1 + eps_h) A_j)     (TM: token-mean)
  Clip indicator   dJ/dl_j = 0            iff (A_j > 0 and r_j > 1 + eps_h) or (A_j < 0 and r_j < 1 - eps_l)
                   dJ/dl_j = A_j r_j      otherwise (per token, before the 1/N of TM)      (gradient_is_zero)
                   X_j = 1 - gradient_is_zero: the "gradient-carrying" indicator
  Update model     pi_new(a) ∝ pi_old(a) exp(eta A~(a)),  A~ = A X  (mirror descent / NPG on the logits)
  Entropy          dH = -eta Cov_{a~pi}(log pi_a, A_a X_a) + O(eta^2)       (exact.first_order_entropy_change)
  Spurious reward  r ~ Bernoulli(p) independent of the response  =>  E[A | response] = 0, so the on-policy
                   expected gradient E[A grad_z log pi(a)] = 0 exactly. After the first inner step the
                   ratios move, X depends on them, and the clipped gradient A r X grad l is no longer
                   zero-mean: clip-high silences the positive updates of the tokens whose ratio grew the
                   most (entropy-raising ones), clip-low the negative updates of the tokens that fell.
  Claim (bandit)   mean entropy change: clip-high-only < symmetric < no clip < clip-low-only (card, after
                   Park et al. 2509.26114); compare configurations, not signs (random-walk drift lowers
                   entropy even unclipped). Checked with exact.simulate_bandit in the tests.

Reward stage `random_bernoulli` (RandomRewardConfig): per response i, with u, v ~ U[0, 1) from the run's
numpy rng ctx.rng (saved by the trainer, so runs are reproducible and --resume continues exactly):
      r_i = 1[v_i < p]  if u_i < mix  (a random reward; mix = 1: every reward is random)
      r_i = verifier_i  otherwise     (the task's 0/1 checker; only called when mix < 1)
  2B uniforms are drawn per call whatever p and mix are. The reward never reads the text when mix = 1.
  Logged: clipping_bias/frac_random, and clipping_bias/true_reward (the verifier's mean) when mix < 1.
  The record's "reward" / "accuracy" are those of the random reward: read eval/ for true accuracy.

Recipes (WP2 staleness regime: 4 minibatches x 2 epochs = 8 optimizer steps per rollout; token-mean;
GRPO advantages; verifier reward -- add `--reward random_bernoulli` for the spurious runs):
  clip_none       eps_l = 1 (ratio floor 0), eps_h = 1e9         no bound on either side
  clip_symmetric  eps_l = eps_h = 0.2
  clip_high_only  eps_l = 1, eps_h = 0.2                         only the upper bound
  clip_low_only   eps_l = 0.2, eps_h = 1e9                       only the lower bound
  "No ceiling" is exact: core clamps log r to [-20, 20], so r <= e^20 ~ 4.9e8 < 1 + 1e9, and PPOClipConfig
  requires a finite clip_high. A floor of 0 never binds because r > 0.

Card vs paper / deviations:
  * No official code; the clip-switch protocol and the bandit numbers are the card's. The card's bandit
    numbers (60 seeds: -1.41 < -1.12 < -0.83 < -0.28) come from an unstated initialisation; from uniform
    logits exact.simulate_bandit gives the same ORDERING with larger drops (see the tests).
  * The paper's objective (as summarised) sums over the tokens of a response and divides by G; we use
    token-mean like the rest of WP2. The normaliser rescales steps; it does not change which tokens clip.
  * The card asks for 4 inner steps per rollout; the recipes use the WP2 regime (8 optimizer steps).
  * The reward-misalignment model (label-noise view of spurious rewards) was not retrieved: not modelled.
  * The random reward draws from ctx.rng, which also draws the training problems, so a random-reward run
    sees a different problem sequence from a verifier run with the same seed.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..baselines import verifier_reward
from ..exact import gradient_is_zero
from ..registry import Recipe, check_range, register, register_recipe

PAPER = ("Chen et al. 2025, Exploration v.s. Exploitation: Rethinking RLVR through Clipping, Entropy, "
         "and Spurious Reward, arXiv 2512.16912 (reconstruction, no official code)")
NO_FLOOR, NO_CEILING = 1.0, 1e9   # clip_low / clip_high that never bind (module docstring)

__all__ = ["PAPER", "NO_FLOOR", "NO_CEILING", "CLIP_SETTINGS", "RandomRewardConfig", "gradient_is_zero",
           "random_bernoulli_reward"]


@dataclass
class RandomRewardConfig:
    p: float = 0.5     # P(r = 1) of the random reward (Shao et al. 2506.10947: 0.5)
    mix: float = 1.0   # probability that a response's reward is the random one instead of the verifier's

    def __post_init__(self):
        check_range(self, "p", lo=0.0, hi=1.0)
        check_range(self, "mix", lo=0.0, hi=1.0)


@register("reward", "random_bernoulli", config=RandomRewardConfig, paper=PAPER)
def random_bernoulli_reward(batch, cfg: RandomRewardConfig, ctx) -> torch.Tensor:
    """Spurious reward: Bernoulli(p), independent of the response, for a fraction `mix` of the rows. [B] float32."""
    B = len(batch.texts)
    u, v = ctx.rng.random((2, B))
    random = u < cfg.mix
    r = (v < cfg.p).astype(np.float32)
    metrics = {"clipping_bias/frac_random": float(random.mean()) if B else 0.0}
    if cfg.mix < 1.0:
        truth = verifier_reward(batch, None, ctx).numpy()
        r = np.where(random, r, truth).astype(np.float32)
        metrics["clipping_bias/true_reward"] = float(truth.mean()) if B else 0.0
    ctx.log(**metrics)
    return torch.from_numpy(r)


CLIP_SETTINGS = {"clip_none": (NO_FLOOR, NO_CEILING), "clip_symmetric": (0.2, 0.2),
                 "clip_high_only": (NO_FLOOR, 0.2), "clip_low_only": (0.2, NO_CEILING)}
for _name, (_low, _high) in CLIP_SETTINGS.items():
    register_recipe(Recipe(_name, paper=PAPER, rollout="plain", reward="verifier", advantage="grpo", loss="ppo_clip",
                           loss_cfg={"clip_low": _low, "clip_high": _high, "agg": "token-mean"},
                           train_cfg={"minibatches": 4, "ppo_epochs": 2}))
