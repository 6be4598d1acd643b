"""The RL loop. One function, read top to bottom:

    for step:
        problems  = sample_problems(...)              # fresh draws each step, or epochs over a fixed pool
        batch     = rollout(problems)                 # G samples per prompt, old_logp from sampling
        rewards   = reward(batch)
        ref_logp  = reference policy (if a stage needs "reference", or log_ref_kl)
        A         = advantage(batch)                  # [B, T]
        loss.prepare(batch)                           # if the loss has one: once, on the full batch
        for epoch, minibatch:                         # rows, or whole groups if a stage needs "group_minibatches"
            out   = policy_forward(policy, minibatch) # logp, entropy, logits (+ hidden states if needed), with grad
            loss  = loss_fn(out, minibatch)
            step the optimizer (clipped gradient)
        log metrics (+ ctx.log values, + probes every probe_every steps); every eval_every steps evaluate

The trainer acts on what the stages declare at registration (registry: needs, provides / requires,
prepare), never on a method's name or on the name of a field of a stage's config.
old_logp comes from the sampling pass (the policy has not changed since), so there is no extra
forward before the first minibatch.
"""
from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from types import MappingProxyType
from typing import Any, Callable

import numpy as np
import torch

from . import registry
from .metrics import accuracy, entropy_stats, evaluate_policy, length_stats
from .model import GPT, load_checkpoint, save_checkpoint
from .rollout import RolloutBatch, policy_forward
from .core import group_mean_std, kl_estimate, masked_mean


LAST_MINIBATCH_KEYS = ("clipfrac", "clipfrac_high", "clipfrac_low", "ratio_mean", "ppo_kl")  # also logged for the last minibatch alone

# The settings a recipe may fix (Recipe.train_cfg), with the library defaults. In TrainConfig they default to
# None: "the recipe's value, else the default here"; an explicit value always wins (resolve_config).
TRAIN_DEFAULTS: dict[str, Any] = dict(
    steps=300,
    prompts_per_step=16,
    group_size=8,
    minibatches=4,           # optimizer steps per rollout and epoch (>1: off-policy, clipping matters)
    ppo_epochs=1,
    lr=1e-4,                 # AdamW; right for the flat shipped bases (their step_kl at 1e-4 is ~0.1 nats)
    warmup_steps=0,          # linear lr warm-up over the first RL steps (Adam's first steps are sign-like)
    weight_decay=0.0,
    grad_clip=1.0,
    temperature=1.0,         # sampling temperature = the temperature of logp in the loss
    max_new_tokens=None,     # None: the task's default
    difficulty=None,         # training problems: None = the task's default level; a tuple = a mixture
    train_split="train",     # "test": test-time RL on the held-out split (the eval problems come from it too)
    problem_pool=None,       # N: a fixed pool of N training problems drawn once, then sampled in shuffled epochs
)


class TrainingDiverged(RuntimeError):
    """A loss or gradient became NaN/inf; the message names the step and the term."""


@dataclass
class TrainConfig:
    task: str = "addition"
    recipe: str = "grpo"
    rollout: str | None = None      # override the recipe's stage functions by name
    reward: str | None = None
    advantage: str | None = None
    loss: str | None = None
    overrides: dict = field(default_factory=dict)  # {"loss.clip_high": 0.28, "probe.NAME.key": ...} on top of the recipe
    # None below: the recipe's train_cfg value, else TRAIN_DEFAULTS (see there for what each means)
    steps: int | None = None
    prompts_per_step: int | None = None
    group_size: int | None = None
    minibatches: int | None = None
    ppo_epochs: int | None = None
    lr: float | None = None
    warmup_steps: int | None = None
    weight_decay: float | None = None
    grad_clip: float | None = None
    temperature: float | None = None
    max_new_tokens: int | None = None
    difficulty: int | tuple[int, ...] | None = None
    train_split: str | None = None
    problem_pool: int | None = None
    # not settable by a recipe
    eval_every: int = 25
    eval_problems: int = 128
    eval_k: int = 8                 # pass@1..k at temperature 1 from eval_k samples per problem
    eval_seed: int = 12345          # the same held-out problems for every run and seed
    eval_at_start: bool = True      # evaluate the initial policy as step 0 (False: a caller that evaluates the
                                    # shared base once, e.g. the leaderboard)
    eval_difficulty: int | tuple[int, ...] | None = None  # None: the training difficulty (None there: the task's)
    eval_max_new_tokens: int | None = None  # evaluation's length limit; None: the training limit (a length-budget
                                            # recipe can then be evaluated at the task's full budget)
    seed: int = 0
    device: str = "auto"
    init: str | None = None         # starting checkpoint (None: the task's shipped base)
    out_dir: str = "runs"
    name: str | None = None         # run folder name (default <recipe>_<task>_s<seed>)
    save_every: int = 50
    resume: bool = False
    reuse: bool = False             # a finished run of this exact configuration in the run folder is loaded, not rerun
    probes: tuple[str, ...] = ()    # registered probes (analysis per step, registry kind "probe")
    probe_every: int = 1            # run the probes after every probe_every-th step
    entropy_diagnostics: bool = False  # deprecated: = probes=("entropy_change",) every step
    log_ref_kl: bool = True         # log kl_ref = TM(k3(pi_old, pi_init)) each step (one no-grad forward)
    progress: bool = True
    threads: int | None = 1         # torch CPU threads for the run (None: leave torch's setting); see README "Threads"

    def __post_init__(self):
        """One-line ValueErrors naming the field; None (recipe or library default) passes."""
        given = lambda k: getattr(self, k) is not None or k not in TRAIN_DEFAULTS  # noqa: E731
        for k in ("steps", "prompts_per_step", "group_size", "minibatches", "ppo_epochs", "eval_problems",
                  "eval_k", "save_every", "probe_every"):
            if given(k) and (not _is_int(getattr(self, k)) or getattr(self, k) < 1):
                raise ValueError(f"{k} must be a positive integer, got {getattr(self, k)!r}")
        for k in ("eval_every", "warmup_steps"):
            if given(k) and (not _is_int(getattr(self, k)) or getattr(self, k) < 0):
                raise ValueError(f"{k} must be an integer >= 0, got {getattr(self, k)!r}")
        for k in ("lr", "temperature", "grad_clip"):
            if given(k) and not (_is_number(getattr(self, k)) and math.isfinite(getattr(self, k)) and getattr(self, k) > 0):
                raise ValueError(f"{k} must be a finite number > 0, got {getattr(self, k)!r}")
        if given("weight_decay") and not (_is_number(self.weight_decay) and math.isfinite(self.weight_decay)
                                          and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be a finite number >= 0, got {self.weight_decay!r}")
        for k in ("max_new_tokens", "problem_pool", "threads", "eval_max_new_tokens"):
            if getattr(self, k) is not None and (not _is_int(getattr(self, k)) or getattr(self, k) < 1):
                raise ValueError(f"{k} must be a positive integer or None, got {getattr(self, k)!r}")
        for k in ("difficulty", "eval_difficulty"):
            if isinstance(getattr(self, k), list):
                setattr(self, k, tuple(getattr(self, k)))
            v = getattr(self, k)
            if v is not None and not (_is_int(v) or (isinstance(v, tuple) and v and all(map(_is_int, v)))):
                raise ValueError(f"{k} must be a level (int), a non-empty tuple of levels (a mixture) or None, got {v!r}")
        if self.train_split not in (None, "train", "test"):
            raise ValueError(f"train_split must be 'train' or 'test', got {self.train_split!r}")
        if isinstance(self.probes, list):
            self.probes = tuple(self.probes)
        if not (isinstance(self.probes, tuple) and all(isinstance(p, str) for p in self.probes)):
            raise ValueError(f"probes must be a tuple of probe names, got {self.probes!r}")
        if self.entropy_diagnostics and self.probe_every != 1:
            raise ValueError("entropy_diagnostics (deprecated) runs the 'entropy_change' probe every step; "
                             f"for probe_every={self.probe_every!r} use probes=('entropy_change',) instead")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"device must be auto, cpu or cuda[:N], got {self.device!r}")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def resolve_config(cfg: TrainConfig) -> tuple[TrainConfig, dict[str, str]]:
    """The effective settings of a run. Each field of TRAIN_DEFAULTS is the explicit value if given, else the
    recipe's train_cfg value, else the library default; the deprecated entropy_diagnostics becomes the probe.
    Returns (the resolved TrainConfig, {field: "explicit" | "recipe '<name>'" | "default"})."""
    recipe = registry.get_recipe(cfg.recipe)
    unknown = sorted(set(recipe.train_cfg) - set(TRAIN_DEFAULTS))
    if unknown:
        raise ValueError(f"recipe {recipe.name!r}: unknown train_cfg setting(s) {unknown}; "
                         f"a recipe may set {', '.join(TRAIN_DEFAULTS)}")
    try:
        TrainConfig(**recipe.train_cfg)
    except ValueError as e:
        raise ValueError(f"recipe {recipe.name!r} train_cfg: {e}") from None
    values, sources = {}, {}
    for k, default in TRAIN_DEFAULTS.items():
        if getattr(cfg, k) is not None:
            values[k], sources[k] = getattr(cfg, k), "explicit"
        elif k in recipe.train_cfg:
            values[k], sources[k] = recipe.train_cfg[k], f"recipe {recipe.name!r}"
        else:
            values[k], sources[k] = default, "default"
    if cfg.entropy_diagnostics and "entropy_change" not in cfg.probes:  # the deprecated flag, as a probe
        values["probes"] = cfg.probes + ("entropy_change",)
    return replace(cfg, **values), sources


class History(Sequence):
    """ctx.history: a read-only view of the step records logged so far (the first may be the step-0 eval)."""

    def __init__(self, records: list[dict]):
        self._records = records

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [MappingProxyType(r) for r in self._records[i]]
        return MappingProxyType(self._records[i])


def _number(name: str, v: Any) -> float | int:
    """A metric value for the step's record: an int or float (a 1-element tensor / numpy number is unwrapped)."""
    if isinstance(v, np.generic) or (isinstance(v, torch.Tensor) and v.numel() == 1):
        v = v.item()
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"metric {name!r} must be a number, got {type(v).__name__} {v!r}")
    return v


@dataclass
class StageContext:
    """What a stage function or probe may use besides its batch and config: run-level services only.
    A method keeps its own data in ctx.state[its registered name] (or in typed RolloutBatch fields),
    never in new fields here."""
    policy: GPT
    ref_policy: GPT | None
    task: Any
    group_size: int
    max_new_tokens: int
    temperature: float
    generator: torch.Generator
    rng: np.random.Generator
    score: Callable[[RolloutBatch], torch.Tensor]   # the run's reward stage
    sample_problems: Callable[[int], list]          # n training problems (the run's split, difficulty, pool)
    step: int = 0
    state: dict[str, dict] = field(default_factory=dict)  # per run: ctx.state[stage name] is that stage's dict,
                                                           # saved in trainer_state.pt and restored on resume
    history: Sequence = ()                                 # read-only: the step records logged so far
    _logged: dict = field(default_factory=dict, repr=False)

    def log(self, **metrics: float) -> None:
        """Numbers merged into this step's record under these names, e.g. ctx.log(**{"siren/H0": h})
        (a name logged twice in one step keeps the last value). For stages; a probe returns its metrics."""
        self._logged.update({k: _number(k, v) for k, v in metrics.items()})

    def _take_logged(self) -> dict:  # the trainer's: this step's ctx.log values, emptied for the next step
        out, self._logged = self._logged, {}
        return out


@dataclass
class Pipeline:
    rollout: registry.StageEntry
    reward: registry.StageEntry
    advantage: registry.StageEntry
    loss: registry.StageEntry
    configs: dict[str, Any]                  # stage -> its config; probe NAME -> "probe.NAME"
    probes: list = field(default_factory=list)             # registry entries of the run's probes
    needs: dict[str, list] = field(default_factory=dict)   # declared need -> who declares it, e.g. ["advantage 'grpo'"]

    def entries(self) -> list[registry.StageEntry]:
        return [getattr(self, s) for s in registry.STAGES] + self.probes

    def config_of(self, entry: registry.StageEntry) -> Any:
        return self.configs[f"probe.{entry.name}" if entry.stage == "probe" else entry.stage]


def build_pipeline(cfg: TrainConfig) -> Pipeline:
    """Resolve the recipe, the CLI stage overrides, the config overrides and the probes, check that every
    extras key a stage requires is provided by an earlier stage, and collect the declared needs.
    Every error is a ValueError."""
    recipe = registry.get_recipe(cfg.recipe)
    entries, configs = {}, {}
    for stage in registry.STAGES:
        name = getattr(cfg, stage) or getattr(recipe, stage)
        entries[stage] = registry.get_stage(stage, name)
        # the recipe's settings belong to its own choice of function
        base = getattr(recipe, f"{stage}_cfg") if name == getattr(recipe, stage) else {}
        extra = {k.split(".", 1)[1]: v for k, v in cfg.overrides.items() if k.split(".", 1)[0] == stage}
        configs[stage] = registry.make_config(entries[stage].config, {**base, **extra}, where=f"{stage} {name!r}")
    probes = []
    for name in dict.fromkeys(cfg.probes):
        probes.append(registry.get_stage("probe", name))
        extra = {k.split(".", 2)[2]: v for k, v in cfg.overrides.items() if k.startswith(f"probe.{name}.")}
        configs[f"probe.{name}"] = registry.make_config(probes[-1].config, extra, where=f"probe {name!r}")
    bad = [k for k in cfg.overrides if "." not in k or k.split(".", 1)[0] not in registry.STAGES + ("probe",)
           or (k.startswith("probe.") and (k.count(".") < 2 or k.split(".")[1] not in cfg.probes))]
    if bad:
        raise ValueError(f"overrides must look like 'stage.key' with stage in {registry.STAGES}, "
                         f"or 'probe.NAME.key' for a probe of the run, got {bad}")
    pipe = Pipeline(**entries, configs=configs, probes=probes)
    _check_extras(pipe.entries())
    for e in pipe.entries():
        for need in sorted(e.needs_for(pipe.config_of(e))):
            pipe.needs.setdefault(need, []).append(f"{e.stage} {e.name!r}")
    return pipe


def _check_extras(entries: list[registry.StageEntry]) -> None:
    """Every batch.extras key a stage (or probe) requires must be provided by an earlier stage."""
    for i, e in enumerate(entries):
        missing = sorted(e.requires - set().union(*(x.provides for x in entries[:i])))
        if missing:
            earlier = ", ".join(f"{x.stage} {x.name!r}" for x in entries[:i] if x.stage != "probe") or "none"
            providers = ", ".join(f"{x.stage} {x.name!r}" for fns in registry.list_stages().values()
                                  for x in fns.values() if x.provides & set(missing)) or "none registered"
            raise ValueError(f"{e.stage} {e.name!r} requires extras {missing}, which no earlier stage of this "
                             f"pipeline provides ({earlier}); stages that provide it: {providers}")


class ProblemSource:
    """ctx.sample_problems: n training problems per call, drawn from the run's rng. Fresh draws from the
    task (split, difficulty) every call; or, with pool=N, a fixed pool of N problems drawn once at the start,
    then served in shuffled epochs (a call may span two epochs). Without a pool it draws exactly as
    task.sample(n, rng, split, difficulty): no extra randomness."""

    def __init__(self, task, rng: np.random.Generator, split: str, difficulty, pool: int | None):
        self.task, self.rng, self.split, self.difficulty = task, rng, split, difficulty
        self.pool = task.sample(pool, rng, split=split, difficulty=difficulty) if pool else None
        self.order, self.pos = [], 0

    def __call__(self, n: int) -> list:
        if self.pool is None:
            return self.task.sample(n, self.rng, split=self.split, difficulty=self.difficulty)
        out = []
        while len(out) < n:
            if self.pos == len(self.order):  # a new epoch
                self.order, self.pos = self.rng.permutation(len(self.pool)).tolist(), 0
            take = self.order[self.pos:self.pos + n - len(out)]
            out += [self.pool[i] for i in take]
            self.pos += len(take)
        return out

    def state_dict(self) -> dict:
        return {"order": self.order, "pos": self.pos}

    def load_state_dict(self, st: dict) -> None:
        self.order, self.pos = list(st["order"]), int(st["pos"])


def minibatch_indices(batch: RolloutBatch, n: int, generator: torch.Generator, device,
                      whole_groups: bool = False) -> list[torch.Tensor]:
    """Row indices of the n minibatches of one epoch: a random permutation of the rows cut in n, or
    (whole_groups) of the group ids, so that a group's rows stay together (fewer than n if there are
    fewer groups)."""
    if not whole_groups:
        return list(torch.randperm(batch.size, generator=generator, device=device).chunk(n))
    _, group_of_row = torch.unique(batch.group_ids, return_inverse=True)
    perm = torch.randperm(int(group_of_row.max()) + 1, generator=generator, device=device)
    return [torch.nonzero(torch.isin(group_of_row, groups)).squeeze(1) for groups in perm.chunk(n)]


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but no GPU is available")
    return torch.device(name)


def _check_finite(step: int, loss: torch.Tensor, terms: dict, where: str):
    if torch.isfinite(loss):
        return
    bad = [k for k, v in terms.items() if isinstance(v, float) and not math.isfinite(v)]
    raise TrainingDiverged(f"step {step + 1}: {where} is {float(loss.detach())}" + (f" (non-finite terms: {bad})" if bad else ""))


def _rng_state(gen: torch.Generator, rng: np.random.Generator) -> dict:
    return {"torch_gen": gen.get_state(), "torch_cpu": torch.get_rng_state(), "numpy": json.dumps(rng.bit_generator.state)}


def _checked_state(state: dict) -> dict:
    """ctx.state as saved in trainer_state.pt, which must load with torch.load(weights_only=True):
    only tensors, numbers, strings, None, and lists / tuples / dicts of them."""
    def check(v, where):
        if type(v) is dict:
            for k, x in v.items():
                if type(k) not in (str, int):
                    raise ValueError(f"{where} has the key {k!r}: stage state keys must be strings or ints")
                check(x, f"{where}[{k!r}]")
        elif type(v) in (list, tuple):
            for i, x in enumerate(v):
                check(x, f"{where}[{i}]")
        elif not (isinstance(v, torch.Tensor) or type(v) in (int, float, bool, str, type(None))):
            raise ValueError(f"{where} holds a {type(v).__name__}: stage state must be tensors, numbers, strings, "
                             f"lists or dicts (it is saved in trainer_state.pt and loaded with weights_only=True)")
    for name, d in state.items():
        if type(d) is not dict:
            raise ValueError(f"ctx.state[{name!r}] must be a dict, got {type(d).__name__}")
        check(d, f"ctx.state[{name!r}]")
    return state


# TrainConfig fields that do not change a run's numbers: ignored when deciding whether a finished run is reusable
_NOT_RESULTS = ("out_dir", "name", "save_every", "resume", "reuse", "progress")
# TrainConfig fields newer than some saved runs, with the value that reproduces what those runs did
_ADDED_LATER = {"eval_max_new_tokens": None, "eval_at_start": True}


def _finished_run(run_dir: str, record: dict, steps: int, device) -> dict | None:
    """The history, final policy and stage state of the run in run_dir if it finished all `steps` with the
    configuration `record` (what config.json holds; fields in _NOT_RESULTS aside), else None. Reuse trusts the
    folder: it cannot tell that the code changed since the run (delete the folder then)."""
    paths = [os.path.join(run_dir, f) for f in ("config.json", "metrics.jsonl", "policy.pt", "trainer_state.pt")]
    if not all(os.path.isfile(p) for p in paths):
        return None
    # where a setting came from (explicit / recipe / default) does not matter, only its resolved value; a
    # setting added to TrainConfig after the run was made counts as equal when it is at its old behaviour's value
    strip = lambda r: {**{k: v for k, v in r.items() if k != "train_sources"},  # noqa: E731
                       "train": {k: v for k, v in r["train"].items()
                                 if k not in _NOT_RESULTS and not (k in _ADDED_LATER and v == _ADDED_LATER[k])}}
    try:
        with open(paths[0]) as f:
            saved = json.load(f)
        with open(paths[1]) as f:
            history = [json.loads(line) for line in f]
        same = strip(saved) == strip(json.loads(json.dumps(record, default=str)))
    except (ValueError, KeyError, TypeError):
        return None
    if not same or not history or history[-1].get("step") != steps:
        return None
    st = torch.load(paths[3], weights_only=True, map_location="cpu")
    if int(st.get("step", -1)) != steps:
        return None
    policy, _ = load_checkpoint(paths[2], device)
    return {"history": history, "policy": policy, "state": st.get("state", {})}


def train(cfg: TrainConfig) -> dict:
    """Run RL; returns {"history": [per-step dicts], "run_dir": str, "policy": GPT, "state": ctx.state,
    "config": the resolved TrainConfig}.
    Uses `cfg.threads` torch threads while it runs (the same seed gives the same numbers for a
    given thread count; another count may round differently) and restores the setting after."""
    previous_threads = torch.get_num_threads()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    try:
        return _train(cfg)
    finally:
        torch.set_num_threads(previous_threads)


def _train(cfg: TrainConfig) -> dict:
    from toy_tasks import get_task
    from .sft import default_checkpoint
    cfg, sources = resolve_config(cfg)
    task = get_task(cfg.task)
    task.check_difficulty(cfg.difficulty)
    pipe = build_pipeline(cfg)
    if "groups" in pipe.needs and cfg.group_size < 2:
        raise ValueError(f"{', '.join(pipe.needs['groups'])} needs group statistics: group_size must be >= 2")
    if "group_minibatches" in pipe.needs and cfg.prompts_per_step < cfg.minibatches:
        raise ValueError(f"{', '.join(pipe.needs['group_minibatches'])} needs whole groups per minibatch: "
                         f"prompts_per_step ({cfg.prompts_per_step}) must be >= minibatches ({cfg.minibatches})")
    device = _resolve_device(cfg.device)
    max_new = cfg.max_new_tokens or task.max_new_tokens
    eval_max_new = cfg.eval_max_new_tokens or max_new
    run_dir = os.path.join(cfg.out_dir, cfg.name or f"{cfg.recipe}_{cfg.task}_s{cfg.seed}")
    os.makedirs(run_dir, exist_ok=True)
    ckpt_path, state_path = os.path.join(run_dir, "policy.pt"), os.path.join(run_dir, "trainer_state.pt")

    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    init = cfg.init or default_checkpoint(cfg.task)
    policy, _ = load_checkpoint(ckpt_path if cfg.resume else init, device)
    ref_policy = load_checkpoint(init, device)[0] if "reference" in pipe.needs or cfg.log_ref_kl else None
    opt = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)
    warmup = lambda step: min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0  # noqa: E731
    eval_difficulty = cfg.difficulty if cfg.eval_difficulty is None else cfg.eval_difficulty
    eval_problems = task.sample(cfg.eval_problems, np.random.default_rng(cfg.eval_seed), split="test",
                                difficulty=eval_difficulty)
    problems = ProblemSource(task, rng, cfg.train_split, cfg.difficulty, cfg.problem_pool)  # a pool: drawn here
    state = {e.name: {} for e in pipe.entries()}

    record = {"train": asdict(cfg), "train_sources": sources,
              "stages": {s: getattr(pipe, s).name for s in registry.STAGES},
              "needs": {k: v for k, v in sorted(pipe.needs.items())},
              "stage_configs": {s: asdict(c) if c is not None else None for s, c in pipe.configs.items()}}
    if cfg.reuse and not cfg.resume:
        done = _finished_run(run_dir, record, cfg.steps, device)
        if done is not None:
            return {**done, "run_dir": run_dir, "config": cfg}

    history, start = [], 0
    if cfg.resume:
        if not os.path.isfile(state_path):
            raise ValueError(f"cannot resume: {state_path} does not exist")
        # CPU tensors (RNG states) stay on the CPU; GPU ones (optimizer, ctx.state) go to this run's device
        st = torch.load(state_path, weights_only=True,
                        map_location=lambda s, loc: s if loc == "cpu" else s.to(device=device))
        opt.load_state_dict(st["optimizer"])
        start = int(st["step"])
        gen.set_state(st["rng"]["torch_gen"]); torch.set_rng_state(st["rng"]["torch_cpu"])
        rng.bit_generator.state = json.loads(st["rng"]["numpy"])
        state.update(st.get("state", {}))
        if "problems" in st:
            problems.load_state_dict(st["problems"])
        with open(os.path.join(run_dir, "metrics.jsonl")) as f:
            history = [h for h in map(json.loads, f) if h["step"] <= start]
    else:
        with open(os.path.join(run_dir, "config.json"), "w") as f:
            json.dump(record, f, indent=1, default=str)

    def score(b: RolloutBatch) -> torch.Tensor:
        return pipe.reward.fn(b, pipe.configs["reward"], ctx).float()

    ctx = StageContext(policy, ref_policy, task, cfg.group_size, max_new, cfg.temperature, gen, rng, score,
                       problems, state=state, history=History(history))
    log = open(os.path.join(run_dir, "metrics.jsonl"), "w")
    for h in history:  # on resume: the log up to the checkpoint's step
        log.write(json.dumps(h) + "\n")
    if not history and cfg.eval_every and cfg.eval_at_start:
        history.append({"step": 0, **{f"eval/{k}": v for k, v in
                                      evaluate_policy(policy, task, eval_problems, cfg.eval_k, eval_max_new, cfg.eval_seed).items()}})
        log.write(json.dumps(history[-1]) + "\n"); log.flush()

    steps = range(start, cfg.steps)
    if cfg.progress:
        from tqdm import tqdm
        steps = tqdm(steps, desc=f"{cfg.recipe} {cfg.task} s{cfg.seed}", initial=start, total=cfg.steps)
    for step in steps:
        t0 = time.perf_counter()
        ctx.step = step
        policy.train()
        for group in opt.param_groups:
            group["lr"] = cfg.lr * warmup(step)
        # ---- rollout, reward, reference, advantage, the loss's per-step preparation
        batch = pipe.rollout.fn(ctx.sample_problems(cfg.prompts_per_step), pipe.configs["rollout"], ctx)
        if batch.rewards is None:
            batch.rewards = score(batch)
        batch.rewards = batch.rewards.to(device)
        if ref_policy is not None:
            with torch.no_grad():
                batch.ref_logp = policy_forward(ref_policy, batch).logp
        batch.advantages = pipe.advantage.fn(batch, pipe.configs["advantage"], ctx).to(device)
        if pipe.loss.prepare is not None:
            pipe.loss.prepare(batch, pipe.configs["loss"], ctx)
        t_rollout = time.perf_counter() - t0
        # ---- updates
        terms: dict[str, list] = {}
        for epoch in range(cfg.ppo_epochs):
            for mb_idx in minibatch_indices(batch, cfg.minibatches, gen, device, "group_minibatches" in pipe.needs):
                mb = batch.select(mb_idx)
                opt.zero_grad(set_to_none=True)  # each optimizer step sees its own minibatch's gradient only
                out = policy_forward(policy, mb, output_hidden="hidden" in pipe.needs)
                loss, m = pipe.loss.fn(out, mb, pipe.configs["loss"], ctx)
                _check_finite(step, loss, m, f"loss {pipe.loss.name!r}")
                loss.backward()
                gnorm = torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.grad_clip)
                if not torch.isfinite(gnorm):
                    bad = [n for n, p in policy.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
                    raise TrainingDiverged(f"step {step + 1}: gradient of loss {pipe.loss.name!r} is non-finite "
                                           f"(parameters {bad[:3]}); last good checkpoint: {ckpt_path}")
                opt.step()
                for k, v in {**m, "loss": float(loss.detach()), "grad_norm": float(gnorm)}.items():
                    terms.setdefault(k, []).append(float(v))
        # ---- metrics
        probed = {}
        if pipe.probes and (step + 1) % cfg.probe_every == 0:
            for p in pipe.probes:
                probed.update({k: _number(k, v) for k, v in p.fn(policy, batch, pipe.config_of(p), ctx).items()})
        rewards = batch.rewards.float().cpu()
        _, gstd = group_mean_std(rewards, batch.group_ids.cpu())
        rec = {"step": step + 1, "reward": float(rewards.mean()), "accuracy": accuracy(rewards),
               **entropy_stats(batch.old_entropy, batch.response_mask),
               **length_stats(batch.response_mask, batch.truncated),
               "frac_reward_zero_std": float((gstd == 0).float().mean()),
               **({"kl_ref": float(masked_mean(kl_estimate(batch.old_logp, batch.ref_logp, "k3"), batch.response_mask))}
                  if batch.ref_logp is not None else {}),
               **{k: float(np.mean(v)) for k, v in terms.items()},
               # the last optimizer step of the rollout is the most off-policy one: clipping shows there
               **{f"{k}_last": v[-1] for k, v in terms.items() if len(v) > 1 and k in LAST_MINIBATCH_KEYS},
               **ctx._take_logged(), **probed}
        rec["time_rollout"] = t_rollout
        rec["time_step"] = time.perf_counter() - t0
        if cfg.eval_every and ((step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps):
            ev = evaluate_policy(policy, task, eval_problems, cfg.eval_k, eval_max_new, cfg.eval_seed)
            rec.update({f"eval/{k}": v for k, v in ev.items()})
        history.append(rec)
        log.write(json.dumps(rec) + "\n"); log.flush()
        if cfg.progress:
            steps.set_postfix(reward=f"{rec['reward']:.2f}", entropy=f"{rec['entropy']:.3f}")
        if (step + 1) % cfg.save_every == 0 or step + 1 == cfg.steps:
            save_checkpoint(ckpt_path, policy, meta={"task": cfg.task, "recipe": cfg.recipe, "step": step + 1})
            torch.save({"optimizer": opt.state_dict(), "step": step + 1, "rng": _rng_state(gen, rng),
                        "state": _checked_state(ctx.state), "problems": problems.state_dict()}, state_path)
    log.close()
    return {"history": history, "run_dir": run_dir, "policy": policy, "state": ctx.state, "config": cfg}
