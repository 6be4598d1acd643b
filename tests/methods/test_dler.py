"""DLER (arXiv 2510.15110): the truncation reward (any text), the token-weighted batch whitening against an
explicit loop of verl's formula, its moments and invariances, all-equal groups with unequal lengths, the
relation to GRPO, clip-higher gradient masks on a grid of ratios, dynamic sampling with the truncation
reward, the recipes and their ablations, edge cases and a short run."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minirlvr import baselines
from minirlvr.baselines import GRPOAdvantageConfig, PPOClipConfig, grpo_advantage, ppo_clip_loss
from minirlvr.methods.dler import (DLER_LOSS, L_MAX, DlerAdvantageConfig, TruncationRewardConfig, dler_advantage,
                                   dler_advantages, finished_within, truncation_reward)
from minirlvr.registry import get_recipe, make_config
from minirlvr.rollout import PolicyOutput, RolloutBatch
from toy_tasks import get_task

TASK = get_task("addition_verbose")


# ------------------------------------------------------------------ helpers

@st.composite
def case_st(draw, sizes=(2, 3, 4, 8), max_q=4, T=6, levels=(0.0, 1.0)):
    """(rewards [B] float64, G, lengths [B] in 0..T)."""
    G, Q = draw(st.sampled_from(sizes)), draw(st.integers(1, max_q))
    rewards = draw(st.lists(st.sampled_from(levels), min_size=G * Q, max_size=G * Q))
    lengths = draw(st.lists(st.integers(0, T), min_size=G * Q, max_size=G * Q))
    return torch.tensor(rewards, dtype=torch.float64), G, torch.tensor(lengths)


def mask_of(lengths, T=6):
    return (torch.arange(T)[None, :] < lengths[:, None]).long()


def make_batch(rewards, G, lengths, T=6, texts=None, truncated=None):
    B = len(rewards)
    mask = mask_of(lengths, T)
    return RolloutBatch(prompt_ids=torch.ones(B, 2, dtype=torch.long), prompt_mask=torch.ones(B, 2, dtype=torch.long),
                        response_ids=torch.full((B, T), 5), response_mask=mask,
                        old_logp=torch.zeros(B, T, dtype=torch.float64), old_entropy=torch.zeros(B, T),
                        group_ids=torch.arange(B) // G, problems=[TASK.make_problem(23, 48)] * B,
                        texts=texts or [""] * B, rewards=rewards,
                        truncated=torch.zeros(B, dtype=torch.bool) if truncated is None else truncated)


def fake_ctx():
    logged = {}
    return SimpleNamespace(task=TASK, log=lambda **kw: logged.update(kw), logged=logged)


def reference(rewards, G, lengths, eps=1e-8):
    """verl's reinforce_plus_plus_baseline + masked_whiten, written out with Python floats."""
    r, L = rewards.tolist(), lengths.tolist()
    a = []
    for i in range(len(r)):
        g = r[(i // G) * G:(i // G + 1) * G]
        a.append(r[i] - sum(g) / len(g))
    n = sum(L)
    if n <= 1:
        return [[0.0] * 6 for _ in r], 0.0, 0.0
    mu = sum(a[i] * L[i] for i in range(len(r))) / n
    var = sum(L[i] * (a[i] - mu) ** 2 for i in range(len(r))) / (n - 1)
    return [[(a[i] - mu) / math.sqrt(var + eps) if t < L[i] else 0.0 for t in range(6)] for i in range(len(r))], mu, var


def token_moments(A, mask):
    """Token-weighted mean and unbiased variance (numpy, independent of the library)."""
    v = A.numpy()[mask.numpy().astype(bool)]
    return v.mean(), v.var(ddof=1)


# ------------------------------------------------------------------ the advantage

@given(case_st(levels=(0.0, 1.0, 0.25, -2.0)), st.sampled_from([1e-8, 1e-3, 1.0]))
def test_matches_the_explicit_verl_loop(case, eps):
    rewards, G, lengths = case
    want, _, _ = reference(rewards, G, lengths, eps)
    got = dler_advantages(rewards, torch.arange(len(rewards)) // G, mask_of(lengths), eps)
    np.testing.assert_allclose(got.numpy(), np.array(want), rtol=1e-10, atol=1e-10)


@given(case_st(levels=(0.0, 1.0, 0.5)))
def test_token_weighted_mean_zero_and_unbiased_variance_one(case):
    rewards, G, lengths = case
    mask = mask_of(lengths)
    A = dler_advantages(rewards, torch.arange(len(rewards)) // G, mask)
    _, mu, var = reference(rewards, G, lengths)
    if int(mask.sum()) < 2:
        assert (A == 0).all()
        return
    mean, uvar = token_moments(A, mask)
    assert abs(mean) < 1e-9
    assert uvar == pytest.approx(var / (var + 1e-8), rel=1e-9, abs=1e-12)   # = 1 up to the 1e-8
    if var > 1e-4:
        assert uvar == pytest.approx(1.0, abs=1e-4)
    assert (A[mask == 0] == 0).all()


@given(case_st(levels=(0.0, 1.0, 0.3)), st.floats(0.01, 100), st.floats(-50, 50))
def test_invariant_to_affine_rewards(case, k, c):
    rewards, G, lengths = case
    gids, mask = torch.arange(len(rewards)) // G, mask_of(lengths)
    A = dler_advantages(rewards, gids, mask, 1e-8)
    B = dler_advantages(k * rewards + c, gids, mask, 1e-8 * k * k)   # exact identity: eps scales with k^2
    np.testing.assert_allclose(B.numpy(), A.numpy(), rtol=1e-7, atol=1e-7)
    _, _, var = reference(rewards, G, lengths)
    if k * k * var > 1e-2:   # the same eps: equal up to O(eps / (k^2 var))
        np.testing.assert_allclose(dler_advantages(k * rewards + c, gids, mask).numpy(), A.numpy(), atol=1e-5)


def test_all_equal_group_with_unequal_lengths_gets_a_nonzero_advantage():
    rewards = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    lengths = torch.tensor([2, 3, 4, 5, 6, 1, 1, 1])        # group 2: the correct response is the long one
    gids, mask = torch.arange(8) // 4, mask_of(lengths)
    A = dler_advantages(rewards, gids, mask)
    _, mu, var = reference(rewards, 4, lengths)
    assert mu > 0                                            # the long correct response weighs 6 tokens
    flat = A[:4][mask[:4].bool()]
    assert torch.allclose(flat, torch.full_like(flat, -mu / math.sqrt(var + 1e-8)), rtol=1e-12)
    assert (flat < 0).all()
    # GRPO gives that group exactly 0
    grpo = grpo_advantage(make_batch(rewards, 4, lengths), GRPOAdvantageConfig(), None)
    assert (grpo[:4] == 0).all()


@given(case_st(sizes=(2, 4, 8), max_q=3, levels=(0.0, 1.0, 0.5)), st.integers(1, 6))
def test_equal_lengths_mu_zero_and_a_over_token_std(case, L):
    rewards, G, _ = case
    lengths = torch.full((len(rewards),), L)
    gids, mask = torch.arange(len(rewards)) // G, mask_of(lengths)
    A = dler_advantages(rewards, gids, mask)
    _, mu, var = reference(rewards, G, lengths)
    assert abs(mu) < 1e-15
    a = rewards - torch.tensor([float(rewards[(i // G) * G:(i // G + 1) * G].mean()) for i in range(len(rewards))],
                               dtype=torch.float64)
    want = a[:, None] / math.sqrt(var + 1e-8) * mask
    np.testing.assert_allclose(A.numpy(), want.numpy(), atol=1e-9)
    if len(rewards) == G and float(a.abs().max()) > 0:   # one prompt: DLER = GRPO * std_g / sigma_tok
        std_g = float(rewards.std())
        grpo = grpo_advantage(make_batch(rewards, G, lengths), GRPOAdvantageConfig(eps=1e-300), None)
        np.testing.assert_allclose(A.numpy(), (grpo * std_g / math.sqrt(var + 1e-8)).numpy(), rtol=1e-9, atol=1e-12)


# ------------------------------------------------------------------ the truncation reward

@settings(max_examples=30)
@given(st.lists(st.tuples(st.sampled_from(["3+8=1c1;2+4+1=7;#71", "#71", "71", "#72", ""]) | st.text(max_size=12),
                          st.booleans(), st.integers(0, 6)), min_size=1, max_size=10))
def test_truncated_responses_score_zero_whatever_the_text(rows):
    texts, trunc, lengths = [r[0] for r in rows], torch.tensor([r[1] for r in rows]), torch.tensor([r[2] for r in rows])
    batch = make_batch(torch.zeros(len(rows)), 1, lengths, texts=texts, truncated=trunc)
    ctx = fake_ctx()
    r = truncation_reward(batch, TruncationRewardConfig(), ctx)
    verifier = baselines.verifier_reward(batch, None, ctx)
    assert torch.equal(r, torch.where(trunc, torch.zeros_like(verifier), verifier))
    assert r.dtype == torch.float32 and set(r.tolist()) <= {0.0, 1.0}
    assert ctx.logged["dler/trunc_rate"] == pytest.approx(float(trunc.float().mean()))
    # shrinking L_max never raises a reward; L_max >= the longest response changes nothing
    prev = r
    for max_len in (6, 5, 3, 2, 1):
        cur = truncation_reward(batch, TruncationRewardConfig(max_len=max_len), ctx)
        assert (cur <= prev).all()
        assert torch.equal(cur > 0, (verifier > 0) & finished_within(batch, max_len))
        prev = cur
    assert torch.equal(truncation_reward(batch, TruncationRewardConfig(max_len=6), ctx), r)


# ------------------------------------------------------------------ clip-higher

def test_clip_higher_gradient_masks_on_a_ratio_grid():
    rhos = torch.tensor([0.5, 0.79, 0.81, 0.95, 1.0, 1.1, 1.19, 1.21, 1.27, 1.29, 1.5, 9.9, 10.1, 20.0],
                        dtype=torch.float64)
    cfg = make_config(PPOClipConfig, {**DLER_LOSS, "kl_coef": 0.0})   # the PG term alone
    for sign in (1.0, -1.0):
        n = len(rhos)
        old = torch.zeros(1, n, dtype=torch.float64)
        logp = rhos.log()[None].clone().requires_grad_(True)
        batch = make_batch(torch.zeros(1), 1, torch.tensor([n]), T=n)
        batch.old_logp, batch.advantages = old, torch.full((1, n), sign, dtype=torch.float64)
        loss, _ = ppo_clip_loss(PolicyOutput(logp=logp, entropy=torch.zeros(1, n), logits=torch.zeros(1, n, 3)),
                                batch, cfg, None)
        loss.backward()
        live = (logp.grad[0] != 0).tolist()
        want = [(r < 1.28) if sign > 0 else (0.8 < r < 10.0) for r in rhos.tolist()]
        assert live == want, (sign, live)


# ------------------------------------------------------------------ dynamic sampling with the truncation reward

def test_dynamic_sampling_keeps_only_groups_with_reward_variance(monkeypatch):
    G, rng = 4, np.random.default_rng(0)

    def fake_sample(policy, problems, group_size, max_new_tokens, temperature, generator, group_offset):
        B = len(problems) * group_size
        texts = [str(rng.choice(["3+8=1c1;2+4+1=7;#71", "#72", "#71"])) for _ in range(B)]
        b = make_batch(torch.zeros(B), group_size, torch.full((B,), 4), texts=texts,
                       truncated=torch.tensor(rng.random(B) < 0.5))
        b.group_ids = b.group_ids + group_offset
        return b
    monkeypatch.setattr(baselines, "sample", fake_sample)
    ctx = SimpleNamespace(**vars(fake_ctx()), policy=None, group_size=G, max_new_tokens=6, temperature=1.0,
                          generator=None, sample_problems=lambda n: [TASK.make_problem(23, 48)] * n)
    ctx.score = lambda b: truncation_reward(b, TruncationRewardConfig(), ctx)
    cfg = make_config(baselines.DynamicSamplingConfig, get_recipe("dler").rollout_cfg)
    for _ in range(5):
        out = baselines.dynamic_rollout([TASK.make_problem(23, 48)] * 6, cfg, ctx)
        _, std = baselines.group_mean_std(out.rewards, out.group_ids)
        assert out.size <= 6 * G and (std > 0).all()
        assert torch.equal(out.rewards, truncation_reward(out, TruncationRewardConfig(), ctx))


# ------------------------------------------------------------------ edge cases, stage, recipes, run

@pytest.mark.parametrize("lengths", [[0] * 8, [1] * 8, [0, 0, 0, 1, 0, 0, 0, 0], [6, 0, 6, 0, 1, 2, 3, 4]])
@pytest.mark.parametrize("rewards", [[1.0] * 8, [0.0] * 8, [1, 0, 1, 0, 0, 0, 0, 1], [1e6, 0, 0, 0, 0, 0, 0, -1e6]])
def test_edge_cases_stay_finite(lengths, rewards):
    for dtype in (torch.float32, torch.float64):
        batch = make_batch(torch.tensor(rewards, dtype=dtype), 4, torch.tensor(lengths))
        ctx = fake_ctx()
        A = dler_advantage(batch, DlerAdvantageConfig(), ctx)
        assert torch.isfinite(A).all() and (A[batch.response_mask == 0] == 0).all()
        assert all(math.isfinite(v) for v in ctx.logged.values())
        if len(set(rewards)) == 1 or sum(lengths) <= 1:
            assert (A == 0).all()


def test_recipes_and_ablations_differ_in_one_fix_each():
    d = get_recipe("dler")
    assert (d.rollout, d.reward, d.advantage, d.loss) == ("dynamic", "truncation", "dler", "ppo_clip")
    assert d.train_cfg == {"max_new_tokens": L_MAX} and "2510.15110" in d.paper
    assert d.loss_cfg == {"clip_low": 0.2, "clip_high": 0.28, "clip_ratio_c": 10.0, "agg": "token-mean",
                          "kl_coef": 5e-4, "kl_kind": "k3", "kl_clamp": 10.0} and d.rollout_cfg == {"max_tries": 10}
    fields = ("rollout", "reward", "advantage", "loss", "rollout_cfg", "reward_cfg", "advantage_cfg", "loss_cfg",
              "train_cfg")
    changed = {name: {f for f in fields if getattr(get_recipe(name), f) != getattr(d, f)}
               for name in ("dler_no_whiten", "dler_no_dynamic", "dler_no_cliphigher")}
    assert changed == {"dler_no_whiten": {"advantage"}, "dler_no_dynamic": {"rollout", "rollout_cfg"},
                       "dler_no_cliphigher": {"loss_cfg"}}
    assert get_recipe("dler_no_whiten").advantage == "grpo" and get_recipe("dler_no_dynamic").rollout == "plain"
    assert get_recipe("dler_no_cliphigher").loss_cfg["clip_high"] == 0.2
    g = get_recipe("grpo_trunc")
    assert (g.rollout, g.reward, g.advantage, g.loss_cfg, g.train_cfg) == \
        ("plain", "truncation", "grpo", get_recipe("grpo").loss_cfg, {"max_new_tokens": L_MAX})
    for bad in ({"eps": 0.0}, {"eps": -1.0}):
        with pytest.raises(ValueError, match="eps"):
            make_config(DlerAdvantageConfig, bad)
    with pytest.raises(ValueError, match="max_len"):
        TruncationRewardConfig(max_len=0)


def test_short_run(tmp_path, tiny_ckpt):
    from minirlvr.trainer import TrainConfig, train
    for recipe in ("dler", "grpo_trunc"):
        out = train(TrainConfig(task="addition", recipe=recipe, steps=2, prompts_per_step=4, group_size=4,
                                minibatches=2, eval_every=0, progress=False, out_dir=str(tmp_path), init=tiny_ckpt,
                                max_new_tokens=6, name=recipe))
        rec = out["history"][-1]
        assert out["config"].max_new_tokens == 6 and math.isfinite(rec["loss"]) and "dler/trunc_rate" in rec


def test_every_mixture_problem_has_a_solution_within_l_max():
    """L_MAX is the longest re-check-free trace of the 1-3 digit mixture + EOS: every problem is solvable within
    the budget, the hardest exactly at it."""
    import numpy as np
    from toy_tasks import get_task
    from toy_tasks.addition import scratchpad
    task = get_task("addition_verbose")
    assert len(scratchpad(999, 999)) + 1 == L_MAX
    for p in task.sample(300, np.random.default_rng(0), difficulty=(1, 2, 3)):
        assert len(scratchpad(*p.data)) + 1 <= L_MAX
