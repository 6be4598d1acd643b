"""Run a registered minirlvr loss or advantage inside another RL engine (TRL, verl), unchanged.

A loss stage is `fn(out, batch, cfg, ctx) -> (loss, metrics)` over minirlvr's records (registry.py). An
engine hands its loss function plain tensors instead. The adapters (`integrations.trl`, `integrations.verl`)
build minirlvr's own records (RolloutBatch, PolicyOutput) from what the engine gives and call the same
function that the property tests check here. What an engine does not give is not faked: the field holds a
`Missing`, and using it raises `MissingInput`, which names the field, the engine and, where one exists, the
engine setting that provides it.

    engine_output  a PolicyOutput: logp [B, T] (with grad), entropy [B, T] if the engine computes it; never
                   full logits [B, T, V] or hidden states (engines keep them inside their fused kernels)
    engine_batch   a RolloutBatch of the fields the engine has (response_mask, old_logp, advantages, ...)
    EngineContext  the StageContext services that make sense outside the toy trainer: a seeded generator,
                   step, group size, max_new_tokens, temperature, per-stage state, log()

This module imports neither engine: `import minirlvr` never pulls TRL or verl in.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import torch

from .. import registry
from ..rollout import PolicyOutput, RolloutBatch

CONTEXT_SERVICES = ("policy", "ref_policy", "task", "score", "sample_problems", "rng", "history")


class MissingInput(ValueError):
    """A stage read something its engine does not provide (e.g. full logits inside TRL)."""


class Missing:
    """Stands in a RolloutBatch / PolicyOutput field that the engine does not provide. Copying it around is fine
    (stages call dataclasses.replace on their batch); USING it -- arithmetic, indexing, an attribute, any torch
    function -- raises MissingInput naming the field and why it is absent. (`x is None` is False: a stage that
    tests for None then uses the field gets the clear error at the use.)"""

    def __init__(self, field: str, why: str):
        self.field, self.why = field, why

    def error(self) -> MissingInput:
        return MissingInput(f"this stage reads {self.field}, which {self.why}")

    def _raise(self, *args, **kwargs):
        raise self.error()

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        for value in list(args) + list((kwargs or {}).values()):
            for item in value if isinstance(value, (list, tuple)) else (value,):
                if isinstance(item, Missing):
                    raise item.error()
        return NotImplemented

    def __getattr__(self, name: str):
        if name.startswith("__") or name in ("field", "why"):  # copy / pickle probes, a half-built object
            raise AttributeError(name)
        raise self.error()

    def __repr__(self) -> str:
        return f"Missing({self.field})"

    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = __truediv__ = __rtruediv__ = _raise
    __pow__ = __neg__ = __abs__ = __getitem__ = __len__ = __iter__ = __bool__ = __float__ = __int__ = _raise
    __lt__ = __le__ = __gt__ = __ge__ = __and__ = __or__ = __invert__ = __matmul__ = __rmatmul__ = _raise


def engine_output(engine: str, logp: torch.Tensor, entropy: torch.Tensor | None = None,
                  entropy_why: str = "") -> PolicyOutput:
    """PolicyOutput as an engine gives it: logp [B, T] and, where the engine computes it, entropy [B, T] (both
    with grad); full logits and hidden states are Missing."""
    return PolicyOutput(
        logp=logp,
        entropy=entropy if entropy is not None else Missing(
            "out.entropy (the current policy's token entropy)", f"{engine} does not pass to a policy loss"
            + (f" ({entropy_why})" if entropy_why else "")),
        logits=Missing("out.logits (full logits [B, T, V])", f"{engine} does not expose to a loss (only "
                       f"per-token log-probs{' and entropies' if entropy is not None else ''})"),
        hidden=Missing("out.hidden (per-layer hidden states)", f"{engine} does not expose to a loss"))


def engine_batch(engine: str, missing: dict[str, str] | None = None, **fields: Any) -> RolloutBatch:
    """A RolloutBatch of the fields an engine gives ([B, T] tensors matching response_mask); every other field
    is Missing, with `missing[name]` as the reason where one is known."""
    names = [f.name for f in dataclasses.fields(RolloutBatch)]
    unknown = sorted(set(fields) - set(names))
    if unknown:
        raise TypeError(f"engine_batch: unknown field(s) {unknown}; RolloutBatch fields: {', '.join(names)}")
    mask = fields.get("response_mask")
    if not torch.is_tensor(mask) or mask.dim() != 2:
        raise ValueError(f"engine_batch needs response_mask [B, T], got "
                         f"{tuple(mask.shape) if torch.is_tensor(mask) else type(mask).__name__}")
    for name, value in fields.items():
        if torch.is_tensor(value) and value.dim() == 2 and value.shape != mask.shape:
            raise ValueError(f"engine_batch: {name} has shape {tuple(value.shape)}, response_mask {tuple(mask.shape)}")
    why = dict(missing or {})
    for name in names:
        if name not in fields:
            fields[name] = {} if name == "extras" else Missing(
                f"batch.{name}", f"the {engine} adapter does not have" + (f": {why[name]}" if why.get(name) else ""))
    return RolloutBatch(**fields)


class EngineContext:
    """StageContext for a stage run by an engine: a seeded generator, counters, per-stage state and log()."""

    def __init__(self, engine: str, seed: int = 0, group_size: int = 1, max_new_tokens: int = 1,
                 temperature: float = 1.0, step: int = 0):
        self.generator = torch.Generator().manual_seed(seed)
        self.group_size, self.max_new_tokens, self.temperature, self.step = group_size, max_new_tokens, temperature, step
        self.state: dict[str, dict] = {}
        self._engine, self._logged = engine, {}

    def log(self, **metrics: float) -> None:
        self._logged.update({k: float(v) for k, v in metrics.items()})

    def take_logged(self) -> dict[str, float]:
        out, self._logged = self._logged, {}
        return out

    def __getattr__(self, name: str):
        if name in CONTEXT_SERVICES:
            raise MissingInput(f"this stage uses ctx.{name}, a service of minirlvr's own trainer that the "
                               f"{self._engine} adapter does not offer")
        raise AttributeError(name)


@dataclasses.dataclass
class Stage:
    """A registered stage resolved for an engine: its entry and its config."""
    entry: registry.StageEntry
    cfg: Any

    @property
    def name(self) -> str:
        return self.entry.name


def resolve(stage: str, name: str, overrides: dict | None, engine: str, has_reference: bool,
            reference_hint: str = "") -> Stage:
    """Look up a registered loss or advantage and build its config; fail early, naming the reason, on what the
    engine cannot run: hidden states, a reference policy the engine will not compute, extras written by another
minirlvr stage, a per-rollout prepare step."""
    registry.load_all()
    entry = registry.get_stage(stage, name)          # unknown name: the error lists the known ones
    cfg = registry.make_config(entry.config, overrides or {}, where=f"{stage} {name!r}")
    needs = entry.needs_for(cfg)
    if "hidden" in needs:
        raise MissingInput(f"{stage} {name!r} needs per-layer hidden states, which {engine} does not expose")
    if "reference" in needs and not has_reference:
        raise MissingInput(f"{stage} {name!r} (at these settings) needs reference log-probs, which {engine} does "
                           f"not give it{': ' + reference_hint if reference_hint else ''}")
    if entry.requires:
        raise MissingInput(f"{stage} {name!r} reads per-row batch.extras {sorted(entry.requires)} that an earlier "
                           f"minirlvr stage writes; the {engine} adapter runs no such stage")
    if entry.prepare is not None:
        raise MissingInput(f"{stage} {name!r} runs a prepare step over the whole rollout before its first "
                           f"minibatch; the {engine} adapter does not run prepare steps yet")
    return Stage(entry, cfg)


def call_loss(stage: Stage, out: PolicyOutput, batch: RolloutBatch, ctx: EngineContext) -> tuple[torch.Tensor, dict]:
    """Run a loss stage and check what it returns: a finite scalar tensor and a dict of numbers (incl. ctx.log)."""
    loss, metrics = stage.entry.fn(out, batch, stage.cfg, ctx)
    if not torch.is_tensor(loss) or loss.dim() != 0:
        raise TypeError(f"loss {stage.name!r} must return a scalar tensor, got {type(loss).__name__} "
                        f"{tuple(loss.shape) if torch.is_tensor(loss) else ''}")
    if not torch.isfinite(loss.detach()):
        raise FloatingPointError(f"loss {stage.name!r} returned a non-finite value {float(loss)}")
    metrics = {k: float(v) for k, v in dict(metrics).items()}
    metrics.update(ctx.take_logged())
    return loss, metrics


def call_advantage(stage: Stage, batch: RolloutBatch, ctx: EngineContext) -> torch.Tensor:
    """Run an advantage stage; returns advantages [B, T] (finite, zero off the response mask)."""
    adv = stage.entry.fn(batch, stage.cfg, ctx)
    if not torch.is_tensor(adv) or adv.shape != batch.response_mask.shape:
        raise TypeError(f"advantage {stage.name!r} must return [B, T] = {tuple(batch.response_mask.shape)}, got "
                        f"{tuple(adv.shape) if torch.is_tensor(adv) else type(adv).__name__}")
    if not torch.isfinite(adv).all():
        raise FloatingPointError(f"advantage {stage.name!r} returned non-finite values")
    return adv
