"""The Invisible Leash: Why RLVR May Not Escape Its Origin (Wu et al., 2025, arXiv 2507.14843).

Stage: none — an EVALUATION module (support metrics, pass@k, token vs answer entropy) and the
tilt-family theory. It registers nothing; compare a base policy with an RL-trained one.

pass@k (unbiased; n samples of which c correct):  pass@k = 1 - C(n - c, k) / C(n, k)  (metrics.pass_at_k)

Empirical support at budget k, per problem x (only the FIRST k of the n samples are used):
    Cb(x), Cr(x) = distinct correct items found by the base / RL model in its first k samples
    P = sum_x |Cb ∩ Cr| (preserved)   S = sum_x |Cb \\ Cr| (shrunk)   E = sum_x |Cr \\ Cb| (expanded)
    O = #problems with Cb = Cr = {} (out of reach of both)
    SRR  = P / (P + S)                  support retention rate      (0/0 := 1: nothing to retain, none lost)
    NDR  = E / (P + E)                  net discovery rate          (0/0 := 0: nothing found, nothing new)
    SDS  = 2 SRR NDR / (SRR + NDR)      support dynamic score       (0/0 := 0)
    NSCR = (E - S) / (P + S + E)        net support change rate     (0/0 := 0; normalisation RECONSTRUCTED:
                                        no official code exists — only its sign is comparable with the paper)
With these conventions identical models always give SRR = 1, NDR = 0, NSCR = 0, SDS = 0.

What an "item" of the support is (`support=`):
    "answer"      distinct correct FINAL ANSWERS, task.final_answer(text) (the default, the card's choice).
                  Every current toy task has exactly one correct final answer per problem (countdown's
                  final_answer is the value of the expression, i.e. the target), so here |Cb|, |Cr| <= 1
                  and the support is effectively solved / unsolved: P = solved by both, S = base only,
                  E = RL only.
    "completion"  distinct correct completions (the text): a real multi-element support on countdown,
                  whose problems have >= 2 distinct solution expressions.

Entropies (both at the sampling temperature T, as rollout.sample measures them):
    token  Htok = mean over generated tokens (EOS included) of -sum_v pi_T(v|.) ln pi_T(v|.)
    answer Hans(x) = -sum_a phat(a) ln phat(a) over the final answers of the n samples
           (unparseable = its own class None), in [0, ln n]; averaged over problems.
RLVR can raise Htok while Hans falls: locally random paths converging on fewer answers.

Tilt family (the KL-regularised optimum, beta = 1/lam), on a finite set of sequences y:
    pi_lam(y) ∝ pi0(y) exp(lam r(y))          pi0(y) = 0  =>  pi_lam(y) = 0 for every lam (the leash)
    d/dlam E_lam[r] = Var_lam(r) >= 0
    d/dlam H(pi_lam) = -Cov_lam(ln pi0, r) - lam Var_lam(r)
    binary r: H(pi_lam) = h(p_lam) + p_lam H(pi0|r=1) + (1 - p_lam) H(pi0|r=0),
              p_lam = p0 e^lam / (p0 e^lam + 1 - p0),  h = binary entropy
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from math import log

import numpy as np
import torch

from ..core import empirical_entropy, masked_sum, policy_covariance
from ..metrics import pass_at_k
from ..rollout import sample

MAX_BATCH = 2048  # rows (problems x samples) per sampling call


def pass_at_k_curve(n_correct, n: int, ks) -> np.ndarray:
    """Mean over problems of the unbiased pass@k, for each k in ks. n_correct [P] -> [len(ks)]."""
    c = np.asarray(n_correct, dtype=int).reshape(-1)
    if c.size == 0:
        raise ValueError("pass_at_k_curve needs at least one problem")
    return np.array([np.mean([pass_at_k(n, int(ci), int(k)) for ci in c]) for k in ks])


@dataclass
class SupportCounts:
    """Support counts summed over problems (see the module docstring for the 0/0 conventions)."""
    P: int  # preserved: correct items found by both models
    S: int  # shrunk: found by the base only
    E: int  # expanded: found by the RL model only
    O: int  # problems where neither model found a correct item

    @property
    def srr(self) -> float:
        return self.P / (self.P + self.S) if self.P + self.S else 1.0

    @property
    def ndr(self) -> float:
        return self.E / (self.P + self.E) if self.P + self.E else 0.0

    @property
    def sds(self) -> float:
        a, b = self.srr, self.ndr
        return 2 * a * b / (a + b) if a + b else 0.0

    @property
    def nscr(self) -> float:
        total = self.P + self.S + self.E
        return (self.E - self.S) / total if total else 0.0

    def as_dict(self) -> dict:
        return {**asdict(self), "srr": self.srr, "ndr": self.ndr, "sds": self.sds, "nscr": self.nscr}


def support_counts(base_sets, rl_sets) -> SupportCounts:
    """P, S, E, O from per-problem sets of distinct correct items of the base and the RL model."""
    if len(base_sets) != len(rl_sets):
        raise ValueError(f"{len(base_sets)} base problems but {len(rl_sets)} RL problems")
    P = S = E = O = 0
    for b, r in zip(base_sets, rl_sets):
        b, r = set(b), set(r)
        P, S, E = P + len(b & r), S + len(b - r), E + len(r - b)
        O += not (b or r)
    return SupportCounts(P, S, E, O)


def answer_entropy(answers: list) -> float:
    """-sum_a phat(a) ln phat(a) over the empirical distribution of `answers` (None is a class),
    natural log; clamped to [0, ln n] against rounding."""
    if not answers:
        raise ValueError("answer_entropy needs at least one answer")
    return min(empirical_entropy(answers), log(len(answers)))


@torch.no_grad()
def sample_answers(policy, task, problems, n: int, seed: int, temperature: float = 1.0,
                   max_new_tokens: int | None = None, max_batch: int = MAX_BATCH) -> dict:
    """n samples per problem, in chunks of about max_batch rows. Per problem i:
    texts[i], answers[i] (task.final_answer, None if unparseable), correct[i] (reward > 0.5), all of
    length n in sampling order; token_entropy[i] (mean over its generated tokens) and n_tokens[i]."""
    if n < 1 or not problems:
        raise ValueError(f"sample_answers needs n >= 1 and some problems, got n={n}, {len(problems)} problems")
    max_new_tokens = max_new_tokens or task.max_new_tokens
    gen = torch.Generator(device=next(policy.parameters()).device).manual_seed(seed)
    per_chunk = max(1, max_batch // n)
    out = {"texts": [], "answers": [], "correct": [], "token_entropy": [], "n_tokens": []}
    for start in range(0, len(problems), per_chunk):
        chunk = problems[start:start + per_chunk]
        batch = sample(policy, chunk, n, max_new_tokens, temperature=temperature, generator=gen)
        mask = batch.response_mask.float()
        ent_sum = masked_sum(batch.old_entropy.float(), mask, dim=-1).view(len(chunk), n).sum(1)
        count = mask.sum(-1).view(len(chunk), n).sum(1)
        out["token_entropy"] += (ent_sum / count.clamp(min=1)).tolist()
        out["n_tokens"] += count.long().tolist()
        for i, p in enumerate(chunk):
            texts = batch.texts[i * n:(i + 1) * n]
            out["texts"].append(texts)
            out["answers"].append([task.final_answer(t) for t in texts])
            out["correct"].append([task.reward(p, t) > 0.5 for t in texts])
    out["n_correct"] = np.array([sum(c) for c in out["correct"]])
    return out


def correct_sets(samples: dict, k: int, support: str = "answer") -> list[set]:
    """Per problem, the distinct correct items among the first k samples (support: "answer" | "completion")."""
    if support not in ("answer", "completion"):
        raise ValueError(f"support must be 'answer' or 'completion', got {support!r}")
    items = samples["answers"] if support == "answer" else samples["texts"]
    return [{a for a, ok in zip(its[:k], cor[:k]) if ok} for its, cor in zip(items, samples["correct"])]


def support_report(base_policy, policy, task, problems, n: int, ks, seed: int, temperature: float = 1.0,
                   max_new_tokens: int | None = None, support: str = "answer") -> dict:
    """Base vs RL at the same decoding settings and seed: pass@k curves, SupportCounts per k (first k
    samples), token entropy (mean over all generated tokens) and answer entropy (mean over problems)."""
    ks = [int(k) for k in ks]
    if any(not 1 <= k <= n for k in ks):
        raise ValueError(f"every k must be in [1, n={n}], got {ks}")
    runs = {name: sample_answers(pol, task, problems, n, seed, temperature, max_new_tokens)
            for name, pol in (("base", base_policy), ("rl", policy))}
    report = {"ks": ks, "n": n, "support_kind": support, "samples": runs,
              "pass_at_k": {m: pass_at_k_curve(s["n_correct"], n, ks) for m, s in runs.items()},
              "support": {k: support_counts(correct_sets(runs["base"], k, support),
                                            correct_sets(runs["rl"], k, support)) for k in ks}}
    report["token_entropy"] = {m: float(np.dot(s["token_entropy"], s["n_tokens"]) / max(1, sum(s["n_tokens"])))
                               for m, s in runs.items()}
    report["answer_entropy"] = {m: float(np.mean([answer_entropy(a) for a in s["answers"]])) for m, s in runs.items()}
    return report


def report_metrics(report: dict) -> dict[str, float]:
    """A flat {name: float} view of a support_report, for logs and summary.csv:
    base|rl/pass@k, base|rl/entropy, base|rl/answer_entropy, support/{P,S,E,O,srr,ndr,sds,nscr}@k."""
    out = {}
    for m in ("base", "rl"):
        out.update({f"{m}/pass@{k}": float(v) for k, v in zip(report["ks"], report["pass_at_k"][m])})
        out[f"{m}/entropy"], out[f"{m}/answer_entropy"] = report["token_entropy"][m], report["answer_entropy"][m]
    for k, sc in report["support"].items():
        out.update({f"support/{name}@{k}": float(v) for name, v in sc.as_dict().items()})
    return out


# --- theory: the tilt family pi_lam ∝ pi0 exp(lam r) on a finite set (last dim) -------------------------

def tilt_logits(pi0, r, lam) -> torch.Tensor:
    """ln pi0 + lam r (up to a constant), -inf where pi0 = 0; softmax of it is pi_lam. Differentiable in lam."""
    pi0, r = torch.as_tensor(pi0), torch.as_tensor(r)
    lam = torch.as_tensor(lam, dtype=r.dtype if r.is_floating_point() else pi0.dtype)
    on = pi0 > 0
    z = torch.log(torch.where(on, pi0, torch.ones_like(pi0))) + lam * torch.where(on, r, torch.zeros_like(r))
    return z.masked_fill(~on, float("-inf"))


def tilt(pi0, r, lam) -> torch.Tensor:
    """pi_lam(y) = pi0(y) exp(lam r(y)) / Z, computed in log space (stable for large |lam r|);
    pi0 = 0 stays exactly 0 for every lam (support preservation)."""
    return torch.softmax(tilt_logits(pi0, r, lam), dim=-1)


def tilt_derivatives(pi0, r, lam) -> tuple[torch.Tensor, torch.Tensor]:
    """Closed forms (d/dlam E_lam[r], d/dlam H(pi_lam)) = (Var_lam(r), -Cov_lam(ln pi0, r) - lam Var_lam(r))."""
    pi0, r = torch.as_tensor(pi0), torch.as_tensor(r)
    p = tilt(pi0, r, lam)
    var = policy_covariance(p, r, r)
    return var, -policy_covariance(p, torch.log(pi0), r) - lam * var
