"""Emergent Hierarchical Reasoning in LLMs through Reinforcement Learning (HICRA)
-- Wang, Xu, Liu, Wu, Lin, Chen 2025, arXiv 2509.03646. Official code: none (TIGER-AI-Lab/Hierarchical-Reasoner
holds only a README). This is a HICRA-STYLE reconstruction: the formula below is the card's, "as recalled".

Stage changed: advantage (the loss is the `grpo` recipe's PPO-clip on the shaped per-token advantages);
plus analysis: probe "plan_entropy" (`--probe plan_entropy`, any recipe): plan- vs execution-token entropy
and perplexity, and the semantic entropy of plans.

Idea: RL first consolidates low-level execution (its entropy / perplexity fall fast), then gains come from
high-level planning moves. GRPO spreads one advantage over every token, diluting the planning signal; HICRA
gives the planning tokens a larger share of it. Token entropy is a poor exploration gauge (execution tokens
dominate it); the entropy of the distribution of distinct plans ("semantic entropy") is the better one.

Symbols (response i of group g, position t, m the response mask)
  A_i         = (r_i - mean_g r) / (std_g r + eps)    GRPO, unbiased std (baselines.grpo_advantage, detached)
  S_i         planning tokens of response i. Paper: tokens covered by mined "Strategic Grams" (3-5-word n-grams
              of correct solutions, clustered, kept by cluster document frequency). Toy: the "[...]" plan spans
              of chain ("[7+6]13;[13+7]20;#20": "[7+6]" and "[13+7]" are plan, "13;", "20;", "#20", EOS are
              execution), tagged by the shared segments.plan_mask ("[", "]" and what lies between; an
              unclosed "[" runs to the end of the row; a lone "]" is a plan token).
  A^H_{i,t}   = A_i + alpha |A_i| 1[t in S_i]              on valid tokens; 0 off the mask
              = (1 + alpha) A_i on planning tokens of a positive response, (1 - alpha) A_i of a negative one,
                A_i on execution tokens (bit-identical to GRPO there).
Consequences (tested): alpha = 0 or S_i empty gives GRPO exactly; for alpha < 1 sign(A^H) = sign(A) and
A = 0 gives A^H = 0 (all-equal groups still carry no gradient); per group the token-summed advantage moves
by exactly alpha sum_i |A_i| |S_i| (so it is no longer zero-sum when |S_i| differs, or when all |A_i| differ).

Semantic entropy of plans (diagnostic; not EMPO's answer-cluster entropy)
  H_sem(X)    = -sum_s f(s) ln f(s),  f(s) = share of plan string s among the plan occurrences X
  h_sem_batch the card's definition: X = every plan span of the batch (toy: dominated by prompt diversity,
              since the spans carry the prompt's numbers)
  h_sem_group mean over groups of H_sem(whole plans: each response's tuple of spans); 0 iff the G responses of
              every group follow one plan, ln G at most (the card-literal pool of a group's span occurrences
              would give ln 3 for one three-step plan, so a whole plan is the unit here)
  h_sem_first mean over groups of H_sem(first plan span of each response): the choice of the first operation,
              before any execution error can change a later span's operand values
Groups without a plan span are left out of the group means (0 if none has one).
Class statistics over the rollout (entropy = batch.old_entropy, log-prob = batch.old_logp: the tempered
sampling distribution, before the step's updates): entropy_plan / entropy_exec = token-mean entropy of
each class, ppl_plan / ppl_exec = exp(token-mean NLL) (the paper's relative perplexity is ppl / its value at
step 1; divide in the notebook), frac_plan = planning share of the valid tokens. An empty class gives
entropy 0 and perplexity 1.

Card vs paper/official code: no code exists and the paper's equations were not readable here. The card's
A^H = A + alpha |A| 1[S] and "alpha = 0.2 (as recalled)" agree with two third-party summaries of the paper
(0.2; planning tokens weighted up for A > 0, down for A < 0), so alpha = 0.2 is the default, unverified.
Deviations: (1) Strategic-Gram mining (n-grams, embeddings, CDF threshold) is replaced by a fixed, tested
tagger of chain's plan brackets; on tasks without brackets S is empty and HICRA is GRPO; (2) alpha is
restricted to [0, 1] (the card's (0, 1] plus the GRPO point 0; alpha > 1 would flip negative plan tokens);
(3) H_sem is over exact plan strings (no semantic clustering: the toy has no paraphrases), and the group /
first-plan variants are ours. Pitfalls: chain's plan is deterministic given the prompt (leftmost-ready
rule): one correct plan per prompt, and the base's plan diversity is copy errors, not alternative orders
(measured below), so HICRA can mostly sharpen that one plan, not explore strategies (PLAN.md's flag); plan
strings hold operand VALUES, so an execution slip changes every later span (h_sem_group mixes that in,
h_sem_first does not); the shift alpha |A_i| is >= 0 on every planning token of a mixed group, correct or
not, so beside re-weighting it pushes up every sampled plan (the loss mean turns negative); with
seq-mean-token-mean, a row's boost scales with its planning share |S_i| / |y_i|.
Measured on the shipped chain base (4 rollouts of 16 prompts x 8 at T = 1, seed 0, no training): entropy_plan
0.17 vs entropy_exec 0.26 nats, frac_plan 0.57, h_sem_group 1.37 and h_sem_first 0.34 nats; 84% of first spans
are canonical, and of the other 80 first spans 76 are mis-copied operands, 4 another operation of the prompt.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Hashable, Iterable

import torch

from ..baselines import GRPOAdvantageConfig, grpo_advantage
from ..core import empirical_entropy, masked_mean
from ..registry import Recipe, check_range, register, register_recipe
from ..segments import PLAN_OPEN, plan_mask
from ..tokenizer import VOCAB

PAPER = ("Wang et al. 2025, Emergent Hierarchical Reasoning in LLMs through Reinforcement Learning (HICRA), "
         "arXiv 2509.03646 -- HICRA-style reconstruction (no official code)")


def hicra_shape(adv: torch.Tensor, plan: torch.Tensor, alpha: float) -> torch.Tensor:
    """A^H = A + alpha |A| on planning tokens, A elsewhere (bit-identical). adv [B, T], plan bool [B, T]."""
    return torch.where(plan.bool(), adv + alpha * adv.abs(), adv)


@dataclass
class HicraConfig(GRPOAdvantageConfig):
    alpha: float = 0.2   # planning-token amplification; 0 = GRPO; the card's value "as recalled" (unverified)

    def __post_init__(self):
        super().__post_init__()                       # eps > 0, as GRPO's
        check_range(self, "alpha", lo=0.0, hi=1.0)


@register("advantage", "hicra", config=HicraConfig, paper=PAPER, needs={"groups"})
def hicra_advantage(batch, cfg: HicraConfig, ctx):
    """A^H [B, T] (module docstring): GRPO's per-token advantages, planning tokens shifted by alpha |A|."""
    adv = grpo_advantage(batch, cfg, ctx)
    plan = plan_mask(batch.response_ids, batch.response_mask).to(adv.device)
    shaped = hicra_shape(adv, plan, cfg.alpha)
    if ctx is not None and hasattr(ctx, "log"):
        ctx.log(**{"hicra/frac_plan_rows": float(plan.any(1).float().mean()) if plan.shape[0] else 0.0,
                   "hicra/adv_shift": float(masked_mean((shaped - adv).double(), plan))})   # mean alpha |A| on S
    return shaped


# ------------------------------------------------------------------ analysis: plan vs execution, H_sem

def plan_spans(response_ids: torch.Tensor, response_mask: torch.Tensor) -> list[list[str]]:
    """The plan spans of each row as strings, in order: maximal runs of plan tokens, split before every "["
    ("[1+2][3+4]" is two spans; "[3+4" unclosed runs to the row's end, EOS included as "<eos>")."""
    plan = plan_mask(response_ids, response_mask).cpu()
    ids = response_ids.cpu()
    out = []
    for row_ids, row_plan in zip(ids.tolist(), plan.tolist()):
        spans, cur = [], None
        for tok, is_plan in zip(row_ids, row_plan):
            if is_plan and (cur is None or tok == PLAN_OPEN):
                if cur is not None:
                    spans.append(cur)
                cur = ""
            if is_plan:
                cur += VOCAB[tok]
            elif cur is not None:
                spans.append(cur)
                cur = None
        if cur is not None:
            spans.append(cur)
        out.append(spans)
    return out


def semantic_entropy(items: Iterable[Hashable]) -> float:
    """H = -sum_s f(s) ln f(s) over the distinct items' shares (nats; core.empirical_entropy); 0 for no items."""
    items = list(items)
    return empirical_entropy(items) if items else 0.0


def group_semantic_entropy(spans: list[list[str]], group_ids, first_only: bool = False) -> float:
    """Mean over groups of H_sem of the rows' plans: each row's whole plan (its tuple of spans; a row without
    spans has the empty plan) or, with first_only, each row's first span (rows without one left out). Groups
    in which no row has a span are left out; 0 if no group is left."""
    groups: dict[int, list] = {}
    for row, g in zip(spans, [int(g) for g in group_ids]):
        items = groups.setdefault(g, [])
        if not first_only:
            items.append(tuple(row))
        elif row:
            items.append(row[0])
    values = [semantic_entropy(items) for items in groups.values() if any(items)]
    return sum(values) / len(values) if values else 0.0


def _ppl(logp: torch.Tensor, mask: torch.Tensor) -> float:
    """exp(token-mean NLL) over mask; the NLL is capped at 700 so that exp stays a finite float."""
    return math.exp(min(-float(masked_mean(logp, mask)), 700.0))


def plan_entropy_metrics(batch) -> dict[str, float]:
    """The probe's numbers for one rollout batch (module docstring), keys plan_entropy/<name>."""
    mask = batch.response_mask.bool()
    plan = plan_mask(batch.response_ids, batch.response_mask).to(mask.device)
    execution = mask & ~plan
    ent, logp = batch.old_entropy.double(), batch.old_logp.double()
    spans = plan_spans(batch.response_ids, batch.response_mask)
    n_valid = int(mask.sum())
    out = {"entropy_plan": float(masked_mean(ent, plan)), "entropy_exec": float(masked_mean(ent, execution)),
           "ppl_plan": _ppl(logp, plan), "ppl_exec": _ppl(logp, execution),
           "frac_plan": int(plan.sum()) / n_valid if n_valid else 0.0,
           "h_sem_batch": semantic_entropy(s for row in spans for s in row),
           "h_sem_group": group_semantic_entropy(spans, batch.group_ids.tolist()),
           "h_sem_first": group_semantic_entropy(spans, batch.group_ids.tolist(), first_only=True)}
    return {f"plan_entropy/{k}": v for k, v in out.items()}


@register("probe", "plan_entropy", paper=PAPER)
def plan_entropy_probe(policy, batch, cfg, ctx) -> dict[str, float]:
    """plan_entropy_metrics as a probe (`--probe plan_entropy`); reads the rollout only, no forward pass."""
    return plan_entropy_metrics(batch)


_LOSS = {"agg": "seq-mean-token-mean"}   # the `grpo` recipe's loss: only the advantage differs
register_recipe(Recipe("hicra", paper=PAPER + " (alpha 0.2, the card's value as recalled; vs grpo, --task chain)",
                       advantage="hicra", advantage_cfg={"alpha": 0.2}, loss_cfg=dict(_LOSS)))
register_recipe(Recipe("hicra_a05", paper=PAPER + " (alpha 0.5; vs grpo, --task chain)",
                       advantage="hicra", advantage_cfg={"alpha": 0.5}, loss_cfg=dict(_LOSS)))
