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
# # 16 · EMPO: reinforcement learning without labels, by lowering the answer entropy
#
# *Right Question is Already Half the Answer: Fully Unsupervised LLM Reasoning Incentivization* (EMPO; Zhang et
# al. 2025, arXiv 2504.05812; official code `QingyangZhang/EMPO`). Module:
# [`minirlvr/methods/empo.py`](../minirlvr/methods/empo.py); tests: [`tests/methods/test_empo.py`](../tests/methods/test_empo.py).
#
# **Method.** No verifier, no reference answer. The $G$ responses to a prompt are clustered by their final answer
# (an answer that does not parse is a cluster of its own), and each response is rewarded with the share of its
# cluster, $r_i = \hat p(c(i)) = |c(i)|/G$; GRPO's advantage then moves probability toward the model's own
# majority answer, i.e. down the *semantic* (answer-level) entropy $\mathrm{SE} = -\sum_c \hat p_c \ln \hat p_c$.
# A group whose answers are all different ($\mathrm{SE} = \ln G$) gets reward 0 (the official TRL code's threshold).
#
# **Exact claims (tested).** $\sum_i r_i = G\sum_c \hat p_c^2$; on a categorical policy the expected gradient is
# $\tfrac12\nabla\sum_c p_c^2$ (the plug-in $\hat p$ gives exactly $(G-1)/G$ of it); a poisoned-label test shows the reward
# never reads the answer; unparsed answers never merge; any string is accepted.
#
# **Paper's claim.** Unsupervised EMPO reaches accuracy close to supervised GRPO. **Risk** (the paper's own
# caveat): the majority can be consistently *wrong*, and EMPO then reinforces the wrong answer. So the labels
# the majority would give are logged (never used): `empo/label_accuracy`, per difficulty level.
#
# **Setting.** The mixed-difficulty `addition_mixed` base (1-3 digits; held-out greedy 0.76 / 0.78 / 0.38): where
# the base is mostly right, the majority is a good label; on 3-digit prompts it is often not. The regime is
# tutorial 13's, so its supervised GRPO runs are the baseline here (same configuration, same seeds, reused).

# %%
import os

import numpy as np
import torch

from minirlvr.methods.empo import empo_rewards, group_stats, majority_rewards
from minirlvr.model import load_checkpoint
from minirlvr.rollout import sample
from minirlvr.sft import default_checkpoint
from toy_tasks import get_task

FAST = os.environ.get("MINIRLVR_FAST") == "1"
torch.set_num_threads(1)  # the tiny model runs fastest on one thread (README, "Threads")
BASE = default_checkpoint("addition_mixed")

# %% [markdown]
# ## 1 · One base batch: clusters, rewards, and how good the majority label is

# %%
task = get_task("addition")
policy, _ = load_checkpoint(BASE)
problems = task.sample(48, np.random.default_rng(0), difficulty=(1, 2, 3))
batch = sample(policy, problems, 8, task.max_new_tokens, generator=torch.Generator().manual_seed(0))
answers = [task.final_answer(t) for t in batch.texts]
r = empo_rewards(answers, batch.group_ids)
G = 8
for g in range(3):
    rows = list(range(g * G, (g + 1) * G))
    st = group_stats([answers[i] for i in rows])
    print(f"{problems[g].prompt:<10} true {problems[g].answer:>5}  answers {[answers[i] for i in rows]}  "
          f"SE {st['se']:.2f}  rewards {[round(float(r[i]), 3) for i in rows]}")
# the identity sum_i r_i = G sum_c phat_c^2 (no threshold; groups where every answer parses)
from collections import Counter
r_plain = empo_rewards(answers, batch.group_ids, threshold=False)
gaps = [abs(float(r_plain[g * G:(g + 1) * G].sum()) - G * sum((n / G) ** 2 for n in Counter(answers[g * G:(g + 1) * G]).values()))
        for g in range(len(problems)) if None not in answers[g * G:(g + 1) * G]]
print(f"max |sum r - G sum phat^2| over {len(gaps)} fully parsed groups: {max(gaps):.1e}")

# %%
# per level: how often the majority answer of 8 samples is the true answer (the label EMPO implicitly trains on)
print(f"{'level':<7}{'true accuracy':>15}{'majority = truth':>18}{'mean SE (nats)':>16}")
for d in (1, 2, 3):
    idx = [i for i, p in enumerate(problems) if p.difficulty == d]
    hits, ses = [], []
    for i in idx:
        grp = answers[i * G:(i + 1) * G]
        st = group_stats(grp)
        hits.append(st["majority"] is not None and grp[st["majority"]] == problems[i].answer)
        ses.append(st["se"])
    acc = np.mean([task.reward(problems[i], batch.texts[j]) for i in idx for j in range(i * G, (i + 1) * G)])
    print(f"d{d:<6}{acc:15.3f}{np.mean(hits):18.3f}{np.mean(ses):16.3f}")

# %% [markdown]
# ## 2 · Training: supervised GRPO vs EMPO (with and without the threshold) vs majority voting
#
# Tutorial 13's regime, fixed before EMPO ran: lr 1e-4, 16 prompts x 8, 4 minibatches, 300 steps on the 1-3 digit
# mixture, 3 seeds, 128 held-out prompts, pass@k up to 16. Held-out metrics always use the true verifier; the
# *training* reward of the unsupervised arms never sees a label (so their logged `accuracy` is not correctness:
# `empo/true_accuracy` is).

# %%
from minirlvr.compare import format_summary, run_compare, seed_stats
from minirlvr.plots import plot_curves
from minirlvr.trainer import TrainConfig

STEPS, SEEDS, EVAL_EVERY = (3, 1, 3) if FAST else (300, 3, 25)
cfg = TrainConfig(task="addition", steps=STEPS, eval_every=EVAL_EVERY, eval_problems=8 if FAST else 128,
                  eval_k=4 if FAST else 16, prompts_per_step=4 if FAST else None, difficulty=(1, 2, 3), init=BASE,
                  progress=False, reuse=True)
runs = run_compare(["grpo"], SEEDS, cfg, out_dir="runs/tutorial16_fast" if FAST else "runs/tutorial13", leash_n=0)["runs"]
runs.update(run_compare(["empo", "empo_no_threshold", "majority_vote"], SEEDS, cfg,
                        out_dir="runs/tutorial16_fast" if FAST else "runs/tutorial16", leash_n=0)["runs"])
K = cfg.eval_k
fig = plot_curves(runs, keys=("entropy", "eval/greedy_acc", "eval/greedy_acc@d3", f"eval/pass@{K}"),
                  title="addition 1-3 digits: supervised GRPO vs label-free rewards (mean ± std over seeds)")

# %%
fig = plot_curves({k: v for k, v in runs.items() if k != "grpo"},
                  keys=("empo/semantic_entropy", "empo/label_accuracy", "empo/label_accuracy_d3", "empo/true_accuracy"),
                  title="what the label-free reward sees (training batches)")

# %%
print(f"{'recipe':<19}{'entropy (last 10)':>19}{'greedy':>16}{'greedy d1 / d2 / d3':>24}{f'pass@{K}':>16}"
      f"{'label acc: first 10 / last 10':>32}")
for recipe, hists in runs.items():
    e, g, pk = seed_stats(hists, "entropy", 10), seed_stats(hists, "eval/greedy_acc"), seed_stats(hists, f"eval/pass@{K}")
    lv = [seed_stats(hists, f"eval/greedy_acc@d{d}")[0] for d in (1, 2, 3)]
    la = seed_stats(hists, "empo/label_accuracy", 10)
    la0 = seed_stats([[h for h in hist if "empo/label_accuracy" in h][:10] for hist in hists], "empo/label_accuracy", 10)
    print(f"{recipe:<19}{e[0]:10.3f} ± {e[1]:.3f}{g[0]:9.3f} ± {g[1]:.3f}{lv[0]:10.3f} / {lv[1]:.3f} / {lv[2]:.3f}"
          f"{pk[0]:9.3f} ± {pk[1]:.3f}{la0[0]:16.3f} / {la[0]:.3f}")

# %%
# what a label-free policy answers at the end (seed 0, 8 held-out prompts, 4 samples each)
from minirlvr.rollout import sample as draw
final, _ = load_checkpoint(f"{'runs/tutorial16_fast' if FAST else 'runs/tutorial16'}/empo_s{cfg.seed}/policy.pt")
peek = task.sample(8, np.random.default_rng(3), split="test", difficulty=(1, 2, 3))
b = draw(final, peek, 4, task.max_new_tokens, generator=torch.Generator().manual_seed(0))
for i, p in enumerate(peek):
    print(f"{p.prompt:<10} true {p.answer:>5}   EMPO answers {b.texts[4 * i:4 * i + 4]}")

# %% [markdown]
# ## What we saw
#
# Full run: 3 seeds x 300 steps per arm on the 1-3 digit addition mixture from `addition_mixed` (lr 1e-4, 16 x 8, 4
# minibatches); held-out numbers at the last evaluation, mean ± std over seeds; GRPO = tutorial 13's runs.
#
# * **The exact claims hold.** $\sum_i r_i = G\sum_c \hat p_c^2$ to 0.0 on every fully parsed base group (46 of 48);
#   the poisoned-label, singleton and gradient tests pass (`test_empo.py`).
# * **The majority is a good label only where the base is already good.** On base samples the majority answer of 8
#   is right on 100% of 1-digit, 69% of 2-digit and 28% of 3-digit prompts (true accuracy 0.93 / 0.52 / 0.24).
# * **Unsupervised RL collapses here: not reproduced.** EMPO's held-out greedy accuracy falls from the base's 0.70
#   to 0.104 ± 0.019 (no threshold: 0.060 ± 0.021; majority voting: 0.096 ± 0.071), against 0.745 ± 0.045 for
#   supervised GRPO; pass@16 0.146 ± 0.047 vs 0.904 ± 0.021. Held-out greedy accuracy is below 0.3 by step 75-100
#   in every EMPO run (majority voting: 75-200). The label accuracy of the training batches' majority answers falls
#   from 0.53-0.64 (first 10 steps) to 0.08-0.09 (last 10): the policy found answers it can agree with itself on
#   whatever the question -- on the 8 held-out prompts printed above, seed 0's final EMPO policy gives one wrong
#   answer in all 4 samples on 7 of them ("10", "100", "1002", ...), and no right answer on any. Sample
#   entropy ends lowest of all (0.062 ± 0.010 vs GRPO's 0.195): the semantic-entropy objective is met, by a
#   degenerate policy. The ln G threshold does not prevent it (it only zeroes all-different groups).
# * **Why the paper may still be right at scale.** Its models start far more accurate on their training
#   distribution, where the majority is mostly right; here a third of the mixture has a majority that is mostly
#   wrong, and at the toy's lr (1e-4, vs the paper's 1e-6 with large batches) self-agreement is learned within a
#   hundred steps. We did not tune the regime to rescue it.
