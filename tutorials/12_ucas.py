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
# # 12 · UCAS: shape the advantage with the model's own certainty
#
# *Unlocking Exploration in RLVR: Uncertainty-aware Advantage Shaping for Deeper Reasoning* (UCAS; Xie et al.
# 2025, arXiv 2510.10649; official code `xvolcano02/UCAS`). Module: [`minirlvr/methods/ucas.py`](../minirlvr/methods/ucas.py);
# tests: [`tests/methods/test_ucas.py`](../tests/methods/test_ucas.py).
#
# **Method.** GRPO gives every token of a response one advantage $A_i$. UCAS reshapes it in two stages, from the
# rollout's logits (no gradient):
# 1. *Response level.* The self-certainty of a token is $c = \operatorname{logsumexp}(z) - \operatorname{mean}(z) = \mathrm{KL}(U\|\pi) + \log V$;
#    a response's confidence $C_i = \sum_t c_{i,t}$ is z-scored within its group ($\hat C_i$), and
#    $A'_i = A_i\,e^{-\beta^+\hat C_i}$ if $A_i > 0$, $A_i\,e^{\beta^-\hat C_i}$ if $A_i < 0$: an *unsure* correct answer gets more
#    credit, a *confident* wrong one more blame ($\beta^+ = 0.25$, $\beta^- = 0.35$).
# 2. *Token level.* $\hat A_{i,t} = A'_i - \gamma\,\hat\lambda_{i,t}$ with $\hat\lambda$ the sampled token's raw logit min-max normalised over
#    the batch ($\gamma = 0.05$), clamped at 0 for positive responses: confident tokens get a little less.
#
# **Paper's claims.** More exploration (entropy kept higher) and better accuracy than GRPO; correct responses
# get a shaped advantage that *falls* with their confidence. Exact claims (tested): $\beta^\pm = \gamma = 0$ is GRPO;
# $A > 0 \Rightarrow \hat A \ge 0$; the self-certainty identity; all-equal groups get $-\gamma\hat\lambda \le 0$.
#
# **Caveat.** $C_i$ is a *sum* over tokens, so within a group a longer response looks more confident; the module
# logs the correlation (`ucas/corr_conf_len`).

# %%
import os
from types import SimpleNamespace

import matplotlib.pyplot as plt
import numpy as np
import torch

from minirlvr.baselines import GRPOAdvantageConfig, grpo_advantage, verifier_reward
from minirlvr.methods.ucas import UcasConfig, self_certainty, ucas_terms
from minirlvr.model import load_checkpoint
from minirlvr.rollout import sample
from minirlvr.sft import default_checkpoint
from toy_tasks import get_task

FAST = os.environ.get("MINIRLVR_FAST") == "1"
TASK = "addition"
torch.set_num_threads(1)  # the tiny model runs fastest on one thread (README, "Threads")

# %% [markdown]
# ## 1 · One batch: the certainty, the two stages, the exact reduction to GRPO

# %%
task = get_task(TASK)
policy, _ = load_checkpoint(default_checkpoint(TASK))
batch = sample(policy, task.sample(16, np.random.default_rng(0)), 8, task.max_new_tokens,
               generator=torch.Generator().manual_seed(0))
batch.rewards = verifier_reward(batch, None, SimpleNamespace(task=task))
z = batch.old_logits.double()
pi = torch.softmax(z, -1)
kl_u = (np.log(1 / z.shape[-1]) - pi.log()).mul(1 / z.shape[-1]).sum(-1)        # KL(U || pi)
print(f"max |c - (KL(U||pi) + log V)| = {float((self_certainty(z) - kl_u - np.log(z.shape[-1])).abs().max()):.1e}")
zero = ucas_terms(batch, UcasConfig(beta_pos=0.0, beta_neg=0.0, gamma=0.0))["shaped"]
grpo = grpo_advantage(batch, GRPOAdvantageConfig(), None)
print(f"beta = gamma = 0: max |A_ucas - A_grpo| = {float((zero - grpo).abs().max()):.1e}")
t = ucas_terms(batch, UcasConfig())
m = batch.response_mask.bool()
row_mean = (t["shaped"] * m).sum(1) / m.sum(1)
fig, ax = plt.subplots(1, 2, figsize=(10, 3.3))
for sign, label in ((1, "correct (A > 0)"), (-1, "wrong (A < 0)")):
    rows = (t["adv"] * sign) > 0
    ax[0].scatter(t["conf_z"][rows], (row_mean / t["adv"])[rows], s=10, label=label)
ax[0].set_xlabel(r"within-group confidence $\hat C_i$"); ax[0].set_ylabel(r"mean $\hat A_{i,t}$ / $A_i$"); ax[0].legend(fontsize=7)
length = m.sum(1).double()
ax[1].scatter(length + 0.1 * torch.randn(batch.size, generator=torch.Generator().manual_seed(0), dtype=torch.float64),
              t["conf"], s=8)
ax[1].set_xlabel("response length (tokens, jittered)"); ax[1].set_ylabel(r"confidence $C_i = \sum_t c_{i,t}$")
fig.tight_layout()
print(f"all-equal groups: mean shaped advantage {float(t['shaped'][m & (t['adv'] == 0)[:, None]].mean()):+.4f}")

# %% [markdown]
# ## 2 · Design of the experiment
#
# The library regime (flat base, lr 1e-4, 16 x 8, 4 minibatches, 300 steps), 3 seeds, fixed before UCAS ran.
# All arms use the `grpo` recipe's loss (seq-mean-token-mean, clip 0.2), so they differ in the advantage only:
# `grpo`, `ucas_stage1` (response-level modifier only), `ucas_stage2` (token-level penalty + clamp only) and
# `ucas` (both, official coefficients).

# %%
from minirlvr.compare import format_summary, run_compare, seed_stats
from minirlvr.plots import plot_curves
from minirlvr.trainer import TrainConfig

STEPS, SEEDS, EVAL_EVERY = (3, 1, 3) if FAST else (300, 3, 25)
OUT = "runs/wp3_fast" if FAST else "runs/wp3"   # shared with tutorial 11
cfg = TrainConfig(task=TASK, steps=STEPS, eval_every=EVAL_EVERY, eval_problems=8 if FAST else 128,
                  prompts_per_step=4 if FAST else None, progress=False, reuse=True)
result = run_compare(["grpo", "ucas_stage1", "ucas_stage2", "ucas"], SEEDS, cfg, out_dir=OUT, leash_n=0)
print(format_summary(result["summary"], cfg.eval_k))

# %%
fig = plot_curves(result["runs"], keys=("entropy", "eval/greedy_acc", "eval/pass@8", "ucas/slope_pos", "ucas/corr_conf_len"),
                  title=f"{TASK}: GRPO vs UCAS and its two stages (mean ± std over seeds)")
fig.axes[3].set_ylabel("slope of mean Â on Ĉ (correct responses)")
fig.axes[4].set_ylabel("corr(Ĉ, length within group)")

# %%
print(f"{'recipe':<14}{'entropy (last 10)':>19}{'greedy':>16}{'pass@1':>16}{'pass@8':>16}{'slope_pos':>18}{'corr(C,len)':>14}")
for recipe, hists in result["runs"].items():
    e, g1, p1, p8 = (seed_stats(hists, "entropy", 10), *(seed_stats(hists, f"eval/{k}") for k in ("greedy_acc", "pass@1", "pass@8")))
    sl, cl = seed_stats(hists, "ucas/slope_pos", 10 ** 6), seed_stats(hists, "ucas/corr_conf_len", 10 ** 6)
    print(f"{recipe:<14}{e[0]:10.3f} ± {e[1]:.3f}{g1[0]:9.3f} ± {g1[1]:.3f}{p1[0]:9.3f} ± {p1[1]:.3f}"
          f"{p8[0]:9.3f} ± {p8[1]:.3f}{sl[0]:+11.4f} ± {sl[1]:.4f}{cl[0]:+10.3f}")

# %%
for recipe in ("ucas", "ucas_stage2"):
    m, sd = seed_stats(result["runs"][recipe], "ucas/adv_zero", 10 ** 6)
    print(f"{recipe}: mean shaped advantage of all-equal groups over training {m:+.4f} ± {sd:.4f}")

# %% [markdown]
# ## What we saw
#
# Full run: 3 seeds x 300 steps per recipe on 2-digit addition in the library regime (flat base, lr 1e-4,
# 16 x 8, 4 minibatches); final values, mean ± std over seeds.
#
# * **The exact claims hold.** $c = \mathrm{KL}(U\|\pi) + \log V$ to 2e-15; with $\beta^\pm = \gamma = 0$ UCAS is GRPO exactly;
#   all-equal groups get a small negative advantage (-0.039 on average in the base batch, -0.0379 ± 0.0002 over training).
# * **The mechanism is visible.** On a base batch, $\hat A / A$ falls with confidence for correct responses and
#   rises for wrong ones (left panel). Over training the slope of a correct response's mean $\hat A$ on $\hat C$ is
#   -0.19 ± 0.01 (full) and -0.21 ± 0.02 (stage 1 alone), as the paper expects; stage 2 alone gives +0.03.
#   Confidence is largely length here (right panel: 3- vs 4-token answers form two clusters; within-group
#   correlation of $\hat C$ with length +0.23).
# * **A modest gain for the full method.** Held-out pass@8 0.974 ± 0.013 (UCAS) vs 0.940 ± 0.004 (GRPO), about two
#   and a half combined stds; greedy accuracy equal (0.891 ± 0.017 vs 0.885 ± 0.026), pass@1 equal (0.796 ± 0.014
#   vs 0.809 ± 0.019); sample entropy of the last 10 steps 0.145 ± 0.007 vs 0.135 ± 0.005 (+7%, about 1.6 stds).
# * **The stages do not work alone.** Stage 1 keeps as much entropy (0.146 ± 0.002) but loses greedy accuracy
#   (0.810 ± 0.060) and pass@1 (0.726 ± 0.063); stage 2 alone: greedy 0.849 ± 0.030, pass@8 0.945 ± 0.032.
# * **Verdict: partly reproduced.** Slightly higher entropy and pass@8 with accuracy kept, in the direction of
#   the paper's "more exploration" claim; with 3 seeds the pass@8 gain is suggestive, not conclusive. The
#   official coefficients were used unchanged ($\beta^+ 0.25$, $\beta^- 0.35$, $\gamma 0.05$), with the `grpo` recipe's loss.
