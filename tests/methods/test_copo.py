"""COPO (arXiv 2508.04138): answer entropy in bits against numpy, the prompt-level z-score, the blend
weights, the exact GRPO reduction, the non-vanishing gradient of all-equal groups (brute force with exact
fractions), an explicit per-token loop, edge cases, the provides/requires coupling and a short run."""
from __future__ import annotations

import math
from dataclasses import replace
from fractions import Fraction
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from minirlvr.baselines import GRPOAdvantageConfig, PPOClipConfig, grpo_advantage, ppo_clip_loss
from minirlvr.methods.copo import (MODES, CopoAdvantageConfig, CopoLossConfig, answer_entropy_bits, blend_weight,
                                   consistency_coef, copo_advantage, copo_loss, global_advantage)
from minirlvr.registry import get_recipe, get_stage, make_config
from minirlvr.rollout import PolicyOutput, RolloutBatch

AGG = ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]
CORRECT = "7"


# ------------------------------------------------------------------ helpers

@st.composite
def groups(draw, sizes=(2, 3, 4, 5, 6, 8), max_q=6):
    """(answers [B] (None = no answer), G). Reward 1 iff the answer is CORRECT, as the verifier."""
    G, Q = draw(st.sampled_from(sizes)), draw(st.integers(1, max_q))
    pool = draw(st.sampled_from([[CORRECT], [CORRECT, "3"], [CORRECT, "3", "5", None], ["3", "5"], [None]]))
    answers = draw(st.lists(st.sampled_from(pool), min_size=G * Q, max_size=G * Q))
    return answers, G


def make_batch(answers, G, seed=0, T=5, gap=0.3, one_token=False, empty=False, adv_scale=1.0):
    """RolloutBatch (rewards 0/1 from the answers) + PolicyOutput (logp a float64 leaf) + a fake ctx."""
    g = torch.Generator().manual_seed(seed)
    B = len(answers)
    lengths = torch.ones(B, dtype=torch.long) if one_token else torch.randint(1, T + 1, (B,), generator=g)
    mask = (torch.arange(T)[None, :] < lengths[:, None]).long() * (0 if empty else 1)
    old_logp = -torch.rand(B, T, generator=g, dtype=torch.float64) * 3 * mask
    logp = (old_logp + gap * (2 * torch.rand(B, T, generator=g, dtype=torch.float64) - 1)).requires_grad_(True)
    rewards = torch.tensor([1.0 if a == CORRECT else 0.0 for a in answers], dtype=torch.float64) * adv_scale
    batch = RolloutBatch(prompt_ids=torch.ones(B, 2, dtype=torch.long), prompt_mask=torch.ones(B, 2, dtype=torch.long),
                         response_ids=torch.full((B, T), 5), response_mask=mask, old_logp=old_logp,
                         old_entropy=torch.rand(B, T, generator=g, dtype=torch.float64),
                         group_ids=torch.arange(B) // G, problems=[None] * B,
                         texts=["" if a is None else a for a in answers],
                         truncated=torch.zeros(B, dtype=torch.bool), rewards=rewards)
    out = PolicyOutput(logp=logp, entropy=torch.rand(B, T, dtype=torch.float64),
                       logits=torch.zeros(B, T, 3, dtype=torch.float64))
    return batch, out


def fake_ctx():
    logged = {}
    return SimpleNamespace(task=SimpleNamespace(final_answer=lambda t: t or None),
                           log=lambda **kw: logged.update(kw), logged=logged)


def run_adv(batch, **cfg):
    ctx = fake_ctx()
    batch.advantages = copo_advantage(batch, CopoAdvantageConfig(**cfg), ctx)
    return ctx.logged


def grad_of(fn, out):
    out.logp.grad = None
    loss, metrics = fn()
    loss.backward()
    return loss.detach(), out.logp.grad.clone(), metrics


def np_entropy_bits(answers, G):
    H = []
    for q in range(len(answers) // G):
        _, counts = np.unique(np.array(["" if a is None else a for a in answers[q * G:(q + 1) * G]]),
                              return_counts=True)
        p = counts / G
        H += [float(-(p * np.log2(p)).sum())] * G
    return np.array(H)


def finite(loss, g, metrics):
    return bool(torch.isfinite(loss)) and bool(torch.isfinite(g).all()) and all(map(math.isfinite, metrics.values()))


# ------------------------------------------------------------------ the measures

@given(groups())
def test_answer_entropy_is_in_bits_and_bounded(case):
    answers, G = case
    H = answer_entropy_bits(answers, torch.arange(len(answers)) // G).numpy()
    np.testing.assert_allclose(H, np_entropy_bits(answers, G), rtol=1e-12, atol=1e-12)
    assert (H >= 0).all() and (H <= math.log2(G) + 1e-12).all()
    for q in range(len(answers) // G):
        grp = ["" if a is None else a for a in answers[q * G:(q + 1) * G]]
        assert (H[q * G] == 0.0) == (len(set(grp)) == 1)


def test_entropy_units_and_extremes():
    assert answer_entropy_bits(["1", "2"], torch.tensor([0, 0])).tolist() == [1.0, 1.0]      # 1 bit, not ln 2
    assert answer_entropy_bits(list("abcdefgh"), torch.zeros(8, dtype=torch.long))[0] == pytest.approx(3.0)
    assert answer_entropy_bits([None, None, "3"], torch.tensor([0, 0, 1])).tolist() == [0.0, 0.0, 0.0]


@given(st.integers(1, 16), st.data())
def test_consistency_coef_range(G, data):
    answers = data.draw(st.lists(st.sampled_from("abcdefghijklmnop"), min_size=G, max_size=G))
    H = answer_entropy_bits(answers, torch.zeros(G, dtype=torch.long))
    c = float(consistency_coef(H, torch.full((G,), float(G), dtype=torch.float64))[0])
    assert 1 / G - 1e-12 <= c <= 1 + 1e-12
    assert (c == 1.0) == (len(set(answers)) == 1)
    if len(set(answers)) == G:
        assert c == pytest.approx(1 / G, abs=1e-12)


@given(groups(), st.booleans())
def test_global_advantage_is_a_zscore_over_prompts(case, reward_coef):
    answers, G = case
    batch, _ = make_batch(answers, G)
    H = answer_entropy_bits(answers, batch.group_ids)
    A = global_advantage(batch.rewards, batch.group_ids, H, reward_coef, eps=1e-6).numpy()
    per_prompt = A[::G]
    assert np.isfinite(A).all()
    assert all((A[q * G:(q + 1) * G] == per_prompt[q]).all() for q in range(len(per_prompt)))   # broadcast to the group
    p = batch.rewards.numpy().reshape(-1, G).mean(1)
    R = p * (1 - (1 - 1 / G) / math.log2(G) * H.numpy()[::G]) if reward_coef else p
    if len(R) == 1 or np.ptp(R) == 0:
        assert (per_prompt == 0).all()                                        # all-equal prompts: exactly 0
        return
    sd = R.std(ddof=1)
    assert abs(per_prompt.mean()) < 1e-9
    assert per_prompt.std(ddof=1) == pytest.approx(sd / (sd + 1e-6), rel=1e-9)   # unit std up to eps
    np.testing.assert_allclose(per_prompt, (R - R.mean()) / (sd + 1e-6), rtol=1e-9, atol=1e-12)


@given(groups(), st.floats(0.25, 8.0), st.floats(-3.0, 3.0))
def test_affine_reward_invariance(case, k, c):
    answers, G = case
    batch, _ = make_batch(answers, G)
    gids, r, H = batch.group_ids, batch.rewards, answer_entropy_bits(answers, batch.group_ids)
    a0, a1 = global_advantage(r, gids, H, eps=1e-12), global_advantage(k * r + c, gids, H, eps=1e-12)
    torch.testing.assert_close(a0, a1, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("mode", MODES)
@given(case=groups(), gamma=st.floats(0, 50), rho=st.floats(-5, 5))
def test_blend_weights_in_range(mode, case, gamma, rho):
    answers, G = case
    batch, _ = make_batch(answers, G)
    run_adv(batch, global_mode=mode, gamma=gamma, rho=rho)
    w, r, H = batch.extras["copo_weight"], batch.rewards, batch.extras["copo_answer_entropy"]
    assert ((w >= 0) & (w <= 1)).all()
    top = 1 / (1 + math.exp(-gamma * (math.log2(G) - rho)))
    if mode == "soft-with-zero":
        assert (w[r == 0] == 0).all() and (w <= top + 1e-12).all()
        s0 = 1 / (1 + math.exp(gamma * rho))
        assert torch.allclose(w[(r != 0) & (H == 0)], torch.tensor(s0, dtype=w.dtype), rtol=1e-12, atol=0)
    if mode == "no-global":
        assert (w == 1).all()
    if mode == "only-global":
        assert (w == 0).all()


def test_defaults_hard_switch_and_only_zero_limit():
    H = torch.tensor([0.0, 0.5, 1.5, 2.0, 0.0], dtype=torch.float64)
    r = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0], dtype=torch.float64)
    w = blend_weight(H, r, torch.zeros(5), "soft-with-zero", 5.0, 1.0)
    assert float(w[0]) == pytest.approx(0.0066929, abs=1e-7)                 # sigmoid(-5), the card's 0.0067
    assert w.tolist()[3:] == [0.0, 0.0]
    assert blend_weight(H, r, torch.zeros(5), "only-soft", 1e4, 1.0).tolist() == [0.0, 0.0, 1.0, 1.0, 0.0]
    assert blend_weight(H, r, torch.zeros(5), "soft-with-zero", 5.0, -1e3).tolist() == r.tolist()


# ------------------------------------------------------------------ the loss

@pytest.mark.parametrize("agg", AGG)
@given(case=groups(), seed=st.integers(0, 10 ** 6), gap=st.sampled_from([0.0, 0.3, 3.0]))
def test_no_global_is_grpo_in_value_and_gradient(agg, case, seed, gap):
    answers, G = case
    batch, out = make_batch(answers, G, seed, gap=gap)
    ref = replace(batch, advantages=grpo_advantage(batch, GRPOAdvantageConfig(eps=1e-6), None))
    run_adv(batch, global_mode="no-global")
    assert torch.equal(batch.advantages, ref.advantages)
    l0, g0, _ = grad_of(lambda: ppo_clip_loss(out, ref, PPOClipConfig(clip_ratio_c=3.0, agg=agg), None), out)
    l1, g1, met = grad_of(lambda: copo_loss(out, batch, CopoLossConfig(agg=agg), None), out)
    assert torch.equal(l0, l1) and torch.equal(g0, g1)
    assert met["pg_loss_global"] == 0.0 and finite(l1, g1, met)


def explicit_loss(batch, out, agg, c=3.0, eps=0.2):
    """Per-token loop: w clipPG(A^loc) + (1 - w) clipPG(A^glob), dual clip for A < 0, then agg."""
    B, T = batch.response_mask.shape
    rows = []
    for i in range(B):
        w, al, ag = (float(batch.extras[k][i]) for k in ("copo_weight", "copo_adv_local", "copo_adv_global"))
        toks = []
        for t in range(T):
            if batch.response_mask[i, t]:
                r = math.exp(float(out.logp[i, t].detach()) - float(batch.old_logp[i, t]))

                def clip_pg(A):
                    val = max(-A * r, -A * min(max(r, 1 - eps), 1 + eps))
                    return min(val, -c * A) if A < 0 else val
                toks.append(w * clip_pg(al) + (1 - w) * clip_pg(ag))
        rows.append(toks)
    if agg == "token-mean":
        n = sum(map(len, rows))
        return sum(map(sum, rows)) / max(n, 1)
    means = [sum(x) / len(x) for x in rows if x]
    return sum(means) / max(len(means), 1)


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean"])
@pytest.mark.parametrize("mode", ["soft-with-zero", "only-soft", "only-global", "soft-with-forced"])
@given(case=groups(), seed=st.integers(0, 10 ** 6), reward_coef=st.booleans())
def test_loss_against_explicit_loop(agg, mode, case, seed, reward_coef):
    answers, G = case
    batch, out = make_batch(answers, G, seed, gap=0.5)
    run_adv(batch, global_mode=mode, reward_coef=reward_coef)
    loss, g, met = grad_of(lambda: copo_loss(out, batch, CopoLossConfig(agg=agg), None), out)
    assert float(loss) == pytest.approx(explicit_loss(batch, out, agg), rel=1e-9, abs=1e-12)
    assert met["pg_loss"] == pytest.approx(met["pg_loss_local"] + met["pg_loss_global"])
    assert finite(loss, g, met)


@pytest.mark.parametrize("mode", ["soft-with-zero", "only-soft", "no-global"])
@given(case=groups(sizes=(2, 4, 8)), seed=st.integers(0, 10 ** 6), gap=st.sampled_from([0.0, 0.15]))
def test_all_equal_group_gets_gradient_iff_its_accuracy_differs_from_the_batch_mean(mode, case, seed, gap):
    """Brute force, exact fractions (G a power of 2: p_g and its mean are exact in float). The ratio stays in
    [e^-0.15, e^0.15], inside the clip range, so no clipping can zero a gradient."""
    answers, G = case
    batch, out = make_batch(answers, G, seed, gap=gap)
    run_adv(batch, global_mode=mode)
    _, g, _ = grad_of(lambda: copo_loss(out, batch, CopoLossConfig(), None), out)
    r = batch.rewards.tolist()
    p = [Fraction(int(sum(r[q * G:(q + 1) * G])), G) for q in range(len(r) // G)]
    mean = sum(p) / len(p)
    for q in range(len(p)):
        if len(set(r[q * G:(q + 1) * G])) > 1:
            continue                                            # only all-equal groups: A^loc = 0 there
        moves = bool((g[q * G:(q + 1) * G] != 0).any())
        assert moves == (mode != "no-global" and p[q] != mean), (mode, p, q)
        assert (batch.extras["copo_adv_local"][q * G:(q + 1) * G] == 0).all()


# ------------------------------------------------------------------ edge cases

@pytest.mark.parametrize("mode", MODES)
def test_edge_cases_stay_finite(mode):
    cases = {"one group": ([CORRECT, "3", "3", None], 4), "all correct": ([CORRECT] * 8, 4),
             "all wrong": (["3"] * 4 + [None] * 4, 4), "mixed all-equal": ([CORRECT] * 4 + ["3"] * 4, 4)}
    for name, (answers, G) in cases.items():
        for kw in ({"gap": 0.0}, {"one_token": True}, {"empty": True}, {"gap": 100.0, "adv_scale": 1e6}):
            batch, out = make_batch(answers, G, seed=1, **kw)
            logged = run_adv(batch, global_mode=mode)
            loss, g, met = grad_of(lambda: copo_loss(out, batch, CopoLossConfig(), None), out)
            assert finite(loss, g, met) and all(map(math.isfinite, logged.values())), (name, kw)
            if kw.get("empty"):
                assert float(loss) == 0.0 and (g == 0).all()
            if name in ("one group", "all correct", "all wrong"):    # R_g equals its mean: A^glob = 0
                assert (batch.extras["copo_adv_global"] == 0).all()
            if name in ("all correct", "all wrong"):
                assert (g == 0).all()
            if name == "mixed all-equal":   # A^loc = 0, A^glob = +-1: only the weight on the global term decides;
                # only-zero trains correct rows on the local loss alone, so the all-correct group stays put
                want = {"no-global": 0.0, "only-zero": 0.5}.get(mode, 1.0)
                assert logged["copo/frac_nonzero_adv"] == want
                if kw.get("gap") == 0.0:   # ratio 1: no clipping can zero a row's gradient
                    assert [bool((g[i] != 0).any()) for i in range(8)] == [want == 1.0] * 4 + [want > 0] * 4


def test_extras_survive_minibatch_selection():
    batch, out = make_batch([CORRECT, "3", CORRECT, CORRECT, "3", "3", "5", CORRECT], 4, seed=2)
    run_adv(batch)
    idx = torch.tensor([6, 1, 3])
    mb = batch.select(idx)
    for k in ("copo_adv_local", "copo_adv_global", "copo_weight", "copo_answer_entropy"):
        assert torch.equal(mb.extras[k], batch.extras[k][idx])
    out_mb = PolicyOutput(logp=out.logp.detach()[idx].clone().requires_grad_(True), entropy=out.entropy[idx],
                          logits=out.logits[idx])
    loss, _ = copo_loss(out_mb, mb, CopoLossConfig(), None)
    assert float(loss.detach()) == pytest.approx(explicit_loss(mb, out_mb, "seq-mean-token-mean"), rel=1e-9)


# ------------------------------------------------------------------ configs, registry, pipeline, training

@pytest.mark.parametrize("cls,field,value", [
    (CopoAdvantageConfig, "eps", 0.0), (CopoAdvantageConfig, "gamma", -1.0), (CopoAdvantageConfig, "rho", math.nan),
    (CopoAdvantageConfig, "global_mode", "soft with zero"), (CopoLossConfig, "clip_ratio_c", 1.0),
    (CopoLossConfig, "clip_low", 1.5)])
def test_bad_config_values_name_the_field(cls, field, value):
    with pytest.raises(ValueError, match=f"{field}") as e:
        cls(**{field: value})
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match=field):
        make_config(cls, {field: value}, where="stage")


def test_registry_recipe_and_official_defaults():
    r = get_recipe("copo")
    assert (r.rollout, r.reward, r.advantage, r.loss) == ("plain", "verifier", "copo", "copo")
    assert "2508.04138" in r.paper and r.train_cfg == {}
    adv, loss = make_config(CopoAdvantageConfig, r.advantage_cfg), make_config(CopoLossConfig, r.loss_cfg)
    assert (adv.global_mode, adv.gamma, adv.rho, adv.reward_coef, adv.eps) == ("soft-with-zero", 5.0, 1.0, False, 1e-6)
    assert (loss.clip_low, loss.clip_high, loss.clip_ratio_c, loss.agg, loss.kl_coef, loss.entropy_coef) == \
        (0.2, 0.2, 3.0, "seq-mean-token-mean", 0.0, 0.0)
    assert adv == CopoAdvantageConfig() and loss == CopoLossConfig()
    assert get_stage("advantage", "copo").needs == {"groups"}
    assert get_stage("loss", "copo").requires <= get_stage("advantage", "copo").provides


def test_copo_loss_refuses_another_advantage():
    from minirlvr.trainer import TrainConfig, build_pipeline
    with pytest.raises(ValueError, match=r"loss 'copo' requires extras .*copo_adv_global.*advantage 'copo'"):
        build_pipeline(TrainConfig(recipe="copo", advantage="grpo"))
    with pytest.raises(ValueError, match="requires extras"):
        build_pipeline(TrainConfig(recipe="grpo", loss="copo"))
    build_pipeline(TrainConfig(recipe="grpo", advantage="copo"))   # the extras are unused by ppo_clip: fine


def small(tmp_path, ckpt, **kw):
    base = dict(task="addition", steps=2, prompts_per_step=4, group_size=4, minibatches=2, eval_every=0,
                progress=False, out_dir=str(tmp_path), init=ckpt, max_new_tokens=6, save_every=1)
    base.update(kw)
    from minirlvr.trainer import TrainConfig
    return TrainConfig(**base)


def test_short_training_run(tmp_path, tiny_ckpt):
    from minirlvr.trainer import train
    hist = train(small(tmp_path, tiny_ckpt, recipe="copo"))["history"]
    assert len(hist) == 2
    for h in hist:
        assert 0.0 <= h["copo/frac_nonzero_adv"] <= 1.0 and "clipfrac_global" in h
        assert 0.0 <= h["copo/answer_entropy_bits"] <= 2.0                       # log2(G = 4)
        assert h["copo/frac_all_equal"] == h["frac_reward_zero_std"]
        assert all(math.isfinite(v) for v in h.values() if isinstance(v, float))


def test_no_global_run_is_the_grpo_run(tmp_path, tiny_ckpt):
    """End to end: the same seed gives the same losses and gradient norms, step by step."""
    from minirlvr.trainer import train
    a = train(small(tmp_path, tiny_ckpt, recipe="grpo", name="g", overrides={"loss.clip_ratio_c": 3.0}))
    b = train(small(tmp_path, tiny_ckpt, recipe="copo", name="c", overrides={"advantage.global_mode": "no-global"}))
    for ha, hb in zip(a["history"], b["history"]):
        assert (ha["loss"], ha["grad_norm"], ha["reward"]) == (hb["loss"], hb["grad_norm"], hb["reward"])
