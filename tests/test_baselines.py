"""The GRPO-family stage functions on hand-built RolloutBatches, against explicit loops."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from minirlvr.baselines import (GRPOAdvantageConfig, OverlongConfig, PPOClipConfig, ReinforcePPConfig,
                                dr_grpo_advantage, grpo_advantage, overlong_reward, ppo_clip_loss,
                                reinforce_pp_advantage, rloo_advantage, verifier_reward)
from minirlvr.rollout import PolicyOutput, RolloutBatch
from minirlvr.tokenizer import EOS
from toy_tasks import Problem

AGG = ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]


def make_batch(rewards, group_ids, lengths, T, truncated=None, seed=0):
    """A RolloutBatch with the given per-row response lengths (EOS last unless truncated)."""
    B = len(rewards)
    g = torch.Generator().manual_seed(seed)
    mask = torch.tensor([[1 if t < n else 0 for t in range(T)] for n in lengths])
    truncated = torch.tensor(truncated if truncated is not None else [False] * B)
    ids = torch.randint(3, 29, (B, T), generator=g) * mask
    for i, n in enumerate(lengths):
        if not truncated[i] and n > 0:
            ids[i, n - 1] = EOS
    old_logp = -torch.rand(B, T, generator=g, dtype=torch.float64) * 3 * mask
    prob = Problem(task="addition", prompt="1+2=", answer="3", difficulty=1, data=(1, 2))
    return RolloutBatch(
        prompt_ids=torch.ones(B, 2, dtype=torch.long), prompt_mask=torch.ones(B, 2, dtype=torch.long),
        response_ids=ids, response_mask=mask, old_logp=old_logp,
        old_entropy=torch.rand(B, T, generator=g, dtype=torch.float64) * mask,
        group_ids=torch.tensor(group_ids), problems=[prob] * B, texts=[""] * B, truncated=truncated,
        rewards=torch.tensor(rewards, dtype=torch.float64))


@st.composite
def batches(draw, min_group=1):
    n_groups = draw(st.integers(1, 4))
    G = draw(st.integers(min_group, 5))
    T = draw(st.integers(1, 8))
    B = n_groups * G
    rewards = draw(st.lists(st.one_of(st.sampled_from([0.0, 1.0]), st.floats(-3, 3)), min_size=B, max_size=B))
    lengths = draw(st.lists(st.integers(1, T), min_size=B, max_size=B))
    labels = draw(st.lists(st.integers(-20, 20), min_size=n_groups, max_size=n_groups, unique=True))
    gids = [labels[i // G] for i in range(B)]
    return make_batch(rewards, gids, lengths, T, seed=draw(st.integers(0, 1000)))


def groups_of(batch):
    gids = batch.group_ids.tolist()
    return {g: [i for i, x in enumerate(gids) if x == g] for g in set(gids)}


def check_broadcast(adv, batch, per_row):
    assert adv.shape == batch.response_mask.shape
    for i in range(batch.size):
        for t in range(adv.shape[1]):
            want = per_row[i] if batch.response_mask[i, t] else 0.0
            assert adv[i, t].item() == pytest.approx(want, rel=1e-9, abs=1e-9)


def loop_aggregate(L, m, mode, max_len=None):
    L, m = L.tolist(), m.tolist()
    B, T = len(L), len(L[0])
    rows = [[L[i][t] for t in range(T) if m[i][t]] for i in range(B)]
    if mode == "token-mean":
        flat = [x for r in rows for x in r]
        return sum(flat) / len(flat) if flat else 0.0
    if mode == "seq-mean-token-mean":
        per = [sum(r) / len(r) for r in rows if r]
        return sum(per) / len(per) if per else 0.0
    if mode == "seq-mean-token-sum":
        n_rows = sum(1 for r in rows if r)  # rows with a valid token (verl's count)
        return sum(sum(r) for r in rows) / n_rows if n_rows else 0.0
    return sum(sum(r) / (max_len or T) for r in rows) / B


# ----------------------------------------------------------------------------- advantages

@given(batch=batches(), eps=st.sampled_from([1e-6, 1e-2]))
def test_grpo_advantage(batch, eps):
    r = batch.rewards.tolist()
    per_row = [0.0] * batch.size
    for idx in groups_of(batch).values():
        vals = [r[i] for i in idx]
        mean = sum(vals) / len(vals)
        std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
        for i in idx:
            per_row[i] = (r[i] - mean) / (std + eps)
    check_broadcast(grpo_advantage(batch, GRPOAdvantageConfig(eps=eps), SimpleNamespace()), batch, per_row)


@given(batch=batches())
def test_dr_grpo_advantage(batch):
    r = batch.rewards.tolist()
    per_row = [0.0] * batch.size
    for idx in groups_of(batch).values():
        mean = sum(r[i] for i in idx) / len(idx)
        for i in idx:
            per_row[i] = r[i] - mean
    check_broadcast(dr_grpo_advantage(batch, None, SimpleNamespace()), batch, per_row)


@given(batch=batches(min_group=2))
def test_rloo_advantage_is_leave_one_out(batch):
    r = batch.rewards.tolist()
    per_row = [0.0] * batch.size
    for idx in groups_of(batch).values():
        for i in idx:
            others = [r[j] for j in idx if j != i]
            per_row[i] = r[i] - sum(others) / len(others)
    check_broadcast(rloo_advantage(batch, None, SimpleNamespace()), batch, per_row)


def test_rloo_needs_two_per_group():
    b = make_batch([1.0, 0.0, 1.0], [0, 0, 1], [1, 1, 1], 2)
    with pytest.raises(ValueError, match="RLOO"):
        rloo_advantage(b, None, SimpleNamespace())


def np_verl_masked_whiten(values, mask):
    """verl's torch_functional.masked_whiten: (v - mean) * rsqrt(var + 1e-8), var = the masked variance
    times n / (n - 1) (masked_var(unbiased=True)). verl's masked_mean divides by (n + 1e-8), which in
    its float32 is exactly n for n >= 1, so the mean here is the plain one. Needs n >= 2 (verl raises)."""
    v, m = np.asarray(values, dtype=np.float64), np.asarray(mask, dtype=np.float64)
    n = m.sum()
    mean = (v * m).sum() / n
    var = (((v - mean) ** 2) * m).sum() / n * (n / (n - 1))
    return (v - mean) / np.sqrt(var + 1e-8)


@given(batch=batches(), beta=st.sampled_from([0.0, 0.05, 0.5]))
def test_reinforce_pp_whitened_returns(batch, beta):
    B, T = batch.response_mask.shape
    m = batch.response_mask.tolist()
    g = torch.Generator().manual_seed(1)
    batch.ref_logp = -torch.rand(B, T, generator=g, dtype=torch.float64) * 3 * batch.response_mask
    lp, ref, r = batch.old_logp.tolist(), batch.ref_logp.tolist(), batch.rewards.tolist()
    ret = [[0.0] * T for _ in range(B)]
    for i in range(B):
        for t in range(T):
            if m[i][t]:
                ret[i][t] = r[i] - beta * sum(lp[i][s] - ref[i][s] for s in range(t, T) if m[i][s])
    valid = [ret[i][t] for i in range(B) for t in range(T) if m[i][t]]
    n = len(valid)
    mean = sum(valid) / n
    var = sum((v - mean) ** 2 for v in valid) / max(n - 1, 1)   # unbiased; n = 1: 0 (its one value is centred to 0)
    cfg = ReinforcePPConfig(kl_coef=beta)
    adv = reinforce_pp_advantage(batch, cfg, SimpleNamespace())
    for i in range(B):
        for t in range(T):
            want = (ret[i][t] - mean) / math.sqrt(var + cfg.eps) if m[i][t] else 0.0
            assert adv[i, t].item() == pytest.approx(want, rel=1e-7, abs=1e-7)
    vals = adv[batch.response_mask.bool()].double()
    assert abs(vals.mean().item()) < 1e-7
    if n > 1:  # unbiased std ~1 unless all equal
        assert vals.std(unbiased=True).item() == pytest.approx(math.sqrt(var / (var + cfg.eps)), abs=1e-7)
        np.testing.assert_allclose(adv.numpy(), np_verl_masked_whiten(ret, m) * np.array(m), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("T", [1, 4])
@pytest.mark.parametrize("reward", [0.0, 1.0, -3.5])
def test_reinforce_pp_single_valid_token_is_finite(dtype, T, reward):
    """n = 1, where verl's masked_var raises (Bessel's n / (n - 1) divides by zero): A = 0, never NaN / inf;
    likewise an empty mask and an all-equal batch."""
    for lengths, rewards in (([1], [reward]), ([1, 0], [reward, 2.0]), ([0, 0], [reward, 1.0]),
                             ([T, T], [reward, reward])):
        b = make_batch(rewards, [0] * len(lengths), lengths, T)
        b.rewards = b.rewards.to(dtype)
        for beta in (0.0, 0.3):
            b.ref_logp = b.old_logp - 0.1 * b.response_mask
            adv = reinforce_pp_advantage(b, ReinforcePPConfig(kl_coef=beta), SimpleNamespace())
            assert torch.isfinite(adv).all() and (adv[~b.response_mask.bool()] == 0).all()
            if sum(lengths) <= 1 or beta == 0.0:
                assert (adv == 0).all(), adv


def test_reinforce_pp_kl_needs_reference():
    b = make_batch([1.0, 0.0], [0, 0], [2, 1], 3)
    with pytest.raises(ValueError, match="ref"):
        reinforce_pp_advantage(b, ReinforcePPConfig(kl_coef=0.1), SimpleNamespace())
    reinforce_pp_advantage(b, ReinforcePPConfig(kl_coef=0.0), SimpleNamespace())  # fine without


# ----------------------------------------------------------------------------- PPO-clip loss

def policy_output(batch, logp=None):
    g = torch.Generator().manual_seed(5)
    B, T = batch.response_mask.shape
    return PolicyOutput(logp=batch.old_logp.clone() if logp is None else logp,
                        entropy=torch.rand(B, T, generator=g, dtype=torch.float64) * 2,
                        logits=torch.zeros(B, T, 29, dtype=torch.float64))


@given(batch=batches(), agg=st.sampled_from(AGG), max_len=st.one_of(st.none(), st.integers(1, 12)))
def test_ppo_clip_loss_at_ratio_one(batch, agg, max_len):
    batch.advantages = grpo_advantage(batch, GRPOAdvantageConfig(), None).double()
    out = policy_output(batch)
    loss, metrics = ppo_clip_loss(out, batch, PPOClipConfig(agg=agg, max_len=max_len), SimpleNamespace())
    assert loss.item() == pytest.approx(loop_aggregate(-batch.advantages, batch.response_mask, agg, max_len),
                                        abs=1e-9)
    if agg == "token-mean":
        m = batch.response_mask.bool()
        assert loss.item() == pytest.approx(-batch.advantages[m].mean().item(), abs=1e-9)
    assert metrics["clipfrac"] == 0.0 and metrics["ratio_mean"] == pytest.approx(1.0) and metrics["ppo_kl"] == 0.0
    assert "kl" not in metrics and "entropy_bonus" not in metrics


@given(batch=batches(), agg=st.sampled_from(AGG), kind=st.sampled_from(["k1", "k2", "k3"]),
       beta=st.sampled_from([0.01, 0.3]), d=st.data())
def test_ppo_kl_term(batch, agg, kind, beta, d):
    B, T = batch.response_mask.shape
    batch.advantages = dr_grpo_advantage(batch, None, None).double()
    g = torch.Generator().manual_seed(d.draw(st.integers(0, 100)))
    logp = batch.old_logp + 0.3 * torch.randn(B, T, generator=g, dtype=torch.float64)
    batch.ref_logp = batch.old_logp + 0.5 * torch.randn(B, T, generator=g, dtype=torch.float64)
    out = policy_output(batch, logp)
    base, m0 = ppo_clip_loss(out, batch, PPOClipConfig(agg=agg), None)
    loss, m1 = ppo_clip_loss(out, batch, PPOClipConfig(agg=agg, kl_coef=beta, kl_kind=kind), None)
    lr = (logp - batch.ref_logp).tolist()
    est = {"k1": lambda x: x, "k2": lambda x: 0.5 * x * x, "k3": lambda x: math.exp(-x) + x - 1}[kind]
    kl_mat = torch.tensor([[est(x) for x in row] for row in lr], dtype=torch.float64)
    kl = loop_aggregate(kl_mat, batch.response_mask, agg)
    assert "kl" not in m0 and m1["kl"] == pytest.approx(kl, rel=1e-9, abs=1e-12)
    assert loss.item() - base.item() == pytest.approx(beta * kl, rel=1e-7, abs=1e-9)


@given(batch=batches(), agg=st.sampled_from(AGG), kind=st.sampled_from(["k1", "k2", "k3"]),
       clamp=st.sampled_from([0.05, 0.5, 10.0]), d=st.data())
def test_ppo_kl_clamp_is_passed_through(batch, agg, kind, clamp, d):
    B, T = batch.response_mask.shape
    batch.advantages = dr_grpo_advantage(batch, None, None).double()
    g = torch.Generator().manual_seed(d.draw(st.integers(0, 100)))
    logp = batch.old_logp + 0.3 * torch.randn(B, T, generator=g, dtype=torch.float64)
    batch.ref_logp = batch.old_logp + 3.0 * torch.randn(B, T, generator=g, dtype=torch.float64)
    out = policy_output(batch, logp)
    _, plain = ppo_clip_loss(out, batch, PPOClipConfig(agg=agg, kl_coef=0.1, kl_kind=kind), None)
    _, unset = ppo_clip_loss(out, batch, PPOClipConfig(agg=agg, kl_coef=0.1, kl_kind=kind, kl_clamp=None), None)
    _, met = ppo_clip_loss(out, batch, PPOClipConfig(agg=agg, kl_coef=0.1, kl_kind=kind, kl_clamp=clamp), None)
    lr = (logp - batch.ref_logp).tolist()
    est = {"k1": lambda x: x, "k2": lambda x: 0.5 * x * x, "k3": lambda x: math.exp(-x) + x - 1}[kind]
    kl_mat = torch.tensor([[min(max(est(x), -clamp), clamp) for x in row] for row in lr], dtype=torch.float64)
    assert unset["kl"] == plain["kl"]
    assert met["kl"] == pytest.approx(loop_aggregate(kl_mat, batch.response_mask, agg), rel=1e-9, abs=1e-12)


def test_ppo_kl_needs_reference_and_is_off_by_default():
    b = make_batch([1.0, 0.0], [0, 0], [2, 1], 3)
    b.advantages = grpo_advantage(b, GRPOAdvantageConfig(), None).double()
    out = policy_output(b)
    with pytest.raises(ValueError, match="reference"):
        ppo_clip_loss(out, b, PPOClipConfig(kl_coef=0.1), None)
    base, _ = ppo_clip_loss(out, b, PPOClipConfig(), None)
    b.ref_logp = b.old_logp - 1.0  # present but unused when kl_coef == 0
    same, metrics = ppo_clip_loss(out, b, PPOClipConfig(), None)
    assert same.item() == base.item() and "kl" not in metrics


@given(batch=batches(), agg=st.sampled_from(AGG), coef=st.sampled_from([0.001, 0.1, 1.0]))
def test_entropy_bonus_lowers_loss(batch, agg, coef):
    batch.advantages = grpo_advantage(batch, GRPOAdvantageConfig(), None).double()
    out = policy_output(batch)
    out.entropy = torch.where(batch.response_mask.bool(), out.entropy, torch.tensor(math.nan, dtype=torch.float64))
    base, _ = ppo_clip_loss(out, batch, PPOClipConfig(agg=agg), None)
    loss, metrics = ppo_clip_loss(out, batch, PPOClipConfig(agg=agg, entropy_coef=coef), None)
    ent = loop_aggregate(torch.nan_to_num(out.entropy), batch.response_mask, agg)
    assert math.isfinite(loss.item())
    assert metrics["entropy_bonus"] == pytest.approx(ent, rel=1e-9, abs=1e-12)
    assert base.item() - loss.item() == pytest.approx(coef * ent, rel=1e-7, abs=1e-9)


def test_ppo_clip_loss_gradient_is_policy_gradient_at_ratio_one():
    b = make_batch([1.0, 0.0, 0.5, 0.5], [0, 0, 1, 1], [3, 1, 2, 3], 3)
    b.advantages = grpo_advantage(b, GRPOAdvantageConfig(), None).double()
    logp = b.old_logp.clone().requires_grad_(True)
    loss, _ = ppo_clip_loss(policy_output(b, logp), b, PPOClipConfig(agg="token-mean"), None)
    loss.backward()
    m = b.response_mask.double()
    np.testing.assert_allclose(logp.grad.numpy(), (-b.advantages * m / m.sum()).numpy(), atol=1e-12)


# ----------------------------------------------------------------------------- rewards

def test_overlong_reward_formula():
    L, C = 10, 4
    lengths = [1, 5, 6, 7, 8, 9, 10, 10]
    truncated = [False, False, False, False, False, False, False, True]
    b = make_batch([0.0] * 8, list(range(8)), lengths, L, truncated=truncated)
    b.texts = ["ok" if i % 2 == 0 else "no" for i in range(8)]
    ctx = SimpleNamespace(task=SimpleNamespace(reward=lambda p, t: 1.0 if t == "ok" else 0.0), max_new_tokens=L)
    base = verifier_reward(b, None, ctx)
    assert base.dtype == torch.float32 and base.tolist() == [1.0, 0.0] * 4
    for factor in (1.0, 0.5):
        r = overlong_reward(b, OverlongConfig(buffer=C, penalty_factor=factor), ctx)
        for i, (n, tr) in enumerate(zip(lengths, truncated)):
            if tr:
                pen = -1.0
            elif n <= L - C:
                pen = 0.0
            else:
                pen = ((L - C) - n) / C
            assert r[i].item() == pytest.approx(base[i].item() + factor * pen, abs=1e-6), (i, n, tr)
    # by hand for the default buffer 4: lengths 7, 9, 10 (EOS at the limit) -> -1/4, -3/4, -1
    r = overlong_reward(b, OverlongConfig(), ctx)
    assert r[3].item() == pytest.approx(0.0 - 0.25) and r[5].item() == pytest.approx(0.0 - 0.75)
    assert r[6].item() == pytest.approx(1.0 - 1.0) and r[7].item() == pytest.approx(0.0 - 1.0)


@given(batch=batches(), seed=st.integers(0, 10 ** 6), eps=st.tuples(st.floats(0.05, 0.5), st.floats(0.05, 0.5)))
def test_clipfrac_splits_into_the_upper_and_the_lower_bound(batch, seed, eps):
    # without the dual clip every clipped token is clipped by exactly one bound: A > 0 above 1 + eps_h
    # (upper) or A < 0 below 1 - eps_l (lower), so the two fractions add up to clipfrac
    batch.advantages = grpo_advantage(batch, GRPOAdvantageConfig(), None).double()
    g = torch.Generator().manual_seed(seed)
    logp = batch.old_logp + torch.randn(batch.old_logp.shape, generator=g, dtype=torch.float64) * batch.response_mask
    cfg = PPOClipConfig(clip_low=eps[0], clip_high=eps[1])
    _, m = ppo_clip_loss(policy_output(batch, logp), batch, cfg, SimpleNamespace())
    assert m["clipfrac_high"] + m["clipfrac_low"] == pytest.approx(m["clipfrac"], abs=1e-6)  # float32 means
    ratio, adv, mask = (logp - batch.old_logp).exp(), batch.advantages, batch.response_mask.bool()
    if mask.any():
        assert m["clipfrac_high"] == pytest.approx(((adv > 0) & (ratio > 1 + eps[1]))[mask].double().mean().item())
