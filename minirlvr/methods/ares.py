"""ARES: Multimodal Adaptive Reasoning via Difficulty-Aware Token-Level Entropy Shaping -- 2025 (ICLR 2026),
arXiv 2510.08457; its RL stage AEPO. Official code: shawn0728/ARES (EasyR1 fork): reward
examples/reward_function/aepo.py; HWE counting verl/workers/rollout/vllm_rollout_spmd.py; buckets, targets,
alpha and tau verl/trainer/ray_trainer.py; bucketed KL controller verl/workers/actor/dp_actor.py; settings
experiments/AEPO/config.yaml. Stage 1 (cold-start SFT) is out of scope.

Stages: reward "ares" (HWE counts, online difficulty buckets, the entropy reward; provides per-row extras) and
loss "ares_kl" (PPO-clip + a KL-to-reference term whose coefficient is adapted per bucket; requires the buckets).
Advantage: GRPO (unbiased group std, eps 1e-6).

Symbols (response i of prompt q, positions t < L_i, H_t the exact entropy of pi_T at t = batch.old_entropy)
  W_t   = mean(H_{t+1}, ..., H_{t+w})     window entropy, w = 4; "full" iff t + w <= L_i - 1
  P_i   = 95th percentile (linear) of {W_t : t < L_i}, where positions without a full window take the mean of
          the full ones (no full window at all: every entry is H_0)
  tau   <- 0.99 tau + 0.01 median_i P_i   (first call: tau = the median); counting uses the tau of the call
          BEFORE (the official rollout gets last step's threshold)
  n_i   = #{t : tok_t in triggers, W_t full, W_t >= tau}      tok_t = top-1 token at t (official) or sampled
  acc_q = mean_i 1[correct_i];  bucket easy if acc_q >= 2/3, medium if acc_q >= 1/3, else hard
  T_d   = round(mean over prompts q in d of mean_i n_{q,i})  (half to even, as numpy's round)
  alpha_d <- clip(alpha_d + 0.05 Delta_d, 0, 2),  Delta_d = nbar_d - T_d (easy, medium), T_d - nbar_d (hard);
          |Delta_d| <= 1/2 since T_d is nbar_d rounded: alpha moves <= 0.025 per step (logged; over 300 toy steps
          it still travels: hard 0.49 -> 0.07, medium 0.50 -> 0.87 in tutorial 15, where beta moved only +12%)
  delta = n_i - T_d; M = max(1, f_d max(T_d, 1)); C = alpha_d c_d; h(x) = x^2/(2 kappa) (x <= kappa) else
          x - kappa/2 for x >= 0 (x < 0 clamped to 0); sig(x) = 1 / (1 + exp(-x / s_d))
          (f, kappa, s, c) = easy (0.15, 2, 2, 1), medium (0.25, 3, 2.5, 1), hard (0.35, 4, 3, 1.2)
  e_i   easy correct   -min(C, h(max(delta - M, 0)) / (M + kappa) C)
        medium correct -min(C, h(max(|delta| - M, 0)) / (M + kappa) C)
        hard correct   C sig(delta + M) if delta >= -M, else -min(C, h(-delta - M) / (2 (M + kappa)) C)
        wrong          g_d C sig(max(delta - M, 0)),  g = (0.6, 0.8, 1.0): always >= g_d C / 2 > 0 if alpha_d > 0
  r_i   = 1[correct_i] + e_i
KL loss (token-mean, k3 clamped at 10, kl_coef 1e-2): kl_coef * agg(beta_{d(i)} k3_{i,t}); before each loss call
the controller updates, per bucket d present in the call (c = the call counter, all buckets):
  ema_d = 0.03 mean_i(seq-mean k3_i) + 0.97 ema_d (first: the mean);  e = ema_d / 0.01 - 1
  if |e| >= 0.02 and c % 100 == 0:  E_d <- 0.03 e + 0.97 E_d;  log beta_d += 0.05 clip(E_d, +-0.2), kept in
  [ln 1e-4, ln 100]: |Delta log beta| <= 0.01 per update, ~12 updates in 300 steps x 4 minibatches (inert, logged)

Card vs paper/official code: every formula above is the official code's (the card agrees). Safe ordering
(correct always out-rewards wrong in a bucket): 1 - C >= g_d C, i.e. alpha <= 1 / (c_d (1 + g_d)) =
0.625 / 0.556 / 0.417 (easy / medium / hard) -- `safe_alpha`; above it a wrong response can outrank a correct
one (hard at the default 0.5 needs T_d ~ 100; alpha 2 breaks every bucket). Found in the released code and
NOT followed by default: with online_filtering on (the AEPO config) the reward computed during filtering --
before difficulty / target / alpha are attached, so with bucket easy, T = 0, alpha 0.5 for every response --
is the one trained on (fit() only computes a reward when token_level_scores is missing). released_reward=True
reproduces that; the default is the bucketed reward the paper describes and fit() attaches.
Deviations: (1) triggers: the verbose task's re-check marker "?" replaces the curated English word list (the
card's toy choice; set reward.triggers=";" for the step delimiter); (2) exact entropy, not top-10 + tail;
(3) tau at the first call: the official config validates first, and that pass sets tau to the mean P_i of the
validation responses; here tau_init=None uses this batch's median P_i (tau_init=-1: count every trigger);
(4) no online filtering (DAPO-style 0.01 < mean r < 0.99; library regime: plain rollout); under the `dynamic`
rollout every reward call updates tau and alpha; (5) the KL controller runs per loss call (one minibatch), not
per micro-batch of 4 per device; (6) the inert "second-chance" KL relaxation, HWE-triggered branching and
token-wise KL relaxation (not in the released code) are left out; lr 1e-6, 512 prompts etc. are LLM-scale: the
recipe keeps the library regime; (7) the trainer's `accuracy` counts r > 0.5, which e shifts: use ares/acc.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import torch

from ..baselines import PPOClipConfig, ppo_terms, reference_if_kl
from ..core import aggregate, kl_estimate, masked_mean
from ..registry import Recipe, check_range, register, register_recipe
from ..tokenizer import CHARS, encode

PAPER = "ARES (AEPO stage): Difficulty-Aware Token-Level Entropy Shaping, 2025, arXiv 2510.08457"
BUCKETS = ("easy", "medium", "hard")
EASY_ACC, MEDIUM_ACC = 2 / 3, 1 / 3
MARGIN_FRAC, KAPPA, TEMP = (0.15, 0.25, 0.35), (2.0, 3.0, 4.0), (2.0, 2.5, 3.0)
CAP_SCALE, WRONG_GAIN = (1.0, 1.0, 1.2), (0.6, 0.8, 1.0)
ALPHA_MAX, BETA_MIN, BETA_MAX, BETA_INIT = 2.0, 1e-4, 100.0, 1.0
EXTRAS = ("ares_bucket", "ares_hwe", "ares_entropy_reward")


def window_entropy(H: torch.Tensor, mask: torch.Tensor, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """W [B, T] float64 (0 where not full) and full [B, T] bool: W_t = mean(H_{t+1..t+w}), full iff t + w < L."""
    H = torch.where(mask.bool(), H.double(), torch.zeros((), dtype=torch.float64))
    T = H.shape[1]
    W = torch.nn.functional.pad(H[:, 1:], (0, w)).unfold(1, w, 1)[:, :T].mean(-1)
    full = torch.arange(T)[None, :] + w < mask.sum(1)[:, None]
    return torch.where(full, W, torch.zeros_like(W)), full


def percentile_thresholds(W, full, H, mask, q: float = 95.0) -> np.ndarray:
    """P_i [B]: the q-th percentile of row i's window entropies, non-full positions filled (module doc); 0 if empty."""
    out = np.zeros(W.shape[0])
    for i, (L, nf) in enumerate(zip(mask.sum(1).tolist(), full.sum(1).tolist())):
        if L == 0:
            continue
        vals = W[i, :nf].numpy()
        vals = np.concatenate([vals, np.full(L - nf, vals.mean())]) if nf else np.full(L, float(H[i, 0]))
        out[i] = np.percentile(vals, q)
    return out


def hwe_count(W, full, trigger: torch.Tensor, tau: float) -> torch.Tensor:
    """n_i [B] (int64): trigger positions with a full window and W_t >= tau."""
    return (trigger.bool() & full & (W >= tau)).sum(1)


def difficulty_buckets(correct: np.ndarray, group_ids: np.ndarray) -> tuple[np.ndarray, dict]:
    """Per-row bucket (0 easy, 1 medium, 2 hard) from the group's accuracy, and {group: row indices}."""
    groups: dict = {}
    for i, g in enumerate(group_ids.tolist()):
        groups.setdefault(g, []).append(i)
    bucket = np.zeros(len(correct), dtype=np.int64)
    for rows in groups.values():
        acc = float(np.mean(correct[rows]))
        bucket[rows] = 0 if acc >= EASY_ACC else 1 if acc >= MEDIUM_ACC else 2
    return bucket, groups


def bucket_targets(n: np.ndarray, bucket: np.ndarray, groups: dict) -> dict[int, tuple[float, int]]:
    """{bucket d present: (nbar_d = mean over its prompts of the prompt's mean n, T_d = round(nbar_d))}."""
    per: dict[int, list] = {}
    for rows in groups.values():
        per.setdefault(int(bucket[rows[0]]), []).append(np.mean(n[rows]))
    return {d: (float(np.mean(v)), int(round(np.mean(v)))) for d, v in per.items()}


def alpha_step(alpha: float, nbar: float, target: int, d: int, lr: float = 0.05) -> float:
    """alpha_d after one update: too many HWE (easy, medium) / too few (hard) raises it; clipped to [0, 2]."""
    delta = nbar - target if d < 2 else target - nbar
    return float(np.clip(alpha + lr * delta, 0.0, ALPHA_MAX))


def _huber(x: float, kappa: float) -> float:
    x = max(float(x), 0.0)
    return 0.5 * x * x / kappa if x <= kappa else x - 0.5 * kappa


def _sig(x: float, s: float) -> float:      # x >= 0 at every call site, so exp(-x / s) <= 1
    return 1.0 / (1.0 + math.exp(-x / s))


def entropy_reward(n: float, target: float, alpha: float, d: int, correct: bool) -> float:
    """e for one response (module doc table): n its HWE count, d its bucket (0 easy, 1 medium, 2 hard)."""
    delta, kappa, s = float(n) - float(target), KAPPA[d], TEMP[d]
    M = max(1.0, MARGIN_FRAC[d] * max(float(target), 1.0))
    C = alpha * CAP_SCALE[d]
    if not correct:
        return WRONG_GAIN[d] * C * _sig(max(delta - M, 0.0), s)
    if d == 2:
        if delta >= -M:
            return C * _sig(delta + M, s)
        return -min(C, 0.5 * _huber(-delta - M, kappa) / (M + kappa) * C)
    dev = max(delta - M, 0.0) if d == 0 else max(abs(delta) - M, 0.0)
    return -min(C, _huber(dev, kappa) / (M + kappa) * C)


def safe_alpha(d: int) -> float:
    """The largest alpha_d for which every correct response out-rewards every wrong one: 1 / (c_d (1 + g_d))."""
    return 1.0 / (CAP_SCALE[d] * (1.0 + WRONG_GAIN[d]))


@dataclass
class AresRewardConfig:
    triggers: tuple[str, ...] = ("?",)      # trigger characters (toy stand-in for the curated word list)
    trigger_token: Literal["top1", "sampled"] = "top1"   # official: the top-1 token at t (from old_logits)
    window: int = 4                          # w (rollout.window_size)
    percentile: float = 95.0                 # P_i's percentile
    tau_momentum: float = 0.99               # tau <- mom tau + (1 - mom) median P_i
    tau_init: float | None = None            # tau at the first call (None: this batch's median P_i)
    alpha_init: float = 0.5                  # alpha_d at the start, every bucket
    alpha_lr: float = 0.05                   # alpha_entropy_lr
    released_reward: bool = False            # e as the released trainer trains it: easy, T = 0, alpha = alpha_init

    def __post_init__(self):
        check_range(self, "window", lo=1)
        check_range(self, "percentile", lo=0.0, hi=100.0)
        check_range(self, "tau_momentum", lo=0.0, hi=1.0)
        check_range(self, "tau_init")
        check_range(self, "alpha_init", lo=0.0, hi=ALPHA_MAX)
        check_range(self, "alpha_lr", lo=0.0)
        self.triggers = tuple(self.triggers)
        if not self.triggers or any(len(t) != 1 or t not in CHARS for t in self.triggers):
            raise ValueError(f"AresRewardConfig.triggers must be single characters of the vocabulary {CHARS!r}, "
                             f"got {self.triggers!r}")


@register("reward", "ares", config=AresRewardConfig, paper=PAPER, needs={"groups"}, provides=EXTRAS)
def ares_reward(batch, cfg: AresRewardConfig, ctx):
    """r = 1[correct] + e [B]; writes bucket, n and e to batch.extras; updates tau and alpha in ctx.state."""
    st = ctx.state.setdefault("ares", {})
    alpha = st.setdefault("alpha", [cfg.alpha_init] * 3)
    mask, H = batch.response_mask.cpu(), batch.old_entropy.detach().cpu()
    W, full = window_entropy(H, mask, cfg.window)
    p = percentile_thresholds(W, full, H.double(), mask, cfg.percentile)
    median = float(np.median(p)) if len(p) else 0.0
    tau = st.get("tau", median if cfg.tau_init is None else cfg.tau_init)
    st["tau"] = median if "tau" not in st else cfg.tau_momentum * st["tau"] + (1 - cfg.tau_momentum) * median
    use_top1 = cfg.trigger_token == "top1" and batch.old_logits is not None
    tokens = (batch.old_logits.argmax(-1) if use_top1 else batch.response_ids).cpu()
    trigger = torch.isin(tokens, torch.tensor(encode("".join(cfg.triggers)))) & mask.bool()
    n = hwe_count(W, full, trigger, tau).numpy().astype(np.float64)
    correct = np.array([ctx.task.reward(q, t) > 0.5 for q, t in zip(batch.problems, batch.texts)])
    bucket, groups = difficulty_buckets(correct, batch.group_ids.cpu().numpy())
    targets, steps = bucket_targets(n, bucket, groups), [0.0, 0.0, 0.0]
    for d, (nbar, T_d) in targets.items():
        new = alpha_step(alpha[d], nbar, T_d, d, cfg.alpha_lr)
        steps[d], alpha[d] = new - alpha[d], new
    e = np.array([entropy_reward(n[i], 0, cfg.alpha_init, 0, bool(correct[i])) if cfg.released_reward else
                  entropy_reward(n[i], targets[bucket[i]][1], alpha[bucket[i]], int(bucket[i]), bool(correct[i]))
                  for i in range(len(n))], dtype=np.float64)
    r = correct.astype(np.float64) + e
    dev = batch.response_mask.device          # minibatch indices live there: per-row extras must too
    batch.extras.update(ares_bucket=torch.from_numpy(bucket).to(dev), ares_hwe=torch.from_numpy(n).to(dev),
                        ares_entropy_reward=torch.from_numpy(e).to(dev))
    _log_reward(ctx, tau, st["tau"], median, n, trigger & full, correct, e, r, bucket, groups, targets, alpha,
                steps, mask.sum(1).numpy())
    return torch.from_numpy(r)


def _log_reward(ctx, tau, tau_next, median, n, counted, correct, e, r, bucket, groups, targets, alpha, steps, lengths):
    """What the notebook plots: tau, HWE per bucket, the reward decomposition (acc vs e), alpha and its step."""
    log = {"ares/tau": tau, "ares/tau_next": tau_next, "ares/p95_median": median, "ares/hwe": n.mean(),
           "ares/triggers_full": float(counted.sum(1).double().mean()), "ares/acc": correct.mean(),
           "ares/e": e.mean(), "ares/reward": r.mean()}
    for name, sel in (("correct", correct), ("wrong", ~correct)):
        if sel.any():
            log[f"ares/e_{name}"] = e[sel].mean()
    mixed = [rows for rows in groups.values() if 0 < correct[rows].sum() < len(rows)]
    log["ares/order_violations"] = (np.mean([r[rows][~correct[rows]].max() >= r[rows][correct[rows]].min()
                                             for rows in mixed]) if mixed else 0.0)
    for d, name in enumerate(BUCKETS):
        sel = bucket == d
        log[f"ares/frac_{name}"] = np.mean([bucket[rows[0]] == d for rows in groups.values()]) if groups else 0.0
        log[f"ares/alpha_{name}"], log[f"ares/alpha_step_{name}"] = alpha[d], steps[d]
        if sel.any():
            log.update({f"ares/hwe_{name}": n[sel].mean(), f"ares/target_{name}": targets[d][1],
                        f"ares/e_{name}": e[sel].mean(), f"ares/acc_{name}": correct[sel].mean(),
                        f"ares/len_{name}": lengths[sel].mean()})
    ctx.log(**{k: float(v) for k, v in log.items()})


@dataclass
class AresLossConfig(PPOClipConfig):
    clip_low: float = 0.2                # actor clip_ratio_low
    clip_high: float = 0.3               # actor clip_ratio_high
    clip_ratio_c: float | None = 3.0     # clip_ratio_dual
    agg: Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum",
                 "seq-mean-token-sum-norm"] = "token-mean"   # loss_avg_mode "token"
    kl_coef: float = 1e-2                # algorithm.kl_coef (use_kl_loss)
    kl_kind: Literal["k1", "k2", "k3"] = "k3"   # low_var_kl
    kl_clamp: float | None = 10.0        # EasyR1 clamps low_var_kl to [-10, 10]
    dynamic_kl: bool = True              # dynamic_kl_loss: per-bucket beta (False: beta = 1, plain KL loss)
    kl_target: float = 0.01              # delta_d, every bucket
    ema_decay: float = 0.97              # of the measured KL and of the error
    beta_lr: float = 0.05                # step in log beta per unit clipped error
    beta_clip: float = 0.2               # |clipped error| cap
    update_interval: int = 100           # beta moves only on every 100th loss call
    deadzone: float = 0.02               # |e| below this: no update

    def __post_init__(self):
        super().__post_init__()
        check_range(self, "kl_target", lo=0.0, lo_open=True)
        check_range(self, "ema_decay", lo=0.0, hi=1.0)
        for name in ("beta_lr", "beta_clip", "deadzone"):
            check_range(self, name, lo=0.0)
        check_range(self, "update_interval", lo=1)


def kl_controller_step(st: dict, seq_kl: np.ndarray, bucket: np.ndarray, cfg: AresLossConfig) -> None:
    """One loss call of the per-bucket beta controller (module doc); st = ctx.state["ares_kl"], numbers only."""
    for k, v in (("beta", [BETA_INIT] * 3), ("kl_ema", [0.0] * 3), ("kl_seen", [False] * 3), ("e_ema", [0.0] * 3),
                 ("updates", [0] * 3), ("calls", 0)):
        st.setdefault(k, v)
    st["calls"] += 1
    for d in range(3):
        if not (bucket == d).any():
            continue
        cur = float(np.mean(seq_kl[bucket == d]))
        last = st["kl_ema"][d] if st["kl_seen"][d] else cur
        st["kl_ema"][d], st["kl_seen"][d] = (1 - cfg.ema_decay) * cur + cfg.ema_decay * last, True
        err = st["kl_ema"][d] / cfg.kl_target - 1.0
        if abs(err) < cfg.deadzone or st["calls"] % cfg.update_interval != 0:
            continue
        st["e_ema"][d] = (1 - cfg.ema_decay) * err + cfg.ema_decay * st["e_ema"][d]
        log_beta = math.log(min(BETA_MAX, max(BETA_MIN, st["beta"][d])))
        step = cfg.beta_lr * float(np.clip(st["e_ema"][d], -cfg.beta_clip, cfg.beta_clip))
        st["beta"][d] = math.exp(min(math.log(BETA_MAX), max(math.log(BETA_MIN), log_beta + step)))
        st["updates"][d] += 1


@register("loss", "ares_kl", config=AresLossConfig, paper=PAPER, needs=reference_if_kl, requires={"ares_bucket"})
def ares_kl_loss(out, batch, cfg: AresLossConfig, ctx):
    """PPO-clip + kl_coef agg(beta_{d(i)} k3); beta updated first (official order). beta = 1: ppo_clip exactly."""
    loss, metrics = ppo_terms(out, batch, replace(cfg, kl_coef=0.0))
    if not cfg.kl_coef:
        return loss, metrics
    if batch.ref_logp is None:
        raise ValueError("ares_kl with kl_coef > 0 needs a reference policy (ref_logp)")
    mask = batch.response_mask
    kl_mat = kl_estimate(out.logp, batch.ref_logp, cfg.kl_kind, clamp=cfg.kl_clamp)
    beta = torch.ones(mask.shape[0], dtype=kl_mat.dtype, device=kl_mat.device)
    if cfg.dynamic_kl:
        st, bucket = ctx.state.setdefault("ares_kl", {}), batch.extras["ares_bucket"].cpu().numpy()
        seq_kl = masked_mean(kl_mat.detach().double(), mask, dim=1).cpu().numpy()
        kl_controller_step(st, seq_kl, bucket, cfg)
        beta = torch.tensor(st["beta"], dtype=kl_mat.dtype)[torch.from_numpy(bucket)].to(kl_mat.device)
        ctx.log(**{f"ares/beta_{b}": st["beta"][d] for d, b in enumerate(BUCKETS)},
                **{f"ares/kl_ema_{b}": st["kl_ema"][d] for d, b in enumerate(BUCKETS) if st["kl_seen"][d]},
                **{"ares/beta_updates": sum(st["updates"]), "ares/kl_calls": st["calls"]})
    kl = aggregate(kl_mat * beta[:, None], mask, cfg.agg, cfg.max_len)
    metrics.update(kl=float(aggregate(kl_mat.detach(), mask, cfg.agg, cfg.max_len)), kl_weighted=float(kl.detach()))
    return loss + cfg.kl_coef * kl, metrics


register_recipe(Recipe("ares", paper=PAPER + " (official reward / KL controller settings; '?' triggers; toy regime)",
                       reward="ares", advantage="grpo", loss="ares_kl"))
register_recipe(Recipe("ares_control", paper=PAPER + " -- control: verifier reward, GRPO, the same PPO-clip and "
                       "KL loss with beta fixed at 1", loss_cfg={"clip_low": 0.2, "clip_high": 0.3,
                       "clip_ratio_c": 3.0, "agg": "token-mean", "kl_coef": 1e-2, "kl_kind": "k3", "kl_clamp": 10.0}))
register_recipe(Recipe("ares_released", paper=PAPER + " -- the reward the released trainer trains on (easy bucket, "
                       "T = 0, alpha 0.5 for all)", reward="ares", advantage="grpo", loss="ares_kl",
                       reward_cfg={"released_reward": True}))
register_recipe(Recipe("ares_steps", paper=PAPER + " -- triggers = the step delimiter ';' (its window covers the next "
                       "re-check decision; the window after '?' is a copied step)", reward="ares", advantage="grpo",
                       loss="ares_kl", reward_cfg={"triggers": (";",)}))
