"""Free Process Rewards without Process Labels (implicit PRM) -- Yuan, Li, Chen, Cui, Ding, Zhang, Zhou, Liu, Peng
2024, arXiv 2412.01981. Official code: PRIME-RL/ImplicitPRM (train/openrlhf/trainer/ce_trainer.py, run_ce.sh;
eval/prm_eval_utils.py, bon_eval.py). RL use: PRIME (Cui et al. 2025, arXiv 2502.01456; verl recipe/prime:
prime_core_algos.py, prime_dp_rm.py, config/prime_trainer.yaml).

Stage changed: reward (dense token rewards from an outcome-trained model), plus a best-of-N verifier.
Idea: write the outcome reward as a scaled log-likelihood ratio of a trainable model pi_phi (a copy of the base)
to the frozen base pi_ref and train it on outcome labels only; its partial sums are then exactly soft Q-values
under pi_ref, so differences of partial sums are step rewards -- process rewards without step labels.

Symbols (response y_1..y_T of prompt x; m_t = 1 on response tokens, EOS INCLUDED; log-probs at temperature 1)
  l_t      = log pi_phi(y_t | x, y_<t) - log pi_ref(y_t | x, y_<t)
  d_t      = beta m_t l_t                              token reward ("token_rewards"), 0 off the mask
  q_t      = sum_{i<=t} d_i                            = beta log E_{y'_>t ~ pi_ref}[exp(r_phi(y_<=t, y'_>t) / beta)]
  r_phi(y) = q_T = beta (log pi_phi(y) - log pi_ref(y))  outcome reward (log-probs are SUMS)
  r^k      = sum_{t in S_k} d_t                        step reward of step S_k (toy: segments.step_ids, ";"-ended
                                                       lines, "#answer" + EOS the last); sum_k r^k = r_phi for ANY
                                                       segmentation (telescoping)
  L_CE     = mean_i BCE(sigmoid(r_phi(y_i)), l_i),  l_i in {0, 1} the verifier's label;  dL/dr_phi = (sigma - l) / B
Scores for best-of-N: outcome = r_phi; min_step = min_k r^k (the official --reward-integration min); the
comparison arms random (constant scores, ties broken at random) and oracle (the label: pass@N).
pi_phi = pi_ref gives d = 0 everywhere; beta scales every reward linearly (orderings unchanged).

PRIME-style advantage "prime" (requires batch.extras["token_rewards"]; reward stage "implicit_prm" writes them):
  d'       = d / (max_{i,t} |sum_{s>=t} d_{i,s}| + 1e-6)            prime_norm "batch_norm" (batch_norm=True)
  LOO(x)   = x_{i,t} n/(n-1) - (1/(n-1)) sum_{j in g} mean_t(x_j)   on valid entries (verl's masked_rloo; n = G)
  R        = dense_coef LOO(d') + outcome_coef LOO(r at the last valid token)
  A_{i,t}  = whiten_batch(sum_{s>=t} R_{i,s})                       baselines.whiten (verl masked_whiten)
With dense_coef = 0 and outcome_coef = 1, A = whiten(RLOO advantage) exactly (tested). Recipes implicit_prm_prime
and implicit_prm_outcome_only (dense_coef 0: the same pipeline without the dense term); both need reward.prm_path.

Card vs paper/official code: CE loss, sums over the response mask, beta = 0.05, min-aggregation and the step
"single" rewards match the official code. Deviations: BCE is computed from logits (binary_cross_entropy_with_logits)
instead of BCELoss(sigmoid(.)) -- same value, no log(0) clamp; the eval's constant coef 0.001 is dropped (ranking
only). PRIME-style, not PRIME: the PRM is frozen (PRIME updates it online with L_CE on each rollout); PRIME's
"token" granularity drops the last token's reward, here every masked token (EOS included) keeps its d_t, so the
dense returns telescope to r_phi; no KL-in-reward, no accuracy filter of prompts. PRM training defaults (lr 1e-4,
1 epoch, batch 64) are the library's toy scale, not the paper's 5e-7 on 8B. PLAN's flag: at beta = 0.05 the CE
gradient (sigma - l) d r_phi is scaled by beta, so a small model moves slowly -- sweep beta up to 0.5 in the notebook.
Pitfalls: the reference must be exactly the base pi_phi started from (reward "implicit_prm" uses the run's --init
as reference: train the PRM from that same checkpoint); min-step favours short responses; report segmentation.
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..baselines import verifier_reward, whiten
from ..core import logprobs_from_logits, masked_mean, masked_sum
from ..model import load_checkpoint
from ..registry import Recipe, check_range, register, register_recipe
from ..rollout import policy_forward
from ..segments import step_ids

PAPER = "Free Process Rewards without Process Labels (implicit PRM), 2024, arXiv 2412.01981"
PRIME = "PRIME-style dense-reward advantage (Cui et al. 2025, arXiv 2502.01456) with a frozen implicit PRM"


# ------------------------------------------------------------------ rewards from log-probs

def token_rewards(logp_phi: torch.Tensor, logp_ref: torch.Tensor, mask: torch.Tensor, beta: float) -> torch.Tensor:
    """d_t = beta (logp_phi - logp_ref) on the mask, exactly 0 off it (even where a log-prob is -inf). [B, T]"""
    return torch.where(mask.bool(), beta * (logp_phi - logp_ref), torch.zeros((), dtype=logp_phi.dtype))


def token_rewards_from_logits(z_phi, z_ref, tokens, mask, beta: float) -> torch.Tensor:
    """d_t from raw logits [B, T, V] (log_softmax inside: a per-position shift of either model's logits is a no-op)."""
    return token_rewards(logprobs_from_logits(z_phi, tokens), logprobs_from_logits(z_ref, tokens), mask, beta)


def q_values(d: torch.Tensor) -> torch.Tensor:
    """q_t = sum_{i <= t} d_i [B, T] (constant after the last valid token)."""
    return d.cumsum(1)


def segment_sums(values: torch.Tensor, seg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sums of values [B, T] over each segment id seg [B, T] (-1: ignored) -> (sums [B, S], present [B, S] bool)."""
    B = values.shape[0]
    S = int(seg.max()) + 1 if seg.numel() and bool((seg >= 0).any()) else 0
    slot = torch.where(seg >= 0, seg, torch.full_like(seg, S))                    # a discard slot
    sums = torch.zeros(B, S + 1, dtype=values.dtype, device=values.device).scatter_add_(1, slot, values)
    count = torch.zeros(B, S + 1, device=values.device).scatter_add_(1, slot, torch.ones_like(slot, dtype=torch.float))
    return sums[:, :S], count[:, :S] > 0


def step_rewards(d: torch.Tensor, response_ids: torch.Tensor, mask: torch.Tensor):
    """r^k for the ";"-ended steps of segments.step_ids -> (r [B, S], present [B, S])."""
    return segment_sums(d, step_ids(response_ids, mask))


def min_step_score(r: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """min_k r^k over each row's steps [B]; 0 for a row without steps."""
    if r.shape[1] == 0:
        return torch.zeros(r.shape[0], dtype=r.dtype, device=r.device)
    out = torch.where(present, r, torch.full_like(r, float("inf"))).min(1).values
    return torch.where(present.any(1), out, torch.zeros_like(out))


@torch.no_grad()
def implicit_token_rewards(prm, ref, batch, beta: float, chunk: int = 512) -> torch.Tensor:
    """d [B, T] of a rollout batch (temperature-1 log-probs of both models, in chunks of rows)."""
    out = []
    for idx in torch.arange(batch.size).split(chunk):
        mb = batch.select(idx)
        out.append(token_rewards(policy_forward(prm, mb, 1.0).logp, policy_forward(ref, mb, 1.0).logp,
                                 mb.response_mask, beta))
    return torch.cat(out)


def score_responses(prm, ref, batch, beta: float) -> dict:
    """Everything the notebook needs per row: token rewards d [B, T], q [B, T], outcome r_phi [B], step rewards
    [B, S] with their presence mask, and the min-step score [B]."""
    d = implicit_token_rewards(prm, ref, batch, beta)
    r, present = step_rewards(d, batch.response_ids, batch.response_mask)
    return {"token": d, "q": q_values(d), "outcome": d.sum(1), "steps": r, "present": present,
            "min_step": min_step_score(r, present)}


def first_wrong_step(text: str, reference: str) -> int | None:
    """Index of the first step of `text` (segments.step_ids numbering: ";"-ended steps, then the rest) that differs
    from the same step of the correct `reference` completion; None if the two are equal. Always a step of text."""
    split = lambda s: [p + ";" for p in s.split(";")[:-1]] + [s.split(";")[-1]]   # noqa: E731
    mine, ref = split(text), split(reference)
    if mine == ref:
        return None
    return next(k for k in range(len(mine)) if k >= len(ref) or mine[k] != ref[k])


# ------------------------------------------------------------------ training pi_phi with the CE loss

def prm_ce_loss(logp_phi_sum, logp_ref_sum, labels, beta: float) -> torch.Tensor:
    """mean_i BCE(sigmoid(beta (sum logp_phi - sum logp_ref)), l_i); inputs [B] (sums over the response mask)."""
    return F.binary_cross_entropy_with_logits(beta * (logp_phi_sum - logp_ref_sum), labels.to(logp_phi_sum.dtype))


@dataclass
class PRMTrainConfig:
    beta: float = 0.05          # run_ce.sh
    lr: float = 1e-4            # toy scale (official: 5e-7 on an 8B model)
    epochs: int = 1             # run_ce.sh max_epochs
    batch_size: int = 64        # run_ce.sh train_batch_size
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    seed: int = 0

    def __post_init__(self):
        for k, lo, lo_open in (("beta", 0.0, True), ("lr", 0.0, True), ("epochs", 1, False), ("batch_size", 1, False),
                               ("weight_decay", 0.0, False), ("grad_clip", 0.0, True)):
            check_range(self, k, lo=lo, lo_open=lo_open)


def train_prm(base, data, labels: torch.Tensor, cfg: PRMTrainConfig | None = None):
    """pi_phi = a copy of `base` (left untouched: it is pi_ref) trained with L_CE on rollouts `data` (a RolloutBatch)
    and their 0/1 labels [B]. Returns (pi_phi, per-minibatch losses)."""
    cfg = cfg or PRMTrainConfig()
    prm = copy.deepcopy(base).train()
    with torch.no_grad():
        ref_sum = torch.cat([masked_sum(policy_forward(base, mb, 1.0).logp, mb.response_mask, 1)
                             for mb in map(data.select, torch.arange(data.size).split(512))])
    opt = torch.optim.AdamW(prm.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen, losses = torch.Generator().manual_seed(cfg.seed), []
    for _ in range(cfg.epochs):
        for idx in torch.randperm(data.size, generator=gen).split(cfg.batch_size):
            mb = data.select(idx)
            logp_sum = masked_sum(policy_forward(prm, mb, 1.0).logp, mb.response_mask, 1)
            loss = prm_ce_loss(logp_sum, ref_sum[idx.to(ref_sum.device)], labels[idx].to(logp_sum.device), cfg.beta)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(prm.parameters(), cfg.grad_clip)
            opt.step()
            losses.append(float(loss.detach()))
    return prm.eval(), losses


# ------------------------------------------------------------------ best-of-N

def bon_accuracy(scores: np.ndarray, correct: np.ndarray, n: int, rng: np.random.Generator,
                 resamples: int = 200) -> float:
    """Mean correctness of the best-scored of n candidates drawn without replacement from each prompt's M
    (scores, correct [P, M]); ties go to the first in the random draw order, i.e. are broken at random."""
    P, M = scores.shape
    if not 1 <= n <= M:
        raise ValueError(f"n must be in [1, {M}], got {n}")
    acc = 0.0
    for _ in range(resamples):
        pick = np.argsort(rng.random((P, M)), axis=1)[:, :n]                    # a random n-subset, random order
        best = np.argmax(np.take_along_axis(scores, pick, 1), axis=1)            # first maximum
        acc += np.take_along_axis(correct, pick[np.arange(P), best][:, None], 1).mean()
    return float(acc / resamples)


def bon_curves(scores: dict, correct: np.ndarray, ns, seed: int = 0, resamples: int = 200) -> dict:
    """{scorer: [BoN accuracy at each n]} for the given scorers plus "random" and "oracle"."""
    arms = {**scores, "random": np.zeros(correct.shape), "oracle": correct.astype(float)}
    return {k: [bon_accuracy(np.asarray(s, float), correct, n, np.random.default_rng(seed), resamples) for n in ns]
            for k, s in arms.items()}


# ------------------------------------------------------------------ RL: dense reward stage + PRIME-style advantage

_PRMS: dict = {}


@dataclass
class ImplicitPRMRewardConfig:
    prm_path: str = ""          # checkpoint of pi_phi (train_prm, then model.save_checkpoint); trained from --init
    beta: float = 0.05

    def __post_init__(self):
        check_range(self, "beta", lo=0.0, lo_open=True)


@register("reward", "implicit_prm", config=ImplicitPRMRewardConfig, paper=PAPER, needs={"reference"},
          provides={"token_rewards"})
def implicit_prm_reward(batch, cfg: ImplicitPRMRewardConfig, ctx) -> torch.Tensor:
    """The verifier's outcome reward [B]; the detached token rewards d [B, T] into batch.extras["token_rewards"]."""
    if not cfg.prm_path or not os.path.isfile(cfg.prm_path):
        raise ValueError(f"reward 'implicit_prm' needs reward.prm_path = a pi_phi checkpoint, got {cfg.prm_path!r}")
    device = next(ctx.ref_policy.parameters()).device
    key = (cfg.prm_path, os.path.getmtime(cfg.prm_path), str(device))
    if key not in _PRMS:
        _PRMS.clear()
        _PRMS[key] = load_checkpoint(cfg.prm_path, device)[0].eval()
    d = implicit_token_rewards(_PRMS[key], ctx.ref_policy, batch, cfg.beta)
    batch.extras["token_rewards"] = d
    r = verifier_reward(batch, None, ctx)
    out, ok = d.sum(1).cpu(), r > 0.5
    gap = float(out[ok].mean() - out[~ok].mean()) if ok.any() and (~ok).any() else 0.0
    ctx.log(**{"prm/outcome_reward": float(out.mean()), "prm/outcome_gap": gap,
               "prm/token_reward_abs": float(masked_mean(d.abs(), batch.response_mask))})
    return r


def leave_one_out(x: torch.Tensor, mask: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """verl PRIME's masked_rloo: x n/(n-1) - (1/(n-1)) sum_{j in g} mean_t x_j on valid entries, 0 elsewhere. [B, T]"""
    m = mask.bool()
    row_mean = masked_mean(x, m, 1)
    _, inv = torch.unique(group_ids.to(x.device), return_inverse=True)
    n = torch.bincount(inv)[inv].to(x.dtype)
    if bool((n < 2).any()):
        raise ValueError("the PRIME-style advantage needs at least 2 responses per prompt (group_size >= 2)")
    gsum = torch.zeros(int(inv.max()) + 1, dtype=x.dtype, device=x.device).index_add_(0, inv, row_mean)[inv]
    return torch.where(m, x * (n / (n - 1))[:, None] - (gsum / (n - 1))[:, None], torch.zeros((), dtype=x.dtype))


@dataclass
class PrimeConfig:
    dense_coef: float = 5.0     # reward_dpo_coef (prime_trainer.yaml)
    outcome_coef: float = 5.0   # reward_gt_coef
    batch_norm: bool = True     # prime_norm: batch_norm
    eps: float = 1e-8           # whitening (verl masked_whiten)

    def __post_init__(self):
        check_range(self, "dense_coef", lo=0.0)
        check_range(self, "outcome_coef", lo=0.0)
        check_range(self, "eps", lo=0.0, lo_open=True)


@register("advantage", "prime", config=PrimeConfig, paper=PRIME, needs={"groups"}, requires={"token_rewards"})
def prime_advantage(batch, cfg: PrimeConfig, ctx) -> torch.Tensor:
    """A [B, T] of the module docstring."""
    m = batch.response_mask.bool()
    d = batch.extras["token_rewards"].to(m.device)
    if cfg.batch_norm:
        d = d / ((d * m).flip(1).cumsum(1).flip(1).abs().max() + 1e-6)
    last = m & ~torch.cat([m[:, 1:], torch.zeros_like(m[:, :1])], 1)             # the last valid token
    outcome = torch.where(last, batch.rewards.to(d)[:, None], torch.zeros((), dtype=d.dtype))
    R = cfg.dense_coef * leave_one_out(d, m, batch.group_ids) + cfg.outcome_coef * leave_one_out(outcome, last,
                                                                                                   batch.group_ids)
    returns = torch.where(m, R, torch.zeros((), dtype=R.dtype)).flip(1).cumsum(1).flip(1)
    return whiten(returns, m.to(R.dtype), cfg.eps)


_NEEDS_PATH = " (needs --set reward.prm_path=<pi_phi checkpoint trained from --init>; toy trainer regime)"
register_recipe(Recipe("implicit_prm_prime", paper=PRIME + _NEEDS_PATH, reward="implicit_prm", advantage="prime",
                       loss_cfg={"agg": "seq-mean-token-mean"}))
register_recipe(Recipe("implicit_prm_outcome_only", paper=PRIME + ", dense_coef 0 (the outcome-only arm)" + _NEEDS_PATH,
                       reward="implicit_prm", advantage="prime", advantage_cfg={"dense_coef": 0.0},
                       loss_cfg={"agg": "seq-mean-token-mean"}))
