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
# # 04 · The Invisible Leash: does RLVR find anything the base could not?
#
# *The Invisible Leash: Why RLVR May Not Escape Its Origin* (Wu et al., 2025, arXiv 2507.14843)
# argues that RL with verifiable rewards mostly **reweights** what the base model can already
# sample. It sharpens precision (pass@1 up) but the set of problems solvable with a large sampling
# budget tends to shrink more than it grows (pass@k at large k falls toward or below the base).
# Module: [`minirlvr/methods/invisible_leash.py`](../minirlvr/methods/invisible_leash.py);
# tests: [`tests/methods/test_invisible_leash.py`](../tests/methods/test_invisible_leash.py).
#
# **The quantities.** For each held-out problem $x$ draw $n$ samples from the base and from the
# RL policy (same temperature, same length limit). With $c$ correct out of $n$, the unbiased
# $$\text{pass@}k = 1 - \binom{n-c}{k}\Big/\binom{n}{k}.$$
# Support at budget $k$: $C_b(x)$, $C_r(x)$ = distinct correct final answers in the first $k$ samples
# of base and RL; summed over problems, $P = |C_b\cap C_r|$ (kept), $S = |C_b\setminus C_r|$ (lost),
# $E = |C_r\setminus C_b|$ (newly found), and
# $\text{SRR} = P/(P+S)$, $\text{NDR} = E/(P+E)$, $\text{NSCR} = (E-S)/(P+S+E)$ (NSCR's normalisation
# is reconstructed; only its sign is comparable with the paper).
# On addition each problem has one correct answer, so the support is simply *solved or not*.
#
# **The theory in one line.** The KL-regularised optimum is the tilt $\pi_\lambda(y)\propto\pi_0(y)e^{\lambda r(y)}$:
# anything with $\pi_0(y)=0$ stays at 0, and
# $\frac{d}{d\lambda}H(\pi_\lambda) = -\operatorname{Cov}_\lambda(\ln\pi_0, r) - \lambda\operatorname{Var}_\lambda(r)$.

# %%
import os

import matplotlib.pyplot as plt
import numpy as np
import torch

from minirlvr.core import entropy_from_logits
from minirlvr.methods.invisible_leash import support_report, tilt, tilt_derivatives, tilt_logits
from minirlvr.model import load_checkpoint
from minirlvr.sft import default_checkpoint
from minirlvr.trainer import TrainConfig, train
from toy_tasks import get_task

FAST = os.environ.get("MINIRLVR_FAST") == "1"
STEPS, SEEDS, N_SAMPLES, N_PROBLEMS = (4, 1, 16, 16) if FAST else (300, 3, 256, 128)
torch.set_num_threads(1)  # the tiny model runs fastest on one thread (README, "Threads")

# %% [markdown]
# ## The tilt identity, numerically
#
# A random categorical base over 12 "sequences", two of them impossible ($\pi_0 = 0$), binary
# reward. We compare the closed form of $dH/d\lambda$ with a finite difference and check that
# the impossible sequences stay impossible for every $\lambda$.

# %%
g = torch.Generator().manual_seed(0)
pi0 = torch.rand(12, generator=g, dtype=torch.float64)
pi0[[3, 7]] = 0.0
pi0 /= pi0.sum()
r = (torch.rand(12, generator=g, dtype=torch.float64) < 0.4).double()
r[3] = 1.0  # an impossible sequence that would be rewarded


def H(lam):  # entropy of pi_lam, from its logits (-inf where pi0 = 0)
    return float(entropy_from_logits(tilt_logits(pi0, r, lam)))


for lam in (0.0, 1.0, 3.0):
    eps = 1e-5
    fd = (H(lam + eps) - H(lam - eps)) / (2 * eps)
    closed = float(tilt_derivatives(pi0, r, lam)[1])
    print(f"lam={lam}: dH/dlam closed form {closed:+.6f}, finite difference {fd:+.6f}, "
          f"pi_lam of the impossible rewarded sequence = {float(tilt(pi0, r, lam)[3])}")

# %% [markdown]
# ## Train GRPO, then sample both policies many times

# %%
task = get_task("addition")
base_policy, _ = load_checkpoint(default_checkpoint("addition"))
problems = task.sample(N_PROBLEMS, np.random.default_rng(2024), split="test")
ks = [k for k in (1, 2, 4, 8, 16, 32, 64, 128, 256) if k <= N_SAMPLES]

reports = []
for seed in range(SEEDS):
    run = train(TrainConfig(task="addition", recipe="grpo", steps=STEPS, seed=seed, eval_every=0,
                            out_dir="runs/tutorial04", progress=False))
    reports.append(support_report(base_policy, run["policy"], task, problems, N_SAMPLES, ks, seed=7))

# %%
fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
for who, color in (("base", "gray"), ("rl", "C0")):
    curves = np.array([rep["pass_at_k"][who] for rep in reports])
    axes[0].plot(ks, curves.mean(0), marker="o", ms=3, color=color, label="base (SFT)" if who == "base" else "GRPO")
    axes[0].fill_between(ks, curves.mean(0) - curves.std(0), curves.mean(0) + curves.std(0), color=color, alpha=0.2)
axes[0].set_xscale("log", base=2); axes[0].set_xlabel("k (samples per problem)"); axes[0].set_ylabel("pass@k")
axes[0].legend(); axes[0].set_title("pass@k on held-out problems")

counts = {name: np.array([[getattr(rep["support"][k], name) for k in ks] for rep in reports]).mean(0)
          for name in ("P", "S", "E")}
bottom = np.zeros(len(ks))
for name, color, label in (("P", "C2", "kept (P)"), ("S", "C3", "lost (S)"), ("E", "C1", "found (E)")):
    axes[1].bar(range(len(ks)), counts[name], bottom=bottom, color=color, label=label)
    bottom += counts[name]
axes[1].set_xticks(range(len(ks)), ks); axes[1].set_xlabel("k"); axes[1].set_ylabel("problems (mean over seeds)")
axes[1].legend(); axes[1].set_title("support: solved by base / RL within k samples")

for metric in ("srr", "ndr", "nscr"):
    vals = np.array([[getattr(rep["support"][k], metric) for k in ks] for rep in reports])
    axes[2].plot(ks, vals.mean(0), marker="o", ms=3, label=metric.upper())
axes[2].axhline(0, color="k", lw=0.5); axes[2].set_xscale("log", base=2); axes[2].set_xlabel("k")
axes[2].set_ylabel("rate"); axes[2].legend(); axes[2].set_title("retention, discovery, net change")
fig.tight_layout()

# %% [markdown]
# ## Token entropy vs answer entropy
#
# Token entropy is the mean per-token entropy of the samples; answer entropy is the entropy of
# the distribution of final answers over the $n$ samples of a problem, averaged over problems.

# %%
print(f"{'':<8}{'token entropy':>16}{'answer entropy':>16}")
for who in ("base", "rl"):
    tok = np.array([rep["token_entropy"][who] for rep in reports])
    ans = np.array([rep["answer_entropy"][who] for rep in reports])
    print(f"{who:<8}{tok.mean():>10.3f} ± {tok.std():.3f}{ans.mean():>10.3f} ± {ans.std():.3f}")
print()
for k in (1, ks[len(ks) // 2], ks[-1]):
    i = ks.index(k)
    b = np.array([rep["pass_at_k"]["base"][i] for rep in reports])
    rl = np.array([rep["pass_at_k"]["rl"][i] for rep in reports])
    sc = [rep["support"][k] for rep in reports]
    print(f"k={k:<4} pass@k base {b.mean():.3f}  GRPO {rl.mean():.3f} ± {rl.std():.3f}   "
          f"P/S/E = {np.mean([s.P for s in sc]):.1f}/{np.mean([s.S for s in sc]):.1f}/{np.mean([s.E for s in sc]):.1f}   "
          f"NSCR {np.mean([s.nscr for s in sc]):+.3f}")

# %% [markdown]
# ## What we saw
#
# Full run: GRPO, 3 seeds x 300 steps on 2-digit addition in the shared regime (flat base, lr 1e-4),
# then 256 samples per problem at T = 1 on 128 held-out problems for the base and for each trained
# policy (mean ± std over seeds; the base has no spread: same policy, same sampling seed).
#
# * **Theory (exact).** The closed form of $dH/d\lambda$ matches the finite difference to 6 digits at
#   $\lambda$ = 0, 1, 3, and the rewarded sequence the base cannot produce keeps probability exactly 0.
# * **pass@k: no crossover in this regime.** GRPO is far better at small budgets (pass@1 0.783 ± 0.001
#   vs 0.395) and the base catches up as k grows: pass@16 0.952 ± 0.016 vs 0.935, pass@256 0.987 ± 0.004
#   vs 0.984. The curves meet from k = 32 on, but the RL curve never drops below the base's. (Round 1's
#   regime, lr 1e-5 on a sharp base, did show the crossover: pass@16 0.905 vs 0.958.) The paper's
#   claim that RL narrows reach is therefore **not reproduced** here; what holds is the weaker statement
#   that RL adds little at large k.
# * **Support: mostly kept, a little lost, a little found.** At k = 1 RL solves many problems the base
#   missed (P/S/E = 39.3/8.7/63.3, NSCR +0.49): precision, not reach. At k = 16, 115.0/5.0/6.7 (NSCR
#   +0.01); at k = 256, 124.7/1.3/1.7 (NSCR +0.003): RL lost 1.3 and found 1.7 problems on average,
#   a wash. NSCR dips just below 0 at k = 64-128 (about -0.005). NSCR's normalisation is reconstructed (no
#   official code): only its sign is comparable with the paper.
# * **Entropy.** Answer entropy fell (1.356 -> 0.424 ± 0.032 nats) together with token entropy
#   (0.390 -> 0.126 ± 0.009). The paper's observation that token entropy can *rise* while answer entropy
#   falls does not appear here: under plain GRPO both fall. On addition each problem has a single correct
#   answer, so the support is "solved or not"; a task with many correct answers (countdown, support
#   = "completion") would be the next experiment.
