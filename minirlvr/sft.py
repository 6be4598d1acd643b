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

`minirlvr pretrain --task NAME` rebuilds a shipped checkpoint from its recipe.
"""
from __future__ import annotations

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
    difficulty: int | None = None  # None: the task's default difficulty
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


# The stopping rule per task for the shipped base checkpoints (fixed once, before any RL run).
BASE_RECIPES: dict[str, dict] = {
    "addition": dict(target_greedy=0.4),
    "addition_scratchpad": dict(target_greedy=0.4),
    "multiplication": dict(target_greedy=0.4),
    "multiplication_scratchpad": dict(target_greedy=0.4),
    "countdown": dict(target_greedy=0.4),
    "chain": dict(target_greedy=0.3),
}


def default_checkpoint(task: str) -> str:
    return os.path.join(CHECKPOINT_DIR, f"{task}.pt")


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
    """The skill stored in a base checkpoint: pass@1 and pass@G at T = 1 and greedy accuracy."""
    problems = task.sample(n_problems, np.random.default_rng(seed), split=split)
    ev = evaluate_policy(model, task, problems, group_size, task.max_new_tokens, seed)
    return {"pass@1": ev["pass@1"], f"pass@{group_size}": ev[f"pass@{group_size}"], "greedy_acc": ev["greedy_acc"]}


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
    task = get_task(cfg.task)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model = GPT(GPTConfig(d_model=cfg.d_model, n_layers=cfg.n_layers, n_heads=cfg.n_heads)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    select = task.sample(cfg.select_problems, np.random.default_rng(SELECT_SEED), split="test", difficulty=cfg.difficulty)
    t0, total = time.time(), cfg.steps or cfg.max_steps
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=total, desc=f"pretrain {cfg.task}", leave=False)
    step, greedy = 0, 0.0
    probe_ctx, probe_log = SFTProbeContext(task), []
    for name in cfg.probes:  # unknown names fail before training, listing the known probes
        from . import registry
        registry.get_stage("probe", name)
    while step < total:
        model.train()
        problems = task.sample(cfg.batch_size, rng, split="train", difficulty=cfg.difficulty)
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
            bar.set_postfix(loss=f"{loss.item():.3f}", greedy=f"{greedy:.2f}")
        if cfg.probes and step % cfg.probe_every == 0:
            probe_ctx.step = step
            probe_log.append({"step": step, **run_probes(model.eval(), task, cfg.probes, probe_ctx, cfg.seed + step)})
        if cfg.steps is None and step % cfg.select_every == 0:
            greedy = greedy_accuracy(model.eval(), task, select)
            if greedy >= cfg.target_greedy:
                break
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
    if probe_log:
        metrics["probes"] = probe_log
    metrics.update(steps=step, final_sft_loss=float(loss.detach()), seconds=round(time.time() - t0, 1),
                   threads=torch.get_num_threads())
    if out_path:
        save_checkpoint(out_path, model, meta={"task": cfg.task, "sft": asdict(cfg), "eval": metrics}, half=half)
    return model, metrics
