"""EMPO (arXiv 2504.05812): the cluster-frequency reward against plain Python, sum_i r_i = G sum_c phat_c^2, bounds,
the ln G threshold, unparsed answers as singletons, the poisoned-label test (the reward never reads the answer),
any string as output, the majority-vote baseline, the expected-gradient identity 1/2 grad sum_c p_c^2 (exact on a
tabular softmax, and for the plug-in estimator by enumerating all G-tuples), the logged label accuracy, configs,
recipes and a short run."""
from __future__ import annotations

import itertools
import math
from collections import Counter
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minirlvr.core import group_advantages
from minirlvr.exact import softmax_fisher
from minirlvr.methods.empo import (EmpoConfig, cluster_ids, empo_reward, empo_rewards, group_stats,
                                   majority_rewards, majority_vote_reward)
from minirlvr.registry import get_recipe, get_stage, make_config
from toy_tasks import get_task

POOL = ["7", "3", "12", None]          # None: an answer that does not parse


@st.composite
def groups(draw, sizes=(1, 2, 3, 4, 5, 8), max_q=4, pool=POOL):
    """(answers [B], group_ids [B], G): Q groups of G answers each."""
    G, Q = draw(st.sampled_from(sizes)), draw(st.integers(1, max_q))
    answers = draw(st.lists(st.sampled_from(pool), min_size=G * Q, max_size=G * Q))
    return answers, torch.arange(G * Q) // G, G


def by_hand(answers, G, threshold, unparsed="zero"):
    """Plain-Python r_i: Counter over parsed answers, each None its own singleton."""
    out = []
    for q in range(len(answers) // G):
        grp = answers[q * G:(q + 1) * G]
        counts = Counter(a for a in grp if a is not None)
        n_clusters = len(counts) + sum(a is None for a in grp)
        for a in grp:
            f = 1 / G if a is None else counts[a] / G
            r = f if (a is not None or unparsed == "frequency") else 0.0
            out.append(0.0 if threshold and n_clusters == G else r)
    return out


# ------------------------------------------------------------------ the reward

@given(groups(), st.booleans(), st.sampled_from(["zero", "frequency"]))
def test_rewards_match_plain_python(case, threshold, unparsed):
    answers, gids, G = case
    r = empo_rewards(answers, gids, threshold, unparsed)
    assert r.dtype == torch.float64
    np.testing.assert_allclose(r.numpy(), by_hand(answers, G, threshold, unparsed), rtol=0, atol=1e-15)


@given(groups(pool=["7", "3", "12", "5"]))
def test_sum_of_rewards_is_G_times_collision_probability(case):
    answers, gids, G = case
    r = empo_rewards(answers, gids, threshold=False)
    for q in range(len(answers) // G):
        p = torch.tensor(list(Counter(answers[q * G:(q + 1) * G]).values()), dtype=torch.float64) / G
        assert float(r[q * G:(q + 1) * G].sum()) == pytest.approx(G * float((p ** 2).sum()), rel=1e-12)


@given(groups(), st.booleans())
def test_bounds_cluster_equality_and_order(case, threshold):
    answers, gids, G = case
    r = empo_rewards(answers, gids, threshold)
    for q in range(len(answers) // G):
        grp, rq = answers[q * G:(q + 1) * G], r[q * G:(q + 1) * G].tolist()
        assert all(x == 0.0 or 1 / G - 1e-15 <= x <= 1.0 for x in rq)
        for (a, x), (b, y) in itertools.product(zip(grp, rq), repeat=2):
            if a is not None and a == b:
                assert x == y                                   # one cluster, one reward
            if a is not None and b is not None and grp.count(a) > grp.count(b):
                assert x >= y                                   # a larger cluster never gets less
        assert all(x == 0.0 for a, x in zip(grp, rq) if a is None)   # unparsed: 0 (TRL)


@given(groups(), st.booleans(), st.randoms(use_true_random=False))
def test_permutation_and_relabelling_invariance(case, threshold, rnd):
    answers, gids, G = case
    r = empo_rewards(answers, gids, threshold)
    perm = list(range(G))
    rnd.shuffle(perm)
    shuffled = [answers[q * G + k] for q in range(len(answers) // G) for k in perm]
    r_perm = empo_rewards(shuffled, gids, threshold)
    idx = torch.tensor([q * G + k for q in range(len(answers) // G) for k in perm])
    assert torch.equal(r_perm, r[idx])
    relabel = {"7": "x", "3": "7", "12": "3"}
    assert torch.equal(empo_rewards([relabel.get(a, a) for a in answers], gids, threshold), r)


@pytest.mark.parametrize("G", [1, 2, 5, 8])
def test_all_equal_and_all_distinct_groups_carry_no_signal(G):
    gids = torch.zeros(G, dtype=torch.long)
    same = empo_rewards(["4"] * G, gids)
    assert same.tolist() == ([0.0] if G == 1 else [1.0] * G)     # G = 1: SE = 0 = ln 1, not < ln 1: filtered
    assert (group_advantages(same, gids) == 0).all()
    distinct = [str(k) for k in range(G)]
    assert (empo_rewards(distinct, gids) == 0).all()              # SE = ln G: the group is dropped
    assert empo_rewards(distinct, gids, threshold=False).tolist() == [1 / G] * G
    assert group_stats(distinct)["se"] == pytest.approx(math.log(G), abs=1e-12)
    assert group_stats(["4"] * G)["se"] == 0.0


def test_unparsed_answers_are_singletons_never_merged():
    assert cluster_ids([None, "1", None, "1", None]) == [0, 1, 2, 1, 3]
    gids = torch.zeros(4, dtype=torch.long)
    # four unparsed: four singletons -> SE = ln 4 -> filtered; merged they would be one cluster with reward 1
    assert group_stats([None] * 4)["all_singletons"] and group_stats([None] * 4)["se"] == pytest.approx(math.log(4))
    assert (empo_rewards([None] * 4, gids) == 0).all()
    assert empo_rewards([None] * 4, gids, threshold=False, unparsed="frequency").tolist() == [0.25] * 4
    r = empo_rewards([None, None, "5", "6"], gids, threshold=True, unparsed="frequency")
    assert (r == 0).all()                                         # 4 singletons even with two Nones
    assert empo_rewards([None, None, "5", "5"], gids).tolist() == [0.0, 0.0, 0.5, 0.5]


# ------------------------------------------------------------------ the stage: no labels, any string

def stage_inputs(texts, G, task_name="addition", seed=0, answers=None):
    task = get_task(task_name)
    probs = task.sample(len(texts) // G, np.random.default_rng(seed))
    rows = [p for p in probs for _ in range(G)]
    if answers is not None:
        rows = [replace(p, answer=a) for p, a in zip(rows, answers)]
    batch = SimpleNamespace(texts=list(texts), problems=rows, group_ids=torch.arange(len(texts)) // G)
    logged = {}
    ctx = SimpleNamespace(task=task, log=lambda **kw: logged.update(kw), logged=logged)
    return batch, ctx


@pytest.mark.parametrize("fn,cfg", [(empo_reward, EmpoConfig()), (empo_reward, EmpoConfig(False, "frequency")),
                                    (majority_vote_reward, None)])
@given(case=groups(pool=["7", "3", "12", "07", "", "1+2", "#7"]))
def test_poisoned_labels_give_bitwise_identical_rewards(fn, cfg, case):
    texts, gids, G = case
    texts = ["" if t is None else t for t in texts]
    clean, ctx = stage_inputs(texts, G)
    poisoned, ctx2 = stage_inputs(texts, G, answers=["garbage!"] * len(texts))
    r1, r2 = fn(clean, cfg, ctx), fn(poisoned, cfg, ctx2)
    assert torch.equal(r1, r2) and r1.dtype == torch.float32
    assert ctx2.logged["empo/label_accuracy"] == 0.0 and ctx2.logged["empo/true_accuracy"] == 0.0


def test_label_accuracy_is_the_majority_answer_vs_the_truth():
    texts = ["7", "7", "3", "x", "5", "6", "6", "5"]       # group 0: majority 7; group 1: tie 5/6 -> first (5)
    batch, ctx = stage_inputs(texts, 4, answers=["7"] * 4 + ["6"] * 4)
    r = empo_reward(batch, EmpoConfig(), ctx)
    assert r.tolist() == [0.5, 0.5, 0.25, 0.0, 0.5, 0.5, 0.5, 0.5]
    assert ctx.logged["empo/label_accuracy"] == 0.5                      # 7 right, 5 (first of the tie) wrong
    assert ctx.logged["empo/true_accuracy"] == pytest.approx(4 / 8)
    assert ctx.logged["empo/frac_unparsed"] == 1 / 8 and ctx.logged["empo/majority_ratio"] == 0.5
    assert ctx.logged["empo/frac_filtered"] == 0.0
    levels = {k for k in ctx.logged if k.startswith("empo/label_accuracy_d")}
    assert levels == {f"empo/label_accuracy_d{batch.problems[0].difficulty}"}


@settings(max_examples=25)
@pytest.mark.parametrize("task_name", ["addition", "addition_scratchpad", "chain"])
@given(data=st.data())
def test_any_string_is_accepted(task_name, data):
    G = data.draw(st.sampled_from([2, 4]))
    texts = data.draw(st.lists(st.one_of(st.text(max_size=30), st.text("0123456789#;+=c", max_size=12)),
                               min_size=G, max_size=G))
    for fn, cfg in ((empo_reward, EmpoConfig()), (empo_reward, EmpoConfig(False)), (majority_vote_reward, None)):
        batch, ctx = stage_inputs(texts, G, task_name)
        r = fn(batch, cfg, ctx)
        assert r.shape == (G,) and torch.isfinite(r).all() and ((r >= 0) & (r <= 1)).all()
        assert all(math.isfinite(v) for v in ctx.logged.values())


# ------------------------------------------------------------------ majority vote

@given(groups())
def test_majority_vote_rewards(case):
    answers, gids, G = case
    r = majority_rewards(answers, gids)
    for q in range(len(answers) // G):
        grp = answers[q * G:(q + 1) * G]
        counts = Counter(a for a in grp if a is not None)
        top = max(counts.values(), default=None)
        assert r[q * G:(q + 1) * G].tolist() == [float(a is not None and counts[a] == top) for a in grp]


# ------------------------------------------------------------------ expected gradients

def cluster_probs(pi, cmap, C):
    return torch.zeros(C, dtype=pi.dtype).index_add(0, cmap, pi)


@given(K=st.integers(2, 7), data=st.data())
def test_expected_gradient_is_half_grad_collision_probability(K, data):
    """Policy softmax(z) over K responses, each mapped to one of C answers: E_o[p_c(o) grad log pi(o)] =
    1/2 grad sum_c p_c^2 (autograd on both sides, and F(pi) [p_c(a)]_a in closed form)."""
    z0 = torch.tensor(data.draw(st.lists(st.floats(-4, 4), min_size=K, max_size=K)), dtype=torch.float64)
    cmap = torch.tensor(data.draw(st.lists(st.integers(0, K - 1), min_size=K, max_size=K)))
    C = int(cmap.max()) + 1
    z = z0.clone().requires_grad_(True)
    pi = torch.softmax(z, -1)
    p = cluster_probs(pi, cmap, C)
    surrogate = (pi.detach() * p.detach()[cmap] * torch.log_softmax(z, -1)).sum()   # E[r grad log pi], r = p_c
    lhs, = torch.autograd.grad(surrogate, z)
    z2 = z0.clone().requires_grad_(True)
    rhs, = torch.autograd.grad(0.5 * (cluster_probs(torch.softmax(z2, -1), cmap, C) ** 2).sum(), z2)
    torch.testing.assert_close(lhs, rhs, rtol=0, atol=1e-12)
    torch.testing.assert_close(softmax_fisher(z0) @ p.detach()[cmap], rhs, rtol=0, atol=1e-12)


def enumerate_estimator(z, cmap, G, threshold):
    """Exact E over all K^G draws of (1/G) sum_i r_i grad_z log pi(o_i), r = empo_rewards of the answers."""
    pi = torch.softmax(z, -1)
    K, total = len(z), torch.zeros_like(z)
    for draw in itertools.product(range(K), repeat=G):
        r = empo_rewards([str(int(cmap[a])) for a in draw], torch.zeros(G, dtype=torch.long), threshold)
        w = torch.prod(pi[list(draw)])
        score = sum(float(ri) * (torch.nn.functional.one_hot(torch.tensor(a), K).double() - pi)
                    for ri, a in zip(r, draw))
        total += w * score / G
    return total


@pytest.mark.parametrize("K,G,cmap", [(3, 2, [0, 1, 2]), (3, 3, [0, 0, 1]), (4, 3, [0, 1, 1, 2]), (2, 4, [0, 1])])
def test_plug_in_estimator_is_exactly_G_minus_1_over_G_of_the_gradient(K, G, cmap):
    """The self-count in phat adds (1/G) E[grad log pi] = 0, so no threshold: exactly (G-1)/G of the true
    gradient. The ln G threshold zeroes all-distinct draws and breaks this (where such draws exist)."""
    z = torch.linspace(-1.0, 1.3, K, dtype=torch.float64) ** 2
    cm = torch.tensor(cmap)
    C = int(cm.max()) + 1
    zz = z.clone().requires_grad_(True)
    true, = torch.autograd.grad(0.5 * (cluster_probs(torch.softmax(zz, -1), cm, C) ** 2).sum(), zz)
    est = enumerate_estimator(z, cm, G, threshold=False)
    torch.testing.assert_close(est, (G - 1) / G * true, rtol=0, atol=1e-12)
    if C >= G:            # all-distinct draws exist: the threshold changes the expectation
        assert (enumerate_estimator(z, cm, G, threshold=True) - est).abs().max() > 1e-6


# ------------------------------------------------------------------ configs, registry, a run

def test_bad_config_names_the_setting():
    with pytest.raises(ValueError, match="unparsed") as e:
        EmpoConfig(unparsed="none")
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="unparsed"):
        make_config(EmpoConfig, {"unparsed": "sometimes"}, where="reward 'empo'")
    with pytest.raises(ValueError, match="unparsed"):
        empo_rewards(["1"], torch.zeros(1, dtype=torch.long), unparsed="x")


def test_recipes():
    for name, thr in (("empo", True), ("empo_no_threshold", False)):
        r = get_recipe(name)
        assert (r.reward, r.advantage, r.loss) == ("empo", "grpo", "ppo_clip") and "2504.05812" in r.paper
        assert make_config(EmpoConfig, r.reward_cfg) == EmpoConfig(threshold=thr)
        assert r.loss_cfg == get_recipe("grpo").loss_cfg and r.train_cfg == {}
    assert get_recipe("majority_vote").reward == "majority_vote"
    assert get_stage("reward", "empo").needs == {"groups"}


@pytest.mark.parametrize("recipe", ["empo", "empo_no_threshold", "majority_vote"])
def test_short_training_run(tmp_path, tiny_ckpt, recipe):
    from minirlvr.trainer import TrainConfig, train
    hist = train(TrainConfig(recipe=recipe, task="addition", steps=2, prompts_per_step=4, group_size=4,
                             minibatches=2, eval_every=0, progress=False, out_dir=str(tmp_path), init=tiny_ckpt,
                             max_new_tokens=6))["history"]
    assert len(hist) == 2
    for h in hist:
        for k in ("semantic_entropy", "frac_filtered", "label_accuracy", "true_accuracy", "majority_ratio"):
            assert math.isfinite(h[f"empo/{k}"])
        assert 0.0 <= h["empo/semantic_entropy"] <= math.log(4) + 1e-12
