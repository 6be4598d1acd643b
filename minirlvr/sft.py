"""Supervised pre-training of the base policies that RL starts from.

Cross-entropy on demonstration completions (prompt tokens are context only):

    L_SFT = - (1 / N) sum_{i,t} m_{i,t} log pi(y_{i,t} | BOS, prompt_i, y_{i,<t})

Two choices make a base that RL can work with:

* **Intermediate skill.** RL needs a base that is right often but not always, so
  entropy has something to collapse and pass@k has room above pass@1. Skill is
  steep in the step count (addition: greedy 0.28 -> 0.69 between steps 600 and
  800) and shifts with the thread count, so a fixed step count is fragile. The
  run instead evaluates held-out greedy accuracy every `select_every` steps and
  stops at the first checkpoint that reaches `target_greedy` (the rule is fixed
  per task in BASE_RECIPES; `steps=` forces a fixed count instead).
* **A flat base.** A constant learning rate (AdamW, beta2 0.999, no weight decay,
  no gradient clipping), not a cosine-annealed one: bases of matched skill that
  were annealed are 7-15x more sensitive to one RL step (an annealed addition
  base moved its sequence distribution by a KL of 1.77 nats after one fresh-Adam
  step of 1e-4; a constant-lr base of equal skill by 0.04). `metrics.step_sensitivity`
  measures this; every shipped base stores it and `tests/test_sft.py` bounds it.

**Mixed-difficulty bases** (`difficulty=(1, 2, 3)`: every training problem's level is drawn
uniformly from the tuple, see `Task.sample`). On one mixture the easy levels are learned long
before the hard ones, so "stop when the mixture reaches the target" leaves ~1.0 on the easy level
and ~0 on the hard one. The rule, fixed before any mixed base was built, generalises the one
above level by level:

    every `select_every` steps, measure held-out greedy accuracy g_L on `select_problems`
    problems of each level L (test split, seed SELECT_SEED);
    train the next steps on the levels with g_L < target_greedy only (in their listed
    proportions): a level that reached the target leaves the mixture, and re-enters
    if it falls below again;
    stop at the first check where no level is below the target (or after max_steps).

With one level this is exactly the single-level rule (same problems, same rng draws). What it
cannot stop is transfer: a level out of the mixture still improves when a harder level teaches
a shared skill (a 1-digit sum is a column of a 3-digit one); the stored per-level skill says
how much. `steps@dL` in the stored metrics counts the steps level L was trained on.

`minirlvr pretrain --task NAME` rebuilds a shipped checkpoint from its recipe (NAME is a task or
a key of BASE_RECIPES, e.g. `addition_mixed`).
"""
from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .model import GPT, GPTConfig, save_checkpoint
from .metrics import evaluate_policy, step_sensitivity
from .tokenizer import encode, pad_right

CHECKPOINT_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "toy_tasks", "checkpoints")
SELECT_SEED = 999   # held-out problems for the stopping rule (the reported skill uses seed 1234)


@dataclass
class SFTConfig:
    task: str = "addition"
    target_greedy: float = 0.4  # stop at the first checkpoint whose held-out greedy accuracy reaches this
    max_steps: int = 4000       # give up (and keep the last weights) after this many steps
    steps: int | None = None    # a fixed step count instead of the skill rule
    select_every: int = 25      # evaluate the stopping rule every this many steps
    select_problems: int = 200
    batch_size: int = 64        # demonstrations per step
    lr: float = 1e-3            # AdamW, constant (see the module doc: annealing makes sharp bases)
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    seed: int = 0
    difficulty: int | tuple[int, ...] | None = None  # None: the task's default; a tuple: a mixture (module doc)
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    probes: tuple[str, ...] = ()  # registered probes (as in RL), run on a fresh rollout every probe_every steps
    probe_every: int = 100

    def __post_init__(self):
        if not 0 < self.target_greedy <= 1:
            raise ValueError(f"SFTConfig.target_greedy must be in (0, 1], got {self.target_greedy}")
        for k in ("max_steps", "select_every", "select_problems", "batch_size", "probe_every"):
            if not isinstance(getattr(self, k), int) or getattr(self, k) < 1:
                raise ValueError(f"SFTConfig.{k} must be a positive integer, got {getattr(self, k)!r}")
        if self.steps is not None and (not isinstance(self.steps, int) or self.steps < 1):
            raise ValueError(f"SFTConfig.steps must be a positive integer or None, got {self.steps!r}")
        if not (np.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"SFTConfig.lr must be a finite number > 0, got {self.lr}")
        if isinstance(self.difficulty, list):
            self.difficulty = tuple(self.difficulty)
        from toy_tasks import get_task
        task = get_task(self.task)  # an unknown task names the known ones
        try:
            task.check_difficulty(self.difficulty)
        except (ValueError, TypeError) as e:
            raise ValueError(f"SFTConfig.difficulty: {e}") from None


# The stopping rule per base for the shipped checkpoints (fixed once, before any RL run). A key is a
# task name, or a base name whose recipe names its task (the mixed-difficulty bases).
BASE_RECIPES: dict[str, dict] = {
    "addition": dict(target_greedy=0.4),
    "addition_scratchpad": dict(target_greedy=0.4),
    "multiplication": dict(target_greedy=0.4),
    "multiplication_scratchpad": dict(target_greedy=0.4),
    "countdown": dict(target_greedy=0.4),
    "chain": dict(target_greedy=0.3),
    "chain_orders": dict(target_greedy=0.3),  # chain's rule, fixed before the base was built
    # the verbose base is mixed-difficulty from the start (length AND difficulty spread), same rule as above
    "addition_verbose": dict(difficulty=(1, 2, 3), target_greedy=0.4, max_steps=8000),
    "addition_mixed": dict(task="addition", difficulty=(1, 2, 3), target_greedy=0.4, max_steps=8000),
    "multiplication_mixed": dict(task="multiplication", difficulty=(1, 2), target_greedy=0.4, max_steps=8000),
}


def default_checkpoint(name: str) -> str:
    """toy_tasks/checkpoints/<name>.pt, for a task or a BASE_RECIPES name."""
    return os.path.join(CHECKPOINT_DIR, f"{name}.pt")


def task_at(task, difficulty):
    """A copy of `task` whose default level is `difficulty` (a level or a mixture tuple), so code that
    samples at the default (metrics.step_sensitivity, evaluate) draws what a base was trained on."""
    if difficulty is None:
        return task
    return dataclasses.replace(task, default_difficulty=task.check_difficulty(difficulty))


def base_task(name: str):
    """The task (at its training difficulty) of the base `name`: a task or a BASE_RECIPES key."""
    from toy_tasks import TASKS, get_task
    recipe = BASE_RECIPES.get(name, {})
    if name not in TASKS and "task" not in recipe:
        raise ValueError(f"unknown task or base {name!r}; known tasks: {', '.join(TASKS)}; "
                         f"mixed bases: {', '.join(k for k, r in BASE_RECIPES.items() if 'task' in r)}")
    return task_at(get_task(recipe.get("task", name)), recipe.get("difficulty"))


def mixture_of(task) -> tuple[int, ...]:
    """The task's default level(s) as a tuple, as listed (a repeated level is drawn more often)."""
    levels = task.check_difficulty(None)
    return (levels,) if isinstance(levels, int) else tuple(levels)


def make_sft_batch(task, problems, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """ids [B, L] = BOS + prompt + demonstration + EOS (right-padded) and the
    loss mask [B, L-1] that is 1 where the *next* token is a completion token."""
    seqs, starts = [], []
    for p in problems:
        prompt = encode(p.prompt, bos=True)
        seqs.append(prompt + encode(task.demonstration(p, rng), eos=True))
        starts.append(len(prompt))
    ids, mask = pad_right(seqs)
    target_mask = mask[:, 1:].clone()
    for i, s in enumerate(starts):
        target_mask[i, : s - 1] = 0
    return ids, target_mask


def evaluate(model, task, n_problems: int = 200, group_size: int = 8, seed: int = 1234,
             split: str = "test") -> dict[str, float]:
    """The skill stored in a base checkpoint: pass@1 and pass@G at T = 1 and greedy accuracy, at the
    task's default level(s) (`task_at`). For a mixture: the same three per level L (`pass@1@dL`, ...,
    `n_problems` problems of each level) and overall = their mean weighted as the mixture draws levels."""
    keys = ("pass@1", f"pass@{group_size}", "greedy_acc")
    mixture = mixture_of(task)
    per_level = {}
    for d in dict.fromkeys(mixture):
        problems = task.sample(n_problems, np.random.default_rng(seed), split=split, difficulty=d)
        ev = evaluate_policy(model, task, problems, group_size, task.max_new_tokens, seed)
        per_level[d] = {k: ev[k] for k in keys}
    if len(per_level) == 1:
        return per_level[mixture[0]]
    out = {k: float(np.mean([per_level[d][k] for d in mixture])) for k in keys}
    out.update({f"{k}@d{d}": v for d, ev in per_level.items() for k, v in ev.items()})
    return out


@dataclass
class SFTProbeContext:
    """What a probe sees as `ctx` under SFT: the task, the step, and a per-probe state dict."""
    task: object
    step: int = 0
    state: dict = field(default_factory=dict)

    def log(self, **metrics) -> None:  # probes return their metrics; nothing else is logged under SFT
        pass


def run_probes(model, task, names: tuple[str, ...], ctx: SFTProbeContext, seed: int) -> dict[str, float]:
    """Each probe on a fresh rollout of `model` (16 training problems x 4 samples at T = 1)."""
    from . import registry
    from .rollout import sample
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    batch = sample(model, task.sample(16, np.random.default_rng(seed), split="train"), 4, task.max_new_tokens,
                   generator=gen)
    out = {}
    for name in names:
        entry = registry.get_stage("probe", name)
        ctx.state.setdefault(name, {})
        out.update(entry.fn(model, batch, registry.make_config(entry.config, {}, f"probe {name!r}"), ctx))
    return {k: float(v) for k, v in out.items()}


@torch.no_grad()
def greedy_accuracy(model, task, problems) -> float:
    from .rollout import sample
    out = sample(model, problems, 1, task.max_new_tokens, greedy=True)
    return float(np.mean([task.reward(p, t) > 0.5 for p, t in zip(out.problems, out.texts)]))


def pretrain(cfg: SFTConfig, out_path: str | None = None, device: str = "cpu", progress: bool = True,
             half: bool = True) -> tuple[GPT, dict]:
    """Train a base policy on demonstrations; save it to `out_path` if given. Returns (model, metrics):
    held-out skill (test split), train-split skill (memorisation shows as a gap), the step it stopped at,
    and its sensitivity to one RL step (`metrics.step_sensitivity`)."""
    from toy_tasks import get_task
    task = task_at(get_task(cfg.task), cfg.difficulty)
    mixture = mixture_of(task)  # the levels as listed; `training` is the part of it still below target
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model = GPT(GPTConfig(d_model=cfg.d_model, n_layers=cfg.n_layers, n_heads=cfg.n_heads,
                          context=task.context)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    select = {d: task.sample(cfg.select_problems, np.random.default_rng(SELECT_SEED), split="test", difficulty=d)
              for d in dict.fromkeys(mixture)}
    training, steps_at = mixture, dict.fromkeys(select, 0)
    t0, total = time.time(), cfg.steps or cfg.max_steps
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=total, desc=f"pretrain {cfg.task}", leave=False)
    step, greedy = 0, dict.fromkeys(select, 0.0)
    probe_ctx, probe_log = SFTProbeContext(task), []
    for name in cfg.probes:  # unknown names fail before training, listing the known probes
        from . import registry
        registry.get_stage("probe", name)
    while step < total:
        model.train()
        problems = task.sample(cfg.batch_size, rng, split="train", difficulty=training)
        for d in set(training):
            steps_at[d] += 1
        ids, target_mask = (t.to(device) for t in make_sft_batch(task, problems, rng))
        logits = model(ids[:, :-1])
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="none")
        loss = (nll * target_mask.reshape(-1)).sum() / target_mask.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", greedy=" ".join(f"{g:.2f}" for g in greedy.values()))
        if cfg.probes and step % cfg.probe_every == 0:
            probe_ctx.step = step
            probe_log.append({"step": step, **run_probes(model.eval(), task, cfg.probes, probe_ctx, cfg.seed + step)})
        if cfg.steps is None and step % cfg.select_every == 0:  # the stopping rule (module doc)
            greedy = {d: greedy_accuracy(model.eval(), task, problems) for d, problems in select.items()}
            below = tuple(d for d in mixture if greedy[d] < cfg.target_greedy)
            if not below:
                break
            training = below
    if bar is not None:
        bar.close()
    model.eval()
    if half:  # evaluate exactly the weights that will be shipped
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(p.half().float())
    metrics = evaluate(model, task)
    train_skill = evaluate(model, task, split="train")
    metrics.update({f"train_{k}": v for k, v in train_skill.items()})
    metrics.update(step_sensitivity(model, task))
    if len(steps_at) > 1:
        metrics.update({f"steps@d{d}": n for d, n in steps_at.items()})
    if probe_log:
        metrics["probes"] = probe_log
    metrics.update(steps=step, final_sft_loss=float(loss.detach()), seconds=round(time.time() - t0, 1),
                   threads=torch.get_num_threads())
    if out_path:
        save_checkpoint(out_path, model, meta={"task": cfg.task, "sft": asdict(cfg), "eval": metrics}, half=half)
    return model, metrics
