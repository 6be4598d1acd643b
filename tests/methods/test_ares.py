"""ARES / AEPO (arXiv 2510.08457): window entropy and the P95 threshold against plain loops, HWE monotonicity,
buckets and targets, the entropy-reward table (bounds, signs, margins, hand values, the safe-alpha ordering),
the alpha and beta controllers (bounded steps, deadzone, interval), the loss's exact reduction to ppo_clip,
the reward stage end to end, and a short trainer run that resumes with the same controller state."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minirlvr.baselines import PPOClipConfig, ppo_clip_loss
from minirlvr.core import aggregate, kl_estimate
from minirlvr.methods.ares import (ALPHA_MAX, BETA_MAX, BETA_MIN, CAP_SCALE, WRONG_GAIN, AresLossConfig,
                                   AresRewardConfig, alpha_step, ares_kl_loss, ares_reward, bucket_targets,
                                   difficulty_buckets, entropy_reward, hwe_count, kl_controller_step,
                                   percentile_thresholds, safe_alpha, window_entropy)
from minirlvr.rollout import PolicyOutput, RolloutBatch
from minirlvr.tokenizer import VOCAB_SIZE, encode

Q = encode("?")[0]


# ------------------------------------------------------------------ helpers

@st.composite
def entropies(draw, max_b=5, max_t=12):
    B, T = draw(st.integers(1, max_b)), draw(st.integers(1, max_t))
    L = draw(st.lists(st.integers(0, T), min_size=B, max_size=B))
    H = np.array(draw(st.lists(st.floats(0, 3), min_size=B * T, max_size=B * T))).reshape(B, T)
    mask = (np.arange(T)[None] < np.array(L)[:, None]).astype(np.int64)
    return torch.tensor(H), torch.tensor(mask)


def official_p95(h: list[float], w: int, q: float) -> float:
    """The rollout's percentile loop, transcribed: a running mean of the entries so far fills the positions
    without a full window (the token's own entropy if there is none yet)."""
    vals = []
    for i in range(len(h)):
        if len(h) - i - 1 >= w:
            vals.append(float(np.mean(h[i + 1:i + 1 + w])))
        else:
            vals.append(float(np.mean(vals)) if vals else h[i])
    return float(np.percentile(vals, q)) if vals else 0.0


def fake_ctx(correct_texts=("ok",)):
    logged = {}
    task = SimpleNamespace(reward=lambda p, t: 1.0 if t in correct_texts else 0.0)
    return SimpleNamespace(task=task, state={}, log=lambda **kw: logged.update(kw), logged=logged)


def make_batch(texts, G, seed=0, T=10, one_token=False):
    g = torch.Generator().manual_seed(seed)
    B = len(texts)
    lengths = torch.ones(B, dtype=torch.long) if one_token else torch.randint(1, T + 1, (B,), generator=g)
    mask = (torch.arange(T)[None] < lengths[:, None]).long()
    ids = torch.where(torch.rand(B, T, generator=g) < 0.4, Q, 5) * mask
    logits = torch.randn(B, T, VOCAB_SIZE, generator=g, dtype=torch.float64)
    ent = -(logits.softmax(-1) * logits.log_softmax(-1)).sum(-1) * mask
    old_logp = -torch.rand(B, T, generator=g, dtype=torch.float64) * mask
    return RolloutBatch(prompt_ids=torch.ones(B, 2, dtype=torch.long), prompt_mask=torch.ones(B, 2, dtype=torch.long),
                        response_ids=ids, response_mask=mask, old_logp=old_logp, old_entropy=ent,
                        group_ids=torch.arange(B) // G, problems=[None] * B, texts=list(texts),
                        truncated=torch.zeros(B, dtype=torch.bool), old_logits=logits,
                        ref_logp=old_logp - 0.3 * torch.rand(B, T, generator=g, dtype=torch.float64) * mask)


# ------------------------------------------------------------------ window entropy, P95, HWE counts

@given(entropies(), st.integers(1, 5))
def test_window_entropy_is_the_mean_of_the_next_w(case, w):
    H, mask = case
    W, full = window_entropy(H, mask, w)
    for i, L in enumerate(mask.sum(1).tolist()):
        for t in range(H.shape[1]):
            assert bool(full[i, t]) == (t < L and L - t - 1 >= w)
            if full[i, t]:
                assert float(W[i, t]) == pytest.approx(float(H[i, t + 1:t + 1 + w].mean()), abs=1e-12)
            else:
                assert float(W[i, t]) == 0.0


@given(entropies(), st.integers(1, 5), st.sampled_from([95.0, 50.0, 0.0, 100.0]))
def test_percentile_matches_the_official_loop(case, w, q):
    H, mask = case
    W, full = window_entropy(H, mask, w)
    p = percentile_thresholds(W, full, H, mask, q)
    for i, L in enumerate(mask.sum(1).tolist()):
        assert p[i] == pytest.approx(official_p95(H[i, :L].tolist(), w, q), abs=1e-12)


@given(entropies(), st.integers(1, 4), st.data())
def test_hwe_count_is_monotone_in_tau_and_needs_a_full_window(case, w, data):
    H, mask = case
    W, full = window_entropy(H, mask, w)
    trig = torch.tensor(data.draw(st.lists(st.booleans(), min_size=H.numel(), max_size=H.numel()))).view(H.shape)
    trig = trig & mask.bool()
    taus = sorted(data.draw(st.lists(st.floats(-1, 4), min_size=2, max_size=5)))
    counts = [hwe_count(W, full, trig, t) for t in taus]
    assert all((a >= b).all() for a, b in zip(counts, counts[1:]))
    assert torch.equal(hwe_count(W, full, trig, -math.inf), (trig & full).sum(1))   # every trigger with a window
    if (trig & full).any():                                                           # W_t = tau counts
        assert torch.equal(hwe_count(W, full, trig, float(W[trig & full].min())), (trig & full).sum(1))
    last = trig & ~full                                                                # too close to the end
    assert (hwe_count(W, full, last, -math.inf) == 0).all()


# ------------------------------------------------------------------ buckets, targets, alpha

@pytest.mark.parametrize("G", [3, 6, 8, 9])
def test_bucket_thresholds_are_two_thirds_and_one_third(G):
    correct = np.concatenate([np.arange(G) < k for k in range(G + 1)])
    bucket, groups = difficulty_buckets(correct, np.arange(len(correct)) // G)
    for k in range(G + 1):
        want = 0 if 3 * k >= 2 * G else 1 if 3 * k >= G else 2          # exact integer comparison
        assert (bucket[k * G:(k + 1) * G] == want).all(), (G, k)
    assert len(groups) == G + 1


@given(st.lists(st.integers(0, 9), min_size=8, max_size=40), st.integers(0, 2 ** 16), st.floats(0, 2))
def test_targets_are_rounded_bucket_means_and_alpha_moves_at_most_0025(ns, seed, alpha):
    G = 4
    n = np.array(ns[:len(ns) // G * G], dtype=np.float64)
    correct = np.random.default_rng(seed).random(len(n)) < 0.5
    bucket, groups = difficulty_buckets(correct, np.arange(len(n)) // G)
    for d, (nbar, T) in bucket_targets(n, bucket, groups).items():
        means = [n[rows].mean() for rows in groups.values() if bucket[rows[0]] == d]
        assert nbar == pytest.approx(np.mean(means), abs=1e-12) and T == round(np.mean(means))
        assert abs(nbar - T) <= 0.5
        new = alpha_step(alpha, nbar, T, d)
        assert 0.0 <= new <= ALPHA_MAX and abs(new - alpha) <= 0.025 + 1e-15
        if 0 < alpha + 0.05 * (nbar - T if d < 2 else T - nbar) < ALPHA_MAX:
            assert new == pytest.approx(alpha + 0.05 * (nbar - T if d < 2 else T - nbar), abs=1e-15)


# ------------------------------------------------------------------ the entropy reward

ARGS = dict(n=st.integers(0, 300), T=st.integers(0, 120), alpha=st.floats(0, 2), d=st.integers(0, 2))


@given(**ARGS, correct=st.booleans())
def test_entropy_reward_bounds_and_signs(n, T, alpha, d, correct):
    e, C = entropy_reward(n, T, alpha, d, correct), alpha * CAP_SCALE[d]
    assert math.isfinite(e) and abs(e) <= C + 1e-12
    if correct and d < 2:
        assert e <= 0.0
    if not correct:
        assert e >= WRONG_GAIN[d] * C / 2 - 1e-12            # sig(0) = 1/2: every wrong response gets a bonus
        assert (e > 0) == (alpha > 0)


@given(T=st.integers(0, 120), alpha=st.floats(0.01, 2), d=st.integers(0, 1))
def test_easy_medium_correct_no_penalty_inside_the_margin_then_non_increasing(T, alpha, d):
    M = max(1.0, (0.15, 0.25)[d] * max(T, 1))
    es = [entropy_reward(n, T, alpha, d, True) for n in range(0, T + 200)]
    for n, e in enumerate(es):
        if abs(n - T) <= M or (d == 0 and n - T <= M):
            assert e == 0.0
    above = [e for n, e in enumerate(es) if n - T >= 0]
    assert all(a >= b for a, b in zip(above, above[1:]))                # more HWE on an easy prompt: not better
    assert es[-1] < 0 and es[-1] >= -alpha * CAP_SCALE[d]


@given(T=st.integers(0, 120), alpha=st.floats(0.01, 2))
def test_hard_correct_rewards_more_hwe_and_is_half_cap_at_minus_margin(T, alpha):
    M, C = max(1.0, 0.35 * max(T, 1)), alpha * CAP_SCALE[2]
    if T <= 2:                                                          # M = 1: delta = -M exactly
        assert entropy_reward(T - 1, T, alpha, 2, True) == C / 2
    assert entropy_reward(T - M + 1e-9, T, alpha, 2, True) == pytest.approx(C / 2, abs=1e-9)
    grid = np.linspace(T - M + 1e-9, T + 60, 50)
    es = [entropy_reward(x, T, alpha, 2, True) for x in grid]
    assert all(a < b or b == pytest.approx(C, rel=1e-12) for a, b in zip(es, es[1:]))   # strictly up (till sig = 1)


def test_hand_computed_values():
    assert entropy_reward(5, 1, 0.5, 0, True) == pytest.approx(-1 / 3)       # M 1, over 3, h = 3 - 1, 2/3 C
    assert entropy_reward(0, 3, 0.5, 1, False) == pytest.approx(0.8 * 0.5 * 0.5)
    assert entropy_reward(10, 2, 0.5, 2, False) == pytest.approx(0.6 / (1 + math.exp(-7 / 3)))
    assert entropy_reward(0, 10, 0.5, 2, True) == pytest.approx(-0.18)     # M 3.5, x 6.5, h 4.5, 0.5 h / 7.5 C
    assert entropy_reward(3, 3, 1.0, 1, True) == 0.0


@pytest.mark.parametrize("d", [0, 1, 2])
@given(nc=st.integers(0, 300), nw=st.integers(0, 300), T=st.integers(0, 150), frac=st.floats(0, 1))
def test_correct_beats_wrong_up_to_the_safe_alpha(d, nc, nw, T, frac):
    alpha = frac * safe_alpha(d)
    assert 1 + entropy_reward(nc, T, alpha, d, True) > entropy_reward(nw, T, alpha, d, False)


def test_above_the_safe_alpha_a_wrong_response_can_win():
    for d in range(3):
        assert 1 + entropy_reward(300, 1, 2.0, d, True) < entropy_reward(300, 1, 2.0, d, False) if d < 2 else \
            1 + entropy_reward(0, 300, 2.0, d, True) < entropy_reward(600, 300, 2.0, d, False)
    # hard at the default alpha 0.5 (> safe 5/12): only with ~100 target HWE; never at toy-sized targets
    assert 1 + entropy_reward(0, 100, 0.5, 2, True) < entropy_reward(300, 100, 0.5, 2, False)
    assert all(1 + entropy_reward(nc, T, 0.5, d, True) > entropy_reward(nw, T, 0.5, d, False)
               for d in range(3) for T in range(11) for nc in range(30) for nw in range(60))


# ------------------------------------------------------------------ the KL controller

@given(data=st.data(), interval=st.integers(1, 4), decay=st.floats(0, 1), target=st.floats(1e-4, 1))
@settings(max_examples=30)
def test_beta_stays_in_bounds_and_moves_at_most_001_in_log(data, interval, decay, target):
    cfg = AresLossConfig(update_interval=interval, ema_decay=decay, kl_target=target)
    st_ = {}
    for _ in range(data.draw(st.integers(1, 25))):
        B = data.draw(st.integers(1, 6))
        kl = np.array(data.draw(st.lists(st.floats(0, 50), min_size=B, max_size=B)))
        bucket = np.array(data.draw(st.lists(st.integers(0, 2), min_size=B, max_size=B)))
        before = list(st_.get("beta", [1.0] * 3))
        kl_controller_step(st_, kl, bucket, cfg)
        for d in range(3):
            assert BETA_MIN <= st_["beta"][d] <= BETA_MAX
            assert abs(math.log(st_["beta"][d]) - math.log(before[d])) <= 0.05 * 0.2 + 1e-12
            if st_["calls"] % interval or not (bucket == d).any():
                assert st_["beta"][d] == before[d]                          # off the interval / bucket absent


def test_controller_deadzone_interval_and_direction():
    cfg = AresLossConfig()
    st_ = {}
    for call in range(1, 201):
        kl_controller_step(st_, np.array([0.05, 0.01]), np.array([0, 1]), cfg)
        if call < 100:
            assert st_["beta"] == [1.0, 1.0, 1.0]
    assert st_["beta"][0] > 1.0 and st_["updates"] == [2, 0, 0]       # KL 5x the target: beta up, twice in 200 calls
    assert st_["beta"][1] == 1.0 and st_["beta"][2] == 1.0            # exactly on target (deadzone); hard absent
    assert math.log(st_["beta"][0]) == pytest.approx(0.05 * 0.03 * 4 + 0.05 * 0.2, abs=1e-12)  # e_ema 0.12, then cap
    low = {}
    for _ in range(100):
        kl_controller_step(low, np.array([0.0]), np.array([2]), cfg)
    assert low["beta"][2] == pytest.approx(math.exp(-0.05 * 0.03))    # KL below target: beta down


# ------------------------------------------------------------------ the loss

def loss_case(seed, B=8, T=6):
    batch = make_batch(["ok", "no"] * (B // 2), 4, seed, T=T)
    g = torch.Generator().manual_seed(seed + 1)
    out = PolicyOutput(logp=(batch.old_logp + 0.2 * torch.randn(B, T, generator=g, dtype=torch.float64)
                             ).requires_grad_(True), entropy=torch.rand(B, T, dtype=torch.float64),
                       logits=torch.zeros(B, T, 3, dtype=torch.float64))
    batch.advantages = torch.randn(B, T, generator=g, dtype=torch.float64) * batch.response_mask
    batch.extras["ares_bucket"] = torch.randint(0, 3, (B,), generator=g)
    return batch, out


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
@given(seed=st.integers(0, 10 ** 6), kl_coef=st.sampled_from([0.0, 1e-2, 0.5]), dynamic=st.booleans())
def test_loss_with_unit_betas_is_ppo_clip_exactly(agg, seed, kl_coef, dynamic):
    batch, out = loss_case(seed)
    cfg = AresLossConfig(agg=agg, kl_coef=kl_coef, dynamic_kl=dynamic)
    ref_cfg = PPOClipConfig(clip_low=0.2, clip_high=0.3, clip_ratio_c=3.0, agg=agg, kl_coef=kl_coef, kl_clamp=10.0)
    l0, m0 = ppo_clip_loss(out, batch, ref_cfg, None)
    g0 = torch.autograd.grad(l0, out.logp)[0]
    l1, m1 = ares_kl_loss(out, batch, cfg, fake_ctx())                 # first call: no update yet, beta = 1
    g1 = torch.autograd.grad(l1, out.logp)[0]
    assert torch.equal(l0, l1) and torch.equal(g0, g1) and m0["pg_loss"] == m1["pg_loss"]


@given(seed=st.integers(0, 10 ** 6), betas=st.lists(st.floats(1e-4, 100), min_size=3, max_size=3))
def test_loss_weights_each_row_by_its_bucket_beta(seed, betas):
    batch, out = loss_case(seed)
    ctx = fake_ctx()
    ctx.state["ares_kl"] = {"beta": list(betas), "calls": 0}
    loss, m = ares_kl_loss(out, batch, AresLossConfig(), ctx)
    pg, _ = ppo_clip_loss(out, batch, PPOClipConfig(clip_low=0.2, clip_high=0.3, clip_ratio_c=3.0), None)
    k3 = kl_estimate(out.logp, batch.ref_logp, "k3", clamp=10.0)
    w = torch.tensor(betas, dtype=torch.float64)[batch.extras["ares_bucket"]]
    want = pg + 1e-2 * aggregate(k3 * w[:, None], batch.response_mask, "token-mean")
    assert float(loss.detach()) == pytest.approx(float(want.detach()), rel=1e-12, abs=1e-15) and math.isfinite(m["kl_weighted"])
    assert ctx.logged["ares/beta_hard"] == betas[2] and ctx.logged["ares/kl_calls"] == 1


# ------------------------------------------------------------------ the reward stage

@given(seed=st.integers(0, 10 ** 6), G=st.sampled_from([2, 3, 4]), released=st.booleans(),
       top1=st.booleans(), one_token=st.booleans())
def test_reward_stage_end_to_end(seed, G, released, top1, one_token):
    rng = np.random.default_rng(seed)
    texts = [rng.choice(["ok", "no", "", "#?#", "\x00"]) for _ in range(3 * G)]
    batch = make_batch(texts, G, seed, one_token=one_token)
    cfg = AresRewardConfig(released_reward=released, trigger_token="top1" if top1 else "sampled")
    ctx = fake_ctx()
    r = ares_reward(batch, cfg, ctx)
    n, e, b = (batch.extras[k] for k in ("ares_hwe", "ares_entropy_reward", "ares_bucket"))
    correct = np.array([t == "ok" for t in texts])
    assert torch.isfinite(r).all() and np.allclose(r.numpy(), correct + e.numpy(), rtol=0, atol=0)
    tokens = batch.old_logits.argmax(-1) if top1 else batch.response_ids
    W, full = window_entropy(batch.old_entropy, batch.response_mask, 4)
    tau = ctx.logged["ares/tau"]
    assert torch.equal(n.long(), hwe_count(W, full, (tokens == Q) & batch.response_mask.bool(), tau))
    assert tau == ctx.logged["ares/p95_median"] == ctx.state["ares"]["tau"]     # first call: the batch's median
    alpha = ctx.state["ares"]["alpha"]
    assert all(abs(a - 0.5) <= 0.025 + 1e-15 for a in alpha)
    for i in range(len(texts)):
        d = int(b[i])
        T = ctx.logged[f"ares/target_{('easy', 'medium', 'hard')[d]}"]
        want = (entropy_reward(n[i], 0, 0.5, 0, correct[i]) if released else
                entropy_reward(n[i], T, alpha[d], d, correct[i]))
        assert float(e[i]) == want
    assert all(math.isfinite(v) for v in ctx.logged.values())
    # second call: counted with the previous tau, which then moves 1% towards this batch's median
    r2 = ares_reward(make_batch(texts, G, seed + 1), cfg, ctx)
    assert ctx.logged["ares/tau"] == tau and torch.isfinite(r2).all()
    assert ctx.state["ares"]["tau"] == pytest.approx(0.99 * tau + 0.01 * ctx.logged["ares/p95_median"], abs=1e-15)


def test_tau_init_and_bad_triggers():
    ctx = fake_ctx()
    batch = make_batch(["ok", "no"] * 4, 4, 3)
    ares_reward(batch, AresRewardConfig(tau_init=-1.0), ctx)
    W, full = window_entropy(batch.old_entropy, batch.response_mask, 4)
    trig = (batch.old_logits.argmax(-1) == Q) & batch.response_mask.bool()
    assert torch.equal(batch.extras["ares_hwe"].long(), (trig & full).sum(1))      # tau = -1 counts every trigger
    for bad in [(), ("ab",), ("x",)]:
        with pytest.raises(ValueError, match="triggers"):
            AresRewardConfig(triggers=bad)


def test_loss_requires_the_buckets():
    from minirlvr.trainer import TrainConfig, build_pipeline
    with pytest.raises(ValueError, match="requires extras"):
        build_pipeline(TrainConfig(recipe="grpo", loss="ares_kl"))
    build_pipeline(TrainConfig(recipe="ares"))
    build_pipeline(TrainConfig(recipe="ares_control"))


def test_trainer_run_resumes_with_the_same_controller_state(tmp_path, tiny_ckpt):
    from minirlvr.trainer import TrainConfig, train
    kw = dict(task="addition", recipe="ares", prompts_per_step=4, group_size=4, minibatches=2, eval_every=0,
              progress=False, init=tiny_ckpt, max_new_tokens=10, save_every=1, name="r", lr=1e-3,
              overrides={"reward.triggers": "0,1,2,3,4,5,6,7,8,9", "loss.update_interval": 1})
    full = train(TrainConfig(steps=4, out_dir=str(tmp_path / "full"), **kw))
    train(TrainConfig(steps=2, out_dir=str(tmp_path / "part"), **kw))
    resumed = train(TrainConfig(steps=4, out_dir=str(tmp_path / "part"), resume=True, **kw))
    strip = lambda h: [{k: v for k, v in r.items() if not k.startswith("time")} for r in h]  # noqa: E731
    assert strip(full["history"]) == strip(resumed["history"])
    assert full["state"]["ares"] == resumed["state"]["ares"] and full["state"]["ares_kl"] == resumed["state"]["ares_kl"]
    assert full["state"]["ares_kl"]["calls"] == 8 and sum(full["state"]["ares_kl"]["updates"]) > 0
    assert any(h["ares/hwe"] > 0 for h in full["history"])
