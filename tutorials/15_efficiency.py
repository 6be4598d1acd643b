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
# # 15 · Token efficiency: DLER, PEAR, ARES and DiffAdapt on a task with removable length
#
# Four papers about spending fewer tokens at equal accuracy:
#
# | paper | module | what it changes |
# |---|---|---|
# | *DLER: Doing Length pEnalty Right* (2025, arXiv 2510.15110; official code NVlabs/DLER) | [`dler.py`](../minirlvr/methods/dler.py) | truncation reward at $L_{\max}$ + group-mean, token-weighted batch-whitened advantage + dynamic sampling + clip-higher |
# | *PEAR: Phase Entropy Aware Reward* (2025, arXiv 2510.08026; formula not confirmed from code: **PEAR-style**) | [`pear.py`](../minirlvr/methods/pear.py) | reward of a correct answer minus $\max(0, a H_{\text{think}} - b H_{\text{answer}})$ |
# | *ARES* (2025; official code) | [`ares.py`](../minirlvr/methods/ares.py) | entropy-window reward per online difficulty bucket, a bounded KL controller |
# | *DiffAdapt* (2025, arXiv 2510.19669; no code: **DiffAdapt-style**) | [`diffadapt.py`](../minirlvr/methods/diffadapt.py) | evaluation only: a probe predicts difficulty and picks a decoding preset |
# | *CANON: Conditional Advantage Estimation for RL in Large Reasoning Models* (2025, arXiv 2509.23962), its length variant `canon_length` | [`canon.py`](../minirlvr/methods/canon.py) | advantage baselined on the other and the own half of each group split by length (tutorial 11: the entropy split) |
#
# Tests: [`test_dler.py`](../tests/methods/test_dler.py), [`test_pear.py`](../tests/methods/test_pear.py),
# [`test_ares.py`](../tests/methods/test_ares.py), [`test_diffadapt.py`](../tests/methods/test_diffadapt.py).
#
# **The task.** `addition_verbose`: the addition scratchpad in which every column may be re-checked 0-2 times
# (`3+8=1c1;?3+8=1c1;2+4+1=7;#71`); the re-checks change nothing, so about half of every answer is removable. Its base
# (`toy_tasks/checkpoints/addition_verbose.pt`, 1-3 digits) answers in a median 16 / 37 / 57 tokens at 1 / 2 / 3
# digits against 12 / 19 / 30 for the re-check-free trace. Efficiency columns (every evaluation logs them):
# tokens per attempt, truncation rate, accuracy within 25 and 50 tokens, and cost-of-pass (tokens per attempt /
# success rate).
#
# **How it runs.** Sections 1-2 (base checks and DiffAdapt, evaluation only) run here in about 10 minutes.
# Section 3 (6 recipes x 3 seeds x 300 steps, 12-19 minutes per run on one core of this CPU) reads finished
# runs from `runs/tutorial15`, made beforehand with, for each recipe and seed 0-2,
#
# ```python
# cfg = TrainConfig(task="addition_verbose", steps=300, eval_every=25, eval_problems=128, eval_k=8,
#                   eval_max_new_tokens=100, difficulty=(1, 2, 3), init=default_checkpoint("addition_verbose"),
#                   progress=False, reuse=True, seed=seed)
# run_compare([recipe], 1, cfg, out_dir="runs/tutorial15", leash_n=0)
# ```
#
# (the DLER ablation: the same for `dler_no_dynamic`, `dler_no_whiten`, `dler_no_cliphigher`, seed 0).

# %%
import os

import matplotlib.pyplot as plt
import numpy as np
import torch

from minirlvr.methods.diffadapt import (DiffAdaptConfig, confusion, decode_preset, difficulty_labels,
                                        evaluate_routing, prompt_features, route, sample_stats, train_probe, u_curve)
from minirlvr.methods.pear import entropy_length_check
from minirlvr.model import load_checkpoint
from minirlvr.sft import default_checkpoint
from toy_tasks import get_task

FAST = os.environ.get("MINIRLVR_FAST") == "1"
torch.set_num_threads(1)  # the tiny model runs fastest on one thread (README, "Threads")
BASE = default_checkpoint("addition_verbose")
task = get_task("addition_verbose")
policy, _ = load_checkpoint(BASE)
LEVELS = (1, 2, 3)

# %% [markdown]
# ## 1 · PEAR's premise on the base: does thinking-phase entropy go with length?
#
# PEAR penalises the entropy of the thinking phase (before `#`) because, in large reasoning models, high
# thinking entropy goes with long, meandering answers. Here: the correlation over responses and within groups
# (group means removed, which takes the problem's difficulty out).

# %%
probs = task.sample(16 if FAST else 128, np.random.default_rng(0), difficulty=LEVELS)
check = entropy_length_check(policy, probs, group=4 if FAST else 8)
print({k: round(v, 3) for k, v in check.items()})

# %% [markdown]
# ## 2 · DiffAdapt: is entropy U-shaped in difficulty, and does routing save tokens?
#
# Per training question, 16 samples at T = 1 give its accuracy and mean token entropy. DiffAdapt's premise is a
# U-curve: easy questions answered with high entropy ("overthinking"), medium ones lowest, hard ones high. A probe
# on the frozen model's last prompt state is trained on the labels Easy (acc >= 0.8) / Normal / Hard (acc <= 0.2)
# and routes held-out questions to a preset: Easy = greedy with half the budget, Normal = T = 1 (the baseline),
# Hard = 1.5x the budget and a majority vote of 3 samples (presets are ours: the paper's are unpublished).
# Three seeds: three independent draws of training questions, samples and probe initialisation.

# %%
N_TRAIN, N_TEST, K = (24, 12, 4) if FAST else (1000, 500, 16)
SEEDS = 1 if FAST else 3
cfg = DiffAdaptConfig()
test_q = task.sample(N_TEST, np.random.default_rng(99), split="test", difficulty=LEVELS)
per_preset = [decode_preset(policy, task, test_q, c, cfg, task.max_new_tokens, seed=0) for c in range(3)]
test_stats = sample_stats(policy, task, test_q, K, task.max_new_tokens, seed=1)
oracle = difficulty_labels(test_stats["acc"], cfg.a_lo, cfg.a_hi)
test_feat = prompt_features(policy, test_q)
results, curves = [], []
for seed in range(SEEDS):
    train_q = task.sample(N_TRAIN, np.random.default_rng(seed), split="train", difficulty=LEVELS)
    st = sample_stats(policy, task, train_q, K, task.max_new_tokens, seed=seed)
    curves.append(u_curve(st["acc"], st["entropy"], bins=5))
    probe = train_probe(prompt_features(policy, train_q), difficulty_labels(st["acc"], cfg.a_lo, cfg.a_hi), cfg, seed)
    pred = route(probe, test_feat)
    results.append(evaluate_routing(per_preset, {"probe": pred, "oracle": oracle}))
    print(f"seed {seed}: probe accuracy on held-out labels {float((pred == oracle).mean()):.3f}; confusion "
          f"(rows true Easy/Normal/Hard):\n{confusion(pred, oracle)}")

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
for seed, c in enumerate(curves):
    axes[0].errorbar((c["lo"] + c["hi"]) / 2, c["mean"], yerr=c["sem"], marker="o", capsize=3, label=f"seed {seed}")
for seed, c in enumerate(curves):
    print(f"seed {seed}: mean token entropy per accuracy bin (low -> high accuracy): "
          + ", ".join(f"{m:.3f}" for m in c["mean"]))
axes[0].set_xlabel("question accuracy (16 samples at T = 1)"); axes[0].set_ylabel("mean token entropy (nats)")
axes[0].set_title("entropy vs difficulty (DiffAdapt's U-curve?)"); axes[0].legend(fontsize=7)
for name in results[0]:
    acc = [r[name]["acc"] for r in results]; tok = [r[name]["tokens"] for r in results]
    axes[1].errorbar(np.mean(tok), np.mean(acc), xerr=np.std(tok), yerr=np.std(acc), fmt="o", capsize=3, label=name)
axes[1].set_xlabel("tokens per question"); axes[1].set_ylabel("held-out accuracy")
axes[1].set_title("routing: accuracy vs tokens"); axes[1].legend(fontsize=7)
plt.tight_layout()
print(f"{'routing':<12}{'accuracy':>18}{'tokens':>18}{'token reduction':>18}")
for name in results[0]:
    vals = np.array([[r[name]["acc"], r[name]["tokens"], r[name]["token_reduction"]] for r in results])
    print(f"{name:<12}" + "".join(f"{m:.3f} ± {s:.3f}".rjust(18) for m, s in zip(vals.mean(0), vals.std(0))))

# %% [markdown]
# ## 3 · RL: GRPO vs truncation vs DLER vs PEAR vs ARES vs CANON-length
#
# Fixed before the methods ran: the library regime (lr 1e-4, 16 x 8, 4 minibatches, 300 steps) on the 1-3 digit
# mixture from the verbose base, 3 seeds, 128 held-out prompts evaluated at the task's full 100-token budget for
# every arm (`eval_max_new_tokens=100`: a truncation-trained policy is judged on what it does when free to be
# long). $L_{\max} = 34$ for `grpo_trunc` and `dler`: the longest re-check-free answer of the mixture plus EOS (the
# issue's 60%-of-median rule gives 22, at which no 3-digit problem can be answered; see `dler.L_MAX`).

# %%
from minirlvr.compare import seed_stats
from minirlvr.plots import plot_curves, plot_frontier

RECIPES = ["grpo", "grpo_trunc", "dler", "pear", "ares", "canon_length"]
OUT = "runs/tutorial15"
runs = {}
if not FAST:
    import json
    for recipe in RECIPES:
        hists = []
        for s in range(3):
            path = f"{OUT}/{recipe}_s{s}/metrics.jsonl"
            if os.path.isfile(path):
                hist = [json.loads(line) for line in open(path)]
                if hist and hist[-1]["step"] == 300:
                    hists.append(hist)
        if hists:
            runs[recipe] = hists
print({k: len(v) for k, v in runs.items()} or "no finished runs yet")
if runs:
    fig = plot_curves(runs, keys=("eval/len_mean", "eval/pass@1", "eval/cost_of_pass", "entropy"),
                      title="addition_verbose 1-3 digits (mean ± std over the finished seeds)")
    fig = plot_frontier(runs)
    base = [h[0] for hists in runs.values() for h in hists]   # step 0: every run evaluates the base first
    print(f"{'base':<12} n={len(base)} " + "  ".join(
        f"{k} {np.mean([b['eval/' + k] for b in base]):.3f}" for k in ("len_mean", "pass@1", "greedy_acc",
                                                                        "cost_of_pass", "acc@25tok", "acc@50tok")))
    for recipe, hists in runs.items():
        vals = {k: seed_stats(hists, f"eval/{k}") for k in ("len_mean", "pass@1", "greedy_acc", "cost_of_pass",
                                                             "acc@25tok", "acc@50tok")}
        print(f"{recipe:<12} n={len(hists)} " + "  ".join(f"{k} {m:.3f} ± {s:.3f}" for k, (m, s) in vals.items()))

# %% [markdown]
# **Compute per step is not equal.** DLER's dynamic sampling draws fresh rollouts until the batch holds 16
# groups with unequal rewards (up to 10 draws), so a DLER step may generate several times GRPO's 128
# samples. The mean number of draws per step, from the training logs:

# %%
for recipe, hists in runs.items():
    tries = [np.mean([h["dynamic_sampling_tries"] for h in hist if "dynamic_sampling_tries" in h]) for hist in hists
             if any("dynamic_sampling_tries" in h for h in hist)]
    if tries:
        print(f"{recipe:<12} rollouts drawn per step {np.mean(tries):.2f} (seeds: {', '.join(f'{t:.2f}' for t in tries)})")

# %% [markdown]
# **ARES's controllers at toy step counts.** ARES adapts, per online difficulty bucket, the weight alpha of its
# entropy reward (steps of at most 0.025) and the coefficient beta of its KL term (log-steps of at most 0.01,
# every 100 loss calls). How far they moved in 300 steps:

# %%
if "ares" in runs:
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
    for d, color in zip(("easy", "medium", "hard"), ("C0", "C1", "C3")):
        for key, ax in ((f"ares/alpha_{d}", axes[0]), (f"ares/beta_{d}", axes[1])):
            curves = np.array([[h.get(key, np.nan) for h in hist[1:]] for hist in runs["ares"]])
            steps = [h["step"] for h in runs["ares"][0][1:]]
            ax.plot(steps, np.nanmean(curves, 0), color=color, label=d)
            ax.fill_between(steps, np.nanmin(curves, 0), np.nanmax(curves, 0), color=color, alpha=0.2)
    axes[0].set_ylabel("alpha (entropy-reward weight)"); axes[1].set_ylabel("beta (KL multiplier)")
    for ax in axes:
        ax.set_xlabel("RL step"); ax.legend(fontsize=7)
    plt.tight_layout()
    for d in ("easy", "medium", "hard"):
        first = [hist[1][f"ares/alpha_{d}"] for hist in runs["ares"]]
        last = [hist[-1][f"ares/alpha_{d}"] for hist in runs["ares"]]
        beta = [hist[-1][f"ares/beta_{d}"] for hist in runs["ares"]]
        print(f"{d:<7} alpha {np.mean(first):.3f} -> {np.mean(last):.3f} ± {np.std(last):.3f}   "
              f"beta 1.000 -> {np.mean(beta):.3f} ± {np.std(beta):.3f}")

# %% [markdown]
# ### DLER with one of its fixes removed (seed 0 only)
#
# The ablation: DLER without dynamic sampling (`dler_no_dynamic`), with GRPO's group-std advantage
# instead of batch whitening (`dler_no_whiten`), and without clip-higher (`dler_no_cliphigher`), next to
# DLER and GRPO + truncation. One seed each (the time there was): read as a pointer, not a result.

# %%
ABLATIONS = ["dler", "dler_no_dynamic", "dler_no_whiten", "dler_no_cliphigher", "grpo_trunc"]
if not FAST:
    import json
    for recipe in ABLATIONS:
        path = f"{OUT}/{recipe}_s0/metrics.jsonl"
        hist = [json.loads(line) for line in open(path)] if os.path.isfile(path) else []
        if not hist or hist[-1]["step"] != 300:
            print(f"{recipe:<20} not run")
            continue
        last = hist[-1]
        tries = [h["dynamic_sampling_tries"] for h in hist if "dynamic_sampling_tries" in h]
        print(f"{recipe:<20} pass@1 {last['eval/pass@1']:.3f}  greedy {last['eval/greedy_acc']:.3f}  "
              f"tokens/attempt {last['eval/len_mean']:.1f}  cost-of-pass {last['eval/cost_of_pass']:.1f}  "
              f"draws/step {np.mean(tries) if tries else 1.0:.2f}")

# %% [markdown]
# ## What we saw
#
# Numbers are from the full run above: sections 1-2 over 3 draws of training questions (seeds 0-2), section 3
# at step 300 of 3 seeds (mean ± std), 128 held-out prompts at the full 100-token budget; the ablation is
# seed 0 only.
#
# * **On this toy, plain GRPO already removes the removable length.** The base answers in 38.6 tokens per
#   attempt (pass@1 0.393, cost-of-pass 98 tokens). After 300 GRPO steps: 21.2 ± 0.2 tokens, pass@1
#   0.617 ± 0.026, cost-of-pass 34.4 ± 1.6; the re-check-free trace is about 20 tokens, so GRPO drops nearly
#   every re-check without being asked (a re-check is one more chance of a copying error, so shorter answers
#   win more often). Every arm ends at 20.9-22.8 tokens: none of the length-aware methods makes answers
#   shorter than GRPO does. Truncation at 34 tokens (`grpo_trunc`) binds mostly at the start: it cut 49-65%
#   of the training samples at step 1, at most 9% from step 25 and 0-4% after step 100 (training logs,
#   `truncated_frac`, 3 seeds). It ends at 20.9 ± 0.3 tokens, pass@1 0.657 ± 0.052 (within GRPO's spread).
# * **DLER: large accuracy gain at equal length, with 3.5x the rollouts.** pass@1 0.918 ± 0.017,
#   greedy 0.956 ± 0.010, cost-of-pass 23.0 ± 0.4 (vs 0.617 / 0.669 / 34.4 for GRPO), at 21.1 tokens. But its
#   dynamic sampling drew 3.56 rollouts per step on average (3.5x GRPO's generation compute). Removing one
#   fix at a time (seed 0): without dynamic sampling pass@1 falls to 0.729 (DLER 0.905, GRPO + truncation
#   0.661); without batch whitening 0.932, without clip-higher 0.905. One seed per arm: this points at dynamic
#   sampling (more, filtered samples per step) as the source of the gain, but does not establish it. The
#   paper's claim (accuracy kept while truncation cuts length) is not testable on this toy, because length
#   drops without truncation.
# * **PEAR-style: its premise is absent; no length effect.** On the base, thinking-phase entropy and length
#   are uncorrelated over responses (+0.029) and weakly negative within groups (-0.127). Trained: 21.6 ± 0.8
#   tokens, pass@1 0.704 ± 0.022 (+0.09 over GRPO, about three GRPO seed spreads).
# * **ARES: no length or accuracy effect beyond the seed spread** (22.8 ± 2.2 tokens, pass@1 0.685 ± 0.051).
#   Its controllers are not all inert at 300 steps: the entropy-reward weight alpha of the hard bucket fell from
#   0.49 to 0.07 ± 0.05 and the medium one rose to 0.87 ± 0.23, while the KL multipliers beta moved only to
#   1.11-1.13 (34 bounded updates).
# * **CANON (length split): no effect.** 21.1 ± 0.2 tokens, pass@1 0.660 ± 0.012.
# * **DiffAdapt-style: no U-curve, and routing saves no tokens at equal accuracy.** Mean token entropy falls
#   as question accuracy rises: 0.14-0.15 nats over the four lower accuracy bins, 0.124-0.125 in the top one
#   (all 3 seeds); easy questions are answered with the LOWEST entropy, not with "overthinking" entropy. The
#   probe recovers the Easy / Normal / Hard labels 52-55% of the time (chance for the majority class 54%).
#   Routing: all-Normal (the baseline) 0.460 at 38.9 tokens, all-Easy 0.438 at 36.9, all-Hard 0.532 at 113.2;
#   probe routing 0.498 ± 0.004 at 61.0 ± 3.0 tokens, oracle labels 0.472 at 62.8. Routing buys accuracy with
#   tokens (the Hard preset's majority vote) instead of saving them.
