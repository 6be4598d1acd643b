"""PEAR-style reward -- after "PEAR: Phase Entropy Aware Reward for Efficient Reasoning", Huang, Lu, Zhang,
2025, arXiv 2510.08026 (ICLR 2026). Official code: iNLP-Lab/PEAR (`entropy.py` compute_score, a patched verl
reward manager that passes rollout entropies), NOT readable here, so the formula below is a reconstruction:
"PEAR-style". Sources: the abstract and README (penalise thinking-phase entropy, allow answer-phase entropy;
GSM8K; score 1.0, format_score 0.0), the OpenReview reviews (a max(.) in the reward equation, alpha
multiplies H_answer, "no </think>: k = T and H_answer = 0") and a third-party paper note giving the equations.

Stage changed: reward only (GRPO advantage and loss unchanged). Idea: within a group, correct responses whose
thinking phase had lower entropy are preferred; token entropy correlates with length, so traces shorten.

Symbols (response i, valid tokens t = 0..L_i-1, EOS included; H_{i,t} = batch.old_entropy, the ROLLOUT-time
entropy of pi_T -- a constant, never a function of the parameters being trained)
  k_i      = index of the first marker token ("#" in the toy, `</think>` in the paper); no marker: k_i = L_i - 1
             (the paper's k = T: the last token -- EOS -- is then in neither phase)
  Think_i  = {t < k_i},  Ans_i = {k_i < t < L_i}         the marker itself is in neither phase
  Ht_i     = mean_{Think_i} H,  Ha_i = mean_{Ans_i} H     (sums with reduce="sum"; 0 for an empty phase)
  P_i      = a Ht_i - b Ha_i;  P_i <- max(0, P_i) if hinge
  r_i      = min(cap, s - P_i) if correct_i else r_fmt    (only_correct; else min(cap, base_i - P_i), base the
                                                           verifier's s / r_fmt, for every response)
Reported paper setting: a = 1, b = alpha = 1, hinge, only_correct, s = 1, r_fmt = 0, cap = 1 (recipe `pear`).
Consequences (tested): a = b = 0 gives the verifier reward, hence GRPO's advantages exactly; with b = 0 and
a > 0, an all-correct group with distinct Ht gets sign(A_i) = -sign(Ht_i - mean_g Ht); r falls with Ht and
rises with Ha; if a max(Ht) < s - r_fmt a correct response always outranks a wrong one.

Card vs paper/reports: the card's family r = r_acc - a Ht + b Ha (every response, no hinge) is
`hinge=False, only_correct=False, cap=None`; the reports give the hinged, correct-only form with the
coefficient on Ha (alpha) and 1 on Ht, which is the default here. Not verified against entropy.py: whether
means or sums (means, per the reports), which occurrence of the marker (we take the first; the toy's
verifier reads the answer after the LAST "#", identical when there is one "#"), and the strict / flexible
answer extraction (the toy verifier is exact). PLAN arms a in {0.05, 0.1, 0.2} use b = 0 (recipes pear_a*).
Pitfalls: a mean penalty does not penalise length directly (reduce="sum" does: a different method);
too large an `a` rewards confident-but-short traces -- watch held-out accuracy, not train reward.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from ..baselines import verifier_reward
from ..core import group_mean_std, masked_mean, masked_sum, pearson
from ..registry import Recipe, check_range, register, register_recipe
from ..tokenizer import CHARS, encode

PAPER = ("PEAR-style (after Huang, Lu, Zhang 2025, PEAR: Phase Entropy Aware Reward for Efficient Reasoning, "
         "arXiv 2510.08026)")


def phase_masks(response_ids: torch.Tensor, mask: torch.Tensor, marker: str = "#"):
    """(think [B, T], answer [B, T]) 0/1 masks: tokens before the first marker / after it (the marker in
    neither); a row without a marker has every valid token but its last in think, none in answer."""
    m = mask.bool()
    is_marker = (response_ids == encode(marker)[0]) & m
    pos = torch.arange(mask.shape[1], device=mask.device)[None, :]
    L = m.long().sum(1, keepdim=True)
    k = torch.where(is_marker.any(1, keepdim=True), is_marker.long().argmax(1, keepdim=True), L - 1)
    return (m & (pos < k)).long(), (m & (pos > k)).long()


def phase_entropies(entropy: torch.Tensor, think: torch.Tensor, answer: torch.Tensor, reduce: str = "mean"):
    """(Ht [B], Ha [B]): per-phase mean (or sum) of the token entropies; 0 for an empty phase. No gradient."""
    entropy = entropy.detach().double()
    out = []
    for ph in (think, answer):
        out.append(masked_sum(entropy, ph, dim=1) if reduce == "sum" else masked_mean(entropy, ph, dim=1))
    return tuple(out)


@dataclass
class PearConfig:
    a: float = 1.0              # weight of the thinking-phase entropy (the paper's implicit 1)
    b: float = 1.0              # weight of the answer-phase entropy (the paper's alpha)
    hinge: bool = True          # P = max(0, a Ht - b Ha) (paper) instead of a Ht - b Ha
    only_correct: bool = True   # entropy terms only for correct responses; wrong ones get format_score
    score: float = 1.0          # s: base reward of a correct response
    format_score: float = 0.0   # r_fmt: reward of a wrong / unparseable response
    cap: float | None = 1.0     # r <- min(cap, r) (the paper's min(1, .)); None: off
    reduce: Literal["mean", "sum"] = "mean"   # "mean" (paper) or "sum" (a length-coupled variant) of H over a phase
    marker: str = "#"           # the end-of-thinking token

    def __post_init__(self):
        for k in ("a", "b"):
            check_range(self, k, lo=0.0)
        for k in ("score", "format_score", "cap"):
            check_range(self, k)
        if self.reduce not in ("mean", "sum"):
            raise ValueError(f"PearConfig.reduce must be 'mean' or 'sum', got {self.reduce!r}")
        if not (isinstance(self.marker, str) and len(self.marker) == 1 and self.marker in CHARS):
            raise ValueError(f"PearConfig.marker must be one vocabulary character, got {self.marker!r}")


def pear_rewards(correct: torch.Tensor, Ht: torch.Tensor, Ha: torch.Tensor, cfg: PearConfig):
    """(r [B] float64, P [B]) from correctness [B] (0/1) and the phase entropies."""
    P = cfg.a * Ht - cfg.b * Ha
    if cfg.hinge:
        P = P.clamp(min=0.0)
    ok = correct.bool().cpu()
    base = torch.where(ok, torch.full_like(P, cfg.score), torch.full_like(P, cfg.format_score))
    shaped = base - P
    if cfg.cap is not None:
        shaped = shaped.clamp(max=cfg.cap)
    return (torch.where(ok, shaped, base) if cfg.only_correct else shaped), P


def phase_entropy_stats(batch, marker: str = "#") -> dict[str, float]:
    """The base check: corr(Ht, length) over responses (and within groups, group means removed, which
    takes problem difficulty out), mean Ht / Ha, phase lengths, marker rate. Any RolloutBatch."""
    think, answer = phase_masks(batch.response_ids.cpu(), batch.response_mask.cpu(), marker)
    Ht, Ha = phase_entropies(batch.old_entropy.cpu(), think, answer)
    L, gids = batch.lengths.cpu().double(), batch.group_ids.cpu()
    H_all = phase_entropies(batch.old_entropy.cpu(), batch.response_mask.cpu(), answer)[0]
    within = lambda x: x - group_mean_std(x, gids)[0]   # noqa: E731
    return {"corr_Hthink_len": pearson(Ht, L), "corr_Hthink_len_within": pearson(within(Ht), within(L)),
            "corr_H_len": pearson(H_all, L), "H_think": float(Ht.mean()), "H_answer": float(Ha.mean()),
            "L_think": float(think.sum(1).double().mean()), "L_answer": float(answer.sum(1).double().mean()),
            "frac_marker": float((answer.sum(1) > 0).double().mean())}


def entropy_length_check(policy, problems, group: int = 8, max_new_tokens: int = 100, seed: int = 0) -> dict:
    """Notebook helper: sample `group` responses per problem at T = 1 and return phase_entropy_stats."""
    from ..rollout import sample
    batch = sample(policy, problems, group, max_new_tokens, generator=torch.Generator().manual_seed(seed))
    return phase_entropy_stats(batch)


@register("reward", "pear", config=PearConfig, paper=PAPER)
def pear_reward(batch, cfg: PearConfig, ctx) -> torch.Tensor:
    correct = verifier_reward(batch, None, ctx)
    think, answer = phase_masks(batch.response_ids.cpu(), batch.response_mask.cpu(), cfg.marker)
    Ht, Ha = phase_entropies(batch.old_entropy.cpu(), think, answer, cfg.reduce)
    r, P = pear_rewards(correct, Ht, Ha, cfg)
    st = phase_entropy_stats(batch, cfg.marker)
    ctx.log(**{"pear/acc": float(correct.mean()), "pear/penalty": float(P.mean()),
               "pear/penalty_correct": float(P[correct.bool()].mean()) if correct.any() else 0.0,
               **{f"pear/{k}": v for k, v in st.items()}})
    return r.float()


_BASE = "GRPO advantage and loss (seq-mean-token-mean), toy trainer regime"
register_recipe(Recipe("pear", paper=PAPER + f" -- the reported setting a = 1, b = alpha = 1, hinge, correct only; "
                       f"{_BASE}",
                       reward="pear", loss_cfg={"agg": "seq-mean-token-mean"}))
for _a in (0.05, 0.1, 0.2):
    register_recipe(Recipe(f"pear_a{str(_a).replace('0.', '0')}", paper=PAPER + f" -- a = {_a}, b = 0; {_BASE}",
                           reward="pear", reward_cfg={"a": _a, "b": 0.0}, loss_cfg={"agg": "seq-mean-token-mean"}))
