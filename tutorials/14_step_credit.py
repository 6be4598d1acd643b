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
# # 14 · Credit inside a response: EMPG, HICRA and effective-rank shaping
#
# GRPO gives every token of a response the same advantage $A_i$. Three papers split that credit by what
# happens *inside* the response, each with a different signal. All three change the advantage only (the loss
# is `grpo`'s PPO-clip), so one GRPO baseline serves them all.
#
# | paper | module | signal | shaped advantage |
# |---|---|---|---|
# | *Harnessing Uncertainty: Entropy-Modulated Policy Gradients* (EMPG; Wang et al. 2025, arXiv 2509.09265) | [`empg.py`](../minirlvr/methods/empg.py) | mean token entropy $H_{i,k}$ of step $k$ | $g_{i,k} A_i + \zeta f_{i,k+1}$, $g = e^{-k\tilde H}/\overline{e^{-k\tilde H}}$ |
# | *Emergent Hierarchical Reasoning in LLMs through RL* (HICRA; Wang et al. 2025, arXiv 2509.03646) | [`hicra.py`](../minirlvr/methods/hicra.py) | planning tokens $S_i$ | $A_i + \alpha\lvert A_i\rvert\,\mathbb 1[t \in S_i]$ |
# | *Beyond the Exploration-Exploitation Trade-off: A Hidden State Approach* (VERL; Huang et al. 2025, arXiv 2509.23808) | [`verl_rank.py`](../minirlvr/methods/verl_rank.py) | effective rank of the hidden states | $A_i + \lambda b_i$, $b$ from group z-scores of ER and its velocity |
#
# Tests: [`test_empg.py`](../tests/methods/test_empg.py), [`test_hicra.py`](../tests/methods/test_hicra.py),
# [`test_verl_rank.py`](../tests/methods/test_verl_rank.py). None of the three has official code: EMPG follows the
# project page's pseudocode where it is readable ("EMPG-style" where not), HICRA and the effective-rank shaping
# are reconstructions from the paper cards ("HICRA-style", "effective-rank-style"); each docstring says which part.
#
# **Exact claims (tested).** EMPG: $\sum_a \pi_a\lVert e_a - \pi\rVert^2 = 1 - \sum_a \pi_a^2$ (the expected score norm grows with the
# Rényi-2 entropy), the batch mean of $g$ is 1, and $k = \zeta = 0$ is GRPO exactly. HICRA: $\alpha = 0$ or no planning tokens is
# GRPO exactly, execution tokens are untouched, signs are kept for $\alpha < 1$. Effective rank: invariant to scale,
# rotation and row order, $1 \le \mathrm{ER} \le \min(T, d)$; $\lambda = 0$ is GRPO and the group sum of advantages is unchanged.
#
# **Setting: a chain task with a real choice of plan.** `chain` prompts are expressions evaluated one operation
# at a time, each step a *plan* span `[a op b]` followed by *execution* tokens `v;`. In the shipped `chain` data the
# next operation is always the leftmost ready one, so the plan is a function of the prompt and a policy has no
# strategy to explore (HICRA's premise). The issue asked for demonstrations with several valid orders in that
# case, so this tutorial uses the `chain_orders` task and base: the same problems, demonstrated in a random valid
# order ("2*3+4*5=" as `[2*3]6;[4*5]20;...` or `[4*5]20;[2*3]6;...`), built with `chain`'s SFT rule before any
# RL run (`toy_tasks/checkpoints/README.md`). 23% of 3-operation prompts have two valid plans.

# %%
import os
from dataclasses import replace
from types import SimpleNamespace

import matplotlib.pyplot as plt
import numpy as np
import torch

from minirlvr.baselines import verifier_reward
from minirlvr.methods.empg import EmpgConfig, empg_terms, expected_score_norm_sq
from minirlvr.methods.hicra import hicra_shape, plan_entropy_metrics
from minirlvr.methods.verl_rank import EffectiveRankConfig, rank_statistics
from minirlvr.core import group_advantages, pearson
from minirlvr.model import load_checkpoint
from minirlvr.rollout import sample
from minirlvr.segments import plan_mask
from minirlvr.sft import default_checkpoint
from toy_tasks import get_task
from toy_tasks.base import parse_expression
from toy_tasks.chain import valid_plans

FAST = os.environ.get("MINIRLVR_FAST") == "1"
torch.set_num_threads(1)  # the tiny model runs fastest on one thread (README, "Threads")
BASE = default_checkpoint("chain_orders")

# %% [markdown]
# ## 1 · One base batch through the three signals

# %%
task = get_task("chain_orders")
policy, _ = load_checkpoint(BASE)
problems = task.sample(16, np.random.default_rng(0))
batch = sample(policy, problems, 8, task.max_new_tokens, generator=torch.Generator().manual_seed(0))
batch.rewards = verifier_reward(batch, None, SimpleNamespace(task=task))
print(f"accuracy {float(batch.rewards.mean()):.3f}; an example: {batch.problems[0].prompt}{batch.texts[0]}")

# EMPG's Proposition 1 on this batch's logits: the expected squared score norm is 1 - sum pi^2
logits = batch.old_logits[batch.response_mask.bool()].double()
p = torch.softmax(logits, -1)
exact = ((p[:, :, None] * (torch.eye(p.shape[-1], dtype=p.dtype) - p[:, None, :]) ** 2).sum(-1)).sum(-1)
print(f"max |sum_a pi_a ||e_a - pi||^2 - (1 - sum pi^2)| over {len(p)} positions: "
      f"{float((exact - expected_score_norm_sq(logits)).abs().max()):.1e}")

terms = empg_terms(batch, EmpgConfig())
plan = plan_mask(batch.response_ids, batch.response_mask)
adv = group_advantages(batch.rewards, batch.group_ids, "std", 1e-6)
shaped = hicra_shape(adv[:, None] * batch.response_mask, plan, 0.2)
print(f"EMPG: {len(terms['step_H'])} steps, mean g {float(terms['step_g'].mean()):.3f}, corr(g, step entropy) "
      f"{pearson(terms['step_g'], terms['step_H']):+.3f}")
pos = adv > 0
print(f"HICRA: {float(plan[batch.response_mask.bool()].float().mean()):.2f} of the tokens are planning tokens; on a "
      f"positive response they get {float((shaped / adv[:, None])[pos[:, None] & plan].mean()):.2f} x A, execution "
      f"tokens {float((shaped / adv[:, None])[pos[:, None] & ~plan & batch.response_mask.bool()].mean()):.2f} x A")
stats = rank_statistics(policy, batch, EffectiveRankConfig())
print(f"effective rank: ER {float(stats['er'].mean()):.1f} over {float(stats['length'].mean()):.1f} tokens "
      f"(ER_norm {float(stats['er_norm'].mean()):.2f}); corr(ER, length) {pearson(stats['er'], stats['length']):+.2f}, "
      f"corr(ER_norm, ERV) {pearson(stats['er_norm'], stats['erv']):+.2f}")
print({k.split('/')[1]: round(v, 3) for k, v in plan_entropy_metrics(batch).items()})

# %%
fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
axes[0].scatter(terms["step_H"], terms["step_g"], s=8)
axes[0].set_xlabel("step entropy H (nats, mean over the step's tokens)"); axes[0].set_ylabel("EMPG scale g")
axes[0].set_title("EMPG: confident steps get more credit")
m = batch.response_mask.bool()
axes[1].hist([batch.old_entropy[m & plan].numpy(), batch.old_entropy[m & ~plan].numpy()], bins=30,
             label=["planning", "execution"], log=True)
axes[1].set_xlabel("token entropy (nats)"); axes[1].set_ylabel("tokens"); axes[1].legend()
axes[1].set_title("HICRA's two token classes")
axes[2].scatter(stats["length"], stats["er"], s=8)
axes[2].set_xlabel("response length (tokens)"); axes[2].set_ylabel("effective rank ER")
axes[2].set_title("ER is capped by the length")
plt.tight_layout()

# %% [markdown]
# ## 2 · Design of the experiment
#
# Fixed before any of the three methods ran, on the baseline's terms: the library regime (lr 1e-4, 16 prompts x 8,
# 4 minibatches, 300 steps) on `chain_orders` from its base, 3 seeds, held-out evaluation on 128 prompts every 25
# steps (pass@k up to k = 8). Every run logs the probes `plan_entropy` (planning vs execution entropy and
# perplexity, plan "semantic" entropies) and `effective_rank` every 10 steps, so GRPO's own dynamics of those
# quantities are measured too. Arms: `grpo`, `empg` (k = k_f = 1, ζ = 0.1, mean renormalisation), `hicra`
# (α = 0.2) and `effective_rank_shaping` (λ = 0.05); the papers' other settings (`empg_zeta0`, `hicra_a05`,
# `effective_rank_shaping_l01`) are registered but not run here (CPU budget: 12 runs of ~10 minutes).

# %%
from minirlvr.compare import format_summary, run_compare, seed_stats
from minirlvr.plots import plot_curves
from minirlvr.trainer import TrainConfig

RECIPES = ["grpo", "empg", "hicra", "effective_rank_shaping"]
STEPS, SEEDS, EVAL_EVERY = (3, 1, 3) if FAST else (300, 3, 25)
OUT = "runs/tutorial14_fast" if FAST else "runs/tutorial14"
cfg = TrainConfig(task="chain_orders", steps=STEPS, eval_every=EVAL_EVERY, eval_problems=8 if FAST else 128,
                  eval_k=4 if FAST else 8, prompts_per_step=4 if FAST else None, init=BASE,
                  probes=("plan_entropy", "effective_rank"), probe_every=1 if FAST else 10, progress=False,
                  reuse=True)
result = {"runs": {}}
for seed in range(SEEDS):  # one seed at a time, as the runs were made (each recipe_s{seed} folder is reused)
    one = run_compare(RECIPES, 1, replace(cfg, seed=cfg.seed + seed), out_dir=OUT, leash_n=0)
    for recipe, hists in one["runs"].items():
        result["runs"].setdefault(recipe, []).extend(hists)
K = cfg.eval_k
fig = plot_curves(result["runs"], keys=("entropy", "eval/greedy_acc", "eval/pass@1", f"eval/pass@{K}"),
                  title="chain_orders: GRPO vs three ways to split credit inside a response (mean ± std over seeds)")

# %%
fig = plot_curves(result["runs"], keys=("plan_entropy/entropy_plan", "plan_entropy/entropy_exec",
                                        "plan_entropy/h_sem_first", "verl_rank/er_norm_mean"),
                  title="inside the responses (probes, every 10 steps)")

# %%
print(f"{'recipe':<24}{'entropy (last 10)':>19}{'greedy':>16}{'pass@1':>16}{f'pass@{K}':>16}"
      f"{'H plan / exec':>16}{'h_sem_first':>14}{'ER_norm':>10}")
for recipe, hists in result["runs"].items():
    e, g, p1, pk = (seed_stats(hists, k, 10 if k == "entropy" else None)
                    for k in ("entropy", "eval/greedy_acc", "eval/pass@1", f"eval/pass@{K}"))
    hp, he, hs = (seed_stats(hists, f"plan_entropy/{k}", 3) for k in ("entropy_plan", "entropy_exec", "h_sem_first"))
    er = seed_stats(hists, "verl_rank/er_norm_mean", 3)
    print(f"{recipe:<24}{e[0]:10.3f} ± {e[1]:.3f}{g[0]:9.3f} ± {g[1]:.3f}{p1[0]:9.3f} ± {p1[1]:.3f}"
          f"{pk[0]:9.3f} ± {pk[1]:.3f}{hp[0]:9.3f} / {he[0]:.3f}{hs[0]:10.3f}{er[0]:10.3f}")

# %%
# the effective-rank paper's analysis, on the GRPO runs (probe every 10 steps, all steps pooled, mean ± std over seeds)
for key in ("corr_er_norm_erv", "corr_er_norm_length", "corr_er_norm_reward", "corr_er_length"):
    m, sd = seed_stats(result["runs"]["grpo"], f"verl_rank/{key}", 1000)
    print(f"GRPO runs, {key:<22} {m:+.3f} ± {sd:.3f}")
m, sd = seed_stats(result["runs"]["empg"], "empg/corr_g_entropy", 1000)
print(f"EMPG runs, corr(g, step entropy)   {m:+.3f} ± {sd:.3f}")

# %% [markdown]
# ## 3 · Does any arm keep more than one plan?
#
# The question behind HICRA: after RL, does a policy still use the different correct plans of a prompt? The base
# rarely finishes these prompts correctly, so we look at the *first move*, before any arithmetic slip: on held-out
# prompts where two or more operations are ready at the start (e.g. `2*3+4*5`), we sample 16 answers per prompt
# from each final policy and read the first plan span. *Valid first move*: the span is one of the ready operations;
# *first-move coverage*: distinct valid first moves used / ready operations (1 = every option was used);
# *>1 used*: share of prompts where at least two different valid first moves appear.

# %%
multi = [p for p in task.sample(400 if not FAST else 40, np.random.default_rng(7), split="test")
         if len(valid_plans(parse_expression(p.data[0]))) > 1][: 8 if FAST else 64]
N = 4 if FAST else 16


def first_moves(path):
    pol, _ = load_checkpoint(path)
    b = sample(pol, multi, N, task.max_new_tokens, generator=torch.Generator().manual_seed(0))
    correct, valid, cover, several = [], [], [], []
    for gi, prob in enumerate(multi):
        plans = valid_plans(parse_expression(prob.data[0]))
        ready = {plan.split("]")[0] + "]" for plan in plans}  # the first span of each valid plan
        texts = [t for t, g in zip(b.texts, b.group_ids.tolist()) if g == gi]
        firsts = [t.split("]")[0] + "]" if "]" in t else t for t in texts]
        used = {f for f in firsts if f in ready}
        correct.append(np.mean([task.reward(prob, t) for t in texts]))
        valid.append(np.mean([f in ready for f in firsts]))
        cover.append(len(used) / len(ready))
        several.append(len(used) > 1)
    return np.mean(correct), np.mean(valid), np.mean(cover), np.mean(several)


print(f"{len(multi)} held-out prompts with several ready first operations, {N} samples each")
print(f"{'policy':<24}{'correct':>16}{'valid 1st move':>16}{'1st-move coverage':>20}{'>1 used':>16}")
print(f"{'base':<24}" + "".join(f"{v:{w}.3f}" for v, w in zip(first_moves(BASE), (16, 16, 20, 16))))
for recipe in result["runs"]:
    vals = np.array([first_moves(f"{OUT}/{recipe}_s{cfg.seed + sd}/policy.pt") for sd in range(SEEDS)])
    print(f"{recipe:<24}" + "".join(f"{m:{w - 8}.3f} ± {sd:.3f}"
                                    for m, sd, w in zip(vals.mean(0), vals.std(0), (16, 16, 20, 16))))

# %% [markdown]
# ## What we saw
#
# Full run: 3 seeds x 300 steps per arm on `chain_orders` from its base (lr 1e-4, 16 x 8, 4 minibatches); held-out
# numbers at the last evaluation (128 prompts), mean ± std over seeds; probe numbers = mean of the last 3 probes.
#
# * **The exact claims hold** on a real base batch: $\sum_a\pi_a\lVert e_a-\pi\rVert^2 = 1-\sum\pi^2$ to 1.3e-15 over 3548 positions;
#   EMPG's $g$ has batch mean 1.000 and falls with step entropy (corr -0.993); HICRA scales planning tokens of a positive
#   answer by exactly 1.20 and leaves execution tokens at 1.00; the reductions and invariances are in the tests.
# * **The baseline: GRPO does not help on this task.** Entropy falls by half (0.28 -> 0.148 ± 0.014) but held-out greedy
#   accuracy ends *below* the base (0.188 ± 0.029 vs 0.297; pass@8 0.266 ± 0.039 vs 0.445): the chain base's multi-step
#   arithmetic is too weak for 300 steps of outcome reward at this lr. Every method below is judged against that.
# * **EMPG-style: a small gain, within about two seed spreads.** pass@8 0.333 ± 0.027 vs 0.266 ± 0.039, pass@1 0.185 ±
#   0.021 vs 0.160 ± 0.020, greedy 0.211 ± 0.023 vs 0.188 ± 0.029; lower entropy (0.128 ± 0.003). Confident steps get
#   more credit as designed (seed 0, last step only: g 1.02 on the low-entropy half of the steps, 0.62 on the high half). Suggestive, not shown.
# * **HICRA-style: not reproduced.** No accuracy gain (greedy 0.141 ± 0.055, pass@8 0.229 ± 0.063) and slightly *more*
#   planning entropy (0.136 vs 0.120 nats; first-plan entropy 0.339 vs 0.243). On the prompts with several valid
#   plans, every arm loses the base's plan diversity: the base uses two different valid first moves on 42% of them,
#   GRPO on 9 ± 6%, HICRA on 6 ± 1%, EMPG on 6%. Boosting the planning tokens' advantage sharpens the plan the
#   rewarded answers used; it does not keep alternatives alive.
# * **Effective-rank-style shaping: reward-hacked (our reconstruction).** With the length-normalised ER channel
#   (ER / min(n, d), the module's default because ER is capped by length here), a two-token answer "#" has ER_norm
#   ~1, and in all-equal groups (most groups once accuracy drops) the bonus is the whole advantage: two of three seeds
#   collapse to 2- and 8-token answers (greedy 0.000 and 0.039; the third 0.109). In GRPO's own runs ER_norm tracks ERV
#   (corr +0.77 ± 0.02) and length (-0.60), not reward (-0.00 ± 0.01). The paper's formula is not public; this
#   verdict is about the reconstruction's length-normalised channel, and a raw-ER channel (length_norm=False) was
#   not run.
# * **Verdict for the claims at toy scale:** EMPG-style suggestive (+0.07 pass@8, within noise), HICRA-style
#   not reproduced, effective-rank-style shaping harmful as reconstructed. The ablation recipes (`empg_zeta0`,
#   `hicra_a05`, `effective_rank_shaping_l01`) are registered but were not run (CPU budget).
