"""DiffAdapt: Difficulty-Adaptive Reasoning for Token-Efficient LLM Inference -- 2025 (ICLR 2026), arXiv 2510.19669.
Official code: none found (third-party notes: "to be released"). This is a DIFFADAPT-STYLE reconstruction: the
class thresholds, the probe input and the decoding presets below are the card author's choices (and ours), not
the paper's, which were not available.

Stage changed: decoding only (evaluation time; the LM is frozen, nothing is registered in the RL pipeline) plus an
analysis metric. Idea: mean trace entropy against problem difficulty is U-shaped (easy problems: correct but
high-entropy "overthinking"; medium: lowest; hard: genuinely uncertain), so a small probe on the frozen model's
hidden state can predict the difficulty class before decoding and pick a cheaper or a costlier strategy.

Symbols (question x; k samples y_1..y_k of the Normal preset; m the response mask, EOS included)
  acc(x)  = (1/k) sum_j 1[y_j correct]
  Hbar(x) = (1/k) sum_j [sum_t m_jt H_jt / sum_t m_jt]     H_jt = entropy of pi_T at t (old_entropy), in [0, ln|V|]
  U-curve: bin b of `bins` equal bins of [0, 1] holds the x with acc(x) in [b/bins, (b+1)/bins) (the last bin
           closed; acc * bins is rounded to 9 decimals first, so j/k on an edge lands in the upper bin); per bin
           the mean of Hbar, its standard error (sd, ddof 1, / sqrt(count); 0 for one question) and the count.
  label(x)= Easy (0) if acc >= a_hi, Hard (2) if acc <= a_lo, else Normal (1);   a_lo = 0.2 < a_hi = 0.8 (card's)
  u(x)    = h^L at the last prompt token (the last block's output, before the final LayerNorm), optionally with
            the entropy of the first response token appended; computed under no_grad and detached
  probe   p(c | u) = softmax(W2 relu(W1 (u - mu) / sd + b1) + b2), 64 hidden units, mu / sd the training
          features' mean and std (stored in the probe); plain full-batch AdamW on cross-entropy
  route   c(x) = argmax_c p(c | u(x)) -> preset c
Presets (OURS; the paper: a fixed prompt, temperature and max length per class), B = the task's max_new_tokens:
  Easy    greedy, budget round(0.5 B)                (no concise-mode prompt exists in the toy data)
  Normal  T = 1, budget B                            (the baseline: what evaluate_policy samples)
  Hard    T = 1, budget round(1.5 B) (capped by the model context), majority vote of 3 samples; its tokens are
          the sum over the votes. In the toy the budget alone changes nothing (B already covers the longest
          trace), hence the votes: without them Hard would be Normal.
Every preset decodes with a fresh generator seeded `seed`, so always-Normal routing IS the baseline call (same
problems, same order, same seed: identical outputs, tested). `evaluate_routing` decodes each preset once on all
questions and scores a routing by taking each question's output from its preset:
  tokens(route) = (1/N) sum_c sum_{x: c(x) = c} tokens_c(x),  acc likewise (an exact accounting identity)
Card vs paper/official code: no code; the card's thresholds, probe and presets are used as given, with the Hard
votes added (above). The card's "oracle tokens <= all-Normal tokens" is not an identity here (Hard's votes cost
more; a greedy Easy trace can be longer than a sampled Normal one): report it as a measurement. Pitfalls: labels
are model-specific (recompute after any training); k small -> noisy labels (k >= 16); the U-curve uses the
trace's mean token entropy, not the answer entropy; a toy SFT'd on deterministic traces may give no U at all.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..core import entropy_from_logits, masked_mean
from ..registry import check_range
from ..rollout import sample
from ..tokenizer import encode, pad_left

PAPER = ("DiffAdapt: Difficulty-Adaptive Reasoning for Token-Efficient LLM Inference, 2025, arXiv 2510.19669 "
         "-- DiffAdapt-style reconstruction (no official code; thresholds and presets are ours)")
CLASSES = ("easy", "normal", "hard")


@dataclass
class DiffAdaptConfig:
    a_lo: float = 0.2                # Hard iff acc <= a_lo
    a_hi: float = 0.8                # Easy iff acc >= a_hi
    easy_budget: float = 0.5         # fraction of the task's max_new_tokens, greedy
    hard_budget: float = 1.5         # fraction of max_new_tokens (sample() caps it at the model context)
    hard_votes: int = 3              # Hard samples per question, majority vote
    temperature: float = 1.0         # Normal and Hard sampling temperature
    probe_hidden: int = 64
    probe_steps: int = 300           # full-batch AdamW steps
    probe_lr: float = 1e-2
    probe_weight_decay: float = 1e-4
    with_entropy: bool = False       # append the first response token's entropy to u(x)

    def __post_init__(self):
        check_range(self, "a_lo", lo=0.0, hi=1.0)
        check_range(self, "a_hi", lo=0.0, hi=1.0)
        if not self.a_lo < self.a_hi:
            raise ValueError(f"DiffAdaptConfig.a_lo must be < a_hi, got a_lo={self.a_lo!r}, a_hi={self.a_hi!r}")
        check_range(self, "easy_budget", lo=0.0, lo_open=True)
        check_range(self, "hard_budget", lo=0.0, lo_open=True)
        check_range(self, "hard_votes", lo=1)
        check_range(self, "temperature", lo=0.0, lo_open=True)
        check_range(self, "probe_hidden", lo=1)
        check_range(self, "probe_steps", lo=0)
        check_range(self, "probe_lr", lo=0.0, lo_open=True)
        check_range(self, "probe_weight_decay", lo=0.0)


# ------------------------------------------------------------------ difficulty, entropy, the U-curve

@torch.no_grad()
def sample_stats(model, task, problems, k: int, max_new_tokens: int, seed: int, temperature: float = 1.0,
                 chunk: int = 64) -> dict[str, np.ndarray]:
    """Per question [N]: acc (share of k samples correct), entropy (Hbar), tokens (mean length, EOS included)."""
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    acc, ent, tok = [], [], []
    for s in range(0, len(problems), chunk):
        b = sample(model, problems[s:s + chunk], k, max_new_tokens, temperature=temperature, generator=gen)
        ok = torch.tensor([task.reward(p, t) > 0.5 for p, t in zip(b.problems, b.texts)], dtype=torch.float64)
        h = masked_mean(b.old_entropy.double(), b.response_mask, dim=1).cpu()
        acc += ok.view(-1, k).mean(1).tolist()
        ent += h.view(-1, k).mean(1).tolist()
        tok += b.lengths.double().cpu().view(-1, k).mean(1).tolist()
    return {"acc": np.array(acc), "entropy": np.array(ent), "tokens": np.array(tok)}


def u_curve(acc, entropy, bins: int = 10) -> dict[str, np.ndarray]:
    """Mean entropy per accuracy bin (module doc), non-empty bins only: lo, hi, mean, sem, count."""
    acc, entropy = np.asarray(acc, dtype=np.float64), np.asarray(entropy, dtype=np.float64)
    idx = np.clip(np.floor(np.round(acc * bins, 9)), 0, bins - 1).astype(int)
    out = {k: [] for k in ("lo", "hi", "mean", "sem", "count")}
    for b in np.unique(idx):
        v = entropy[idx == b]
        sem = float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else 0.0
        for key, val in zip(out, (b / bins, (b + 1) / bins, float(v.mean()), sem, len(v))):
            out[key].append(val)
    return {k: np.array(v) for k, v in out.items()}


def difficulty_labels(acc, a_lo: float = 0.2, a_hi: float = 0.8) -> np.ndarray:
    """0 Easy (acc >= a_hi), 2 Hard (acc <= a_lo), 1 Normal otherwise; a_lo < a_hi."""
    if not a_lo < a_hi:
        raise ValueError(f"difficulty_labels: a_lo must be < a_hi, got {a_lo} and {a_hi}")
    acc = np.asarray(acc, dtype=np.float64)
    return np.where(acc >= a_hi, 0, np.where(acc <= a_lo, 2, 1))


# ------------------------------------------------------------------ the probe

@torch.no_grad()
def prompt_features(model, problems, with_entropy: bool = False, chunk: int = 256) -> torch.Tensor:
    """u(x) [N, d (+1)] float32, detached: the last block's output at the last prompt token (+ first-token entropy)."""
    was_training, device = model.training, next(model.parameters()).device
    model.eval()
    feats = []
    for s in range(0, len(problems), chunk):
        ids, mask = pad_left([encode(p.prompt, bos=True) for p in problems[s:s + chunk]])   # left-padded
        logits, hidden = model(ids.to(device), mask.to(device), output_hidden=True)
        u = hidden[-1][:, -1].float()
        feats.append(torch.cat([u, entropy_from_logits(logits[:, -1].float())[:, None]], 1) if with_entropy else u)
    model.train(was_training)
    return torch.cat(feats).detach().cpu()


class Probe(nn.Module):
    """softmax(W2 relu(W1 (u - mu) / sd + b1) + b2) over the three classes (logits returned)."""

    def __init__(self, dim: int, hidden: int = 64):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, len(CLASSES)))
        self.register_buffer("mu", torch.zeros(dim))
        self.register_buffer("sd", torch.ones(dim))

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return self.net((u - self.mu) / self.sd)


def train_probe(features: torch.Tensor, labels, cfg: DiffAdaptConfig = DiffAdaptConfig(), seed: int = 0) -> Probe:
    """Full-batch AdamW on cross-entropy over DETACHED features (no gradient can reach the LM)."""
    X, y = features.detach().float(), torch.as_tensor(np.asarray(labels), dtype=torch.long)
    torch.manual_seed(seed)
    probe = Probe(X.shape[1], cfg.probe_hidden)
    probe.mu.copy_(X.mean(0))
    probe.sd.copy_(X.std(0, unbiased=False).clamp(min=1e-6))
    opt = torch.optim.AdamW(probe.parameters(), lr=cfg.probe_lr, weight_decay=cfg.probe_weight_decay)
    for _ in range(cfg.probe_steps):
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(probe(X), y).backward()
        opt.step()
    return probe.eval()


@torch.no_grad()
def route(probe: Probe, features: torch.Tensor) -> np.ndarray:
    """c(x) [N] in {0 Easy, 1 Normal, 2 Hard}: the probe's argmax."""
    return probe(features.float()).argmax(-1).numpy()


def confusion(pred, labels) -> np.ndarray:
    """3 x 3 counts, rows = true class, columns = predicted class."""
    out = np.zeros((3, 3), dtype=np.int64)
    np.add.at(out, (np.asarray(labels), np.asarray(pred)), 1)
    return out


# ------------------------------------------------------------------ decoding with presets, routing, evaluation

def majority(answers: list) -> int:
    """Index of the first completion whose answer is the most common non-None answer (0 if every answer is None)."""
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return 0
    best = max(counts.values())
    return next(i for i, a in enumerate(answers) if a is not None and counts[a] == best)


@torch.no_grad()
def decode_preset(model, task, problems, c: int, cfg: DiffAdaptConfig, max_new_tokens: int, seed: int,
                  chunk: int = 128) -> dict:
    """Preset c (0 Easy, 1 Normal, 2 Hard) on every problem: correct [N] bool, tokens [N] int, texts [N]."""
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    budget = {0: cfg.easy_budget, 1: 1.0, 2: cfg.hard_budget}[c]
    budget, votes = max(1, round(budget * max_new_tokens)), cfg.hard_votes if c == 2 else 1
    correct, tokens, texts = [], [], []
    for s in range(0, len(problems), chunk):
        b = sample(model, problems[s:s + chunk], votes, budget, temperature=cfg.temperature, greedy=c == 0,
                   generator=gen)
        lengths = b.lengths.cpu().view(-1, votes).sum(1).tolist()
        for q, p in enumerate(problems[s:s + chunk]):
            group = b.texts[q * votes:(q + 1) * votes]
            pick = group[majority([task.final_answer(t) for t in group])]
            correct.append(task.reward(p, pick) > 0.5)
            texts.append(pick)
        tokens += lengths
    return {"correct": np.array(correct, dtype=bool), "tokens": np.array(tokens, dtype=np.int64), "texts": texts}


def route_and_decode(model, task, problems, routes, cfg: DiffAdaptConfig, max_new_tokens: int, seed: int) -> dict:
    """Deployment: decode each preset on the problems routed to it (original order), then merge per problem."""
    routes = np.asarray(routes)
    out = {"correct": np.zeros(len(problems), dtype=bool), "tokens": np.zeros(len(problems), dtype=np.int64),
           "texts": [""] * len(problems)}
    for c in range(3):
        rows = np.nonzero(routes == c)[0].tolist()
        if rows:
            res = decode_preset(model, task, [problems[i] for i in rows], c, cfg, max_new_tokens, seed)
            out["correct"][rows], out["tokens"][rows] = res["correct"], res["tokens"]
            for i, t in zip(rows, res["texts"]):
                out["texts"][i] = t
    return out


def evaluate_routing(per_preset: list[dict], routings: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Accuracy and mean tokens per question of each routing, from the three presets' outputs on ALL questions
    (per_preset[c] = decode_preset(..., c, ...)); token_reduction = 1 - tokens / tokens(all-Normal)."""
    n = len(per_preset[1]["correct"])
    routings = {"all-easy": np.zeros(n, int), "all-normal": np.ones(n, int), "all-hard": np.full(n, 2), **routings}
    normal_tokens = float(per_preset[1]["tokens"].mean())
    out = {}
    for name, r in routings.items():
        r = np.asarray(r)
        ok = np.choose(r, [p["correct"] for p in per_preset])
        tok = np.choose(r, [p["tokens"] for p in per_preset])
        out[name] = {"acc": float(ok.mean()), "tokens": float(tok.mean()),
                     "token_reduction": 1.0 - float(tok.mean()) / normal_tokens if normal_tokens else 0.0,
                     **{f"share_{c}": float((r == i).mean()) for i, c in enumerate(CLASSES)}}
    return out
