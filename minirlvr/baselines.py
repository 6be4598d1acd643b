"""The GRPO family every paper is compared with: one registered function per stage.

  rollout    plain            G samples per prompt
             dynamic          DAPO dynamic sampling: drop groups whose rewards are all equal, resample to refill
  reward     verifier         the task's 0/1 checker
             overlong         verifier + DAPO's soft overlong punishment
  advantage  grpo             (r - mean_g) / (std_g + eps)                       Shao et al. 2024, arXiv 2402.03300
             dr_grpo          r - mean_g                                           Liu et al. 2025, arXiv 2503.20783
             rloo             r_i - mean_{j != i} r_j                              Ahmadian et al. 2024, arXiv 2402.14740
             reinforce_pp     returns whitened over the batch (optional KL-in-reward)  Hu 2025, arXiv 2501.03262
  loss       ppo_clip         PPO-clip with decoupled eps_low/eps_high (DAPO clip-higher), dual clip,
                              4 aggregation modes, optional KL-to-reference and entropy bonus

Outcome advantages are broadcast over the tokens of a response: A[i, t] = A_i * m[i, t].
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from .core import (aggregate, group_advantages, group_mean_std, kl_estimate, masked_mean, masked_sum,
                   ppo_clip_per_token)
from .registry import Recipe, check_range, register, register_recipe
from .rollout import RolloutBatch, concat_batches, sample

DAPO = "Yu et al. 2025, DAPO: An Open-Source LLM RL System at Scale, arXiv 2503.14476"


def reference_if_kl(cfg) -> set[str]:
    """The declared needs of a stage with a KL-to-reference term: the reference policy iff cfg.kl_coef > 0."""
    return {"reference"} if cfg.kl_coef else set()


# ------------------------------------------------------------------ rollout

@register("rollout", "plain", paper="sampling at temperature T")
def plain_rollout(problems, cfg, ctx) -> RolloutBatch:
    return sample(ctx.policy, problems, ctx.group_size, ctx.max_new_tokens, temperature=ctx.temperature,
                  generator=ctx.generator)


@dataclass
class DynamicSamplingConfig:
    max_tries: int = 4  # rollouts drawn at most to fill the batch (DAPO: max_num_gen_batches)

    def __post_init__(self):
        check_range(self, "max_tries", lo=1)


@register("rollout", "dynamic", config=DynamicSamplingConfig, paper=DAPO, needs={"groups"})
def dynamic_rollout(problems, cfg: DynamicSamplingConfig, ctx) -> RolloutBatch:
    """Keep only groups with non-identical rewards (they carry gradient), resampling fresh
    prompts until the batch holds len(problems) groups or max_tries rollouts were drawn."""
    want, kept, tried, dropped, offset = len(problems), [], 0, 0, 0
    while tried < cfg.max_tries:
        batch = sample(ctx.policy, problems, ctx.group_size, ctx.max_new_tokens, temperature=ctx.temperature,
                       generator=ctx.generator, group_offset=offset)
        batch.rewards = ctx.score(batch)
        _, std = group_mean_std(batch.rewards, batch.group_ids)
        keep = torch.nonzero(std > 0).squeeze(1)
        dropped += (batch.size - keep.numel()) // ctx.group_size
        if keep.numel():
            kept.append(batch.select(keep))
        tried, offset = tried + 1, offset + len(problems)
        if sum(b.size for b in kept) >= want * ctx.group_size:
            break
        problems = ctx.sample_problems(want)
    if not kept:  # every group was all-equal: train on the last batch (its advantages are all zero)
        kept = [batch]
    out = concat_batches(kept)
    out = out.select(torch.arange(min(out.size, want * ctx.group_size)))
    ctx.log(dynamic_sampling_tries=tried, dynamic_sampling_dropped_groups=dropped)
    return out


# ------------------------------------------------------------------ reward

@register("reward", "verifier", paper="the toy task's exact checker")
def verifier_reward(batch: RolloutBatch, cfg, ctx) -> torch.Tensor:
    return torch.tensor([ctx.task.reward(p, t) for p, t in zip(batch.problems, batch.texts)], dtype=torch.float32)


@dataclass
class OverlongConfig:
    buffer: int = 4                # L_cache: tokens before the limit where the penalty ramps
    penalty_factor: float = 1.0    # scale of the penalty

    def __post_init__(self):
        check_range(self, "buffer", lo=1)
        check_range(self, "penalty_factor", lo=0.0)


@register("reward", "overlong", config=OverlongConfig, paper=DAPO)
def overlong_reward(batch: RolloutBatch, cfg: OverlongConfig, ctx) -> torch.Tensor:
    """r = verifier + factor * p(|y|), with L = max_new_tokens and buffer C:
    p = 0 if |y| <= L - C;  (L - C - |y|) / C inside the buffer;  -1 if truncated (no EOS)."""
    base = verifier_reward(batch, None, ctx)
    L, C = ctx.max_new_tokens, max(1, cfg.buffer)
    length = batch.lengths.float().cpu()
    pen = ((L - C - length) / C).clamp(max=0.0, min=-1.0)
    pen = torch.where(batch.truncated.cpu(), torch.full_like(pen, -1.0), pen)
    return base + cfg.penalty_factor * pen


# ------------------------------------------------------------------ advantage

def broadcast(adv: torch.Tensor, batch: RolloutBatch) -> torch.Tensor:
    """Per-response advantage [B] -> per-token [B, T] (zero off the response mask)."""
    return adv.to(batch.response_mask.device)[:, None] * batch.response_mask.float()


@dataclass
class GRPOAdvantageConfig:
    eps: float = 1e-6  # added to the group std; > 0, else an all-equal group gives 0 / 0 = NaN

    def __post_init__(self):
        check_range(self, "eps", lo=0.0, lo_open=True)


@register("advantage", "grpo", config=GRPOAdvantageConfig, paper="Shao et al. 2024, DeepSeekMath, arXiv 2402.03300",
          needs={"groups"})
def grpo_advantage(batch, cfg: GRPOAdvantageConfig, ctx):
    return broadcast(group_advantages(batch.rewards, batch.group_ids.cpu(), "std", cfg.eps), batch)


@register("advantage", "dr_grpo", paper="Liu et al. 2025, Understanding R1-Zero-Like Training, arXiv 2503.20783",
          needs={"groups"})
def dr_grpo_advantage(batch, cfg, ctx):
    return broadcast(group_advantages(batch.rewards, batch.group_ids.cpu(), "none"), batch)


@register("advantage", "rloo", paper="Ahmadian et al. 2024, Back to Basics (RLOO), arXiv 2402.14740", needs={"groups"})
def rloo_advantage(batch, cfg, ctx):
    """A_i = r_i - (1/(G-1)) sum_{j != i} r_j  =  G/(G-1) * (r_i - mean_g r)."""
    gids = batch.group_ids.cpu()
    _, counts = torch.unique(gids, return_counts=True)
    if counts.min() < 2:
        raise ValueError("RLOO needs at least 2 responses per prompt (group_size >= 2)")
    mean, _ = group_mean_std(batch.rewards, gids)
    n = counts[torch.unique(gids, return_inverse=True)[1]].to(batch.rewards.dtype)
    return broadcast(n / (n - 1) * (batch.rewards - mean), batch)


@dataclass
class ReinforcePPConfig:
    kl_coef: float = 0.0  # beta of the per-token KL penalty folded into the return (needs a reference policy)
    eps: float = 1e-8     # added to the variance under the square root (verl's masked_whiten: 1e-8);
                          # > 0, else all-equal returns give 0 * rsqrt(0) = NaN

    def __post_init__(self):
        check_range(self, "kl_coef", lo=0.0)
        check_range(self, "eps", lo=0.0, lo_open=True)


def whiten(values: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(v - mean) * rsqrt(var + eps) over the valid entries, var the UNBIASED (Bessel, n - 1) masked
    variance, as verl's `masked_whiten`; 0 off the mask. With n <= 1 valid entries verl raises (its
    `masked_var` refuses n = 0 and n = 1, where n / (n - 1) divides by zero); here var is taken as 0 then,
    which gives exactly 0 (a single token's centred value is 0), finite, never NaN. (verl's masked means
    divide by n + 1e-8, which is n in its float32; ours divide by n.)"""
    n = mask.to(values.dtype).sum()
    mean = masked_mean(values, mask)
    var = masked_sum((values - mean) ** 2, mask) / (n - 1).clamp(min=1)
    return torch.where(mask.bool(), (values - mean) * torch.rsqrt(var + eps), torch.zeros_like(values))


@register("advantage", "reinforce_pp", config=ReinforcePPConfig,
          paper="Hu 2025, REINFORCE++, arXiv 2501.03262", needs=reference_if_kl)
def reinforce_pp_advantage(batch, cfg: ReinforcePPConfig, ctx):
    """Return G_t = r - beta * sum_{s >= t} (log pi_old - log ref)_s, then whitened over all valid
    tokens of the batch as verl's `compute_reinforce_plus_plus_outcome_advantage` (gamma = 1) does
    with `masked_whiten`:  A = (G - mean) * rsqrt(var + eps),  var = sum m (G - mean)^2 / (n - 1).
    No per-prompt baseline. (Before: the biased variance and (G - mean) / (std + eps); the two agree
    to O(1/n) and for eps -> 0 differ by the factor sqrt((n - 1) / n).) One valid token: A = 0."""
    mask = batch.response_mask.float()
    ret = broadcast(batch.rewards, batch)
    if cfg.kl_coef:
        if batch.ref_logp is None:
            raise ValueError("reinforce_pp with kl_coef > 0 needs a reference policy (ref_logp)")
        k1 = (batch.old_logp - batch.ref_logp) * mask
        ret = ret - cfg.kl_coef * k1.flip(1).cumsum(1).flip(1)
    return whiten(ret, mask, cfg.eps)


# ------------------------------------------------------------------ loss

@dataclass
class PPOClipConfig:
    clip_low: float = 0.2           # eps_low: ratio floor 1 - eps_low
    clip_high: float = 0.2          # eps_high: ratio ceiling 1 + eps_high (DAPO: 0.28)
    clip_ratio_c: float | None = None  # dual-clip constant c > 1 for negative advantages (None: off)
    agg: Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"] = "token-mean"
    max_len: int | None = None      # constant normaliser for seq-mean-token-sum-norm (None: response width)
    kl_coef: float = 0.0            # beta of a KL(pi || ref) penalty in the loss (needs a reference policy)
    kl_kind: Literal["k1", "k2", "k3"] = "k3"
    entropy_coef: float = 0.0       # bonus: loss -= coef * aggregated token entropy (< 0: an entropy penalty)
    kl_clamp: float | None = None   # clamp the KL estimate to [-c, c] (verl clamps k3 at 10; None: off)

    def __post_init__(self):
        check_range(self, "clip_low", lo=0.0, hi=1.0)   # ratio floor 1 - eps_low in [0, 1]
        check_range(self, "clip_high", lo=0.0)
        check_range(self, "clip_ratio_c", lo=1.0, lo_open=True)
        check_range(self, "max_len", lo=1)
        check_range(self, "kl_coef", lo=0.0)
        check_range(self, "kl_clamp", lo=0.0, lo_open=True)
        check_range(self, "entropy_coef")               # any finite value: either sign is a real choice


def ppo_terms(out, batch, cfg: PPOClipConfig, token_weight: torch.Tensor | None = None,
              pg_mask: torch.Tensor | None = None):
    """PPO-clip loss plus the optional KL and entropy terms, aggregated with cfg.agg.
    `token_weight` [B, T] multiplies the policy-gradient term per token (masks of other
    methods); the aggregation denominator still counts every response token.
    `pg_mask` [B, T] instead replaces the response mask in the aggregation of the policy-gradient
    term only (verl's way to train on selected tokens); KL, entropy and metrics keep every token."""
    mask = batch.response_mask
    pg_mat, ratio, clipped = ppo_clip_per_token(out.logp, batch.old_logp, batch.advantages,
                                                cfg.clip_low, cfg.clip_high, cfg.clip_ratio_c)
    if token_weight is not None:  # where(): a zero weight must silence even an inf term
        pg_mat = torch.where(token_weight != 0, pg_mat * token_weight, torch.zeros_like(pg_mat))
    loss = aggregate(pg_mat, mask if pg_mask is None else pg_mask, cfg.agg, cfg.max_len)
    adv = batch.advantages
    metrics = {"pg_loss": float(loss.detach()), "clipfrac": float(masked_mean(clipped.float(), mask)),
               # which bound binds: the upper one silences A > 0 tokens, the lower one A < 0 tokens
               "clipfrac_high": float(masked_mean(((adv > 0) & (ratio > 1 + cfg.clip_high)).float(), mask)),
               "clipfrac_low": float(masked_mean(((adv < 0) & (ratio < 1 - cfg.clip_low)).float(), mask)),
               "ratio_mean": float(masked_mean(ratio.detach(), mask)),
               "ppo_kl": float(masked_mean((batch.old_logp - out.logp).detach(), mask))}
    if cfg.kl_coef:
        if batch.ref_logp is None:
            raise ValueError("kl_coef > 0 needs a reference policy: register the loss with "
                             "needs=baselines.reference_if_kl (or keep TrainConfig.log_ref_kl=True)")
        kl_mat = kl_estimate(out.logp, batch.ref_logp, cfg.kl_kind, clamp=cfg.kl_clamp)
        kl = aggregate(kl_mat, mask, cfg.agg, cfg.max_len)
        loss = loss + cfg.kl_coef * kl
        metrics["kl"] = float(kl.detach())
    if cfg.entropy_coef:
        ent = aggregate(out.entropy, mask, cfg.agg, cfg.max_len)
        loss = loss - cfg.entropy_coef * ent
        metrics["entropy_bonus"] = float(ent.detach())
    return loss, metrics


@register("loss", "ppo_clip", config=PPOClipConfig, paper="Schulman et al. 2017, PPO, arXiv 1707.06347",
          needs=reference_if_kl)
def ppo_clip_loss(out, batch, cfg: PPOClipConfig, ctx):
    return ppo_terms(out, batch, cfg)


# ------------------------------------------------------------------ recipes

# The stale regime of the papers that act through clipping (STEER, BAPO, AEPO, ...): 2 epochs x 4 minibatches
# = 8 optimizer steps per rollout, so ratios leave 1. DAPO's loss without its rollout/reward changes is their
# like-for-like baseline.
STALE = {"minibatches": 4, "ppo_epochs": 2}
DAPO_PPO = {"clip_low": 0.2, "clip_high": 0.28, "clip_ratio_c": 10.0, "agg": "token-mean"}

register_recipe(Recipe("grpo", paper="Shao et al. 2024, arXiv 2402.03300", advantage="grpo",
                       loss_cfg={"agg": "seq-mean-token-mean"}))
register_recipe(Recipe("dr_grpo", paper="Liu et al. 2025, arXiv 2503.20783", advantage="dr_grpo",
                       loss_cfg={"agg": "seq-mean-token-sum-norm"}))
register_recipe(Recipe("dapo", paper=DAPO, rollout="dynamic", reward="overlong", advantage="grpo",
                       loss_cfg={"clip_low": 0.2, "clip_high": 0.28, "clip_ratio_c": 10.0, "agg": "token-mean"}))
register_recipe(Recipe("rloo", paper="Ahmadian et al. 2024, arXiv 2402.14740", advantage="rloo",
                       loss_cfg={"agg": "seq-mean-token-mean"}))
register_recipe(Recipe("reinforce_pp", paper="Hu 2025, arXiv 2501.03262", advantage="reinforce_pp",
                       loss_cfg={"agg": "token-mean"}))
register_recipe(Recipe("dapo_stale", paper=DAPO + " -- its loss only (0.2 / 0.28, c 10, token-mean), plain rollout, "
                       "stale regime (baselines.STALE)", loss_cfg=dict(DAPO_PPO), train_cfg=dict(STALE)))
