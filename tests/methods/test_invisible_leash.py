"""Invisible Leash: pass@k curves, support counts, answer entropy, tilt-family identities, end to end."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

import minirlvr.methods  # noqa: F401  (the whole package must import)
from minirlvr.core import entropy_from_logits, policy_covariance
from minirlvr.metrics import entropy_stats
from minirlvr.methods.invisible_leash import (SupportCounts, answer_entropy, correct_sets, pass_at_k_curve,
                                              report_metrics, sample_answers, support_counts, support_report,
                                              tilt, tilt_derivatives, tilt_logits)
from minirlvr.model import GPT, GPTConfig
from minirlvr.rollout import sample
from toy_tasks import get_task


# --- pass@k curve ------------------------------------------------------------------------------------
@given(n=st.integers(1, 7), data=st.data())
def test_pass_at_k_curve_brute_force(n, data):
    cs = data.draw(st.lists(st.integers(0, n), min_size=1, max_size=4))
    ks = list(range(1, n + 1))
    expected = []
    for k in ks:
        per_problem = []
        for c in cs:
            outcomes = [True] * c + [False] * (n - c)
            subsets = list(itertools.combinations(outcomes, k))
            per_problem.append(sum(any(s) for s in subsets) / len(subsets))
        expected.append(np.mean(per_problem))
    curve = pass_at_k_curve(cs, n, ks)
    np.testing.assert_allclose(curve, expected, atol=1e-12)
    assert np.all(np.diff(curve) >= -1e-12)  # monotone in k


@given(n=st.integers(1, 300), data=st.data())
def test_pass_at_k_curve_monotone_and_bounded(n, data):
    cs = data.draw(st.lists(st.integers(0, n), min_size=1, max_size=6))
    curve = pass_at_k_curve(cs, n, range(1, n + 1))
    assert np.all(np.diff(curve) >= -1e-12) and np.all((curve >= 0) & (curve <= 1))
    assert curve[0] == pytest.approx(np.mean(cs) / n)  # pass@1 = mean accuracy


# --- support counts ----------------------------------------------------------------------------------
item_sets = st.lists(st.frozensets(st.integers(0, 6), max_size=5), min_size=0, max_size=8)


@st.composite
def paired_sets(draw):
    base = draw(item_sets)
    rl = draw(st.lists(st.frozensets(st.integers(0, 6), max_size=5), min_size=len(base), max_size=len(base)))
    return base, rl


@given(pair=paired_sets())
def test_support_counts_match_plain_set_arithmetic(pair):
    base, rl = pair
    sc = support_counts(base, rl)
    assert sc.P == sum(len(b & r) for b, r in zip(base, rl))
    assert sc.S == sum(len(b - r) for b, r in zip(base, rl))
    assert sc.E == sum(len(r - b) for b, r in zip(base, rl))
    assert sc.O == sum(1 for b, r in zip(base, rl) if not b and not r)
    assert sc.P + sc.S == sum(map(len, base)) and sc.P + sc.E == sum(map(len, rl))
    for v in (sc.srr, sc.ndr, sc.sds):
        assert 0.0 <= v <= 1.0
    assert -1.0 <= sc.nscr <= 1.0
    if sc.P + sc.S:
        assert sc.srr == pytest.approx(sc.P / (sc.P + sc.S))
    if sc.P + sc.S + sc.E:
        assert np.sign(sc.nscr) == np.sign(sc.E - sc.S)


@given(base=item_sets)
def test_identical_models_retain_everything(base):
    sc = support_counts(base, base)
    assert (sc.S, sc.E) == (0, 0)
    assert sc.srr == 1.0 and sc.ndr == 0.0 and sc.nscr == 0.0 and sc.sds == 0.0


@given(base=item_sets)
def test_disjoint_supports(base):
    rl = [frozenset(x + 100 for x in b) for b in base]  # same sizes, no common item
    sc = support_counts(base, rl)
    assert sc.P == 0
    if sc.S:
        assert sc.srr == 0.0
    if sc.E:
        assert sc.ndr == 1.0
        assert sc.sds == 0.0  # harmonic mean with SRR = 0


def test_zero_denominator_conventions():
    empty = SupportCounts(0, 0, 0, 3)
    assert (empty.srr, empty.ndr, empty.sds, empty.nscr) == (1.0, 0.0, 0.0, 0.0)
    only_rl = SupportCounts(0, 0, 2, 1)
    assert (only_rl.srr, only_rl.ndr, only_rl.nscr) == (1.0, 1.0, 1.0)
    assert only_rl.sds == pytest.approx(1.0)
    with pytest.raises(ValueError):
        support_counts([set()], [])


def test_correct_sets_use_first_k_samples():
    samples = {"answers": [["1", "2", "1", "3"]], "texts": [["a", "b", "c", "d"]],
               "correct": [[True, False, True, True]]}
    assert correct_sets(samples, 2) == [{"1"}]
    assert correct_sets(samples, 4) == [{"1", "3"}]
    assert correct_sets(samples, 4, support="completion") == [{"a", "c", "d"}]


# --- answer entropy ----------------------------------------------------------------------------------
@given(answers=st.lists(st.one_of(st.none(), st.sampled_from(["1", "2", "3", "42"])), min_size=1, max_size=40))
def test_answer_entropy_bounds_and_formula(answers):
    n = len(answers)
    h = answer_entropy(answers)
    assert 0.0 <= h <= math.log(n) + 1e-12
    p = np.array([answers.count(a) for a in set(answers)]) / n
    assert h == pytest.approx(float(-(p * np.log(p)).sum()), abs=1e-12)


@given(n=st.integers(1, 64))
def test_answer_entropy_extremes(n):
    assert answer_entropy(["7"] * n) == 0.0
    assert answer_entropy([str(i) for i in range(n - 1)] + [None]) == pytest.approx(math.log(n), abs=1e-12)


# --- tilt family -------------------------------------------------------------------------------------
@st.composite
def tilt_case(draw, binary=False):
    size = draw(st.integers(2, 8))
    w = draw(st.lists(st.one_of(st.just(0.0), st.floats(0.01, 1.0)), min_size=size, max_size=size))
    assume(sum(w) > 0)
    if binary:
        r = draw(st.lists(st.sampled_from([0.0, 1.0]), min_size=size, max_size=size))
    else:
        r = draw(st.lists(st.floats(-3.0, 3.0), min_size=size, max_size=size))
    pi0 = torch.tensor(w, dtype=torch.float64)
    return pi0 / pi0.sum(), torch.tensor(r, dtype=torch.float64), draw(st.floats(-4.0, 4.0))


def _mean_and_entropy(pi0, r, lam):
    return (tilt(pi0, r, lam) * r).sum(), entropy_from_logits(tilt_logits(pi0, r, lam))


@given(case=tilt_case())
def test_tilt_derivative_identities_autograd(case):
    pi0, r, lam0 = case
    lam = torch.tensor(lam0, dtype=torch.float64, requires_grad=True)
    mean, ent = _mean_and_entropy(pi0, r, lam)
    d_mean, = torch.autograd.grad(mean, lam, retain_graph=True)
    d_ent, = torch.autograd.grad(ent, lam)
    p = tilt(pi0, r, lam0)
    var = policy_covariance(p, r, r)
    cov = policy_covariance(p, torch.log(pi0), r)  # entries with pi = 0 are ignored, so log 0 is fine
    assert float(d_mean) == pytest.approx(float(var), abs=1e-9) and float(var) >= -1e-12
    assert float(d_ent) == pytest.approx(float(-cov - lam0 * var), abs=1e-9)
    closed_mean, closed_ent = tilt_derivatives(pi0, r, lam0)
    assert float(closed_mean) == pytest.approx(float(d_mean), abs=1e-9)
    assert float(closed_ent) == pytest.approx(float(d_ent), abs=1e-9)


@given(case=tilt_case())
def test_tilt_derivative_identities_finite_differences(case):
    pi0, r, lam = case
    eps = 1e-5
    (m_hi, h_hi), (m_lo, h_lo) = _mean_and_entropy(pi0, r, lam + eps), _mean_and_entropy(pi0, r, lam - eps)
    d_mean, d_ent = tilt_derivatives(pi0, r, lam)
    assert float((m_hi - m_lo) / (2 * eps)) == pytest.approx(float(d_mean), abs=1e-6)
    assert float((h_hi - h_lo) / (2 * eps)) == pytest.approx(float(d_ent), abs=1e-6)


@given(case=tilt_case(), lam=st.one_of(st.floats(-1e4, 1e4), st.sampled_from([0.0, 1e8, -1e8])))
def test_tilt_preserves_support(case, lam):
    pi0, r, _ = case
    p = tilt(pi0, r, lam)
    assert torch.isfinite(p).all()
    assert (p[pi0 == 0] == 0).all()
    assert float(p.sum()) == pytest.approx(1.0, abs=1e-12)
    if lam == 0.0:
        torch.testing.assert_close(p, pi0)


def _entropy(p):
    p = p[p > 0]
    return float(-(p * p.log()).sum())


@given(case=tilt_case(binary=True))
def test_binary_reward_entropy_decomposition(case):
    pi0, r, lam = case
    good, bad = (r == 1) & (pi0 > 0), (r == 0) & (pi0 > 0)
    assume(good.any() and bad.any())
    p0 = float(pi0[good].sum())
    p_lam = p0 * math.exp(lam) / (p0 * math.exp(lam) + 1 - p0)
    h_bin = -(p_lam * math.log(p_lam) + (1 - p_lam) * math.log(1 - p_lam))
    h_good, h_bad = _entropy(pi0[good] / pi0[good].sum()), _entropy(pi0[bad] / pi0[bad].sum())
    p = tilt(pi0, r, lam)
    assert float(p[good].sum()) == pytest.approx(p_lam, abs=1e-12)
    assert _entropy(p) == pytest.approx(h_bin + p_lam * h_good + (1 - p_lam) * h_bad, abs=1e-10)
    assert _entropy(tilt(pi0, r, 60.0)) == pytest.approx(h_good, abs=1e-9)  # lam -> inf: H(pi0 | correct)


# --- end to end with a tiny random GPT ---------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_setup():
    torch.manual_seed(0)
    model = GPT(GPTConfig(d_model=32, n_layers=2, n_heads=2, context=32))
    task = get_task("addition")
    problems = task.sample(3, np.random.default_rng(0), split="test")
    return model, task, problems


def test_sample_answers_shapes_and_chunking(tiny_setup):
    model, task, problems = tiny_setup
    for max_batch in (4, 2048):  # one problem per chunk / all in one chunk
        out = sample_answers(model, task, problems, n=4, seed=1, max_batch=max_batch)
        assert len(out["answers"]) == len(out["correct"]) == len(out["texts"]) == 3
        assert all(len(a) == 4 for a in out["answers"])
        assert out["n_correct"].tolist() == [sum(c) for c in out["correct"]]
        for p, texts, answers in zip(problems, out["texts"], out["answers"]):
            assert answers == [task.final_answer(t) for t in texts]
        ent = np.array(out["token_entropy"])
        assert np.all(np.isfinite(ent)) and np.all(ent >= 0) and np.all(ent <= math.log(model.cfg.vocab_size) + 1e-5)
    a, b = (sample_answers(model, task, problems, n=4, seed=7) for _ in range(2))
    assert a["texts"] == b["texts"]  # deterministic given the seed


def test_support_report_same_model(tiny_setup):
    model, task, problems = tiny_setup
    rep = support_report(model, model, task, problems, n=4, ks=[1, 2, 4], seed=3)
    for k, sc in rep["support"].items():
        b = correct_sets(rep["samples"]["base"], k)
        r = correct_sets(rep["samples"]["rl"], k)
        assert sc.P + sc.S == sum(map(len, b)) == sc.P + sc.E
        assert sc.srr == 1.0 and sc.ndr == 0.0 and sc.nscr == 0.0  # holds with or without anything solved
        assert sc.O == sum(1 for x, y in zip(b, r) if not x and not y)
    np.testing.assert_array_equal(rep["pass_at_k"]["base"], rep["pass_at_k"]["rl"])
    # token entropy = mean over every generated token (one chunk here, so one sample() call reproduces it)
    batch = sample(model, problems, 4, task.max_new_tokens, generator=torch.Generator().manual_seed(3))
    assert batch.texts == [t for texts in rep["samples"]["base"]["texts"] for t in texts]
    expected = entropy_stats(batch.old_entropy, batch.response_mask)["entropy"]
    assert rep["token_entropy"]["base"] == pytest.approx(expected, rel=1e-5)
    metrics = report_metrics(rep)
    assert all(math.isfinite(v) for v in metrics.values())
    for m in ("base", "rl"):
        assert 0 <= rep["answer_entropy"][m] <= math.log(4) + 1e-12
        assert rep["token_entropy"][m] >= 0


def test_support_report_two_models_and_bad_k(tiny_setup):
    model, task, problems = tiny_setup
    torch.manual_seed(1)
    other = GPT(GPTConfig(d_model=32, n_layers=2, n_heads=2, context=32))
    rep = support_report(model, other, task, problems, n=4, ks=[4], seed=3, support="completion")
    sc = rep["support"][4]
    assert sc.P + sc.S == sum(map(len, correct_sets(rep["samples"]["base"], 4, "completion")))
    assert sc.P + sc.E == sum(map(len, correct_sets(rep["samples"]["rl"], 4, "completion")))
    assert np.all(np.diff(rep["pass_at_k"]["rl"]) >= 0) or len(rep["ks"]) == 1
    with pytest.raises(ValueError):
        support_report(model, other, task, problems, n=4, ks=[5], seed=3)


class FirstCharTask(type(get_task("addition"))):
    """A many-answer stand-in (a random model solves it often): the answer is the first character,
    correct iff it is a digit."""

    def final_answer(self, completion):
        return completion[:1] or None

    def reward(self, problem, completion):
        return 1.0 if completion[:1].isdigit() else 0.0


def test_support_report_multi_answer_task_against_plain_sets(tiny_setup):
    model, task, problems = tiny_setup
    fake = FirstCharTask(name="first_char", max_new_tokens=4, default_difficulty=2, difficulties=(2,))
    torch.manual_seed(2)
    other = GPT(GPTConfig(d_model=32, n_layers=2, n_heads=2, context=32))
    n, ks = 16, [1, 4, 16]
    rep = support_report(model, other, fake, problems, n=n, ks=ks, seed=5)
    for k in ks:
        b = [{t[0] for t in texts[:k] if t[:1].isdigit()} for texts in rep["samples"]["base"]["texts"]]
        r = [{t[0] for t in texts[:k] if t[:1].isdigit()} for texts in rep["samples"]["rl"]["texts"]]
        sc = rep["support"][k]
        assert (sc.P, sc.S, sc.E) == (sum(len(x & y) for x, y in zip(b, r)), sum(len(x - y) for x, y in zip(b, r)),
                                      sum(len(y - x) for x, y in zip(b, r)))
    assert rep["support"][16].P + rep["support"][16].S > 0  # the stand-in task does get solved
    for m in ("base", "rl"):
        c = [sum(t[:1].isdigit() for t in texts) for texts in rep["samples"][m]["texts"]]
        np.testing.assert_allclose(rep["pass_at_k"][m], pass_at_k_curve(c, n, ks))
        h = np.mean([answer_entropy([t[:1] or None for t in texts]) for texts in rep["samples"][m]["texts"]])
        assert rep["answer_entropy"][m] == pytest.approx(h)
