"""pass@k against exact combinatorics and brute-force enumeration; entropy / length stats."""
from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minirlvr.metrics import accuracy, entropy_stats, length_stats, pass_at_k, pass_at_k_groups


@st.composite
def nck(draw, max_n=60):
    n = draw(st.integers(1, max_n))
    return n, draw(st.integers(0, n)), draw(st.integers(1, n))


def exact(n, c, k):
    return 1 - Fraction(math.comb(n - c, k), math.comb(n, k))


@given(args=nck())
def test_pass_at_k_exact_fraction(args):
    n, c, k = args
    assert pass_at_k(n, c, k) == pytest.approx(float(exact(n, c, k)), abs=1e-12)


@given(args=nck(max_n=8))
def test_pass_at_k_brute_force_subsets(args):
    n, c, k = args
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    hit = sum(any(samples[i] for i in s) for s in subsets)
    assert pass_at_k(n, c, k) == pytest.approx(hit / len(subsets), abs=1e-12)


@given(args=nck())
def test_pass_at_k_monotone_and_bounds(args):
    n, c, k = args
    v = pass_at_k(n, c, k)
    assert 0.0 <= v <= 1.0
    if k < n:
        assert pass_at_k(n, c, k + 1) >= v
    if c < n:
        assert pass_at_k(n, c + 1, k) >= v
    if c == 0:
        assert v == 0.0
    if n - c < k:
        assert v == 1.0


def test_pass_at_1_is_accuracy_and_large_n_finite():
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    v = pass_at_k(100000, 5, 50)
    assert math.isfinite(v) and v == pytest.approx(float(exact(100000, 5, 50)), rel=1e-9)


@pytest.mark.parametrize("n,c,k", [(5, 6, 1), (5, -1, 1), (5, 2, 0), (5, 2, 6), (0, 0, 1), (3, 1, -1)])
def test_pass_at_k_invalid(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


@given(groups=st.lists(st.lists(st.booleans(), min_size=3, max_size=8), min_size=1, max_size=5),
       k=st.integers(1, 3), d=st.data())
def test_pass_at_k_groups_averages(groups, k, d):
    labels = d.draw(st.lists(st.integers(-50, 50), min_size=len(groups), max_size=len(groups), unique=True))
    correct = [x for g in groups for x in g]
    gids = [lab for lab, g in zip(labels, groups) for _ in g]
    perm = d.draw(st.permutations(list(range(len(correct)))))  # rows of a group need not be adjacent
    got = pass_at_k_groups(torch.tensor([correct[i] for i in perm]), torch.tensor([gids[i] for i in perm]), k)
    expect = np.mean([float(exact(len(g), sum(g), k)) for g in groups])
    assert got == pytest.approx(expect, abs=1e-12)


def test_pass_at_k_groups_too_small_group():
    with pytest.raises(ValueError):
        pass_at_k_groups(torch.tensor([1, 0, 1]), torch.tensor([0, 0, 1]), 2)


@given(b=st.integers(1, 6), t=st.integers(1, 8), d=st.data())
def test_entropy_stats_ignores_masked(b, t, d):
    ent = np.array(d.draw(st.lists(st.floats(0, 3), min_size=b * t, max_size=b * t))).reshape(b, t)
    mask = np.array(d.draw(st.lists(st.integers(0, 1), min_size=b * t, max_size=b * t))).reshape(b, t)
    poisoned = torch.tensor(np.where(mask == 1, ent, np.nan), dtype=torch.float32)
    out = entropy_stats(poisoned, torch.tensor(mask), percentiles=(10, 50, 90))
    valid = ent[mask == 1].astype(np.float32).astype(np.float64)
    if valid.size:
        assert out["entropy"] == pytest.approx(valid.mean(), abs=1e-5)
        for q in (10, 50, 90):
            assert out[f"entropy_p{q}"] == pytest.approx(np.percentile(valid, q), abs=1e-5)
    else:
        assert out["entropy"] == 0.0
        assert all(math.isnan(out[f"entropy_p{q}"]) for q in (10, 50, 90))


def test_length_stats_and_accuracy():
    m = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]])
    out = length_stats(m, torch.tensor([False, False, True]))
    assert out == pytest.approx({"completion_length": 8 / 3, "completion_length_max": 4.0, "truncated_frac": 1 / 3})
    assert "truncated_frac" not in length_stats(m)
    assert accuracy(torch.tensor([1.0, 0.0, 1.0, 0.2])) == pytest.approx(0.5)
    assert math.isnan(accuracy(torch.tensor([])))


def test_evaluate_policy_breaks_down_by_difficulty():
    """With problems of several levels, greedy_acc@d{level}, pass@1@d{level} and pass@k@d{level} per level; with one level,
    exactly the keys of before (no breakdown)."""
    from types import SimpleNamespace
    from minirlvr.metrics import evaluate_policy
    from minirlvr.model import GPTConfig
    from toy_tasks import Problem
    from test_model import make_model
    model = make_model(cfg=GPTConfig(d_model=32, n_layers=2, n_heads=2, context=32))
    # a verifier that only looks at the level: level 1 is always right, level 2 never
    task = SimpleNamespace(reward=lambda p, t: float(p.difficulty == 1))
    probs = [Problem("addition", f"{a}+{a}=", str(2 * a), 1 if a < 10 else 2, (a, a)) for a in (1, 2, 3, 40, 50)]
    ev = evaluate_policy(model, task, probs, 2, 4, seed=0)
    assert ev["greedy_acc"] == pytest.approx(3 / 5)
    assert (ev["greedy_acc@d1"], ev["greedy_acc@d2"], ev["pass@1@d1"], ev["pass@1@d2"]) == (1.0, 0.0, 1.0, 0.0)
    assert (ev["pass@2@d1"], ev["pass@2@d2"]) == (1.0, 0.0)          # pass@k per level too (k = 2 here)
    one = evaluate_policy(model, task, probs[:3], 2, 4, seed=0)
    assert sorted(one) == ["acc@1tok", "acc@2tok", "cost_of_pass", "entropy", "greedy_acc", "len_correct",
                           "len_mean", "pass@1", "pass@2", "truncation_rate"]  # (len_correct: some are right)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 30), st.booleans(), st.booleans()), min_size=1, max_size=40),
       st.integers(1, 30))
def test_efficiency_metrics_against_plain_python(rows, budget):
    from minirlvr.metrics import efficiency_metrics
    lengths, correct, truncated = (torch.tensor([r[i] for r in rows]) for i in range(3))
    out = efficiency_metrics(lengths, correct, truncated, budgets=(budget,))
    n_ok = sum(c for _, c, _ in rows)
    mean_len = sum(l for l, _, _ in rows) / len(rows)
    assert out["len_mean"] == pytest.approx(mean_len)
    assert out["truncation_rate"] == pytest.approx(sum(t for *_, t in rows) / len(rows))
    assert out[f"acc@{budget}tok"] == pytest.approx(sum(c and l <= budget for l, c, _ in rows) / len(rows))
    assert out[f"acc@{budget}tok"] <= n_ok / len(rows)  # a budget can only lose answers
    if n_ok:
        # cost-of-pass = tokens of all attempts / correct answers
        assert out["cost_of_pass"] == pytest.approx(sum(l for l, _, _ in rows) / n_ok)
        assert out["len_correct"] == pytest.approx(sum(l for l, c, _ in rows if c) / n_ok)
        assert out["cost_of_pass"] >= out["len_mean"]
    else:
        assert out["cost_of_pass"] == float("inf") and "len_correct" not in out
    with pytest.raises(ValueError, match="at least one attempt"):
        efficiency_metrics(torch.tensor([]), torch.tensor([]), torch.tensor([]))
