"""The RL loop. One function, read top to bottom:

    for step:
        problems  = task.sample(...)
        batch     = rollout(problems)                 # G samples per prompt, old_logp from sampling
        rewards   = reward(batch)
        ref_logp  = reference policy (only if a stage asks for KL)
        A         = advantage(batch)                  # [B, T]
        for epoch, minibatch:
            out   = policy_forward(policy, minibatch) # logp, entropy, logits with grad
            loss  = loss_fn(out, minibatch)
            step the optimizer (clipped gradient)
        log metrics; every eval_every steps evaluate on held-out problems

old_logp comes from the sampling pass (the policy has not changed since), so
there is no extra forward before the first minibatch.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from . import registry
from .metrics import accuracy, entropy_stats, evaluate_policy, length_stats
from .model import GPT, load_checkpoint, save_checkpoint
from .rollout import RolloutBatch, policy_forward
from .core import group_mean_std, kl_estimate, masked_mean


LAST_MINIBATCH_KEYS = ("clipfrac", "ratio_mean", "ppo_kl")  # also logged for the last minibatch alone


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
    overrides: dict = field(default_factory=dict)  # {"loss.clip_high": 0.28, ...} on top of the recipe
    steps: int = 300
    prompts_per_step: int = 16
    group_size: int = 8
    minibatches: int = 4            # optimizer steps per rollout and epoch (>1: off-policy, clipping matters)
    ppo_epochs: int = 1
    lr: float = 1e-4                # AdamW; right for the flat shipped bases (their step_kl at 1e-4 is ~0.1 nats)
    warmup_steps: int = 0           # linear lr warm-up over the first RL steps (Adam's first steps are sign-like)
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    temperature: float = 1.0        # sampling temperature = the temperature of logp in the loss
    max_new_tokens: int | None = None  # None: the task's default
    eval_every: int = 25
    eval_problems: int = 128
    eval_k: int = 8                 # pass@1..k at temperature 1 from eval_k samples per problem
    eval_seed: int = 12345          # the same held-out problems for every run and seed
    seed: int = 0
    device: str = "auto"
    init: str | None = None         # starting checkpoint (None: the task's shipped base)
    out_dir: str = "runs"
    name: str | None = None         # run folder name (default <recipe>_<task>_s<seed>)
    save_every: int = 50
    resume: bool = False
    entropy_diagnostics: bool = False  # measured vs first-order predicted entropy change per step
    log_ref_kl: bool = True         # log kl_ref = TM(k3(pi_old, pi_init)) each step (one no-grad forward)
    progress: bool = True
    threads: int | None = 1         # torch CPU threads for the run (None: leave torch's setting); see README "Threads"

    def __post_init__(self):
        for k in ("steps", "prompts_per_step", "group_size", "minibatches", "ppo_epochs", "eval_problems",
                  "eval_k", "save_every"):
            if not isinstance(getattr(self, k), int) or getattr(self, k) < 1:
                raise ValueError(f"{k} must be a positive integer, got {getattr(self, k)!r}")
        for k in ("eval_every", "warmup_steps"):
            if not isinstance(getattr(self, k), int) or getattr(self, k) < 0:
                raise ValueError(f"{k} must be an integer >= 0, got {getattr(self, k)!r}")
        for k in ("lr", "temperature", "grad_clip"):
            if not (isinstance(getattr(self, k), (int, float)) and math.isfinite(getattr(self, k)) and getattr(self, k) > 0):
                raise ValueError(f"{k} must be a finite number > 0, got {getattr(self, k)!r}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be a finite number >= 0, got {self.weight_decay!r}")
        if self.max_new_tokens is not None and (not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1):
            raise ValueError(f"max_new_tokens must be a positive integer or None, got {self.max_new_tokens!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ValueError(f"threads must be a positive integer or None, got {self.threads!r}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"device must be auto, cpu or cuda[:N], got {self.device!r}")


@dataclass
class StageContext:
    """What a stage function may use besides its batch and config."""
    policy: GPT
    ref_policy: GPT | None
    task: Any
    group_size: int
    max_new_tokens: int
    temperature: float
    generator: torch.Generator
    rng: np.random.Generator
    score: Callable[[RolloutBatch], torch.Tensor]   # the run's reward stage
    sample_problems: Callable[[int], list]
    step: int = 0


@dataclass
class Pipeline:
    rollout: registry.StageEntry
    reward: registry.StageEntry
    advantage: registry.StageEntry
    loss: registry.StageEntry
    configs: dict[str, Any]


def build_pipeline(cfg: TrainConfig) -> Pipeline:
    """Resolve the recipe, the CLI stage overrides and the config overrides; every error is a ValueError."""
    recipe = registry.get_recipe(cfg.recipe)
    entries, configs = {}, {}
    for stage in registry.STAGES:
        name = getattr(cfg, stage) or getattr(recipe, stage)
        entries[stage] = registry.get_stage(stage, name)
        # the recipe's settings belong to its own choice of function
        base = getattr(recipe, f"{stage}_cfg") if name == getattr(recipe, stage) else {}
        extra = {k.split(".", 1)[1]: v for k, v in cfg.overrides.items() if k.split(".", 1)[0] == stage}
        configs[stage] = registry.make_config(entries[stage].config, {**base, **extra}, where=f"{stage} {name!r}")
    bad = [k for k in cfg.overrides if k.split(".", 1)[0] not in registry.STAGES or "." not in k]
    if bad:
        raise ValueError(f"overrides must look like 'stage.key' with stage in {registry.STAGES}, got {bad}")
    return Pipeline(**entries, configs=configs)


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


def train(cfg: TrainConfig) -> dict:
    """Run RL; returns {"history": [per-step dicts], "run_dir": str, "policy": GPT}.
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
    task = get_task(cfg.task)
    pipe = build_pipeline(cfg)
    if cfg.group_size < 2 and pipe.advantage.name in ("grpo", "dr_grpo", "rloo"):
        raise ValueError(f"advantage {pipe.advantage.name!r} needs group statistics: group_size must be >= 2")
    device = _resolve_device(cfg.device)
    max_new = cfg.max_new_tokens or task.max_new_tokens
    run_dir = os.path.join(cfg.out_dir, cfg.name or f"{cfg.recipe}_{cfg.task}_s{cfg.seed}")
    os.makedirs(run_dir, exist_ok=True)
    ckpt_path, state_path = os.path.join(run_dir, "policy.pt"), os.path.join(run_dir, "trainer_state.pt")

    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    init = cfg.init or default_checkpoint(cfg.task)
    policy, _ = load_checkpoint(ckpt_path if cfg.resume else init, device)
    needs_ref = any(getattr(c, "kl_coef", 0) or getattr(c, "needs_reference", False) for c in pipe.configs.values())
    ref_policy = load_checkpoint(init, device)[0] if needs_ref or cfg.log_ref_kl else None
    opt = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)
    warmup = lambda step: min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0  # noqa: E731
    eval_problems = task.sample(cfg.eval_problems, np.random.default_rng(cfg.eval_seed), split="test")

    history, start = [], 0
    if cfg.resume:
        if not os.path.isfile(state_path):
            raise ValueError(f"cannot resume: {state_path} does not exist")
        st = torch.load(state_path, map_location="cpu", weights_only=True)
        opt.load_state_dict(st["optimizer"])
        start = int(st["step"])
        gen.set_state(st["rng"]["torch_gen"]); torch.set_rng_state(st["rng"]["torch_cpu"])
        rng.bit_generator.state = json.loads(st["rng"]["numpy"])
        with open(os.path.join(run_dir, "metrics.jsonl")) as f:
            history = [h for h in map(json.loads, f) if h["step"] <= start]
    else:
        with open(os.path.join(run_dir, "config.json"), "w") as f:
            json.dump({"train": asdict(cfg), "stages": {s: getattr(pipe, s).name for s in registry.STAGES},
                       "stage_configs": {s: asdict(c) if c is not None else None for s, c in pipe.configs.items()}},
                      f, indent=1, default=str)

    def score(b: RolloutBatch) -> torch.Tensor:
        return pipe.reward.fn(b, pipe.configs["reward"], ctx).float()

    ctx = StageContext(policy, ref_policy, task, cfg.group_size, max_new, cfg.temperature, gen, rng, score,
                       lambda n: task.sample(n, rng, split="train"))
    log = open(os.path.join(run_dir, "metrics.jsonl"), "w")
    for h in history:  # on resume: the log up to the checkpoint's step
        log.write(json.dumps(h) + "\n")
    if not history and cfg.eval_every:
        history.append({"step": 0, **{f"eval/{k}": v for k, v in
                                      evaluate_policy(policy, task, eval_problems, cfg.eval_k, max_new, cfg.eval_seed).items()}})
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
        # ---- rollout, reward, reference, advantage
        batch = pipe.rollout.fn(ctx.sample_problems(cfg.prompts_per_step), pipe.configs["rollout"], ctx)
        if batch.rewards is None:
            batch.rewards = score(batch)
        batch.rewards = batch.rewards.to(device)
        if ref_policy is not None:
            with torch.no_grad():
                batch.ref_logp = policy_forward(ref_policy, batch).logp
        batch.advantages = pipe.advantage.fn(batch, pipe.configs["advantage"], ctx).to(device)
        t_rollout = time.perf_counter() - t0
        # ---- updates
        terms: dict[str, list] = {}
        for epoch in range(cfg.ppo_epochs):
            perm = torch.randperm(batch.size, generator=gen, device=device)
            for mb_idx in perm.chunk(cfg.minibatches):
                mb = batch.select(mb_idx)
                opt.zero_grad(set_to_none=True)  # each optimizer step sees its own minibatch's gradient only
                out = policy_forward(policy, mb)
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
               **{k: v for k, v in batch.extras.items() if isinstance(v, (int, float))}}
        if cfg.entropy_diagnostics:
            from .methods.entropy_mechanism import entropy_change_diagnostics
            rec.update(entropy_change_diagnostics(policy, batch))
        rec["time_rollout"] = t_rollout
        rec["time_step"] = time.perf_counter() - t0
        if cfg.eval_every and ((step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps):
            ev = evaluate_policy(policy, task, eval_problems, cfg.eval_k, max_new, cfg.eval_seed)
            rec.update({f"eval/{k}": v for k, v in ev.items()})
        history.append(rec)
        log.write(json.dumps(rec) + "\n"); log.flush()
        if cfg.progress:
            steps.set_postfix(reward=f"{rec['reward']:.2f}", entropy=f"{rec['entropy']:.3f}")
        if (step + 1) % cfg.save_every == 0 or step + 1 == cfg.steps:
            save_checkpoint(ckpt_path, policy, meta={"task": cfg.task, "recipe": cfg.recipe, "step": step + 1})
            torch.save({"optimizer": opt.state_dict(), "step": step + 1, "rng": _rng_state(gen, rng)}, state_path)
    log.close()
    return {"history": history, "run_dir": run_dir, "policy": policy}
