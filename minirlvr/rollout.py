"""Batched sampling with the KV cache, and the two records every stage passes around.

RolloutBatch  what sampling produced (+ rewards/advantages filled by later stages)
PolicyOutput  what a training-time forward pass of the current policy gives a loss

Temperature convention: `old_logp` and `old_entropy` are measured on the
tempered distribution pi_T = softmax(z / T) at the sampling temperature T,
before any top-p truncation. `policy_forward(..., temperature=T)` uses the
same T, so ratio = exp(logp - old_logp) is exactly 1 for an unchanged policy.
(With top_p < 1 the behaviour policy is the truncated one; like verl and TRL
we ignore that mismatch — keep top_p = 1 for RL.)
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import torch

from .core import entropy_from_logits, logprobs_from_logits
from .tokenizer import EOS, PAD, decode, encode, pad_left


@dataclass
class RolloutBatch:
    """B = prompts x G rows. P = prompt width (left-padded), T = response width (right-padded)."""
    prompt_ids: torch.Tensor      # [B, P] BOS + prompt, left-padded with PAD
    prompt_mask: torch.Tensor     # [B, P] 1 on real prompt tokens
    response_ids: torch.Tensor    # [B, T] generated tokens, PAD after EOS
    response_mask: torch.Tensor   # [B, T] 1 on tokens the policy generated (EOS included)
    old_logp: torch.Tensor        # [B, T] log pi_T(token) at sampling time
    old_entropy: torch.Tensor     # [B, T] entropy of pi_T at each position
    group_ids: torch.Tensor       # [B] rows with one id answer the same prompt
    problems: list                # [B] toy_tasks.Problem of each row
    texts: list[str]              # [B] decoded completions
    truncated: torch.Tensor       # [B] bool: hit the length limit without EOS
    temperature: float = 1.0
    old_logits: torch.Tensor | None = None   # [B, T, V] tempered logits z / T at sampling time (tiny V: cheap)
    rewards: torch.Tensor | None = None      # [B]
    advantages: torch.Tensor | None = None   # [B, T]
    ref_logp: torch.Tensor | None = None     # [B, T]
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return self.response_ids.shape[0]

    @property
    def input_ids(self) -> torch.Tensor:
        return torch.cat([self.prompt_ids, self.response_ids], dim=1)

    @property
    def attention_mask(self) -> torch.Tensor:
        # tokens after EOS are causally later than everything that matters: no need to mask them
        return torch.cat([self.prompt_mask, torch.ones_like(self.response_mask)], dim=1)

    @property
    def lengths(self) -> torch.Tensor:
        return self.response_mask.sum(1)

    def select(self, idx: torch.Tensor | Sequence[int]) -> "RolloutBatch":
        """Rows `idx` as a new batch (minibatches, dynamic sampling). Per-row extras
        (tensors or lists of length B) are sliced too; others are kept as they are."""
        idx = torch.as_tensor(idx, dtype=torch.long)
        rows = idx.tolist()
        B = self.size

        def take(v):
            if not _per_row(v, B):
                return v
            # a per-row tensor may live on another device than idx (a stage's CPU extras on a GPU run)
            return v[idx.to(v.device)] if isinstance(v, torch.Tensor) else [v[i] for i in rows]
        return replace(self, **{f: take(getattr(self, f)) for f in self.__dataclass_fields__ if f != "extras"},
                       extras={k: take(v) for k, v in self.extras.items()})


def _per_row(v: Any, n: int) -> bool:
    """An extras value with one entry per row of an n-row batch (what select() slices)."""
    return (isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == n) or (isinstance(v, list) and len(v) == n)


def _concat_extras(batches: Sequence[RolloutBatch]) -> dict[str, Any]:
    """Per-row extras (tensors or lists of length B) of every batch concatenated; tensors of different
    trailing widths (per-token [B, T] values) right-padded with 0 like the response fields. Other values:
    the first batch's. A key that is per-row in the first batch must be per-row in every batch."""
    out = {}
    for k, v in batches[0].extras.items():
        if not _per_row(v, batches[0].size):
            out[k] = v
            continue
        parts = [b.extras.get(k) for b in batches]
        if not all(_per_row(p, b.size) and type(p) is type(v) for p, b in zip(parts, batches)):
            raise ValueError(f"concat_batches: extras[{k!r}] is per-row in the first batch but missing or not "
                             f"per-row in another")
        if isinstance(v, list):
            out[k] = [x for p in parts for x in p]
            continue
        width = [max(p.shape[d] for p in parts) for d in range(1, v.dim())]
        if any(p.dim() != v.dim() for p in parts):
            raise ValueError(f"concat_batches: extras[{k!r}] has tensors of different ranks")
        pads = [[x for d in reversed(range(1, v.dim())) for x in (0, width[d - 1] - p.shape[d])] for p in parts]
        out[k] = torch.cat([torch.nn.functional.pad(p, pad) if any(pad) else p for p, pad in zip(parts, pads)])
    return out


def concat_batches(batches: Sequence[RolloutBatch]) -> RolloutBatch:
    """Stack rollouts of possibly different widths (prompts re-padded left, responses right).
    Per-row extras are concatenated too (see _concat_extras); other extras keep the first batch's value."""
    if not batches:
        raise ValueError("concat_batches needs at least one batch")
    P = max(b.prompt_ids.shape[1] for b in batches)
    T = max(b.response_ids.shape[1] for b in batches)

    def cat(name, left=False, fill=0.0):
        parts = []
        for b in batches:
            v = getattr(b, name)
            if v is None:
                return None
            pad = (P if left else T) - v.shape[1]
            parts.append(torch.nn.functional.pad(v, (pad, 0) if left else (0, pad), value=fill))
        return torch.cat(parts)

    def cat_logits():
        if any(b.old_logits is None for b in batches):
            return None
        return torch.cat([torch.nn.functional.pad(b.old_logits, (0, 0, 0, T - b.old_logits.shape[1]))
                          for b in batches])

    out = replace(batches[0],
                  prompt_ids=cat("prompt_ids", True, PAD), prompt_mask=cat("prompt_mask", True),
                  response_ids=cat("response_ids", fill=PAD), response_mask=cat("response_mask"),
                  old_logp=cat("old_logp"), old_entropy=cat("old_entropy"), old_logits=cat_logits(),
                  advantages=cat("advantages"), ref_logp=cat("ref_logp"),
                  group_ids=torch.cat([b.group_ids for b in batches]),
                  truncated=torch.cat([b.truncated for b in batches]),
                  rewards=None if any(b.rewards is None for b in batches) else torch.cat([b.rewards for b in batches]),
                  problems=[p for b in batches for p in b.problems],
                  texts=[t for b in batches for t in b.texts], extras=_concat_extras(batches))
    return out


def _top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of tokens whose probability mass reaches top_p (nucleus sampling)."""
    if top_p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    cum = sorted_logits.softmax(-1).cumsum(-1)
    drop_sorted = (cum - sorted_logits.softmax(-1)) >= top_p  # mass before this token already reaches top_p
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


@torch.no_grad()
def sample(model, problems: Sequence, group_size: int, max_new_tokens: int, temperature: float = 1.0,
           top_p: float = 1.0, greedy: bool = False, generator: torch.Generator | None = None,
           group_offset: int = 0) -> RolloutBatch:
    """Draw `group_size` completions for each problem in one batch, with the KV cache.

    Each row stops at EOS or after `max_new_tokens`. Rows are ordered
    problem-major: rows [i*G, (i+1)*G) answer problems[i] and share group id
    group_offset + i. `greedy` takes the argmax (then G=1 is the useful size).
    """
    if group_size < 1 or max_new_tokens < 1:
        raise ValueError(f"group_size and max_new_tokens must be >= 1, got {group_size} and {max_new_tokens}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 (use greedy=True for argmax), got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if len(problems) == 0:
        raise ValueError("sample() got no problems")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    rows = [p for p in problems for _ in range(group_size)]
    unique_ids, unique_mask = pad_left([encode(p.prompt, bos=True) for p in problems])
    unique_ids, unique_mask = unique_ids.to(device), unique_mask.to(device)
    P = unique_ids.shape[1]
    max_new_tokens = min(max_new_tokens, model.cfg.context - P)
    if max_new_tokens < 1:
        raise ValueError(f"prompts of {P} tokens leave no room in the model context of {model.cfg.context}")

    # each prompt once, then its keys/values copied to its G rows (the same numbers as G prefills, 1/G the work)
    row_of = torch.arange(len(problems), device=device).repeat_interleave(group_size)
    cache = model.new_cache(len(problems), P + max_new_tokens)
    logits = model(unique_ids, unique_mask, cache=cache)[:, -1].index_select(0, row_of)
    cache = cache.index_select(row_of)
    prompt_ids, prompt_mask = unique_ids.index_select(0, row_of), unique_mask.index_select(0, row_of)
    B = prompt_ids.shape[0]
    tokens, logps, ents, zs = [], [], [], []
    done = torch.zeros(B, dtype=torch.bool, device=device)
    for _ in range(max_new_tokens):
        z = logits.float() / temperature
        if greedy:
            tok = z.argmax(-1)
        else:
            probs = _top_p_filter(z, top_p).softmax(-1)
            tok = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        tok = torch.where(done, torch.full_like(tok, PAD), tok)
        tokens.append(tok)
        logps.append(logprobs_from_logits(z, tok))
        ents.append(entropy_from_logits(z))
        zs.append(z)
        done = done | (tok == EOS)
        if bool(done.all()):
            break
        logits = model(tok[:, None], torch.ones_like(tok)[:, None], cache=cache)[:, -1]
    model.train(was_training)

    response_ids = torch.stack(tokens, 1)
    # a token is the policy's iff no EOS came strictly before it
    eos_before = (response_ids == EOS).long().cumsum(1) - (response_ids == EOS).long()
    response_mask = (eos_before == 0).long()
    old_logp = torch.stack(logps, 1) * response_mask
    old_entropy = torch.stack(ents, 1) * response_mask
    return RolloutBatch(
        prompt_ids=prompt_ids, prompt_mask=prompt_mask, response_ids=response_ids,
        response_mask=response_mask, old_logp=old_logp, old_entropy=old_entropy, old_logits=torch.stack(zs, 1),
        group_ids=torch.arange(len(problems), device=device).repeat_interleave(group_size) + group_offset,
        problems=rows, texts=[decode(r) for r in response_ids.tolist()],
        truncated=~(response_ids == EOS).any(1), temperature=temperature)


@dataclass
class PolicyOutput:
    """Current-policy quantities at the response positions of a RolloutBatch."""
    logp: torch.Tensor          # [B, T] log pi_T(response token), with grad
    entropy: torch.Tensor       # [B, T] entropy of pi_T, with grad
    logits: torch.Tensor        # [B, T, V] tempered logits z / T, with grad
    hidden: list | None = None  # n_layers x [B, T, d] hidden states at response positions, if requested


def policy_forward(model, batch: RolloutBatch, temperature: float | None = None,
                   output_hidden: bool = False) -> PolicyOutput:
    """One full forward pass over prompt + response. Position P-1+t predicts response token t."""
    temperature = batch.temperature if temperature is None else temperature
    P, T = batch.prompt_ids.shape[1], batch.response_ids.shape[1]
    out = model(batch.input_ids, batch.attention_mask, output_hidden=output_hidden)
    logits, hidden = out if output_hidden else (out, None)
    z = logits[:, P - 1:P - 1 + T].float() / temperature
    return PolicyOutput(
        logp=logprobs_from_logits(z, batch.response_ids),
        entropy=entropy_from_logits(z),
        logits=z,
        hidden=[h[:, P - 1:P - 1 + T] for h in hidden] if hidden is not None else None)
