"""HICRA-style advantage (arXiv 2509.03646): the GRPO reductions (alpha = 0, no planning tokens), sign
preservation, execution tokens untouched, the per-group closed form, plan spans and H_sem against a plain
reading of the text, the plan_entropy probe against a direct computation, edge cases and short runs."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minirlvr.baselines import GRPOAdvantageConfig, grpo_advantage
from minirlvr.methods.hicra import (HicraConfig, group_semantic_entropy, hicra_advantage, hicra_shape,
                                    plan_entropy_metrics, plan_spans, semantic_entropy)
from minirlvr.registry import get_recipe, get_stage, make_config
from minirlvr.rollout import RolloutBatch
from minirlvr.tokenizer import encode, pad_right

TEXT = st.text(alphabet="0123456789+-*;#[]", max_size=14)
NO_BRACKETS = st.text(alphabet="0123456789+-*;#", max_size=14)


# ------------------------------------------------------------------ helpers

def make_batch(texts, rewards, G, seed=0, empty_rows=(), dtype=torch.float64):
    """Responses = texts + EOS (rows in empty_rows get an all-zero mask); random old_entropy / old_logp."""
    ids, mask = pad_right([encode(t, eos=True) for t in texts])
    mask = mask.clone()
    for i in empty_rows:
        mask[i] = 0
    g = torch.Generator().manual_seed(seed)
    B, T = ids.shape
    ent = torch.rand(B, T, generator=g, dtype=torch.float64).to(dtype) * 3
    logp = -torch.rand(B, T, generator=g, dtype=torch.float64).to(dtype) * 4
    return RolloutBatch(prompt_ids=torch.ones(B, 2, dtype=torch.long), prompt_mask=torch.ones(B, 2, dtype=torch.long),
                        response_ids=ids, response_mask=mask, old_logp=logp, old_entropy=ent,
                        group_ids=torch.arange(B) // G, problems=[None] * B, texts=list(texts),
                        truncated=torch.zeros(B, dtype=torch.bool), rewards=torch.tensor(rewards, dtype=dtype))


@st.composite
def batches(draw, text=TEXT, levels=(0.0, 1.0)):
    G, Q = draw(st.sampled_from([2, 3, 4])), draw(st.integers(1, 3))
    texts = draw(st.lists(text, min_size=G * Q, max_size=G * Q))
    rewards = draw(st.lists(st.sampled_from(levels), min_size=G * Q, max_size=G * Q))
    return texts, rewards, G


def fake_ctx():
    logged = {}
    return SimpleNamespace(log=lambda **kw: logged.update(kw), logged=logged)


def ref_reading(text):
    """Plain reading of a response (text + EOS, EOS written "\\x00"): plan flag per token and the plan spans."""
    flags, spans, inside, cur = [], [], False, None
    for ch in text + "\x00":
        if ch == "[":
            inside = True
        plan = inside or ch == "]"
        flags.append(plan)
        if plan and (cur is None or ch == "["):
            if cur is not None:
                spans.append(cur)
            cur = ""
        if plan:
            cur += "<eos>" if ch == "\x00" else ch
        elif cur is not None:
            spans.append(cur)
            cur = None
        if ch == "]":
            inside = False
    if cur is not None:
        spans.append(cur)
    return flags, spans


def ref_entropy(items):
    items = list(items)
    shares = [items.count(s) / len(items) for s in set(items)]
    return -sum(f * math.log(f) for f in shares)


# ------------------------------------------------------------------ the advantage

@given(batches(), st.floats(0, 1), st.sampled_from([torch.float32, torch.float64]))
def test_alpha_zero_or_no_planning_tokens_is_grpo_exactly(case, alpha, dtype):
    texts, rewards, G = case
    batch = make_batch(texts, rewards, G, dtype=dtype)
    grpo = grpo_advantage(batch, GRPOAdvantageConfig(), None)
    zero = hicra_advantage(batch, HicraConfig(alpha=0.0), fake_ctx())
    assert zero.dtype == grpo.dtype and torch.equal(zero, grpo)
    plain = make_batch([t.replace("[", "").replace("]", "") for t in texts], rewards, G, dtype=dtype)
    assert torch.equal(hicra_advantage(plain, HicraConfig(alpha=alpha), fake_ctx()),
                       grpo_advantage(plain, GRPOAdvantageConfig(), None))


@given(batches(levels=(0.0, 1.0, 0.3)), st.floats(0, 1, exclude_max=True))
def test_plan_tokens_scaled_execution_untouched_signs_kept(case, alpha):
    texts, rewards, G = case
    batch = make_batch(texts, rewards, G)
    A = grpo_advantage(batch, GRPOAdvantageConfig(), None)
    AH = hicra_advantage(batch, HicraConfig(alpha=alpha), fake_ctx())
    for i, t in enumerate(texts):
        flags, _ = ref_reading(t)
        for j, plan in enumerate(flags):
            a, ah = float(A[i, j]), float(AH[i, j])
            if plan:                                     # (1 + alpha sign A) A
                assert ah == pytest.approx(a * (1 + alpha) if a > 0 else a * (1 - alpha), rel=1e-12, abs=0)
            else:
                assert ah == a                            # execution token: bit-identical
            assert (ah > 0) == (a > 0) and (ah < 0) == (a < 0) and (ah == 0) == (a == 0)
    assert bool((AH[batch.response_mask == 0] == 0).all())


@given(st.integers(0, 10 ** 6), st.floats(0, 1), st.integers(1, 6), st.integers(1, 9))
def test_shape_on_random_tensors_and_group_mass_closed_form(seed, alpha, G, T):
    g = torch.Generator().manual_seed(seed)
    B = 2 * G
    A_row = torch.randn(B, generator=g, dtype=torch.float64)
    A_row[torch.rand(B, generator=g) < 0.2] = 0.0
    mask = (torch.rand(B, T, generator=g) < 0.8)
    plan = (torch.rand(B, T, generator=g) < 0.5) & mask
    A = A_row[:, None] * mask.double()
    AH = hicra_shape(A, plan, alpha)
    assert torch.equal(AH[~plan], A[~plan]) and torch.equal(hicra_shape(A, torch.zeros_like(plan), alpha), A)
    assert torch.allclose(AH.abs()[plan], ((1 + alpha * A.sign()) * A.abs())[plan], rtol=1e-12, atol=0)
    for grp in range(2):                                 # sum_t A^H - sum_t A = alpha sum_i |A_i| |S_i|
        rows = slice(grp * G, (grp + 1) * G)
        shift = float((AH[rows] - A[rows]).sum())
        want = alpha * float((A_row[rows].abs() * plan[rows].sum(1)).sum())
        assert shift == pytest.approx(want, rel=1e-12, abs=1e-12)


def test_worked_example_unclosed_lone_and_no_brackets():
    texts = ["[3+4]7;#7", "[3+4", "5]6", "12;#3"]
    batch = make_batch(texts, [1.0, 0.0, 1.0, 0.0], 4)
    A = grpo_advantage(batch, GRPOAdvantageConfig(), None)
    ctx = fake_ctx()
    AH = hicra_advantage(batch, HicraConfig(alpha=0.5), ctx)
    a = float(A[0, 0])
    assert a > 0 and torch.allclose(AH[0, :5], torch.full((5,), 1.5 * a, dtype=torch.float64))
    assert torch.equal(AH[0, 5:], A[0, 5:])                                       # "7;#7" + EOS
    assert torch.allclose(AH[1, :5], 0.5 * A[1, :5]) and float(A[1, 0]) < 0       # "[3+4" + EOS: all plan
    assert AH[2, 0] == A[2, 0] and AH[2, 1] == 1.5 * A[2, 1] and AH[2, 2] == A[2, 2]   # lone "]" is plan
    assert torch.equal(AH[3], A[3])
    assert ctx.logged["hicra/frac_plan_rows"] == 0.75
    assert ctx.logged["hicra/adv_shift"] == pytest.approx(0.5 * a)              # |A| equal in this group


def test_all_equal_groups_and_empty_masks_give_zero():
    batch = make_batch(["[1+2]3;#3", "[1+2]4;#4", "[5*5", ""], [1.0, 1.0, 0.0, 0.0], 2, empty_rows=(2, 3))
    AH = hicra_advantage(batch, HicraConfig(alpha=1.0), fake_ctx())
    assert torch.equal(AH, torch.zeros_like(AH))
    assert all(math.isfinite(v) for v in plan_entropy_metrics(batch).values())


# ------------------------------------------------------------------ plan spans, H_sem, the probe

@given(st.lists(TEXT, min_size=1, max_size=6))
def test_plan_spans_match_a_reading_of_the_text(texts):
    batch = make_batch(texts, [0.0] * len(texts), len(texts))
    assert plan_spans(batch.response_ids, batch.response_mask) == [ref_reading(t)[1] for t in texts]


@given(st.lists(st.sampled_from(["[1+2]", "[3*4]", "[5-1]", "x", ""]), max_size=20), st.randoms())
def test_semantic_entropy_properties(items, rnd):
    H = semantic_entropy(items)
    assert H == pytest.approx(ref_entropy(items), abs=1e-12)
    shuffled = list(items)
    rnd.shuffle(shuffled)
    assert semantic_entropy(shuffled) == pytest.approx(H, abs=1e-12)           # permutation invariant
    assert -1e-12 <= H <= math.log(max(len(set(items)), 1)) + 1e-12


@given(st.integers(1, 30), st.integers(1, 6))
def test_semantic_entropy_one_plan_is_zero_k_equal_plans_is_ln_k(n, K):
    assert semantic_entropy(["[1+2]"] * n) == 0.0 and semantic_entropy([]) == 0.0
    assert semantic_entropy([f"[{k}+1]" for k in range(K)] * n) == pytest.approx(math.log(K), abs=1e-12)


@settings(max_examples=30)
@given(batches(), st.integers(0, 10 ** 6), st.lists(st.integers(0, 11), max_size=3))
def test_probe_matches_a_direct_computation(case, seed, empty):
    texts, rewards, G = case
    empty = [i for i in empty if i < len(texts)]
    batch = make_batch(texts, rewards, G, seed, empty_rows=empty)
    got = get_stage("probe", "plan_entropy").fn(None, batch, None, None)
    ent, logp = batch.old_entropy, batch.old_logp
    plan_vals, exec_vals, spans = {"e": [], "l": []}, {"e": [], "l": []}, []
    for i, t in enumerate(texts):
        flags, sp = ref_reading(t)
        spans.append([] if i in empty else sp)
        if i in empty:
            continue
        for j, f in enumerate(flags):
            d = plan_vals if f else exec_vals
            d["e"].append(float(ent[i, j]))
            d["l"].append(float(logp[i, j]))
    mean = lambda xs: sum(xs) / len(xs) if xs else 0.0                           # noqa: E731
    n_plan, n_exec = len(plan_vals["e"]), len(exec_vals["e"])
    groups = {}
    for i, sp in enumerate(spans):
        groups.setdefault(i // G, []).append(sp)
    whole = [ref_entropy([tuple(s) for s in rows]) for rows in groups.values() if any(rows)]
    first = [ref_entropy([s[0] for s in rows if s]) for rows in groups.values() if any(rows)]
    want = {"entropy_plan": mean(plan_vals["e"]), "entropy_exec": mean(exec_vals["e"]),
            "ppl_plan": math.exp(-mean(plan_vals["l"])), "ppl_exec": math.exp(-mean(exec_vals["l"])),
            "frac_plan": n_plan / (n_plan + n_exec) if n_plan + n_exec else 0.0,
            "h_sem_batch": ref_entropy([s for sp in spans for s in sp]),
            "h_sem_group": mean(whole), "h_sem_first": mean(first)}
    assert set(got) == {f"plan_entropy/{k}" for k in want}
    for k, v in want.items():
        assert got[f"plan_entropy/{k}"] == pytest.approx(v, rel=1e-9, abs=1e-12), k


def test_group_entropy_worked_example():
    spans = [["[1+2]", "[3*3]"], ["[1+2]", "[3*3]"], ["[1+2]", "[3*4]"], ["[2+2]"],   # group 0
             [], []]                                                                  # group 1: no plans
    gids = [0, 0, 0, 0, 1, 1]
    # whole plans in group 0: 2 x A, 1 x B, 1 x C; first spans: 3 x "[1+2]", 1 x "[2+2]"; group 1 left out
    assert group_semantic_entropy(spans, gids) == pytest.approx(-(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25)))
    assert group_semantic_entropy(spans, gids, first_only=True) == pytest.approx(
        -(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    assert group_semantic_entropy([[], []], [0, 0]) == 0.0 == group_semantic_entropy([], [])
    same = [["[1+2]", "[3*3]", "[9-1]"]] * 4                  # one 3-step plan: 0 (the span pool would be ln 3)
    assert group_semantic_entropy(same, [0] * 4) == 0.0 and semantic_entropy(same[0]) == pytest.approx(math.log(3))


def test_probe_empty_batch_and_extreme_logp():
    batch = make_batch(["[1+2]3", "7"], [0.0, 1.0], 2, empty_rows=(0, 1))
    got = plan_entropy_metrics(batch)
    assert got["plan_entropy/entropy_plan"] == 0.0 and got["plan_entropy/ppl_exec"] == 1.0
    assert got["plan_entropy/frac_plan"] == 0.0 and got["plan_entropy/h_sem_batch"] == 0.0
    batch = make_batch(["[1+2]3", "7"], [0.0, 1.0], 2)
    batch.old_logp = torch.full_like(batch.old_logp, -1e6)
    assert all(math.isfinite(v) for v in plan_entropy_metrics(batch).values())


# ------------------------------------------------------------------ registry, recipes, runs

def test_registry_recipes_and_bad_values():
    entry = get_stage("advantage", "hicra")
    assert entry.config is HicraConfig and entry.needs_for(HicraConfig()) == {"groups"}
    assert HicraConfig().alpha == 0.2 and HicraConfig().eps == GRPOAdvantageConfig().eps
    assert get_stage("probe", "plan_entropy").config is None
    grpo = get_recipe("grpo")
    for name, alpha in (("hicra", 0.2), ("hicra_a05", 0.5)):
        r = get_recipe(name)
        assert r.advantage == "hicra" and make_config(HicraConfig, r.advantage_cfg).alpha == alpha
        assert (r.loss, r.loss_cfg, r.rollout, r.reward, r.train_cfg) == (grpo.loss, grpo.loss_cfg, grpo.rollout,
                                                                          grpo.reward, grpo.train_cfg)
    for field, value in (("alpha", -0.1), ("alpha", 1.5), ("eps", 0.0)):
        with pytest.raises(ValueError, match=field) as e:
            make_config(HicraConfig, {field: value}, "advantage")
        assert "\n" not in str(e.value)


def small(tmp_path, ckpt, **kw):
    from minirlvr.trainer import TrainConfig
    base = dict(task="chain", steps=2, prompts_per_step=4, group_size=4, minibatches=2, eval_every=0,
                progress=False, out_dir=str(tmp_path), init=ckpt, max_new_tokens=8, probes=("plan_entropy",))
    base.update(kw)
    return TrainConfig(**base)


def test_short_runs_probe_logged_and_alpha_zero_is_the_grpo_run(tmp_path, tiny_ckpt):
    from minirlvr.sft import default_checkpoint
    from minirlvr.trainer import train
    hist = train(small(tmp_path, tiny_ckpt, recipe="hicra", name="h"))["history"]
    assert len(hist) == 2 and all("plan_entropy/h_sem_first" in h and "hicra/adv_shift" in h for h in hist)
    assert all(math.isfinite(v) for h in hist for v in h.values() if isinstance(v, float))
    # the shipped chain base (mixed groups at this seed, so the planning boost is live): alpha = 0 is GRPO
    chain = dict(max_new_tokens=None, init=default_checkpoint("chain"))
    runs = {name: train(small(tmp_path, tiny_ckpt, name=name, **chain, **kw))["history"] for name, kw in
            (("g", dict(recipe="grpo")), ("z", dict(recipe="hicra", overrides={"advantage.alpha": 0.0})),
             ("h2", dict(recipe="hicra")))}
    for ha, hb, hh in zip(runs["g"], runs["z"], runs["h2"]):
        assert (ha["loss"], ha["grad_norm"], ha["reward"]) == (hb["loss"], hb["grad_norm"], hb["reward"])
        assert ha["plan_entropy/entropy_plan"] == hb["plan_entropy/entropy_plan"]
        assert hh["hicra/adv_shift"] > 0 and hh["loss"] != ha["loss"]       # the comparison is not vacuous
