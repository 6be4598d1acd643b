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
# # 09 · Clipping, staleness and entropy: BAPO, Agentic AEPO's clip, spurious rewards, the policy cliff
#
# Four papers about what PPO's clip does to entropy once the data is stale (ratios $r \neq 1$):
#
# | paper | module | what it changes |
# |---|---|---|
# | *BAPO: Balanced Policy Optimization with Adaptive Clipping* (2025, arXiv 2510.18927) | [`bapo.py`](../minirlvr/methods/bapo.py) | searches the clip bounds $[c_{low}, c_{high}]$ per loss call |
# | *Agentic Entropy-Balanced Policy Optimization* (2025, arXiv 2510.14545), update half | [`agentic_aepo.py`](../minirlvr/methods/agentic_aepo.py) | keeps a gradient above the upper clip; entropy-scaled advantages |
# | *Exploration v.s. Exploitation: Clipping, Entropy, and Spurious Reward* (2025, arXiv 2512.16912) | [`clipping_bias.py`](../minirlvr/methods/clipping_bias.py) | analysis: random rewards x clip variants |
# | *The Policy Cliff* (2025, arXiv 2507.20150) | [`policy_cliff.py`](../minirlvr/methods/policy_cliff.py) | theory: the reward -> optimal-policy map |
#
# Tests: [`test_bapo.py`](../tests/methods/test_bapo.py), [`test_agentic_aepo.py`](../tests/methods/test_agentic_aepo.py),
# [`test_clipping_bias.py`](../tests/methods/test_clipping_bias.py), [`test_policy_cliff.py`](../tests/methods/test_policy_cliff.py),
# and the shared tabular toolkit [`exact.py`](../minirlvr/exact.py) ([`test_exact.py`](../tests/test_exact.py)).
#
# **The common mechanism.** PPO's clipped surrogate $\min(rA, \operatorname{clip}(r, 1-\epsilon_l, 1+\epsilon_h)A)$ gives a
# token **no gradient** exactly when $A > 0, r > 1 + \epsilon_h$ or $A < 0, r < 1 - \epsilon_l$ (tested).
# Tutorial 02's identity says a natural-gradient step changes entropy by $-\eta\,\mathrm{Cov}_\pi(\log\pi, A X)$ with
# $X$ the gradient-carrying indicator (BAPO's "Entropy-Clip rule"). Positive low-probability tokens are the ones
# whose ratio grows fastest, so the upper clip removes exactly the entropy-*raising* terms, while the lower
# clip removes entropy-lowering ones. The three methods react differently:
# * **BAPO** raises $c_{high}$ (and $c_{low}$) until positive tokens carry a share $\rho \ge \rho_0 = 0.5$ of the
#   gradient-carrying contribution $\sum X|rA|$;
# * **AEPO** keeps the loss value of the upper clip but lets its gradient through:
#   bound $u = (1+\epsilon_h)\,r/\mathrm{sg}(r)$, so $\partial L/\partial\ell = -\tilde A(1+\epsilon_h)$ there instead of 0; and scales advantages
#   by $1 + 0.2\,\hat H$ ($\hat H$ the standardised token entropy);
# * **the spurious-reward paper** argues that with random rewards (zero-mean advantages) the clip alone makes
#   training lower entropy, high-clip most.

# %%
import copy
from dataclasses import replace
import os

import matplotlib.pyplot as plt
import numpy as np
import torch
from types import SimpleNamespace

from minirlvr.baselines import GRPOAdvantageConfig, PPOClipConfig, grpo_advantage, ppo_clip_loss, verifier_reward
from minirlvr.core import ppo_clip_per_token
from minirlvr.exact import first_order_entropy_change, gradient_is_zero, simulate_bandit
from minirlvr.methods.agentic_aepo import AgenticAepoConfig, agentic_aepo_loss, gp_clip_per_token
from minirlvr.methods.bapo import BapoConfig, code_pos_neg_ratio, positive_share, search_bounds
from minirlvr.methods.policy_cliff import cliff_curve, lipschitz_bound, soft_optimal
from minirlvr.model import load_checkpoint
from minirlvr.rollout import policy_forward, sample
from minirlvr.sft import default_checkpoint
from toy_tasks import get_task

FAST = os.environ.get("MINIRLVR_FAST") == "1"
TASK = "addition"
torch.set_num_threads(1)  # the tiny model runs fastest on one thread (README, "Threads")

# %% [markdown]
# ## 1 · Exact: where the clip kills the gradient, and what that does to entropy
#
# **The indicator.** $\partial L/\partial \ell$ per token for PPO (0.2 / 0.28) and for AEPO's gradient-preserving
# clip, on a grid of ratios, for $A = +1$ and $A = -1$ (autograd through `core.ppo_clip_per_token` and
# `agentic_aepo.gp_clip_per_token`).

# %%
log_r = torch.linspace(-0.6, 0.6, 241, dtype=torch.float64)
fig, ax = plt.subplots(1, 2, figsize=(10, 3.2))
for a, A in zip(ax, (1.0, -1.0)):
    adv = torch.full_like(log_r, A)
    for name, fn in (("PPO", ppo_clip_per_token), ("AEPO gradient-preserving", gp_clip_per_token)):
        logp = log_r.clone().requires_grad_(True)
        loss = fn(logp, torch.zeros_like(log_r), adv, 0.2, 0.28)[0]
        (g,) = torch.autograd.grad(loss.sum(), logp)
        a.plot(log_r.exp(), -g, label=name, ls="-" if name == "PPO" else "--")
    zero = gradient_is_zero(log_r.exp(), adv, 0.2, 0.28)
    a.fill_between(log_r.exp(), 0, 1, where=zero.numpy(), color="grey", alpha=0.15,
                   transform=a.get_xaxis_transform(), label="PPO gradient is 0")
    a.set_xlabel("ratio r"); a.set_ylabel(r"$-\partial L / \partial \log\pi$"); a.set_title(f"A = {A:+.0f}")
    a.legend(fontsize=7)
fig.tight_layout()

# %% [markdown]
# **The Entropy-Clip rule, exactly.** A tabular softmax of 8 arms with random logits and advantages: the
# first-order entropy change of the natural-gradient step $\Delta z = \eta A X$ with every arm carrying gradient,
# and with the positive arms of below-typical probability ($\log\pi < -H$) clipped away.

# %%
g = torch.Generator().manual_seed(0)
rows = []
for trial in range(1000):
    z = torch.randn(8, generator=g, dtype=torch.float64) * 2
    A = torch.randn(8, generator=g, dtype=torch.float64)
    pi, logp = torch.softmax(z, -1), torch.log_softmax(z, -1)
    H = -(pi * logp).sum()
    low_pos = (A > 0) & (logp < -H)
    if low_pos.any():
        full = first_order_entropy_change(z, A, "npg", 1.0)
        clipped = first_order_entropy_change(z, A, "npg", 1.0, (~low_pos).double())
        rows.append((float(full), float(clipped)))
rows = np.array(rows)
print(f"{len(rows)} random bandits with a low-probability positive arm: dH/eta all arms {rows[:, 0].mean():+.3f}, "
      f"low-probability positives clipped {rows[:, 1].mean():+.3f}; clipping lowered dH in "
      f"{(rows[:, 1] < rows[:, 0]).mean():.0%} of them")

# %% [markdown]
# **Spurious rewards in a bandit.** GRPO on an 8-armed softmax bandit with *random* Bernoulli(0.5) rewards
# (independent of the arm, so the unclipped expected gradient is exactly zero), G = 8, 4 inner steps at
# lr 0.5, 300 steps, from uniform logits, 60 seeds: the entropy change for each clip variant (the card's own
# simulation; the paper's claim is about the ordering, high-clip lowest, low-clip highest).

# %%
SEEDS_BANDIT = list(range(8 if FAST else 60))
variants = {"no clip": (None, None), "symmetric 0.2": (0.2, 0.2), "high only 0.2": (None, 0.2), "low only 0.2": (0.2, None)}
bandit = {}
for name, (lo, hi) in variants.items():
    sim = simulate_bandit(steps=60 if FAST else 300, clip_low=lo, clip_high=hi, reward="random", seed=SEEDS_BANDIT)
    bandit[name] = sim["entropy"]
    d = sim["entropy"][:, -1] - sim["entropy"][:, 0]
    print(f"{name:<15} dH = {d.mean():+.3f} ± {d.std(ddof=1) / np.sqrt(len(d)):.3f} (se)")
fig, ax = plt.subplots(figsize=(5, 3.2))
for name, H in bandit.items():
    ax.plot(H.mean(0), label=name)
ax.set_xlabel("step"); ax.set_ylabel("policy entropy (nats)"); ax.set_title("random rewards, 8-armed bandit")
ax.legend(fontsize=7)

# %% [markdown]
# ## 2 · BAPO's search on one stale minibatch
#
# To see ratios like the ones BAPO meets, a copy of the base policy takes 7 DAPO optimizer steps (lr 1e-4) on
# minibatches of one rollout, as the stale regime's last minibatch does; then we measure the positive share
# $\rho$ (the paper's indicator measure) and the official code's value measure $P/N$ as functions of the bounds.

# %%
task = get_task(TASK)
base, _ = load_checkpoint(default_checkpoint(TASK))
batch = sample(base, task.sample(16, np.random.default_rng(1)), 8, task.max_new_tokens,
               generator=torch.Generator().manual_seed(1))
batch.rewards = verifier_reward(batch, None, SimpleNamespace(task=task))
batch.advantages = grpo_advantage(batch, GRPOAdvantageConfig(), None)
moved = copy.deepcopy(base).train()
opt = torch.optim.AdamW(moved.parameters(), lr=1e-4)
dapo = PPOClipConfig(clip_low=0.2, clip_high=0.28, clip_ratio_c=10.0, agg="token-mean")
for step in range(7):
    mb = batch.select(torch.randperm(batch.size, generator=torch.Generator().manual_seed(step))[:32])
    opt.zero_grad()
    ppo_clip_loss(policy_forward(moved, mb), mb, dapo, None)[0].backward()
    opt.step()
with torch.no_grad():
    ratio = (policy_forward(moved, batch).logp - batch.old_logp).exp()
adv, mask = batch.advantages, batch.response_mask
c_high = np.linspace(1.2, 3.0, 37)
c_low = np.linspace(0.6, 0.9, 7)
fig, ax = plt.subplots(1, 2, figsize=(10, 3.2))
for lo in (0.6, 0.75, 0.9):
    ax[0].plot(c_high, [positive_share(ratio, adv, mask, lo, hi, 10.0) for hi in c_high], label=f"c_low {lo}")
    ax[1].plot(c_high, [code_pos_neg_ratio(ratio, adv, mask, lo, hi) for hi in c_high], label=f"c_low {lo}")
ax[0].set_ylabel(r"indicator share $\rho$"); ax[1].set_ylabel("code's value measure P / N")
for a in ax:
    a.set_xlabel("c_high"); a.legend(fontsize=7)
fig.tight_layout()
found = search_bounds(ratio, adv, mask, BapoConfig(clip_ratio_c=10.0))
print(f"tokens with |log r| > 0.01: {float(((ratio.log().abs() > 0.01) & mask.bool()).sum()) / float(mask.sum()):.2f}; "
      f"search: rho {found['before']:.3f} -> {found['after']:.3f}, c_low {found['c_low']:.2f}, c_high {found['c_high']:.2f}")

# %% [markdown]
# **AEPO: same loss value as dual-clip PPO, more gradient.** On the same stale batch:

# %%
out = policy_forward(moved, batch)
ppo_only = AgenticAepoConfig(adv_scaling=False, grad_preserving_clip=False, clip_ratio_c=10.0)
gp_only = AgenticAepoConfig(adv_scaling=False, grad_preserving_clip=True, clip_ratio_c=10.0)
l_ppo, _ = agentic_aepo_loss(out, batch, ppo_only, None)
l_gp, m_gp = agentic_aepo_loss(out, batch, gp_only, None)
params = list(moved.parameters())
g_ppo = torch.cat([x.flatten() for x in torch.autograd.grad(l_ppo, params, retain_graph=True)])
g_gp = torch.cat([x.flatten() for x in torch.autograd.grad(l_gp, params)])
print(f"loss PPO {float(l_ppo.detach()):+.6e}, gradient-preserving {float(l_gp.detach()):+.6e} (equal: {torch.equal(l_ppo, l_gp)}); "
      f"positive tokens above 1 + eps_h: {m_gp['frac_pos_above_clip']:.3f}; |grad| {float(g_ppo.norm()):.4f} -> {float(g_gp.norm()):.4f}")

# %% [markdown]
# ## 3 · Design of the network experiments
#
# All recipes train in the stale regime shared with tutorial 08, fixed before any of these methods ran: flat
# base, lr 1e-4, 16 prompts x 8, 300 steps, **2 epochs x 4 minibatches** (8 optimizer steps per rollout), token-
# mean, GRPO advantages, plain rollout, 3 seeds. Baselines: `clip_symmetric` (PPO, 0.2 / 0.2) and `dapo_stale`
# (clip-higher 0.2 / 0.28, dual clip 10). `bapo` uses the README defaults ($\rho_0 = 0.5$, $c_{low} \in [0.6, 0.9]$,
# $c_{high} \in [1.2, 3.0]$, steps 0.05) and the indicator measure; `agentic_aepo` uses $\alpha = 0.2$ and DAPO's bounds.
# Both use `dapo_stale`'s dual clip (10) so they differ from it only in the method. The shipped `grpo` recipe
# in the same regime (seq-mean-token-mean, 0.2 / 0.2) is shown as a reference.

# %%
from minirlvr.compare import format_summary, run_compare, seed_stats
ALL = 10 ** 6   # seed_stats(..., ALL): the mean over the whole run
from minirlvr.plots import curve, plot_curves
from minirlvr.trainer import TrainConfig

STEPS, SEEDS, EVAL_EVERY = (3, 1, 3) if FAST else (300, 3, 25)
OUT = "runs/wp2_fast" if FAST else "runs/wp2"   # shared with tutorial 08
cfg = TrainConfig(task=TASK, steps=STEPS, eval_every=EVAL_EVERY, eval_problems=8 if FAST else 128,
                  prompts_per_step=4 if FAST else None, progress=False, reuse=True)  # None: the recipe's / default
main = run_compare(["clip_symmetric", "dapo_stale", "bapo", "agentic_aepo"], SEEDS, cfg, out_dir=OUT, leash_n=0)
grpo = run_compare(["grpo"], SEEDS, replace(cfg, minibatches=4, ppo_epochs=2), out_dir=OUT, leash_n=0)
ablation = run_compare(["aepo_adv_only", "aepo_clip_only"], SEEDS, cfg, out_dir=OUT, leash_n=0)
runs = {**main["runs"], **grpo["runs"], **ablation["runs"]}
print(format_summary(main["summary"] + grpo["summary"] + ablation["summary"], cfg.eval_k))

# %%
fig = plot_curves(main["runs"], keys=("entropy", "eval/greedy_acc", "eval/pass@8", "clipfrac_high", "clipfrac_low"),
                  title=f"{TASK}, stale regime (mean ± std over seeds)")

# %%
fig, ax = plt.subplots(1, 3, figsize=(13, 3.2))
for key, a in (("c_high", ax[0]), ("c_low", ax[0])):
    s, m, sd = curve(runs["bapo"], key)
    a.plot(s, m, label=f"BAPO {key}")
s, m, _ = curve(runs["bapo"], "rho_before")
ax[1].plot(s, m, label=r"$\rho$ at (0.6, 1.2)")
s, m, _ = curve(runs["bapo"], "rho_after")
ax[1].plot(s, m, label=r"$\rho$ after the search")
for recipe in ("agentic_aepo", "aepo_clip_only"):
    s, m, _ = curve(runs[recipe], "frac_pos_above_clip")
    ax[2].plot(s, m, label=recipe)
for key in ("c_high", "c_low", "rho_before", "rho_after"):
    m, sd = seed_stats(runs["bapo"], key, ALL)
    print(f"BAPO {key:<11} mean over the run {m:.3f} ± {sd:.3f}")
for recipe in ("agentic_aepo", "aepo_clip_only"):
    m, sd = seed_stats(runs[recipe], "frac_pos_above_clip", ALL)
    print(f"{recipe}: share of A > 0 tokens above 1 + eps_h (they carry gradient) {m:.3f} ± {sd:.3f}")
ax[0].set_ylabel("searched bound (mean of the step's minibatches)"); ax[1].set_ylabel("positive share")
ax[2].set_ylabel("share of tokens with A > 0 above 1 + eps_h")
for a in ax:
    a.set_xlabel("RL step"); a.legend(fontsize=7)
fig.tight_layout()

# %%
print(f"{'recipe':<16}{'entropy (last 10)':>19}{'greedy':>16}{'pass@8':>16}{'clip hi':>9}{'clip lo':>9}{'max grad norm':>15}")
for recipe, hists in runs.items():
    e, gr, p8 = seed_stats(hists, "entropy", 10), seed_stats(hists, "eval/greedy_acc"), seed_stats(hists, "eval/pass@8")
    gmax = np.mean([max(h["grad_norm"] for h in hist if "grad_norm" in h) for hist in hists])
    print(f"{recipe:<16}{e[0]:10.3f} ± {e[1]:.3f}{gr[0]:9.3f} ± {gr[1]:.3f}{p8[0]:9.3f} ± {p8[1]:.3f}"
          f"{seed_stats(hists, 'clipfrac_high', ALL)[0]:9.3f}{seed_stats(hists, 'clipfrac_low', ALL)[0]:9.3f}{gmax:15.2f}")

# %% [markdown]
# ## 4 · Spurious rewards on the network
#
# The paper's protocol at toy scale: the four clip variants (`clip_none`, `clip_symmetric`, `clip_high_only`,
# `clip_low_only`; "no bound" = a floor of 0 or a ceiling of 1e9), each with the true reward and with a random
# Bernoulli(0.5) reward (`--reward random_bernoulli`, independent of the answer), in the same stale regime but
# **100 steps** (CPU budget; the card suggests 200-300), 3 seeds, from the shipped base (held-out greedy 0.49).
# The paper's second arm, random rewards from a *strong* base, was not run in this round (CPU budget): the
# `grpo` policies above (greedy ~0.72) would be that base (`init=runs/wp2/grpo_s0/policy.pt`).
# `accuracy` under random rewards is the random reward's; the held-out `eval/` numbers are the true ones.

# %%
SHORT = 3 if FAST else 100
short = replace(cfg, steps=SHORT, eval_every=3 if FAST else 25)
clip_recipes = ["clip_none", "clip_high_only"] if FAST else ["clip_none", "clip_symmetric", "clip_high_only", "clip_low_only"]
sfx = "_fast" if FAST else ""
spur = {
    "true reward, base": run_compare(clip_recipes, SEEDS, short, out_dir=f"runs/tutorial09_clip_true{sfx}", leash_n=0),
    "random reward, base": run_compare(clip_recipes, SEEDS, replace(short, reward="random_bernoulli"),
                                       out_dir=f"runs/tutorial09_clip_random{sfx}", leash_n=0),
}

# %%
fig, ax = plt.subplots(1, 2, figsize=(9, 3.3), sharey=True)
for a, (setting, res) in zip(ax, spur.items()):
    for recipe, hists in res["runs"].items():
        s, m, sd = curve(hists, "entropy")
        line, = a.plot(s, m, label=recipe)
        a.fill_between(s, m - sd, m + sd, color=line.get_color(), alpha=0.15)
    a.set_title(setting, fontsize=9); a.set_xlabel("RL step")
ax[0].set_ylabel("sample entropy (nats/token)")
ax[0].legend(fontsize=7)
fig.tight_layout()

print(f"{'setting':<28}{'recipe':<16}{'dH (first->last 10)':>22}{'d greedy':>16}{'clip hi':>9}{'clip lo':>9}{'max grad':>10}")
for setting, res in spur.items():
    for recipe, hists in res["runs"].items():
        dH = [np.mean([h["entropy"] for h in hist if "entropy" in h][-10:]) - next(h["entropy"] for h in hist if "entropy" in h)
              for hist in hists]
        dg = [next(h["eval/greedy_acc"] for h in reversed(hist) if "eval/greedy_acc" in h) - hist[0]["eval/greedy_acc"]
              for hist in hists]
        gmax = np.mean([max(h["grad_norm"] for h in hist if "grad_norm" in h) for hist in hists])
        print(f"{setting:<28}{recipe:<16}{np.mean(dH):+12.3f} ± {np.std(dH):.3f}{np.mean(dg):+9.3f} ± {np.std(dg):.3f}"
              f"{seed_stats(hists, 'clipfrac_high', ALL)[0]:9.3f}{seed_stats(hists, 'clipfrac_low', ALL)[0]:9.3f}{gmax:10.2f}")

# %% [markdown]
# ## 5 · The policy cliff
#
# The optimal policy of a reward $r$ without entropy regularisation is a point mass on $\arg\max r$; at a tie it is
# not unique, and an arbitrarily small change $\epsilon e_i$ of the reward jumps it to a point mass (total
# variation 1/2 from the tie-breaking uniform policy, for a two-way tie). With entropy regularisation $\alpha > 0$ the
# optimum is $\operatorname{softmax}(r/\alpha)$, whose Jacobian $(\operatorname{diag}\pi - \pi\pi^\top)/\alpha$ has norm $\le 1/(2\alpha)$: the change is
# continuous, at most $\|\Delta r\|_2/(2\alpha)$.

# %%
eps = np.linspace(0.0, 0.5, 101)
curves = cliff_curve(eps, alphas=(0.0, 0.05, 0.1, 0.5))
fig, ax = plt.subplots(figsize=(5, 3.2))
for alpha, tv in curves.items():
    ax.plot(eps, tv, label="hard argmax (alpha = 0)" if alpha == 0 else f"alpha = {alpha}")
ax.set_xlabel(r"reward perturbation $\epsilon$ on one tied action"); ax.set_ylabel("TV distance of the optimal policy")
ax.legend(fontsize=7)
r, r2 = torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64), torch.tensor([1.02, 1.0, 0.0], dtype=torch.float64)
for alpha in (0.1, 0.5):
    move = float((soft_optimal(r2, alpha) - soft_optimal(r, alpha)).norm())
    print(f"alpha {alpha}: ||d pi||_2 = {move:.4f} <= bound {lipschitz_bound(r, r2, alpha):.4f}")

# %% [markdown]
# ## What we saw
#
# Full run. Exact parts: 1000 random 8-armed softmaxes; the bandit with 60 seeds x 300 steps. Network: 3 seeds
# x 300 steps per recipe in the stale regime (flat base, lr 1e-4, 16 x 8, 2 epochs x 4 minibatches); spurious
# rewards 3 seeds x 100 steps. Mean ± std over seeds unless marked se.
#
# * **Exact claims hold.** The clipped surrogate's gradient vanishes exactly on the grey regions (tested
#   everywhere inside core's log-ratio clamp); AEPO's gradient-preserving clip has PPO's loss value (identical)
#   and differs only for $A > 0$, $r > 1 + \epsilon_h$; BAPO's indicator share is monotone in both bounds and its
#   search ends in the stated number of steps; the Lipschitz bound of the policy cliff holds (0.0705 <= 0.1 at
#   $\alpha = 0.1$, 0.0133 <= 0.02 at $\alpha = 0.5$) and the hard policy jumps by TV 1/2 at a tie however small $\epsilon$.
# * **Entropy-Clip rule.** In 992 random bandits with a low-probability positive arm, clipping those arms
#   moved the first-order entropy change from +0.012 to -0.131 (per unit step), lower in 100% of them.
# * **Spurious rewards in the bandit: the card's ordering reproduces.** Entropy change after 300 steps of random
#   rewards: high-only clip -1.971 ± 0.017 (se) < symmetric -1.449 ± 0.063 < no clip -1.274 ± 0.056 < low-only
#   -0.843 ± 0.048. Every variant loses entropy (random walk of the logits); the clip decides how much.
# * **Spurious rewards on the network: the high/low ordering holds, the sign does not, and the base is
#   destroyed.** 100 stale steps of random rewards from the base *raise* entropy: high-only +0.004 ± 0.073, no clip
#   +0.010 ± 0.175, symmetric +0.132 ± 0.100, low-only +0.547 ± 0.046 (from ~0.41). The clip-high end is lowest and
#   the clip-low end highest, as the paper argues, but symmetric is not below no-clip, and nothing collapses
#   entropy. Held-out greedy accuracy falls from 0.49 to ~0 in every variant (-0.445 to -0.492): random rewards
#   do not help a weak base, consistent with the paper's "gains only for strong models" (the strong-base arm was
#   not run). With the true reward, clipping mostly stabilises: greedy +0.216 ± 0.010 (symmetric), +0.107 ± 0.037
#   (low-only), -0.029 ± 0.016 (high-only), -0.036 ± 0.089 (no clip) after 100 steps, and the largest gradient norm
#   is 9.4 with the symmetric clip vs 29.2 without.
# * **BAPO (vs fixed clips, same regime): accuracy like clip-higher, entropy not kept.** The search sets
#   $c_{high}$ = 1.826 ± 0.015 and $c_{low}$ = 0.735 ± 0.001 (run means) and lifts the positive share from 0.521 to 0.538.
#   Final sample entropy (last 10 steps) 0.101 ± 0.005 (BAPO) vs 0.104 ± 0.007 (PPO 0.2) and 0.113 ± 0.005
#   (clip-higher 0.28); greedy 0.771 ± 0.039 vs 0.664 ± 0.093 and 0.794 ± 0.049; pass@8 0.888 ± 0.026 vs 0.807 ±
#   0.058 and 0.867 ± 0.036; largest gradient norm 21.7 vs 22.8 and 15.0. Better than symmetric PPO on accuracy
#   (about one combined std), equal to clip-higher; the paper's "higher entropy, fewer gradient spikes" does not
#   show.
# * **AEPO's update half: no gain here.** 5.1 ± 0.2% of the positive tokens per step sit above $1 + \epsilon_h$ and now carry
#   gradient; entropy 0.110 ± 0.010 vs 0.113 ± 0.005 (DAPO), greedy 0.740 ± 0.039 vs 0.794 ± 0.049, pass@8 0.844 ±
#   0.028 vs 0.867 ± 0.036, and larger gradient spikes (36 vs 15). Each half alone: entropy 0.110 ± 0.005
#   (advantage scaling) and 0.104 ± 0.004 (gradient-preserving clip), greedy 0.760 ± 0.010 and 0.763 ± 0.053,
#   pass@8 0.857 ± 0.042 and 0.849 ± 0.056: neither half moves entropy or accuracy away from DAPO either.
# * **Verdicts:** clipping_bias: the exact and the bandit claims reproduce; on the network the clip-high < clip-low
#   ordering reproduces but the entropy decrease under random rewards does not (entropy rises). BAPO: not
#   reproduced for entropy, partly for accuracy (vs PPO 0.2 only). Agentic AEPO (update half): not reproduced.
#   Policy cliff: the theory checks hold (no training claim). Every recipe had clipping to act on: the upper
#   bound binds on 1.5-2.2% and the lower on 3.9-4.3% of tokens per step.
