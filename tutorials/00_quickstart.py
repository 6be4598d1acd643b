# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 00 · Quickstart: GRPO on 2-digit addition
#
# minirlvr trains a 0.8M-parameter character-level GPT with reinforcement learning from a
# **verifiable reward**: the toy task's checker says 1 if the answer is right, 0 otherwise.
# This notebook runs the main job, GRPO on 2-digit addition, and reads the three curves
# every later notebook shows next to its method:
#
# * **token entropy** of the policy's samples, $H = -\sum_v \pi(v\mid\cdot)\ln\pi(v\mid\cdot)$, averaged over generated tokens;
# * **held-out accuracy** (greedy decoding) on test problems never seen in training;
# * **pass@k** at temperature 1: the chance that at least one of $k$ samples is right (unbiased estimator from 8 samples).
#
# GRPO (Shao et al. 2024, arXiv 2402.03300) samples $G$ answers per prompt, scores them, and
# uses the group-normalised reward as the advantage of every token of an answer:
#
# $$A_i = \frac{r_i - \operatorname{mean}(r_1..r_G)}{\operatorname{std}(r_1..r_G) + \epsilon},\qquad
# L = -\frac{1}{G}\sum_i \frac{1}{|o_i|}\sum_t \min\big(\rho_{i,t}A_i,\ \operatorname{clip}(\rho_{i,t}, 1-\varepsilon, 1+\varepsilon)A_i\big)$$
#
# with $\rho_{i,t} = \pi_\theta(o_{i,t}) / \pi_{\text{old}}(o_{i,t})$.
#
# Set `MINIRLVR_FAST=1` to run everything in seconds (CI does); the committed outputs come
# from the full run.

# %%
import os

import numpy as np
import torch

from minirlvr.model import load_checkpoint
from minirlvr.plots import plot_curves
from minirlvr.rollout import sample
from minirlvr.sft import default_checkpoint
from minirlvr.trainer import TrainConfig, train
from toy_tasks import get_task

FAST = os.environ.get("MINIRLVR_FAST") == "1"
STEPS, SEEDS, EVAL_EVERY = (4, 1, 2) if FAST else (300, 3, 25)
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

# %% [markdown]
# ## The task and the base policy
#
# The base checkpoint was pre-trained on demonstrations and **stopped early on purpose**, so
# that it is right often, but not always: RL needs successes to reinforce and failures to
# push down. Its measured skill is stored in the checkpoint.

# %%
task = get_task("addition")
base, meta = load_checkpoint(default_checkpoint("addition"))
print(f"{base.num_params():,} parameters; base skill on held-out problems:", meta["eval"])

problems = task.sample(4, np.random.default_rng(0), split="test")
batch = sample(base, problems, 4, task.max_new_tokens, generator=torch.Generator().manual_seed(0))
for i in range(0, batch.size, 4):
    p = batch.problems[i]
    print(f"{p.prompt:<8} answer {p.answer:<4} samples:",
          [(t, int(task.reward(p, t))) for t in batch.texts[i:i + 4]])

# %% [markdown]
# ## Train GRPO
#
# Each step: 16 prompts × 8 samples, rewards from the verifier, GRPO advantages, and 4
# minibatch updates of AdamW (so the later minibatches are off-policy and PPO's clip can act).
# Several seeds, because one seed of RL on a tiny model is an anecdote.

# %%
histories = []
for seed in range(SEEDS):
    run = train(TrainConfig(task="addition", recipe="grpo", steps=STEPS, seed=seed, eval_every=EVAL_EVERY,
                            out_dir="runs/quickstart", progress=False))
    histories.append(run["history"])
print("metrics logged each step:", sorted(k for k in histories[0][-1] if not k.startswith("eval/")))

# %%
fig = plot_curves({"grpo": histories}, keys=("entropy", "eval/greedy_acc", "eval/pass@1", "eval/pass@8"),
                  title="GRPO on 2-digit addition (mean ± std over seeds)")

# %% [markdown]
# The left panel is the entropy of the **training samples** at each step (the tokens the
# update is about to train on); the other panels are measured on fixed held-out problems.

# %%
def first_last(key):
    pairs = [([h[key] for h in hist if key in h][0], [h[key] for h in hist if key in h][-1]) for hist in histories]
    a, b = np.array(pairs).T
    return f"{key:<16} {a.mean():.3f} ± {a.std():.3f}  ->  {b.mean():.3f} ± {b.std():.3f}"


for key in ("entropy", "eval/entropy", "eval/greedy_acc", "eval/pass@1", "eval/pass@8"):
    print(first_last(key))

# %% [markdown]
# ## What we saw
#
# See the printed table above (start -> end, mean ± std over the seeds). The closing
# summary of the full run is written below it when the notebook is regenerated.
