"""Name -> stage function, and recipes (a paper's choice of stages and settings).

Four stages, one signature each (ctx is the trainer's StageContext):

  rollout   fn(problems, cfg, ctx) -> RolloutBatch
  reward    fn(batch, cfg, ctx) -> rewards [B]
  advantage fn(batch, cfg, ctx) -> advantages [B, T]
  loss      fn(out: PolicyOutput, batch, cfg, ctx) -> (scalar loss, metrics dict)

plus probes, which are not a stage of the pipeline but analysis run every `probe_every` steps:

  probe     fn(policy, batch, cfg, ctx) -> {metric name: float}   (merged into the step's record)

A stage function is registered where it is defined:

    @register("loss", "my_loss", config=MyLossConfig, paper="Me et al., 2026")
    def my_loss(out, batch, cfg, ctx): ...

and declares at registration what the trainer must do for it (the trainer acts on declarations,
never on a method's name or a config field's name):

    needs     {"reference", "hidden", "groups", "group_minibatches"} or a function cfg -> such a set:
              reference          load the reference policy; batch.ref_logp is filled
              hidden             the loss's PolicyOutput carries per-layer hidden states
              groups             statistics over the G samples of a prompt: group_size must be >= 2
              group_minibatches  minibatches hold whole groups (group ids are permuted, not rows)
    provides  per-row batch.extras keys the stage writes;  requires: keys it reads.
              build_pipeline checks that an earlier stage of the pipeline provides every required key.
    prepare   loss only: prepare(batch, cfg, ctx) -> None, once per RL step on the full batch,
              after the advantages (and ref_logp), before the first optimizer step.

A recipe names one function per stage plus config overrides, and may fix trainer settings
(an explicit TrainConfig / CLI value still wins):

    register_recipe(Recipe("my_method", loss="my_loss", loss_cfg={"beta": 0.1}, train_cfg={"minibatches": 8}))

A config dataclass checks its own ranges at construction (Python or CLI alike), e.g.

    def __post_init__(self):
        check_range(self, "beta", lo=0.0)    # ValueError "MyLossConfig.beta must be >= 0, got -1.0"
"""
from __future__ import annotations

import ast
import dataclasses
import importlib
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Callable

STAGES = ("rollout", "reward", "advantage", "loss")
KINDS = STAGES + ("probe",)   # what `register` accepts: the pipeline stages and probes
NEEDS = ("reference", "hidden", "groups", "group_minibatches")

Needs = typing.Union[frozenset, Callable[[Any], typing.AbstractSet[str]]]


@dataclass
class StageEntry:
    name: str
    stage: str            # one of KINDS
    fn: Callable
    config: type | None   # a dataclass of the function's settings (None: takes no settings)
    paper: str            # where it comes from, for `minirlvr list`
    needs: Needs = frozenset()              # a set of NEEDS, or a function config -> such a set
    provides: frozenset = frozenset()       # per-row batch.extras keys this stage writes
    requires: frozenset = frozenset()       # per-row batch.extras keys it reads
    prepare: Callable | None = None         # loss only: prepare(batch, cfg, ctx), once per RL step

    def needs_for(self, cfg: Any) -> frozenset:
        """The declared needs at this config (a function of the config is called with it)."""
        needs = frozenset(self.needs(cfg) if callable(self.needs) else self.needs)
        _check_needs(needs, f"{self.stage} {self.name!r}")
        return needs


@dataclass
class Recipe:
    """A named pipeline: one registered function per stage + overrides of their configs and of the trainer's."""
    name: str
    paper: str = ""
    rollout: str = "plain"
    reward: str = "verifier"
    advantage: str = "grpo"
    loss: str = "ppo_clip"
    rollout_cfg: dict = field(default_factory=dict)
    reward_cfg: dict = field(default_factory=dict)
    advantage_cfg: dict = field(default_factory=dict)
    loss_cfg: dict = field(default_factory=dict)
    train_cfg: dict = field(default_factory=dict)  # TrainConfig settings (e.g. minibatches); explicit values win


_STAGES: dict[str, dict[str, StageEntry]] = {s: {} for s in KINDS}
_RECIPES: dict[str, Recipe] = {}


def _check_needs(needs, where: str) -> None:
    unknown = sorted(set(needs) - set(NEEDS))
    if unknown:
        raise ValueError(f"{where}: unknown need(s) {unknown}; known needs: {', '.join(NEEDS)}")


def register(stage: str, name: str, config: type | None = None, paper: str = "", *, needs: Needs = frozenset(),
             provides=(), requires=(), prepare: Callable | None = None):
    """Decorator: register `fn` as stage function (or probe) `name`, with its declarations (module doc)."""
    if stage not in KINDS:
        raise ValueError(f"unknown stage {stage!r}; stages are {', '.join(STAGES)} (and 'probe')")
    if config is not None and not dataclasses.is_dataclass(config):
        raise TypeError(f"config for {stage} {name!r} must be a dataclass, got {config!r}")
    where = f"{stage} {name!r}"
    if not callable(needs):
        if isinstance(needs, str):
            raise TypeError(f"{where}: needs must be a set of names or a function cfg -> set, got the string {needs!r}")
        needs = frozenset(needs)
        _check_needs(needs, where)
    if isinstance(provides, str) or isinstance(requires, str):
        raise TypeError(f"{where}: provides / requires must be collections of extras keys, not a string")
    if prepare is not None and stage != "loss":
        raise ValueError(f"{where}: only a loss may have a prepare function")
    if provides and stage == "probe":
        raise ValueError(f"{where}: a probe provides no extras (it runs after the updates)")

    def deco(fn):
        if name in _STAGES[stage] and _STAGES[stage][name].fn is not fn:
            raise ValueError(f"{stage} function {name!r} is already registered")
        _STAGES[stage][name] = StageEntry(name, stage, fn, config, paper, needs, frozenset(provides),
                                          frozenset(requires), prepare)
        return fn
    return deco


def register_recipe(recipe: Recipe) -> Recipe:
    if recipe.name in _RECIPES and _RECIPES[recipe.name] != recipe:
        raise ValueError(f"recipe {recipe.name!r} is already registered")
    _RECIPES[recipe.name] = recipe
    return recipe


def load_all() -> None:
    """Import every module that registers stages (baselines + one module per paper)."""
    importlib.import_module("minirlvr.baselines")
    importlib.import_module("minirlvr.methods")


def get_stage(stage: str, name: str) -> StageEntry:
    """The stage function (or, with stage="probe", the probe) registered as `name`."""
    load_all()
    if stage not in KINDS:
        raise ValueError(f"unknown stage {stage!r}; stages are {', '.join(STAGES)} (and 'probe')")
    if name not in _STAGES[stage]:
        raise ValueError(f"unknown {stage} function {name!r}; known: {', '.join(sorted(_STAGES[stage]))}")
    return _STAGES[stage][name]


def get_recipe(name: str) -> Recipe:
    load_all()
    if name not in _RECIPES:
        raise ValueError(f"unknown recipe {name!r}; known recipes: {', '.join(sorted(_RECIPES))}")
    return _RECIPES[name]


def list_stages() -> dict[str, dict[str, StageEntry]]:
    """The four pipeline stages' registered functions (probes: `list_probes`)."""
    load_all()
    return {s: dict(sorted(_STAGES[s].items())) for s in STAGES}


def list_probes() -> dict[str, StageEntry]:
    load_all()
    return dict(sorted(_STAGES["probe"].items()))


def list_recipes() -> dict[str, Recipe]:
    load_all()
    return dict(sorted(_RECIPES.items()))


def check_range(cfg: Any, name: str, lo: float | None = None, hi: float | None = None,
                lo_open: bool = False, hi_open: bool = False) -> None:
    """For a config's __post_init__: `cfg.name` must be a finite number in the interval given by lo / hi
    (closed unless lo_open / hi_open; None: unbounded on that side). None values pass (Optional settings).
    Raises a one-line ValueError naming the setting, e.g. "PPOClipConfig.clip_low must be >= 0, got -1.0"."""
    value = getattr(cfg, name)
    if value is None:
        return
    where = f"{type(cfg).__name__}.{name}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{where} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{where} must be finite, got {value!r}")
    below = lo is not None and (value <= lo if lo_open else value < lo)
    above = hi is not None and (value >= hi if hi_open else value > hi)
    if below or above:
        if lo is not None and hi is not None:
            rule = f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
        elif lo is not None:
            rule = f"{'>' if lo_open else '>='} {lo:g}"
        else:
            rule = f"{'<' if hi_open else '<='} {hi:g}"
        raise ValueError(f"{where} must be {rule}, got {value!r}")


def _coerce(value: Any, typ: Any, where: str) -> Any:
    """Check/convert one config value to its annotated type; strings from the CLI are parsed.
    Floats must be finite (nan / inf are errors)."""
    origin, args = typing.get_origin(typ), typing.get_args(typ)
    if origin in (typing.Union, types.UnionType):  # Optional[X] / X | None
        if type(None) in args and (value is None or (isinstance(value, str) and value.lower() == "none")):
            return None
        reasons = []
        for a in args:
            if a is not type(None):
                try:
                    return _coerce(value, a, where)
                except ValueError as e:
                    reasons.append(str(e).removeprefix(where).lstrip(": "))
        raise ValueError(f"{where}: {value!r} fits none of {typ} ({'; '.join(reasons)})")
    if origin is typing.Literal:
        if value not in args:
            raise ValueError(f"{where}: {value!r} is not one of {args}")
        return value
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ValueError(f"{where}: expected a bool, got {value!r}")
    if typ in (int, float):
        if isinstance(value, bool):
            raise ValueError(f"{where}: expected {typ.__name__}, got the bool {value!r}")
        try:
            out = typ(value) if isinstance(value, str) else value
        except ValueError:
            raise ValueError(f"{where}: expected {typ.__name__}, got {value!r}") from None
        if typ is int and isinstance(out, float):
            if not out.is_integer():
                raise ValueError(f"{where}: expected an int, got {value!r}")
            out = int(out)
        if typ is float and isinstance(out, int):
            out = float(out)
        if not isinstance(out, typ):
            raise ValueError(f"{where}: expected {typ.__name__}, got {value!r}")
        if typ is float and not math.isfinite(out):
            raise ValueError(f"{where} must be finite, got {value!r}")
        return out
    if typ is str:
        if not isinstance(value, str):
            raise ValueError(f"{where}: expected a string, got {value!r}")
        return value
    if typ in (tuple, list) or origin in (tuple, list):
        kind = origin or typ
        items = _parse_items(value, where) if isinstance(value, str) else value
        if not isinstance(items, (tuple, list)):
            raise ValueError(f"{where}: expected a {kind.__name__}, got {value!r}")
        if kind is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):   # tuple[X, Y]: fixed length
            if len(items) != len(args):
                raise ValueError(f"{where}: expected {len(args)} values ({typ}), got {len(items)} in {value!r}")
            return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(items, args)))
        elem = args[0] if args else Any
        return kind(_coerce(v, elem, f"{where}[{i}]") for i, v in enumerate(items))
    if typ is dict or origin is dict:
        if isinstance(value, str):
            try:
                value = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                raise ValueError(f"{where}: expected a dict such as {{'a': 1}}, got {value!r}") from None
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a dict, got {value!r}")
        kt, vt = args if args else (Any, Any)
        return {_coerce(k, kt, f"{where} key"): _coerce(v, vt, f"{where}[{k!r}]") for k, v in value.items()}
    return value  # other annotations (Any, classes): taken as given


def _parse_items(text: str, where: str) -> list:
    """A CLI string as a list of items: "1,2,3", "(1, 2)", "[0.1, 0.2]", "a,b" or "" (empty)."""
    text = text.strip()
    if text[:1] in "([" and text[-1:] in ")]":
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = None
        if isinstance(value, (tuple, list)):
            return list(value)
        text = text[1:-1]
    return [part.strip() for part in text.split(",")] if text.strip() else []


def make_config(config_cls: type | None, overrides: dict | None = None, where: str = "config"):
    """Instantiate a config dataclass with overrides; unknown keys and ill-typed values are errors."""
    overrides = dict(overrides or {})
    if config_cls is None:
        if overrides:
            raise ValueError(f"{where} takes no settings, got {sorted(overrides)}")
        return None
    hints = typing.get_type_hints(config_cls)
    names = [f.name for f in dataclasses.fields(config_cls)]
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise ValueError(f"{where}: unknown setting(s) {unknown}; valid settings: {', '.join(names)}")
    values = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in overrides.items()}
    try:
        return config_cls(**values)
    except ValueError as e:  # a range check of the config's __post_init__
        raise ValueError(f"{where}: {e}") from None
