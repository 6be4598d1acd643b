"""EMPG (arXiv 2509.09265): the score-norm identity, an explicit loop written after the project-page pseudocode,
the batch normalisation of g, the exact GRPO reduction at k = zeta = 0, signs and monotonicity, the future-clarity
bonus, the final renormalisation, edge cases (one step, no ';', empty masks, extreme entropies), logs and runs."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minirlvr.baselines import GRPOAdvantageConfig, grpo_advantage
from minirlvr.methods.empg import EmpgConfig, empg_advantage, empg_terms, expected_score_norm_sq, renyi2_entropy
from minirlvr.registry import get_recipe, get_stage, make_config
from minirlvr.rollout import RolloutBatch
from minirlvr.tokenizer import encode, pad_right

ALPHABET = "0123456789+-=c;[]#"
RENORMS = ("none", "mean", "zscore")

# ------------------------------------------------------------------ helpers


@st.composite
def case_st(draw, sizes=(2, 4), max_q=3, levels=(0.0, 1.0, 0.5), max_len=12):
    """(texts, rewards, G, seed): B = G * Q responses, '; ' delimited steps of random text."""
    G, Q = draw(st.sampled_from(sizes)), draw(st.integers(1, max_q))
    texts = draw(st.lists(st.text(alphabet=ALPHABET, max_size=max_len), min_size=G * Q, max_size=G * Q))
    rewards = draw(st.lists(st.sampled_from(levels), min_size=G * Q, max_size=G * Q))
    return texts, rewards, G, draw(st.integers(0, 10_000))


def make_batch(texts, rewards, G, seed=0, scale=2.0, entropy=None, empty_rows=(), dtype=torch.float64):
    """RolloutBatch of the encoded texts (+ EOS) with random per-token entropies in [0, scale)
    (or `entropy`: a [B, T] tensor, or one float for every token)."""
    ids, mask = pad_right([encode(t, eos=True) for t in texts])
    for i in empty_rows:
        mask[i] = 0
    B, T = ids.shape
    g = torch.Generator().manual_seed(seed)
    ent = torch.rand(B, T, generator=g, dtype=torch.float64) * scale if entropy is None else entropy
    if isinstance(entropy, float):
        ent = torch.full((B, T), entropy, dtype=torch.float64)
    return RolloutBatch(prompt_ids=torch.ones(B, 2, dtype=torch.long), prompt_mask=torch.ones(B, 2, dtype=torch.long),
                        response_ids=ids, response_mask=mask, old_logp=torch.zeros(B, T, dtype=dtype),
                        old_entropy=(ent * mask).to(dtype), group_ids=torch.arange(B) // G, problems=[None] * B,
                        texts=list(texts), truncated=torch.zeros(B, dtype=torch.bool),
                        rewards=torch.tensor(rewards, dtype=dtype))


def fake_ctx():
    logged = {}
    return SimpleNamespace(log=lambda **kw: logged.update(kw), logged=logged)


def run(batch, **cfg):
    ctx = fake_ctx()
    return empg_advantage(batch, EmpgConfig(**cfg), ctx), ctx.logged


def reference(batch, k=1.0, k_f=1.0, zeta=0.1, renorm="mean", eps=1e-6):
    """A plain loop after the project-page pseudocode: a flat list of (row, start, end) segments, their mean
    entropy, min-max / g / f over that list; then the bonus of the next segment of the same row and the renorm."""
    ids, m = batch.response_ids.tolist(), batch.response_mask.numpy().astype(bool)
    ent, r, gid = batch.old_entropy.double().numpy(), batch.rewards.double().numpy(), batch.group_ids.numpy()
    B, T = m.shape
    A = np.zeros(B)
    for grp in set(gid.tolist()):
        idx = [i for i in range(B) if gid[i] == grp]
        mu, sd = np.mean(r[idx]), (np.std(r[idx], ddof=1) if len(idx) > 1 else 0.0)
        for i in idx:
            A[i] = (r[i] - mu) / (sd + eps)
    semi = encode(";")[0]
    segs = []
    for i in range(B):
        n, start = int(m[i].sum()), 0
        for t in range(n):
            if ids[i][t] == semi:
                segs.append((i, start, t + 1))
                start = t + 1
        if start < n:
            segs.append((i, start, n))
    out = np.zeros((B, T))
    if not segs:
        return out, segs
    H = np.array([ent[i, s:e].mean() for i, s, e in segs])
    Hn = (H - H.min()) / (H.max() - H.min() + 1e-8)
    g = np.exp(-k * Hn) / np.mean(np.exp(-k * Hn))
    f = np.exp(-k_f * Hn)
    vals = np.array([g[n] * A[i] + zeta * (f[n + 1] if n + 1 < len(segs) and segs[n + 1][0] == i else 0.0)
                     for n, (i, s, e) in enumerate(segs)])
    if renorm != "none":
        vals = vals - vals.mean() if renorm == "mean" else (vals - vals.mean()) / (vals.std() + eps)
    for n, (i, s, e) in enumerate(segs):
        out[i, s:e] = vals[n]
    return out, segs


# ------------------------------------------------------------------ the identity (paper Prop. 1)

@given(st.integers(2, 30), st.lists(st.floats(-20, 20), min_size=30, max_size=30), st.integers(0, 29))
def test_score_norm_identity_and_autograd_score(V, vals, a):
    z = torch.tensor(vals[:V], dtype=torch.float64, requires_grad=True)
    pi = torch.softmax(z.detach(), -1)
    explicit = sum(pi[b] * ((torch.eye(V, dtype=torch.float64)[b] - pi) ** 2).sum() for b in range(V))
    assert float(explicit) == pytest.approx(float(1 - (pi * pi).sum()), abs=1e-12)
    assert float(expected_score_norm_sq(z.detach())) == pytest.approx(float(explicit), abs=1e-12)
    assert float(expected_score_norm_sq(z.detach())) == pytest.approx(1 - math.exp(-float(renyi2_entropy(z.detach()))),
                                                                      abs=1e-12)
    assert 0 <= float(explicit) <= 1 - 1 / V + 1e-12            # 0 at a one-hot pi, 1 - 1/V at the uniform
    a = a % V
    torch.log_softmax(z, -1)[a].backward()
    assert torch.allclose(z.grad, torch.eye(V, dtype=torch.float64)[a] - pi, atol=1e-12)   # grad log pi(a) = e_a - pi


# ------------------------------------------------------------------ the explicit loop

@settings(max_examples=40, deadline=None)
@given(case_st(), st.floats(0, 5), st.floats(0, 5), st.floats(0, 2), st.sampled_from(RENORMS))
def test_matches_the_explicit_pseudocode_loop(case, k, k_f, zeta, renorm):
    texts, rewards, G, seed = case
    batch = make_batch(texts, rewards, G, seed)
    t = empg_terms(batch, EmpgConfig(k=k, k_f=k_f, zeta=zeta, renorm=renorm))
    out, segs = reference(batch, k, k_f, zeta, renorm)
    np.testing.assert_allclose(t["shaped"].numpy(), out, rtol=1e-9, atol=1e-9)
    assert t["step_H"].numel() == len(segs)
    assert t["n_steps"].tolist() == [sum(1 for s in segs if s[0] == i) for i in range(len(texts))]
    assert t["n_steps"].tolist() == [x.count(";") + 1 for x in texts]          # EOS closes the final step


# ------------------------------------------------------------------ normalisation of H and g

@settings(max_examples=40, deadline=None)
@given(case_st(), st.floats(0, 8), st.floats(1e-3, 1e3))
def test_minmax_and_batch_mean_of_g_is_one(case, k, scale):
    texts, rewards, G, seed = case
    t = empg_terms(make_batch(texts, rewards, G, seed, scale=scale), EmpgConfig(k=k))
    Ht, sg, sH = t["Ht"][t["first"]], t["step_g"], t["step_H"]
    assert Ht.min() == 0 and bool((Ht >= 0).all()) and bool((Ht < 1).all())
    gap = sH.max() - sH.min()
    assert float(Ht.max()) == pytest.approx(float(gap / (gap + 1e-8)), rel=1e-12)   # ~1 unless H is ~constant
    assert float(sg.mean()) == pytest.approx(1.0, abs=1e-12)                  # over steps, each counted once
    u = torch.exp(-k * Ht).mean()
    assert bool((sg <= 1 / u + 1e-12).all()) and bool((sg >= math.exp(-k) / u - 1e-12).all())
    order = torch.argsort(sH)
    lo, hi = sH[order][:-1], sH[order][1:]
    gs = sg[order]
    strictly = hi > lo
    assert bool((gs[1:] <= gs[:-1]).all())                                     # non-increasing in H
    if k >= 1e-3:
        strictly &= (hi - lo) > 1e-6 * (gap + 1e-8)                           # a gap float64 can resolve
        assert bool((gs[1:][strictly] < gs[:-1][strictly]).all())              # strictly decreasing in H
    elif k == 0:
        assert bool((sg == 1).all())
    assert bool((t["g"][~t["steps"].ge(0)] == 0).all())


# ------------------------------------------------------------------ reduction to GRPO

@settings(max_examples=40, deadline=None)
@given(case_st(), st.sampled_from([torch.float32, torch.float64]), st.floats(0, 5))
def test_k_zero_zeta_zero_renorm_none_is_grpo_exactly(case, dtype, k_f):
    texts, rewards, G, seed = case
    batch = make_batch(texts, rewards, G, seed, dtype=dtype)
    grpo = grpo_advantage(batch, GRPOAdvantageConfig(eps=1e-6), None)
    out, logged = run(batch, k=0.0, k_f=k_f, zeta=0.0, renorm="none")
    assert out.dtype == grpo.dtype and torch.equal(out, grpo)
    assert logged["empg/frac_flipped"] == 0 and logged["empg/g_mean"] == 1.0


# ------------------------------------------------------------------ signs, monotonicity, the bonus

@settings(max_examples=40, deadline=None)
@given(case_st(levels=(0.0, 1.0)), st.floats(0.01, 5))
def test_confident_steps_get_more_credit_and_more_blame(case, k):
    texts, rewards, G, seed = case
    batch = make_batch(texts, rewards, G, seed)
    t = empg_terms(batch, EmpgConfig(k=k, zeta=0.0, renorm="none"))
    m, A = batch.response_mask.bool(), t["adv"][:, None].expand_as(t["mod"])
    assert torch.equal(torch.sign(t["mod"][m]), torch.sign(A[m]))          # g > 0 never flips a sign
    for i in range(len(texts)):                                              # inside a response, step by step
        rows = t["step_row"] == i
        H, v = t["step_H"][rows], t["step_mod"][rows]
        for a in range(H.numel()):
            for b in range(H.numel()):
                if H[a] < H[b] and t["adv"][i] > 0:
                    assert v[a] > v[b]                                       # confident success: more credit
                if H[a] < H[b] and t["adv"][i] < 0:
                    assert v[a] < v[b]                                       # confident error: more blame


@settings(max_examples=40, deadline=None)
@given(case_st(), st.floats(0.01, 2), st.floats(0, 5))
def test_future_clarity_bonus(case, zeta, k_f):
    texts, rewards, G, seed = case
    batch = make_batch(texts, rewards, G, seed)
    t0 = empg_terms(batch, EmpgConfig(k=0.0, zeta=0.0, renorm="none"))
    t = empg_terms(batch, EmpgConfig(k=0.0, k_f=k_f, zeta=zeta, renorm="none"))
    bonus = t["mod"] - t0["mod"]                                             # k = 0: g = 1, only zeta f_next is left
    assert torch.allclose(bonus, zeta * t["f_next"], atol=1e-12)
    m, steps = batch.response_mask.bool(), t["steps"]
    last = steps == t["n_steps"][:, None] - 1
    assert bool((bonus[m & last] == 0).all()) and bool((bonus[m & ~last] >= zeta * math.exp(-k_f) - 1e-12).all())
    # a clearer next step pays more: f_next is exp(-k_f Ht(next)), decreasing in the next step's entropy
    nxt = [(float(t["f_next"][i, j]), float(t["step_H"][(t["step_row"] == i)][steps[i, j] + 1]))
           for i, j in zip(*torch.nonzero(m & ~last & t["first"]).T.tolist())]
    for fa, ha in nxt:
        for fb, hb in nxt:
            if ha < hb:
                assert fa >= fb


@given(case_st(), st.floats(0, 3), st.floats(0, 2), st.floats(0, 10))
def test_equal_step_entropies_give_A_plus_zeta_except_on_the_last_step(case, k, zeta, h):
    texts, rewards, G, seed = case
    batch = make_batch(texts, rewards, G, seed, entropy=float(h))
    t = empg_terms(batch, EmpgConfig(k=k, zeta=zeta, renorm="none"))
    m, steps = batch.response_mask.bool(), t["steps"]
    last = steps == t["n_steps"][:, None] - 1
    A = t["adv"].double()[:, None].expand_as(t["mod"])
    # a step's mean of n equal floats may differ from h by an ulp, and the min-max's 1e-8 turns that into ~1e-8
    assert bool((t["Ht"] < 1e-6).all()) and torch.allclose(t["g"][m], torch.ones_like(t["g"][m]), atol=1e-5)
    assert torch.allclose(t["mod"][m & last], A[m & last], atol=1e-4)
    assert torch.allclose(t["mod"][m & ~last], A[m & ~last] + zeta, atol=1e-4)
    exact = empg_terms(make_batch(texts, rewards, G, seed, entropy=0.0), EmpgConfig(k=k, zeta=zeta, renorm="none"))
    assert bool((exact["g"][m] == 1).all()) and bool((exact["f_next"][m & ~last] == 1).all())   # H = 0: exact


# ------------------------------------------------------------------ the final renormalisation

@given(case_st(), st.floats(0, 5), st.floats(0, 2))
def test_renorm_mean_and_zscore(case, k, zeta):
    texts, rewards, G, seed = case
    batch = make_batch(texts, rewards, G, seed)
    none = empg_terms(batch, EmpgConfig(k=k, zeta=zeta, renorm="none"))
    mean = empg_terms(batch, EmpgConfig(k=k, zeta=zeta, renorm="mean"))
    z = empg_terms(batch, EmpgConfig(k=k, zeta=zeta, renorm="zscore"))
    m = batch.response_mask.bool()
    assert abs(float(mean["step_final"].mean())) < 1e-12 and abs(float(z["step_final"].mean())) < 1e-9
    shift = (none["shaped"] - mean["shaped"])[m]
    assert torch.allclose(shift, shift[0].expand_as(shift), atol=1e-12)       # one constant for the batch
    sd = float(none["step_mod"].std(correction=0))
    assert float(z["step_final"].std(correction=0)) == pytest.approx(sd / (sd + 1e-6), abs=1e-9)
    for t in (mean, z):
        assert bool((t["shaped"][~m] == 0).all())


# ------------------------------------------------------------------ edge cases

@pytest.mark.parametrize("renorm", RENORMS)
def test_one_step_responses_no_semicolon_and_empty_masks(renorm):
    texts, rewards = ["12#3", "4", "", "#99"], [1.0, 0.0, 1.0, 0.0]
    batch = make_batch(texts, rewards, 2, seed=3)
    t = empg_terms(batch, EmpgConfig(renorm=renorm))
    assert t["n_steps"].tolist() == [1, 1, 1, 1] and bool((t["f_next"] == 0).all())   # no next step: no bonus
    t0 = empg_terms(batch, EmpgConfig(renorm="none", zeta=0.3))
    assert torch.allclose(t0["mod"][batch.response_mask.bool()],
                          (t0["g"] * t0["adv"][:, None])[batch.response_mask.bool()])
    some = make_batch(["1;2;#3", "4;#4", "5", "6;"], rewards, 2, seed=4, empty_rows=(1, 2))
    out, logged = run(some, renorm=renorm)
    assert not out[1].any() and not out[2].any() and bool(torch.isfinite(out).all())
    assert logged["empg/steps_per_response"] == 2.5                           # rows 0 and 3: 3 and 2 steps
    empty = make_batch(texts, rewards, 2, seed=3, empty_rows=(0, 1, 2, 3))
    out, logged = run(empty, renorm=renorm)
    assert torch.equal(out, torch.zeros_like(out)) and all(math.isfinite(v) for v in logged.values())


@pytest.mark.parametrize("renorm", RENORMS)
@pytest.mark.parametrize("ent", ["zero", "huge", "tiny_gap", "mixed"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_extreme_entropies_and_settings_stay_finite(renorm, ent, dtype):
    texts, rewards = ["1;2;#3", "4;#4", "5;6;7;8;#1", "#0"], [1.0, 0.0, 0.0, 0.0]
    g = torch.Generator().manual_seed(7)
    base = torch.rand(4, 11, generator=g, dtype=torch.float64)
    entropy = {"zero": base * 0, "huge": base * 1e30, "tiny_gap": 3 + base * 1e-12,
               "mixed": torch.where(base > 0.5, 1e6, 0.0).double()}[ent]
    batch = make_batch(texts, rewards, 2, entropy=entropy, dtype=dtype)
    tiny = [dict(eps=1e-300)] if dtype == torch.float64 else []   # float32: 1e-300 is 0, and GRPO's own 0/0 is NaN
    for cfg in [dict(), dict(k=1e4, k_f=1e4, zeta=1e4), dict(k=0.0, zeta=0.0), *tiny]:
        out, logged = run(batch, renorm=renorm, **cfg)
        assert out.dtype == dtype and bool(torch.isfinite(out).all()) and all(math.isfinite(v) for v in logged.values())
        assert bool((out[batch.response_mask == 0] == 0).all())


@given(case_st())
def test_row_permutation_equivariance_and_no_gradient(case):
    texts, rewards, G, seed = case
    batch = make_batch(texts, rewards, G, seed)
    batch.old_entropy.requires_grad_(True)
    base, _ = run(batch)
    assert not base.requires_grad
    perm = torch.randperm(len(texts), generator=torch.Generator().manual_seed(seed))
    permuted = make_batch([texts[i] for i in perm], [rewards[i] for i in perm], G,
                          entropy=batch.old_entropy.detach()[perm])
    permuted.group_ids = batch.group_ids[perm]
    assert torch.allclose(run(permuted)[0], base[perm], atol=1e-12)


# ------------------------------------------------------------------ diagnostics, registry, recipes, runs

def test_diagnostics():
    batch = make_batch(["1;2;#3", "4;#4", "5;6;7;8;#1", "#0"], [1.0, 0.0, 0.0, 0.0], 2, seed=9)
    _, logged = run(batch, renorm="none", zeta=0.0)
    assert logged["empg/g_mean"] == pytest.approx(1.0, abs=1e-12)
    assert -1 <= logged["empg/corr_g_entropy"] < -0.9                         # exp(-k Ht) is close to linear at k 1
    assert logged["empg/g_low"] > 1 > logged["empg/g_high"]
    assert logged["empg/steps_per_response"] == (3 + 2 + 5 + 1) / 4
    assert logged["empg/frac_flipped"] == 0 and logged["empg/bonus"] == 0 and logged["empg/shift"] == 0
    _, logged = run(batch)                                                    # defaults: zeta 0.1, mean-centred
    assert logged["empg/bonus"] > 0 and 0 <= logged["empg/frac_flipped"] <= 1
    t = empg_terms(batch, EmpgConfig())
    assert logged["empg/shift"] == pytest.approx(float(t["step_mod"].mean()))


def test_registry_recipes_and_bad_values():
    entry = get_stage("advantage", "empg")
    assert entry.needs_for(EmpgConfig()) == {"groups"} and entry.config is EmpgConfig
    d = EmpgConfig()
    assert (d.k, d.k_f, d.zeta, d.renorm) == (1.0, 1.0, 0.1, "mean")
    grpo = get_recipe("grpo")
    for name, zeta in (("empg", 0.1), ("empg_zeta0", 0.0)):
        r = get_recipe(name)
        cfg = make_config(EmpgConfig, r.advantage_cfg)
        assert (r.advantage, cfg.k, cfg.k_f, cfg.zeta, cfg.renorm) == ("empg", 1.0, 1.0, zeta, "mean")
        assert (r.loss, r.loss_cfg, r.rollout, r.reward, r.train_cfg) == (grpo.loss, grpo.loss_cfg, grpo.rollout,
                                                                          grpo.reward, grpo.train_cfg)
    for field, value in (("k", -0.1), ("k_f", -1.0), ("zeta", -0.5), ("eps", 0.0), ("renorm", "median")):
        with pytest.raises(ValueError, match=field) as e:
            make_config(EmpgConfig, {field: value}, "advantage")
        assert "\n" not in str(e.value)


def test_short_chain_run_and_neutral_run_is_the_grpo_run(tmp_path, tiny_ckpt):
    from minirlvr.trainer import TrainConfig, train
    base = dict(task="chain", steps=2, prompts_per_step=4, group_size=4, minibatches=2, eval_every=0, progress=False,
                out_dir=str(tmp_path), init=tiny_ckpt, max_new_tokens=12, save_every=1)
    hist = train(TrainConfig(recipe="empg", name="e", **base))["history"]
    assert len(hist) == 2 and all("empg/corr_g_entropy" in h for h in hist)
    assert all(math.isfinite(v) for h in hist for v in h.values() if isinstance(v, float))
    a = train(TrainConfig(recipe="grpo", name="g", **base))["history"]
    neutral = {"advantage.k": 0.0, "advantage.zeta": 0.0, "advantage.renorm": "none"}
    b = train(TrainConfig(recipe="empg", name="n", overrides=neutral, **base))["history"]
    for ha, hb in zip(a, b):
        assert (ha["loss"], ha["grad_norm"], ha["reward"]) == (hb["loss"], hb["grad_norm"], hb["reward"])
