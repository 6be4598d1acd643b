"""Character vocabulary shared by every toy task.

One token per character, plus three specials. The character set is fixed and
small (the model's output layer is |V| ~ 30 wide), so full per-position
logits are cheap to keep around for entropy methods.

Characters and their role in the toy tasks:
  0-9        digits
  + - * /    operators
  ( )        parentheses (chain, countdown)
  =          end of the question / "equals" inside scratchpads
  , ;        separators (operand lists, scratchpad steps)
  :          field separator (countdown target)
  #          final-answer marker: everything after it is the answer
  [ ]        plan step (chain): which sub-expression to evaluate next
  c          carry marker in scratchpads
  ?          question marker (free-form prompts)
  space      readability in free-form text
"""
from __future__ import annotations

from typing import Sequence

import torch

PAD, BOS, EOS = 0, 1, 2
SPECIALS = ["<pad>", "<bos>", "<eos>"]
CHARS = "0123456789+-*/()=,;:#[]c? "
VOCAB = SPECIALS + list(CHARS)
VOCAB_SIZE = len(VOCAB)
_CHAR_TO_ID = {ch: i + len(SPECIALS) for i, ch in enumerate(CHARS)}


def encode(text: str, bos: bool = False, eos: bool = False) -> list[int]:
    """Map a string to token ids; an unknown character is a ValueError naming it."""
    ids = [BOS] if bos else []
    for pos, ch in enumerate(text):
        tok = _CHAR_TO_ID.get(ch)
        if tok is None:
            raise ValueError(
                f"character {ch!r} at position {pos} of {text[:40]!r} is not in the vocabulary {CHARS!r}"
            )
        ids.append(tok)
    if eos:
        ids.append(EOS)
    return ids


def decode(ids: Sequence[int], stop_at_eos: bool = True) -> str:
    """Map token ids back to text; specials are dropped, decoding stops at EOS."""
    out = []
    for t in ids:
        t = int(t)
        if t == EOS and stop_at_eos:
            break
        if t < 0 or t >= VOCAB_SIZE:  # before the specials: a negative id is not a special to drop silently
            raise ValueError(f"token id {t} is outside the vocabulary of size {VOCAB_SIZE}")
        if t < len(SPECIALS):
            continue
        out.append(CHARS[t - len(SPECIALS)])
    return "".join(out)


def pad_left(seqs: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token lists to one length (prompts end at the same column, so
    generation starts at the same step for every row).

    Returns ids [B, L] (PAD where padded) and attention_mask [B, L] (1 on real tokens).
    """
    if len(seqs) == 0:
        raise ValueError("pad_left got an empty list of sequences")
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), PAD, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if len(s):
            ids[i, width - len(s):] = torch.tensor(list(s), dtype=torch.long)
            mask[i, width - len(s):] = 1
    return ids, mask


def pad_right(seqs: Sequence[Sequence[int]], width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token lists (used for completions / SFT targets). Returns ids, mask [B, L]."""
    if len(seqs) == 0:
        raise ValueError("pad_right got an empty list of sequences")
    width = width or max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), PAD, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        s = list(s)[:width]
        if s:
            ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
            mask[i, : len(s)] = 1
    return ids, mask
