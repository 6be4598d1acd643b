"""Supervised pre-training of the base policies that RL starts from.

Cross-entropy on demonstration completions (prompt tokens are context only):

    L_SFT = - (1 / N) sum_{i,t} m_{i,t} log pi(y_{i,t} | BOS, prompt_i, y_{i,<t})

The run is stopped early on purpose: RL needs a base of *intermediate* skill
(well above zero reward, well below perfect) so that entropy has something to
collapse and pass@k has room above pass@1. The step counts in BASE_RECIPES were
chosen once for that and are fixed; `minirlvr pretrain --task NAME` rebuilds the
shipped checkpoint from them deterministically for a seed.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .model import GPT, GPTConfig, save_checkpoint
from .metrics import evaluate_policy
from .tokenizer import encode, pad_right

CHECKPOINT_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "toy_tasks", "checkpoints")


@dataclass
class SFTConfig:
    task: str = "addition"
    steps: int = 400          # optimizer steps (the early stop that makes the base intermediate)
    batch_size: int = 64      # demonstrations per step
    lr: float = 1e-3          # AdamW peak, linear warm-up then cosine decay to 10% at `steps`
    warmup: int = 50
    weight_decay: float = 0.01
    seed: int = 0
    difficulty: int | None = None  # None: the task's default difficulty
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4


# Steps per task for the shipped base checkpoints (chosen for intermediate skill, see module doc).
BASE_RECIPES: dict[str, dict] = {
    "addition": dict(steps=1000),
    "addition_scratchpad": dict(steps=250),
    "multiplication": dict(steps=700),
    "multiplication_scratchpad": dict(steps=300),
    "countdown": dict(steps=400),
    "chain": dict(steps=1000),
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


def pretrain(cfg: SFTConfig, out_path: str | None = None, device: str = "cpu", progress: bool = True,
             half: bool = True) -> tuple[GPT, dict]:
    """Train a base policy on demonstrations; save it to `out_path` if given. Returns (model, eval metrics)."""
    from toy_tasks import get_task
    task = get_task(cfg.task)
    if cfg.steps < 1:
        raise ValueError(f"steps must be >= 1, got {cfg.steps}")
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model = GPT(GPTConfig(d_model=cfg.d_model, n_layers=cfg.n_layers, n_heads=cfg.n_heads)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / cfg.warmup) * (
        0.1 + 0.45 * (1 + np.cos(np.pi * min(1.0, s / cfg.steps)))))
    t0 = time.time()
    steps = range(cfg.steps)
    if progress:
        from tqdm import tqdm
        steps = tqdm(steps, desc=f"pretrain {cfg.task}", leave=False)
    model.train()
    for step in steps:
        problems = task.sample(cfg.batch_size, rng, split="train", difficulty=cfg.difficulty)
        ids, target_mask = make_sft_batch(task, problems, rng)
        ids, target_mask = ids.to(device), target_mask.to(device)
        logits = model(ids[:, :-1])
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="none")
        loss = (nll * target_mask.reshape(-1)).sum() / target_mask.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if progress and step % 20 == 0:
            steps.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    if half:  # evaluate exactly the weights that will be shipped
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(p.half().float())
    metrics = evaluate(model, task)
    metrics.update(final_sft_loss=float(loss.detach()), seconds=round(time.time() - t0, 1))
    if out_path:
        save_checkpoint(out_path, model, meta={"task": cfg.task, "sft": asdict(cfg), "eval": metrics}, half=half)
    return model, metrics
