"""Rethinking Entropy Regularization in Large Reasoning Models (SIREN: SelectIve entRopy rEgularizatioN)
-- 2025, arXiv 2509.25133. Official code: github.com/Linn3a/siren (a verl fork; read: dp_actor.py
`efficient_top_p_sampling`, `mask_by_quantile`, the experiment_type == "siren" branch; ray_trainer.py,
the step-1 anchor; exp_scripts/siren.sh, the defaults).

Stage changed: loss (a regulariser added to the PPO-clip loss) + its once-per-step `prepare` (the anchor);
plus a probe "siren_stats" that logs the same rollout statistics for any recipe (baselines included).
Rollout and reward are plain; the advantage is Dr.GRPO (the script's norm_adv_by_std_in_grpo=False).

Idea: a naive entropy bonus -lambda * mean H spreads mass over the whole vocabulary tail and over all
positions, and entropy explodes. SIREN confines it twice (to the top-p nucleus of each next-token
distribution, and to the highest-entropy positions of each response) and replaces "maximise" by a
quadratic pull toward the value this selective entropy had at the first step.

Symbols: z_{i,t} = tempered logits (T = 1) of the CURRENT policy at response position t of row i
(out.logits, with grad), pi = softmax(z); m_{i,t} = response mask; B = rows of the loss call.
  Nucleus   sort pi descending (stable), c_k = cumulative sums; N^p = the first n tokens with
            n = #{k : c_k < p}, further cut to the top_k = min(top_k, V) most probable. The token whose
            c_k crosses p is EXCLUDED (unlike top-p sampling): if pi_max >= p, N^p is empty.
            Membership is computed without gradient.
  H^p_{i,t} = -sum_{v in N^p} rho_v log rho_v,  rho_v = pi_v / sum_{u in N^p} pi_u;  0 if N^p is empty.
            Gradients flow through rho into z_v for v in N^p only: dH^p/dz_v = -rho_v (log rho_v + H^p)
            there, and exactly 0 for v outside N^p.
  Mask      tau_i = the mask_ratio-quantile (torch.nanquantile, linear) of {H^p_{i,t} : m_{i,t} = 1},
            per response; M_{i,t} = 1[H^p_{i,t} > tau_i] AND m_{i,t} (detached; ~top 20% positions).
  Sel. H    Hsel = (1/B) sum_i [sum_t M H^p / sum_t M]   (rows with sum_t M = 0 give 0 and still count in B)
  Anchor    H0 = Hsel of the step-1 rollout batch (the old policy; `prepare`), then fixed for the run.
  Loss      L = L_PPO + lambda (Hsel - H0)^2; d/dHsel = 2 lambda (Hsel - H0): pushes Hsel up below the
            anchor, down above it, and vanishes at Hsel = H0. H0 is a constant (no gradient).
  L_PPO     baselines.ppo_terms: symmetric clip eps = 0.28, agg "seq-mean-token-sum-norm" (Dr.GRPO).

Card vs paper/official code. The card matches the code on every formula above. Details: (1) the code
takes top-k with k = 10000 in a try/except and, when V < k, silently falls back to the FULL entropy; we
use k = min(top_k, V) (the card's fix), so at V = 29 the top-k cut is inert. (2) The code adds 1e-12 to
the renormaliser and inside the log; we compute H^p exactly (core.entropy_from_logits of z with the
non-nucleus logits set to -inf): the two differ by ~1e-11 nats. (3) The code applies the quantile mask
twice; for H^p >= 0 the second pass selects the same set (tested), so we apply it once; the code also
does not AND the mask with m (padding could enter); we do. (4) verl evaluates the quadratic per
micro-batch; here per loss call (= one optimizer minibatch). (5) The code's seq-mean-token-sum-norm
divides by the padded max response length (3072); core.aggregate's max_len=None divides by the batch's
response width, as the shipped dr_grpo recipe. (6) The anchor here is computed from the rollout's stored
logits (the same old policy the code re-forwards). (7) Not used: lr 1e-6, 5 warm-up steps, weight decay
0.1, 128 prompts with 16 updates per rollout; we keep the library's shared regime (TRAIN_DEFAULTS).

Metrics (ctx.log in prepare, on the full rollout batch, old policy): siren/H0, siren/selective_entropy
(Hsel), siren/nucleus_empty_frac (valid positions with N^p empty), siren/frac_masked (sum M / sum m),
siren/junk_mass (mean over valid positions of the probability on tokens the task's demonstrations never
emit); the full entropy is the trainer's `entropy`. Per loss call: siren/selective_entropy_current, siren/reg.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from ..baselines import PPOClipConfig, ppo_terms, reference_if_kl
from ..core import entropy_from_logits, masked_mean
from ..registry import Recipe, check_range, register, register_recipe
from ..rollout import policy_forward
from ..tokenizer import EOS, VOCAB_SIZE, encode

PAPER = "Rethinking Entropy Regularization in Large Reasoning Models (SIREN), 2025, arXiv 2509.25133"


def nucleus_mask(logits: torch.Tensor, p: float, top_k: int | None = None) -> torch.Tensor:
    """Bool [..., V]: the tokens before the first whose cumulative probability reaches p (crossing token
    excluded), among the min(top_k, V) most probable; ties in probability keep the lower token id first."""
    with torch.no_grad():
        probs = torch.softmax(logits, dim=-1)
        sorted_p, order = probs.sort(dim=-1, descending=True, stable=True)
        keep = sorted_p.cumsum(-1) < p
        if top_k is not None:
            keep &= torch.arange(probs.shape[-1], device=probs.device) < top_k
        return torch.zeros_like(keep).scatter(-1, order, keep)


def topp_entropy(logits: torch.Tensor, p: float, top_k: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(H^p [...], nucleus bool [..., V]): the entropy of softmax(z) renormalised on the nucleus;
    exactly 0 (value and gradient) where the nucleus is empty."""
    nucleus = nucleus_mask(logits, p, top_k)
    empty = ~nucleus.any(-1, keepdim=True)
    z = logits.masked_fill(~nucleus | empty, float("-inf")).masked_fill(empty, 0.0)  # empty rows: a finite dummy
    return torch.where(empty.squeeze(-1), torch.zeros((), dtype=logits.dtype, device=logits.device),
                       entropy_from_logits(z)), nucleus


def peak_mask(hp: torch.Tensor, mask: torch.Tensor, ratio: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(M bool [B, T], tau [B, 1]): per response, the valid positions with H^p strictly above the
    ratio-quantile of its valid H^p (linear interpolation); tau is NaN (and M empty) for a row without one."""
    valid = mask.bool()
    h = hp.detach()
    x = h.masked_fill(~valid, float("nan"))
    tau = torch.nanquantile(x, ratio, dim=-1, keepdim=True) if x.numel() else x[..., :1]
    return (h > tau) & valid, tau


def selective_entropy(hp: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    """Hsel = (1/B) sum_i mean_{t in M_i} H^p_{i,t} (0 for a row with empty M_i, which still counts)."""
    return masked_mean(hp, M, dim=-1).sum() / max(hp.shape[0], 1)


def junk_tokens(task, n: int = 256, seed: int = 0) -> list[int]:
    """Token ids that none of n training demonstrations (+ EOS) contains: the tail where a naive entropy
    bonus leaks mass. Drawn with its own rng (the run's randomness is untouched)."""
    rng = np.random.default_rng(seed)
    used = {EOS}
    for prob in task.sample(n, rng, split="train"):
        used.update(encode(task.demonstration(prob, rng)))
    return [v for v in range(VOCAB_SIZE) if v not in used]


@dataclass
class SirenConfig(PPOClipConfig):
    """The official script's settings (exp_scripts/siren.sh)."""
    clip_low: float = 0.28            # clip_ratio = 0.28, symmetric
    clip_high: float = 0.28
    agg: Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum",
                 "seq-mean-token-sum-norm"] = "seq-mean-token-sum-norm"  # loss_agg_mode (PG term)
    reg_coef: float = 0.005           # lambda (entropy_coeff); 0 gives the PG loss exactly
    top_p: float = 0.8                # p of the nucleus (entropy_topp)
    top_k: int = 10000                # prefilter (entropy_topk), applied as min(top_k, V)
    mask_ratio: float = 0.8           # per-response quantile: keep H^p > its 0.8-quantile (~top 20%)
    junk_demos: int = 256             # demonstrations that define the junk tokens (metric only)

    def __post_init__(self):
        super().__post_init__()
        check_range(self, "reg_coef", lo=0.0)
        check_range(self, "top_p", lo=0.0, hi=1.0, lo_open=True)
        check_range(self, "top_k", lo=1)
        check_range(self, "mask_ratio", lo=0.0, hi=1.0)
        check_range(self, "junk_demos", lo=1)


def rollout_stats(batch, cfg: SirenConfig, st: dict, task, policy=None) -> dict[str, float]:
    """On a rollout batch (old policy; logits stored at sampling, else one no-grad forward): Hsel, the
    nucleus-empty and masked fractions, the junk mass. Sets st["H0"] (and st["junk"]) on the first call only."""
    if "junk" not in st:
        st["junk"] = junk_tokens(task, cfg.junk_demos)
    with torch.no_grad():
        z = batch.old_logits if batch.old_logits is not None else policy_forward(policy, batch).logits
        m = batch.response_mask
        hp, nucleus = topp_entropy(z, cfg.top_p, cfg.top_k)  # as the loss sees it
        M, _ = peak_mask(hp, m, cfg.mask_ratio)
        h_sel = float(selective_entropy(hp, M))
        junk = torch.softmax(z, -1)[..., st["junk"]].sum(-1)
    if "H0" not in st:
        st["H0"] = h_sel
    return {"siren/H0": st["H0"], "siren/selective_entropy": h_sel,
            "siren/nucleus_empty_frac": float(masked_mean((~nucleus.any(-1)).to(z.dtype), m)),
            "siren/frac_masked": float(M.sum()) / max(int(m.bool().sum()), 1),
            "siren/junk_mass": float(masked_mean(junk, m))}


def siren_prepare(batch, cfg: SirenConfig, ctx) -> None:
    """Once per RL step, before any update: set H0 on the first call (never again), log rollout_stats."""
    st = ctx.state.setdefault("siren", {})
    if "H0" not in st:
        st["anchor_step"] = int(ctx.step) + 1
    ctx.log(**rollout_stats(batch, cfg, st, ctx.task, ctx.policy))


@register("probe", "siren_stats", paper=PAPER)
def siren_stats_probe(policy, batch, cfg, ctx) -> dict[str, float]:
    """rollout_stats for ANY recipe (probes=("siren_stats",)): the same curves for baselines; its H0 is
    the first probed step's Hsel (after step 1 with probe_every=1: the anchor SIREN would use)."""
    st = ctx.state.setdefault("siren_stats", {})
    return rollout_stats(batch, SirenConfig(), st, ctx.task, policy)


@register("loss", "siren", config=SirenConfig, paper=PAPER, needs=reference_if_kl, prepare=siren_prepare)
def siren_loss(out, batch, cfg: SirenConfig, ctx):
    loss, metrics = ppo_terms(out, batch, cfg)
    hp, _ = topp_entropy(out.logits, cfg.top_p, cfg.top_k)
    M, _ = peak_mask(hp, batch.response_mask, cfg.mask_ratio)
    h_sel = selective_entropy(hp, M)
    metrics["siren/selective_entropy_current"] = float(h_sel.detach())
    h0 = getattr(ctx, "state", {}).get("siren", {}).get("H0")
    if h0 is None:
        if cfg.reg_coef:
            raise ValueError("loss 'siren' needs its anchor H0: siren_prepare must run first (the trainer does)")
        return loss, metrics
    reg = (h_sel - h0) ** 2
    metrics["siren/reg"] = float(reg.detach())
    return (loss + cfg.reg_coef * reg if cfg.reg_coef else loss), metrics


# Toy scale, fixed before any run: lambda = 0.05 (10x the official 0.005) is the card's toy value, not
# tuned. On the addition base (one 16x8 batch of train prompts, one of test prompts, before any training)
# the nucleus is empty at 57-62% of positions and holds one token at 38-41%; H^p > 0 at only 0-2% of
# positions, so H0 ~ 0 (0.0 and 0.04) and the regulariser is ~ lambda * Hsel^2: it acts only where a
# >= 2-token nucleus appears. The entropy bonus is the paper's naive baseline (loss - coef * H over all
# tokens, aggregated like the PG term) with coef 0.01.
_PG = dict(advantage="dr_grpo")
register_recipe(Recipe("siren", paper=f"{PAPER}; toy lambda 0.05", loss="siren", **_PG,
                       loss_cfg={"reg_coef": 0.05}))
register_recipe(Recipe("siren_baseline", paper=f"{PAPER} (its baseline: the same PPO/Dr.GRPO loss, no entropy term)",
                       loss="ppo_clip", **_PG,
                       loss_cfg={"clip_low": 0.28, "clip_high": 0.28, "agg": "seq-mean-token-sum-norm"}))
register_recipe(Recipe("siren_entropy_bonus", paper=f"{PAPER} (its naive entropy-bonus baseline, coef 0.01)",
                       loss="ppo_clip", **_PG, loss_cfg={"clip_low": 0.28, "clip_high": 0.28,
                                                         "agg": "seq-mean-token-sum-norm", "entropy_coef": 0.01}))
