"""EMPO: Right Question is Already Half the Answer: Fully Unsupervised LLM Reasoning Incentivization -- Zhang, Wu,
Zhang, Zhao, Bian 2025, arXiv 2504.05812. Official code: QingyangZhang/EMPO (TRL: trl/src/open_r1/rewards.py
`get_empo_math_reward`; verl: verl-empo/verl/utils/reward_score/empo/compute_metrics.py `empo_metrics`).

Stage changed: reward (label-free). The G responses to one prompt are clustered by their final answer and each
is rewarded with the empirical probability of its own cluster; GRPO then pushes probability toward the model's
own dominant answer, i.e. down the answer-level ("semantic") entropy. No ground truth is read by the reward.

Symbols (group g of G responses, a_i = task.final_answer(o_i), None when it does not parse)
  c(i)      cluster of response i: responses with equal parsed answers share one; every unparsed response is
            its OWN singleton (never merged: clustering "no answer" together would reward giving none)
  phat(c)   = |c| / G
  SE_g      = -sum_c phat(c) ln phat(c)          natural log, in [0, ln G]; SE_g = ln G iff all G clusters are
                                                 singletons (all answers distinct or unparsed)
  r_i       = phat(c(i))   if SE_g < ln G (strict) and a_i parses          reward "empo" (threshold=True)
            = 0            otherwise
  r_i       = phat(c(i)) if a_i parses, else 0   (no threshold)            reward "empo", threshold=False
  unparsed="frequency": an unparsed response gets its singleton's 1/G instead of 0 (verl's behaviour)
  majority_vote: r_i = 1 iff phat(c(i)) = max_c phat(c) and a_i parses (verl reward_type 'voting': every tied
            maximal cluster wins; TTRL-like)
Identities (tested): with every answer parsed and no threshold, sum_i r_i = G sum_c phat(c)^2; r in {0} U [1/G, 1];
all G equal -> r = 1 -> GRPO advantage 0; all distinct -> SE = ln G -> r = 0 (threshold) -> advantage 0.
Policy gradient (p_c = P_pi(c), the true cluster probabilities; o a response, c(o) its cluster):
  E_o[p_c(o) grad log pi(o)] = sum_c p_c grad p_c = 1/2 grad sum_c p_c^2
so the mean-baseline gradient ascends the collision probability (descends Renyi-2 entropy -ln sum_c p_c^2).
With the plug-in phat (response i counts itself) and no threshold, E[(1/G) sum_i phat(c_i) grad log pi(o_i)] =
(G - 1)/G * 1/2 grad sum_c p_c^2 exactly: the self-count only adds a zero-mean score term (tested by enumerating
all G-tuples). The threshold breaks this proportionality.

Logged (ctx.log; analysis only, never in the reward): empo/semantic_entropy (mean SE_g, nats),
empo/frac_filtered (groups at SE = ln G), empo/frac_unparsed, empo/majority_ratio (mean max_c phat),
empo/label_accuracy (share of groups whose majority answer -- the first response of a largest parsed cluster,
as verl's argmax -- equals problem.answer; per level: empo/label_accuracy_d{k}), empo/true_accuracy (mean
task.reward: the trainer's "accuracy" is the mean of these label-free rewards, not correctness).

Card vs paper/official code: the card's TRL formula is the HEAD version of `get_empo_math_reward` (reward phat,
0 for an empty answer, 0 for the whole group when SE >= ln G); earlier commits rewarded ln phat (a Shannon-SE
gradient) and wrote unparsed answers as distinct strings 'no answer {i}' -- the final code's phat is used here.
verl's `empo_metrics` (reward_type 'entropy') uses phat with no threshold and gives empty answers their
singleton's 1/G (`unparsed="frequency"`); its optional group filter on the majority ratio is not implemented.
A third-party summary mentions filtering both too-high and too-low entropy; neither code does a lower bound, and
the paper's section could not be read here, so only the ln G bound exists. Deviations: clustering is exact
string equality of task.final_answer (canonical integers: the math verifier's equivalence is exact here);
TRL lets math_verify decide whether two empty strings are equivalent, here unparsed answers never merge
(the card's and PLAN's rule). The optimiser settings of the paper (KL 0, lr 1e-6, GSPO in verl) are LLM-scale;
the recipes keep the library's toy regime with grpo's loss.
Pitfalls: the model can lock in a consistently WRONG answer (report true accuracy); the rewards are not centred,
so only a group-normalised advantage (GRPO) makes their scale irrelevant.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from ..registry import Recipe, register, register_recipe

PAPER = ("EMPO: Right Question is Already Half the Answer: Fully Unsupervised LLM Reasoning Incentivization, "
         "2025, arXiv 2504.05812")
UNPARSED = ("zero", "frequency")


def cluster_ids(answers: list) -> list[int]:
    """Cluster index of each answer of ONE group (0, 1, ... in order of first appearance); every None (unparsed)
    is a cluster of its own."""
    index: dict = {}
    out: list[int] = []
    for a in answers:
        if a is not None and a in index:
            out.append(index[a])
        else:                                   # a new answer, or an unparsed one: the next free index
            out.append(len(set(out)))
            if a is not None:
                index[a] = out[-1]
    return out


def group_stats(answers: list) -> dict:
    """One group's clusters: freq (phat of each response's cluster), se (nats), all_singletons (SE = ln G:
    decided combinatorially -- a distribution with denominators G has entropy ln G only if uniform over G
    singletons -- so no float comparison with ln G), top (max_c phat) and majority (index of the first response
    of a largest PARSED cluster, None if nothing parsed)."""
    G = len(answers)
    ids = cluster_ids(answers)
    counts = [ids.count(c) for c in range(max(ids) + 1)] if ids else []
    se = max(0.0, -sum(n / G * math.log(n / G) for n in counts))   # max(0, .): no -0.0
    parsed = [i for i, a in enumerate(answers) if a is not None]
    best = max((counts[ids[i]] for i in parsed), default=0)
    return {"freq": [counts[c] / G for c in ids], "se": se, "all_singletons": len(counts) == G,
            "top": max(counts, default=0) / max(G, 1),
            "majority": next((i for i in parsed if counts[ids[i]] == best), None)}


def groups_of(group_ids: torch.Tensor) -> list[list[int]]:
    """Row indices of each group, groups in order of first appearance."""
    rows: dict = {}
    for i, g in enumerate(group_ids.tolist()):
        rows.setdefault(g, []).append(i)
    return list(rows.values())


def empo_rewards(answers: list, group_ids: torch.Tensor, threshold: bool = True,
                 unparsed: str = "zero") -> torch.Tensor:
    """r_i of the module docstring, [B] float64, from the extracted answers alone (no problem, no label)."""
    if unparsed not in UNPARSED:
        raise ValueError(f"unparsed must be one of {UNPARSED}, got {unparsed!r}")
    r = torch.zeros(len(answers), dtype=torch.float64)
    for rows in groups_of(group_ids):
        grp = [answers[i] for i in rows]
        st = group_stats(grp)
        if threshold and st["all_singletons"]:          # SE_g = ln G: the whole group gets 0
            continue
        for i, a, f in zip(rows, grp, st["freq"]):
            r[i] = f if (a is not None or unparsed == "frequency") else 0.0
    return r


def majority_rewards(answers: list, group_ids: torch.Tensor) -> torch.Tensor:
    """1 iff the response's answer parses and its cluster is a largest one of the group (ties: all win). [B]"""
    r = torch.zeros(len(answers), dtype=torch.float64)
    for rows in groups_of(group_ids):
        grp = [answers[i] for i in rows]
        st = group_stats(grp)
        best = max((f for a, f in zip(grp, st["freq"]) if a is not None), default=None)
        for i, a, f in zip(rows, grp, st["freq"]):
            r[i] = float(a is not None and f == best)
    return r


def log_answer_metrics(answers: list, batch, ctx) -> None:
    """The analysis metrics of the module docstring. The ONLY place that reads problem.answer."""
    groups = groups_of(batch.group_ids.cpu())
    stats = [group_stats([answers[i] for i in rows]) for rows in groups]
    hit = [st["majority"] is not None and answers[rows[st["majority"]]] == batch.problems[rows[0]].answer
           for rows, st in zip(groups, stats)]
    levels: dict = {}
    for rows, h in zip(groups, hit):
        levels.setdefault(getattr(batch.problems[rows[0]], "difficulty", None), []).append(h)
    ctx.log(**{"empo/semantic_entropy": sum(st["se"] for st in stats) / len(stats),
               "empo/frac_filtered": sum(st["all_singletons"] for st in stats) / len(stats),
               "empo/frac_unparsed": sum(a is None for a in answers) / len(answers),
               "empo/majority_ratio": sum(st["top"] for st in stats) / len(stats),
               "empo/label_accuracy": sum(hit) / len(hit),
               "empo/true_accuracy": sum(ctx.task.reward(p, t) for p, t in zip(batch.problems, batch.texts))
               / len(answers),
               **{f"empo/label_accuracy_d{k}": sum(v) / len(v) for k, v in levels.items() if isinstance(k, int)}})


@dataclass
class EmpoConfig:
    threshold: bool = True                          # zero reward for groups with SE = ln G (TRL; verl: off)
    unparsed: Literal["zero", "frequency"] = "zero"  # reward of an unparsed answer: 0 (TRL) or 1/G (verl)

    def __post_init__(self):
        if self.unparsed not in UNPARSED:
            raise ValueError(f"EmpoConfig.unparsed must be one of {UNPARSED}, got {self.unparsed!r}")


@register("reward", "empo", config=EmpoConfig, paper=PAPER, needs={"groups"})
def empo_reward(batch, cfg: EmpoConfig, ctx) -> torch.Tensor:
    """Label-free answer-cluster frequency reward [B] (float32, as the verifier's)."""
    answers = [ctx.task.final_answer(t) for t in batch.texts]
    r = empo_rewards(answers, batch.group_ids.cpu(), cfg.threshold, cfg.unparsed)
    log_answer_metrics(answers, batch, ctx)
    return r.float()


@register("reward", "majority_vote", paper=PAPER + " (verl reward_type 'voting'; TTRL-like)", needs={"groups"})
def majority_vote_reward(batch, cfg, ctx) -> torch.Tensor:
    """1 for members of a largest parsed answer cluster of the group, else 0. [B]"""
    answers = [ctx.task.final_answer(t) for t in batch.texts]
    log_answer_metrics(answers, batch, ctx)
    return majority_rewards(answers, batch.group_ids.cpu()).float()


register_recipe(Recipe("empo", paper=PAPER + " (TRL reward: phat, 0 if SE = ln G or unparsed; toy trainer regime)",
                       reward="empo", advantage="grpo", reward_cfg={"threshold": True, "unparsed": "zero"},
                       loss_cfg={"agg": "seq-mean-token-mean"}))
register_recipe(Recipe("empo_no_threshold", paper=PAPER + " (no ln G threshold)", reward="empo", advantage="grpo",
                       reward_cfg={"threshold": False, "unparsed": "zero"}, loss_cfg={"agg": "seq-mean-token-mean"}))
register_recipe(Recipe("majority_vote", paper=PAPER + " (majority-vote pseudo-label baseline, verl 'voting')",
                       reward="majority_vote", advantage="grpo", loss_cfg={"agg": "seq-mean-token-mean"}))
