"""COPO: Consistency-Aware Policy Optimization -- 2025, arXiv 2508.04138.
Official code: hijih/copo-code (verl fork: core_algos.py `compute_score_global`,
`compute_grpo_outcome_advantage_with_global`, `compute_policy_loss_with_global`; run_copo.sh).

Stages changed: advantage (a second, prompt-level advantage and a per-response blend weight, written to
batch.extras) and loss (a per-response blend of two PPO-clip surrogates). The loss reads the extras, so it
declares `requires` and only runs after the "copo" advantage (build_pipeline refuses anything else).

Idea: GRPO gives zero gradient to a prompt whose G responses all get the same reward. COPO adds a global
(prompt-level) advantage, normalised across the prompts of the batch, so all-correct / all-wrong prompts
still move; a sigmoid of the group's answer entropy decides how much each response leans on it.

Symbols (batch of Q prompts, group g of G responses, r_i in {0, 1} the verifier reward, a_i the
extracted final answer, task.final_answer; no answer counts as one answer "", as the official "")
  A^loc_i  = (r_i - mean_g r) / (std_g r + eps)            GRPO, unbiased std (core.group_advantages)
  H_g      = -sum_a p_a log2 p_a,  p_a = #{i in g: a_i = a} / G     answer entropy in BITS, in [0, log2 G]
  c_g      = 1 - lambda_G H_g,  lambda_G = (1 - 1/G) / log2 G       consistency, in [1/G, 1] (reward_coef only)
  R_g      = mean_g(r) * c_g   (c_g := 1 unless reward_coef; default: R_g = p_g, the group's accuracy)
  A^glob_g = (R_g - mean_g' R) / (std_g' R + eps)          z-score over the Q PROMPTS (unbiased std),
                                                           broadcast to every token of every response of g
  s_g      = sigmoid(gamma (H_g - rho))                    gamma = 5, rho = 1 bit (run_copo.sh: k, b)
  w_i      = s_g * 1[r_i != 0]                              "soft-with-zero", the released default; other
             global_mode values: only-soft s_g; soft-with-forced s_g 1[A^loc_i != 0]; only-forced
             1[A^loc_i != 0]; only-zero 1[r_i != 0]; only-global 0; no-global 1 (= GRPO exactly)
  clipPG(A)= max(-A rho_t, -A clip(rho_t, 1 - eps_lo, 1 + eps_hi)), for A < 0 then min(., -c A)
             (core.ppo_clip_per_token; the same ratio rho_t = exp(logp - old_logp) in both terms)
  l_{i,t}  = w_i clipPG_{i,t}(A^loc_i) + (1 - w_i) clipPG_{i,t}(A^glob_g)
  loss     = agg(l, m)     (run_copo.sh: seq-mean-token-mean; dual clip c = 3, verl's default)
w, A^loc and A^glob are constants (computed once per rollout on the full batch, no gradient).
batch.advantages is the effective advantage A^eff_i = w_i A^loc_i + (1 - w_i) A^glob_g (the
per-token gradient direction at rho_t = 1, what probes and the frac_nonzero_adv metric see).

Card vs paper/official code: the card matches the official code on every formula above; in
particular w multiplies the LOCAL loss (verl names it global_loss_weight), and the r != 0 mask tests
the raw 0/1 reward (with +-1 rewards soft-with-zero would silently become only-soft). Deliberate
differences: the official entropy adds 1e-8 inside log2 (negligible); with one prompt in the batch
torch.std is NaN there (A^glob = NaN), here it is 0; a group of one response gets A^loc = r there
(mean 0, std 1), 0 here (core.group_advantages; COPO needs groups >= 2 anyway). Not implemented:
the later `only-soft-with-coef` / `only-zero-wrong` flags. G = 6 and lr 1e-6 of run_copo.sh are
LLM-scale trainer settings; the recipe keeps the library's toy regime (G = 8, lr 1e-4).
Pitfalls: bits, not nats (rho = 1 is a bit threshold); A^glob over ~16 prompts is a noisy z-score;
the global term pushes up every response of an above-average prompt, wrong ones included.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import torch

from ..baselines import PPOClipConfig, broadcast, ppo_terms, reference_if_kl
from ..core import empirical_entropy, group_advantages, group_mean_std
from ..registry import Recipe, check_range, register, register_recipe

PAPER = "COPO: Consistency-Aware Policy Optimization, 2025, arXiv 2508.04138"
MODES = ("soft-with-zero", "only-soft", "soft-with-forced", "only-forced", "only-zero", "only-global", "no-global")
EXTRAS = ("copo_adv_local", "copo_adv_global", "copo_weight", "copo_answer_entropy")


def answer_entropy_bits(answers: list, group_ids: torch.Tensor) -> torch.Tensor:
    """H_g (bits) of the empirical distribution of exact-match answers in each group, per row [B] float64."""
    gids = group_ids.tolist()
    groups: dict = {}
    for g, a in zip(gids, answers):
        groups.setdefault(g, []).append("" if a is None else a)
    H = {g: empirical_entropy(v, bits=True) for g, v in groups.items()}
    return torch.tensor([H[g] for g in gids], dtype=torch.float64)


def consistency_coef(H: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    """c_g = 1 - lambda_G H_g, lambda_G = (1 - 1/G) / log2 G: 1 if all G answers agree, 1/G if all differ."""
    lam = torch.where(G > 1, (1 - 1 / G) / torch.log2(G.clamp(min=2)), torch.zeros_like(G))
    return 1 - lam * H


def global_advantage(rewards: torch.Tensor, group_ids: torch.Tensor, H: torch.Tensor, reward_coef: bool = False,
                     eps: float = 1e-6) -> torch.Tensor:
    """A^glob per row [B]: the z-score over prompts of R_g = mean_g(r) * c_g (c_g = 1 unless reward_coef)."""
    uniq, inverse = torch.unique(group_ids, return_inverse=True)
    mean_r, _ = group_mean_std(rewards.double(), group_ids)
    first = torch.zeros(len(uniq), dtype=torch.long).scatter_reduce_(0, inverse, torch.arange(len(inverse)),
                                                                      reduce="amin", include_self=False)
    R = mean_r[first]                                      # one value per prompt
    if reward_coef:
        R = R * consistency_coef(H.double()[first], torch.bincount(inverse).double())
    mu, sd = group_mean_std(R, torch.zeros(len(R), dtype=torch.long))  # over the Q prompts (exact if all equal)
    return ((R - mu) / (sd + eps))[inverse]


def blend_weight(H: torch.Tensor, rewards: torch.Tensor, adv_local: torch.Tensor, mode: str, gamma: float,
                 rho: float) -> torch.Tensor:
    """w_i, the weight of the LOCAL loss of row i (1 - w_i: the global loss), per row [B]."""
    s = torch.sigmoid(gamma * (H.double() - rho))
    nonzero_r, forced = (rewards != 0).double(), (adv_local != 0).double()
    table = {"soft-with-zero": lambda: s * nonzero_r, "only-soft": lambda: s, "soft-with-forced": lambda: s * forced,
             "only-forced": lambda: forced, "only-zero": lambda: nonzero_r,
             "only-global": lambda: torch.zeros_like(s), "no-global": lambda: torch.ones_like(s)}
    if mode not in table:
        raise ValueError(f"unknown global_mode {mode!r}; use one of {MODES}")
    return table[mode]()


@dataclass
class CopoAdvantageConfig:
    eps: float = 1e-6                   # added to both the group std (A^loc) and the prompt std (A^glob)
    gamma: float = 5.0                  # sigmoid slope k of the blend weight (run_copo.sh soft_blending_k)
    rho: float = 1.0                    # entropy threshold b of the blend weight, in BITS (soft_blending_b)
    global_mode: Literal["soft-with-zero", "only-soft", "soft-with-forced", "only-forced", "only-zero",
                         "only-global", "no-global"] = "soft-with-zero"   # run_copo.sh global_flg
    reward_coef: bool = False           # R_g = p_g * c_g (consistency-discounted) instead of p_g (reward_coef_flg)

    def __post_init__(self):
        check_range(self, "eps", lo=0.0, lo_open=True)
        check_range(self, "gamma", lo=0.0)
        check_range(self, "rho")
        if self.global_mode not in MODES:
            raise ValueError(f"CopoAdvantageConfig.global_mode must be one of {MODES}, got {self.global_mode!r}")


@register("advantage", "copo", config=CopoAdvantageConfig, paper=PAPER, needs={"groups"}, provides=EXTRAS)
def copo_advantage(batch, cfg: CopoAdvantageConfig, ctx):
    """A^loc, A^glob, w and H_g into batch.extras (per row); returns A^eff broadcast to tokens [B, T]."""
    gids, rewards = batch.group_ids.cpu(), batch.rewards.cpu()
    a_loc = group_advantages(rewards, gids, "std", cfg.eps)          # exactly grpo_advantage's values
    H = answer_entropy_bits([ctx.task.final_answer(t) for t in batch.texts], gids)
    a_glob = global_advantage(rewards, gids, H, cfg.reward_coef, cfg.eps).to(a_loc.dtype)
    w = blend_weight(H, rewards, a_loc, cfg.global_mode, cfg.gamma, cfg.rho).to(a_loc.dtype)
    a_eff = w * a_loc + (1 - w) * a_glob
    batch.extras.update(copo_adv_local=a_loc, copo_adv_global=a_glob, copo_weight=w, copo_answer_entropy=H)
    _, std = group_mean_std(rewards, gids)
    ctx.log(**{"copo/frac_nonzero_adv": float((a_eff != 0).double().mean()),   # rows that get a gradient
               "copo/frac_all_equal": float((std == 0).double().mean()),       # rows in all-equal groups
               "copo/answer_entropy_bits": float(H.mean()), "copo/weight_local": float(w.mean()),
               "copo/adv_global_abs": float(a_glob.abs().mean())})
    return broadcast(a_eff, batch)


@dataclass
class CopoLossConfig(PPOClipConfig):
    """PPO settings of run_copo.sh, shared by the local and the global surrogate."""
    clip_low: float = 0.2               # eps_low (clip_ratio_low)
    clip_high: float = 0.2              # eps_high (clip_ratio_high)
    clip_ratio_c: float | None = 3.0    # dual clip for A < 0 (verl's default, applied to both terms)
    agg: Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum",
                 "seq-mean-token-sum-norm"] = "seq-mean-token-mean"   # loss_agg_mode of run_copo.sh
    kl_coef: float = 0.0                # no KL loss (use_kl_loss=false)
    entropy_coef: float = 0.0           # entropy_coeff=0


@register("loss", "copo", config=CopoLossConfig, paper=PAPER, needs=reference_if_kl, requires=EXTRAS[:3])
def copo_loss(out, batch, cfg: CopoLossConfig, ctx):
    """agg(w clipPG(A^loc) + (1 - w) clipPG(A^glob)); aggregation is linear, so each term is one ppo_terms
    call with a per-token weight (KL / entropy terms, when on, are added once, with the local call)."""
    w = batch.extras["copo_weight"]
    local = replace(batch, advantages=broadcast(batch.extras["copo_adv_local"], batch))
    glob = replace(batch, advantages=broadcast(batch.extras["copo_adv_global"], batch))
    loss_loc, metrics = ppo_terms(out, local, cfg, token_weight=broadcast(w, batch))
    loss_glob, m_glob = ppo_terms(out, glob, replace(cfg, kl_coef=0.0, entropy_coef=0.0),
                                  token_weight=broadcast(1 - w, batch))
    metrics.update(pg_loss=metrics["pg_loss"] + m_glob["pg_loss"], pg_loss_local=metrics["pg_loss"],
                   pg_loss_global=m_glob["pg_loss"], clipfrac_global=m_glob["clipfrac"])
    return loss_loc + loss_glob, metrics


register_recipe(Recipe("copo", paper=PAPER + " (soft-with-zero, gamma 5, rho 1 bit; toy trainer regime)",
                       advantage="copo", loss="copo",
                       advantage_cfg={"global_mode": "soft-with-zero", "gamma": 5.0, "rho": 1.0},
                       loss_cfg={"agg": "seq-mean-token-mean", "clip_ratio_c": 3.0}))
