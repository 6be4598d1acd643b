"""PEAR-style reward (after arXiv 2510.08026): the phase split against an explicit loop (marker in neither
phase, no marker = every token but the last in think), the reward against an explicit formula for every
switch, the exact GRPO reduction at a = b = 0, the sign claim in all-correct groups, monotonicity and the
dominance of correctness, no gradient through the reward, the base-check statistics, recipes, a short run."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minirlvr.baselines import GRPOAdvantageConfig, grpo_advantage, verifier_reward
from minirlvr.methods.pear import (PearConfig, pear_reward, pear_rewards, phase_entropies, phase_entropy_stats,
                                   phase_masks)
from minirlvr.registry import get_recipe, make_config
from minirlvr.rollout import RolloutBatch
from minirlvr.tokenizer import EOS, PAD, encode
from toy_tasks import get_task

TASK = get_task("addition_verbose")
PROBLEM = TASK.make_problem(23, 48)
TEXTS = ["3+8=1c1;2+4+1=7;#71", "3+8=1c1;?3+8=1c1;2+4+1=7;#71", "#71", "71", "3+8=1c1;#72", "?", "", "##71",
         "2+4+1=7;#", "c1;?3+8=1"]
MARK = encode("#")[0]


def make_batch(texts, G, seed=0, truncated=None, T=None):
    """Responses = the texts + EOS (cut to T tokens for truncated rows), random old entropies in [0, 3)."""
    g = torch.Generator().manual_seed(seed)
    truncated = truncated or [False] * len(texts)
    rows = [encode(t) if tr else encode(t, eos=True) for t, tr in zip(texts, truncated)]
    T = T or max(1, max(map(len, rows)))
    ids = torch.full((len(rows), T), PAD)
    for i, r in enumerate(rows):
        ids[i, :len(r[:T])] = torch.tensor(r[:T], dtype=torch.long)
    mask = torch.tensor([[1 if t < len(r) else 0 for t in range(T)] for r in rows])
    ent = torch.rand(len(rows), T, generator=g, dtype=torch.float64) * 3 * mask
    B = len(rows)
    return RolloutBatch(prompt_ids=torch.ones(B, 2, dtype=torch.long), prompt_mask=torch.ones(B, 2, dtype=torch.long),
                        response_ids=ids, response_mask=mask, old_logp=torch.zeros(B, T), old_entropy=ent,
                        group_ids=torch.arange(B) // G, problems=[PROBLEM] * B, texts=list(texts),
                        truncated=torch.tensor(truncated))


def grpo_of(rewards, batch):
    """The baseline GRPO stage's advantages [B, T] for these rewards."""
    view = SimpleNamespace(rewards=rewards, group_ids=batch.group_ids, response_mask=batch.response_mask)
    return grpo_advantage(view, GRPOAdvantageConfig(), None)


def fake_ctx():
    logged = {}
    return SimpleNamespace(task=TASK, log=lambda **kw: logged.update(kw), logged=logged)


@st.composite
def batch_st(draw, sizes=(2, 4, 8), max_q=3):
    G, Q = draw(st.sampled_from(sizes)), draw(st.integers(1, max_q))
    texts = draw(st.lists(st.sampled_from(TEXTS), min_size=G * Q, max_size=G * Q))
    trunc = draw(st.lists(st.booleans(), min_size=G * Q, max_size=G * Q))
    return make_batch(texts, G, seed=draw(st.integers(0, 1000)), truncated=trunc)


def reference(batch, cfg: PearConfig):
    """Explicit per-response loop with Python floats."""
    out = []
    for i in range(batch.size):
        toks = [int(x) for x, m in zip(batch.response_ids[i], batch.response_mask[i]) if m]
        H = [float(x) for x, m in zip(batch.old_entropy[i], batch.response_mask[i]) if m]
        k = toks.index(MARK) if MARK in toks else len(toks) - 1
        think, ans = H[:max(k, 0)], H[k + 1:]
        agg = (lambda v: sum(v)) if cfg.reduce == "sum" else (lambda v: sum(v) / len(v) if v else 0.0)
        P = cfg.a * agg(think) - cfg.b * agg(ans)
        P = max(0.0, P) if cfg.hinge else P
        correct = TASK.reward(PROBLEM, batch.texts[i]) == 1.0
        base = cfg.score if correct else cfg.format_score
        shaped = base - P if cfg.cap is None else min(cfg.cap, base - P)
        out.append(shaped if (correct or not cfg.only_correct) else base)
    return out


# ------------------------------------------------------------------ phase split

def test_phase_split_off_by_one():
    b = make_batch(["3+8=1c1;#71", "71", "#", "", "3+8=1c1;#71"], 1, truncated=[False, False, False, False, True])
    think, ans = phase_masks(b.response_ids, b.response_mask)
    L = b.lengths.tolist()
    assert L == [12, 3, 2, 1, 11]
    assert think[0].tolist()[:12] == [1] * 8 + [0] * 4 and ans[0].tolist()[:12] == [0] * 9 + [1] * 3  # "#" in neither
    assert think[1].tolist()[:3] == [1, 1, 0] and ans[1].sum() == 0        # no marker: all but the last (EOS)
    assert think[2].sum() == 0 and ans[2].tolist()[:2] == [0, 1]             # "#<eos>": EOS is the answer
    assert think[3].sum() == 0 and ans[3].sum() == 0                         # EOS alone: in neither phase
    assert ans[4].tolist()[9:11] == [1, 1]                                   # truncated: the answer so far
    assert ((think + ans) <= b.response_mask).all() and (think * ans == 0).all()


@given(batch_st())
def test_reward_matches_the_explicit_loop_for_every_switch(batch):
    for cfg in (PearConfig(), PearConfig(a=0.3, b=0.7, hinge=False, only_correct=False, cap=None),
                PearConfig(a=0.2, b=0.05, reduce="sum", cap=0.9, score=0.8, format_score=0.1),
                PearConfig(a=2.0, b=0.0, only_correct=False)):
        got = pear_reward(batch, cfg, fake_ctx())
        np.testing.assert_allclose(got.numpy(), np.array(reference(batch, cfg), dtype=np.float32), rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------ reductions, signs, monotonicity

@given(batch_st(), st.booleans(), st.booleans(), st.sampled_from(["mean", "sum"]), st.sampled_from([1.0, None]))
def test_zero_coefficients_are_grpo_exactly(batch, hinge, only_correct, reduce, cap):
    ctx = fake_ctx()
    cfg = PearConfig(a=0.0, b=0.0, hinge=hinge, only_correct=only_correct, reduce=reduce, cap=cap)
    r, v = pear_reward(batch, cfg, ctx), verifier_reward(batch, None, ctx)
    assert r.dtype == v.dtype and torch.equal(r, v)
    assert torch.equal(grpo_of(r, batch), grpo_of(v, batch))


@given(st.sampled_from([2, 4, 8]), st.integers(0, 10_000), st.floats(0.01, 0.3), st.booleans())
def test_all_correct_group_sign_follows_minus_thinking_entropy(G, seed, a, hinge):
    batch = make_batch(["3+8=1c1;2+4+1=7;#71"] * G, G, seed=seed)
    think, ans = phase_masks(batch.response_ids, batch.response_mask)
    Ht, _ = phase_entropies(batch.old_entropy, think, ans)
    assume_distinct = len(set(np.round(Ht.numpy(), 9))) == G
    r = pear_reward(batch, PearConfig(a=a, b=0.0, hinge=hinge), fake_ctx())
    A = grpo_of(r.double(), batch)[:, 0]
    assert (A != 0).all() or not assume_distinct
    d = Ht - Ht.mean()
    big = d.abs() > 1e-4                                  # float32 rewards: sign is exact away from the mean
    assert torch.equal(torch.sign(A[big]), -torch.sign(d[big]))


@given(st.floats(0, 3), st.floats(0, 3), st.floats(0, 2), st.floats(0, 2), st.floats(0.01, 1))
def test_monotone_in_each_phase_and_correctness_dominates(ht, ha, a, b, dh):
    cfg = PearConfig(a=a, b=b, hinge=False, cap=None)
    one = torch.ones(1)
    f = lambda t, s: float(pear_rewards(one, torch.tensor([t], dtype=torch.float64),   # noqa: E731
                                        torch.tensor([s], dtype=torch.float64), cfg)[0])
    assert f(ht + dh, ha) == pytest.approx(f(ht, ha) - a * dh, abs=1e-12)            # slope -a in Ht
    assert f(ht, ha + dh) == pytest.approx(f(ht, ha) + b * dh, abs=1e-12)            # slope +b in Ha
    hinged = PearConfig(a=a, b=b)
    g = lambda t, s: float(pear_rewards(one, torch.tensor([t], dtype=torch.float64),   # noqa: E731
                                        torch.tensor([s], dtype=torch.float64), hinged)[0])
    assert g(ht + dh, ha) <= g(ht, ha) <= g(ht, ha + dh) <= 1.0
    Ht = torch.rand(16, dtype=torch.float64) * 3
    correct = torch.tensor([1.0, 0.0] * 8)
    safe = PearConfig(a=0.99 / 3, b=b, only_correct=False)        # a max(Ht) < s - r_fmt
    r, _ = pear_rewards(correct, Ht, torch.rand(16, dtype=torch.float64), safe)
    assert float(r[correct == 1].min()) > float(r[correct == 0].max())


def test_reward_carries_no_gradient():
    batch = make_batch(TEXTS, 2)
    batch.old_entropy = batch.old_entropy.clone().requires_grad_(True)
    r = pear_reward(batch, PearConfig(a=0.5, b=0.5), fake_ctx())
    assert not r.requires_grad


# ------------------------------------------------------------------ the base check, edge cases

def test_phase_entropy_stats():
    texts = ["3+8=1c1;" + "?3+8=1c1;" * k + "#71" for k in range(4)] * 2
    b = make_batch(texts, 4)
    H = torch.zeros_like(b.old_entropy)
    for i in range(b.size):   # entropy grows with the number of re-checks
        H[i] = b.response_mask[i] * 0.1 * (i % 4)
    b.old_entropy = H
    s = phase_entropy_stats(b)
    assert s["corr_Hthink_len"] > 0.9 and s["corr_Hthink_len_within"] > 0.9 and s["frac_marker"] == 1.0
    assert s["L_answer"] == 3.0 and s["L_think"] == pytest.approx(np.mean([8 + 9 * k for k in range(4)]))
    assert s["H_answer"] == pytest.approx(s["H_think"])


@pytest.mark.parametrize("texts,trunc", [([""] * 4, None), (["#"] * 4, None), (["71"] * 4, [True] * 4),
                                         (["?c;", "#", "", "##"], [True, False, True, False])])
def test_edge_cases_stay_finite(texts, trunc):
    b = make_batch(texts, 2, truncated=trunc)
    ctx = fake_ctx()
    for cfg in (PearConfig(), PearConfig(reduce="sum", hinge=False, cap=None, only_correct=False)):
        r = pear_reward(b, cfg, ctx)
        assert torch.isfinite(r).all() and all(math.isfinite(v) for v in ctx.logged.values())


def test_recipes_and_bad_values():
    r = get_recipe("pear")
    assert (r.rollout, r.reward, r.advantage, r.loss) == ("plain", "pear", "grpo", "ppo_clip")
    assert make_config(PearConfig, r.reward_cfg) == PearConfig(a=1.0, b=1.0, hinge=True, only_correct=True)
    assert r.loss_cfg == get_recipe("grpo").loss_cfg and "PEAR-style" in r.paper
    for name, a in (("pear_a005", 0.05), ("pear_a01", 0.1), ("pear_a02", 0.2)):
        assert get_recipe(name).reward_cfg == {"a": a, "b": 0.0}
    for field, value in (("a", -0.1), ("b", math.nan), ("reduce", "max"), ("marker", "##"), ("marker", "x"),
                         ("cap", math.inf)):
        with pytest.raises(ValueError, match=field) as e:
            make_config(PearConfig, {field: value})
        assert "\n" not in str(e.value)


def test_short_run(tmp_path, tiny_ckpt):
    from minirlvr.trainer import TrainConfig, train
    out = train(TrainConfig(task="addition_scratchpad", recipe="pear", steps=2, prompts_per_step=4, group_size=4,
                            minibatches=2, eval_every=0, progress=False, out_dir=str(tmp_path), init=tiny_ckpt,
                            max_new_tokens=6))
    rec = out["history"][-1]
    assert math.isfinite(rec["loss"]) and "pear/H_think" in rec and "pear/corr_Hthink_len_within" in rec
