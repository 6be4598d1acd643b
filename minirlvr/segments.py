"""Steps and plan spans of a response, per token: the one tagger that step-level papers share (EMPG's step
entropy, HICRA's planning tokens, and later implicit PRMs, PEAR, EPO).

The toy tasks write multi-step answers as steps that END with ";" and a final answer after "#":
  addition_scratchpad  6+7=3c1;8+6+1=5c1;#153        3 steps: "6+7=3c1;", "8+6+1=5c1;", "#153"
  chain                [7+6]13;[13+7]20;#20          plan tokens: the spans "[...]" (brackets included);
                                                     execution tokens: everything else ("13;", "#20", EOS)
Rules, on response_ids [B, T] with response_mask [B, T] (1 on the policy's tokens, EOS included):
  step_ids   step s of a token = the number of ";" strictly before it in the row, so ";" closes its step and
             the tokens after the last ";" (the "#answer" and EOS) form the final step; -1 off the mask.
  plan_mask  a valid token is a plan token iff it is "[" , "]" or lies between a "[" and the next "]"
             (an unclosed "[" runs to the end of the row: the model opened a plan and never closed it).
  step_mean  every valid token gets the mean of `values` over the valid tokens of its own step (0 off the mask).
Works on any token sequence (a malformed answer just has other steps); no gradient flows through the tags.
"""
from __future__ import annotations

import torch

from .tokenizer import VOCAB

STEP_END, PLAN_OPEN, PLAN_CLOSE = VOCAB.index(";"), VOCAB.index("["), VOCAB.index("]")


def step_ids(response_ids: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """[B, T] long: the step index of each valid token (0, 1, ...), -1 off the mask."""
    valid = response_mask.bool()
    ends = (response_ids == STEP_END) & valid
    before = ends.long().cumsum(1) - ends.long()          # ";" strictly before the token
    return torch.where(valid, before, torch.full_like(before, -1))


def plan_mask(response_ids: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """[B, T] bool: the valid tokens of "[...]" spans, brackets included."""
    valid = response_mask.bool()
    opens = ((response_ids == PLAN_OPEN) & valid).long()
    closes = ((response_ids == PLAN_CLOSE) & valid).long()
    # inside a span iff the last bracket at or before the token is "[", or the token itself is "]"
    last_open = torch.where(opens.bool(), torch.arange(opens.shape[1], device=response_ids.device), -1).cummax(1).values
    last_close = torch.where(closes.bool(), torch.arange(closes.shape[1], device=response_ids.device), -1).cummax(1).values
    inside = (last_open > last_close) | closes.bool()
    return inside & valid


def step_mean(values: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """[B, T]: each valid token (steps >= 0) gets the mean of `values` over its step's tokens; 0 elsewhere."""
    B, T = steps.shape
    n_steps = int(steps.max()) + 1 if steps.numel() and bool((steps >= 0).any()) else 0
    if n_steps == 0:
        return torch.zeros_like(values)
    slot = torch.where(steps >= 0, steps, torch.full_like(steps, n_steps))          # a discard slot
    sums = torch.zeros(B, n_steps + 1, dtype=values.dtype, device=values.device).scatter_add_(1, slot, values)
    counts = torch.zeros(B, n_steps + 1, dtype=values.dtype, device=values.device).scatter_add_(
        1, slot, torch.ones_like(values))
    mean = sums / counts.clamp(min=1)
    return torch.where(steps >= 0, mean.gather(1, slot), torch.zeros_like(values))
