"""DiffAdapt-style routing (arXiv 2510.19669): labels and the U-curve against brute force, the entropy range,
no gradient into the LM through the probe, the probe learning a separable toy, always-Normal routing = the
baseline's outputs, the accounting identity of evaluate_routing, preset budgets and the majority vote."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from minirlvr.methods.diffadapt import (DiffAdaptConfig, Probe, confusion, decode_preset, difficulty_labels,
                                        evaluate_routing, majority, prompt_features, route, route_and_decode,
                                        sample_stats, train_probe, u_curve)
from minirlvr.model import load_checkpoint
from minirlvr.tokenizer import VOCAB_SIZE
from toy_tasks import get_task

TASK = get_task("addition")
M = 6                                                     # max_new_tokens for the tiny model


@pytest.fixture(scope="module")
def lm(tiny_ckpt):
    return load_checkpoint(tiny_ckpt)[0]


@pytest.fixture(scope="module")
def problems():
    return TASK.sample(12, np.random.default_rng(0), split="test")


# ------------------------------------------------------------------ labels and the U-curve

@given(st.lists(st.integers(0, 16), min_size=1, max_size=50), st.floats(0, 1), st.floats(0, 1))
def test_labels_are_the_thresholds(correct, a, b):
    acc = np.array(correct) / 16
    if not a < b:
        with pytest.raises(ValueError, match="a_lo"):
            difficulty_labels(acc, a, b)
        return
    lab = difficulty_labels(acc, a, b)
    for x, c in zip(acc, lab):
        assert c == (0 if x >= b else 2 if x <= a else 1)


def test_config_checks_name_the_setting():
    with pytest.raises(ValueError, match="a_lo"):
        DiffAdaptConfig(a_lo=0.8, a_hi=0.8)
    for name, bad in (("hard_votes", 0), ("easy_budget", 0.0), ("temperature", -1.0), ("a_hi", 1.5)):
        with pytest.raises(ValueError, match=name):
            DiffAdaptConfig(**{name: bad})


@given(st.integers(1, 20), st.lists(st.tuples(st.integers(0, 20), st.floats(0, 3)), min_size=1, max_size=60),
       st.sampled_from([4, 10, 20]))
def test_u_curve_is_the_mean_entropy_per_accuracy_bin(k, rows, bins):
    acc = np.array([min(c, k) / k for c, _ in rows])
    H = np.array([h for _, h in rows])
    cur = u_curve(acc, H, bins)
    assert cur["count"].sum() == len(acc) and (cur["count"] > 0).all()
    for lo, hi, mean, sem, n in zip(*(cur[x] for x in ("lo", "hi", "mean", "sem", "count"))):
        top = hi == 1.0
        # exact integers: question j/k is in [lo, hi) iff lo * bins * k <= j * bins < hi * bins * k
        lo_i, hi_i = round(lo * bins), round(hi * bins)
        sel = [h for (c, h) in rows if lo_i * k <= min(c, k) * bins and (min(c, k) * bins < hi_i * k or top)]
        assert n == len(sel) and mean == pytest.approx(np.mean(sel), abs=1e-12)
        assert sem == (pytest.approx(np.std(sel, ddof=1) / math.sqrt(n), abs=1e-12) if n > 1 else 0.0)
        assert all(map(math.isfinite, (mean, sem)))


def test_u_curve_edges_go_up():
    cur = u_curve([0.3, 0.7, 1.0, 0.0], [1.0, 2.0, 3.0, 4.0], bins=10)
    assert cur["lo"].tolist() == [0.0, 0.3, 0.7, 0.9]             # 0.3 and 0.7 (float edges) land in the upper bin


def test_sample_stats_entropy_is_in_range(lm, problems):
    s = sample_stats(lm, TASK, problems, k=4, max_new_tokens=M, seed=0, chunk=5)
    assert ((s["entropy"] >= 0) & (s["entropy"] <= math.log(VOCAB_SIZE) + 1e-6)).all()
    assert set(np.round(s["acc"] * 4, 9)) <= set(range(5)) and ((s["tokens"] >= 1) & (s["tokens"] <= M)).all()
    again = sample_stats(lm, TASK, problems, k=4, max_new_tokens=M, seed=0, chunk=5)
    assert all(np.array_equal(s[k], again[k]) for k in s)             # same seed: same numbers


# ------------------------------------------------------------------ the probe

def test_no_gradient_reaches_the_lm(lm, problems):
    before = {n: p.detach().clone() for n, p in lm.named_parameters()}
    lm.zero_grad(set_to_none=True)
    u = prompt_features(lm, problems, with_entropy=True)
    assert not u.requires_grad and u.shape == (len(problems), lm.cfg.d_model + 1)
    labels = np.arange(len(problems)) % 3
    train_probe(u, labels, DiffAdaptConfig(probe_steps=20))
    from minirlvr.tokenizer import encode, pad_left                   # features WITH a graph: still detached inside
    ids, mask = pad_left([encode(p.prompt, bos=True) for p in problems])
    live = lm(ids, mask, output_hidden=True)[1][-1][:, -1]
    assert live.requires_grad
    train_probe(live, labels, DiffAdaptConfig(probe_steps=20))
    assert all(p.grad is None for p in lm.parameters())
    assert all(torch.equal(p, before[n]) for n, p in lm.named_parameters())


def test_probe_learns_a_separable_toy_and_is_deterministic():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(300) % 3
    X = torch.randn(300, 16, generator=g) * 0.3 + torch.nn.functional.one_hot(y, 16).float() * 3 + 50.0
    a, b = train_probe(X, y.numpy(), seed=1), train_probe(X, y.numpy(), seed=1)
    pred = route(a, X)
    assert (pred == y.numpy()).mean() > 0.95 and np.array_equal(pred, route(b, X))
    cm = confusion(pred, y.numpy())
    assert cm.sum() == 300 and np.trace(cm) == (pred == y.numpy()).sum()
    assert isinstance(a, Probe)


# ------------------------------------------------------------------ decoding, routing, evaluation

@pytest.mark.parametrize("seed", [0, 7])
def test_always_normal_routing_reproduces_the_baseline_exactly(lm, problems, seed):
    cfg = DiffAdaptConfig()
    base = decode_preset(lm, TASK, problems, 1, cfg, M, seed)
    probe = train_probe(prompt_features(lm, problems), np.arange(len(problems)) % 3, DiffAdaptConfig(probe_steps=5))
    route(probe, prompt_features(lm, problems))                     # probe inference in between changes nothing
    routed = route_and_decode(lm, TASK, problems, np.ones(len(problems), int), cfg, M, seed)
    assert routed["texts"] == base["texts"] and np.array_equal(routed["tokens"], base["tokens"])
    assert np.array_equal(routed["correct"], base["correct"])
    easy = route_and_decode(lm, TASK, problems, np.zeros(len(problems), int), cfg, M, seed)
    assert easy["texts"] == decode_preset(lm, TASK, problems, 0, cfg, M, seed)["texts"]


@given(st.lists(st.integers(0, 2), min_size=12, max_size=12))
def test_evaluation_is_the_per_question_accounting_identity(per_preset, routes):
    ev = evaluate_routing(per_preset, {"probe": np.array(routes)})
    r = np.array(routes)
    tok = np.mean([per_preset[c]["tokens"][i] for i, c in enumerate(r)])
    acc = np.mean([per_preset[c]["correct"][i] for i, c in enumerate(r)])
    assert ev["probe"]["tokens"] == pytest.approx(tok, abs=1e-12)
    assert ev["probe"]["acc"] == pytest.approx(acc, abs=1e-12)
    assert sum(ev["probe"][f"share_{c}"] for c in ("easy", "normal", "hard")) == pytest.approx(1.0)
    for c, name in enumerate(("all-easy", "all-normal", "all-hard")):
        assert ev[name]["tokens"] == pytest.approx(per_preset[c]["tokens"].mean())
    assert ev["all-normal"]["token_reduction"] == 0.0


@pytest.fixture(scope="module")
def per_preset(lm, problems):
    return [decode_preset(lm, TASK, problems, c, DiffAdaptConfig(), M, 3) for c in range(3)]


def test_preset_budgets_and_votes(lm, problems, per_preset):
    cfg = DiffAdaptConfig()
    assert (per_preset[0]["tokens"] <= round(0.5 * M)).all()                       # greedy, half budget
    assert (per_preset[1]["tokens"] <= M).all()
    assert (per_preset[2]["tokens"] <= cfg.hard_votes * round(1.5 * M)).all()      # the votes' tokens add up
    assert (per_preset[2]["tokens"] >= cfg.hard_votes).all()
    one = decode_preset(lm, TASK, problems, 2, DiffAdaptConfig(hard_votes=1, hard_budget=1.0), M, 3)
    assert one["texts"] == per_preset[1]["texts"]                   # Hard without votes or budget = Normal


def test_majority_vote():
    assert majority(["3", "5", "5", None]) == 1
    assert majority([None, "7", "3"]) == 1                           # a tie: the first answer seen
    assert majority([None, None]) == 0
    assert majority(["", "4", ""]) == 0                              # an empty answer is an answer
