"""CANON (arXiv 2509.23962): the exact Dr.GRPO reduction, metric-direction invariance (and where it breaks),
group sums, half gaps, within-half differences, shift / scale, all-equal groups, split sizes, tie rules
(seeded, resume-safe, not touching the run's generators), the length and entropy metrics on known values,
the annealed schedule, logging, recipes and short runs."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from minirlvr.baselines import dr_grpo_advantage
from minirlvr.methods.canon import (CanonConfig, canon_advantage, canon_values, half_means, response_metric,
                                    split_high, tie_keys)
from minirlvr.registry import get_recipe, get_stage
from minirlvr.rollout import RolloutBatch

Z = 12  # ctx.max_new_tokens of the fake context


# ------------------------------------------------------------------ helpers

@st.composite
def grouped(draw, sizes=(2, 3, 4, 5, 6, 8), even=False, binary=False, max_q=4):
    """(rewards [B] float64, metric [B] float64 (small ints: ties happen), group ids [B] (shuffled labels))."""
    Q = draw(st.integers(1, max_q))
    Gs = [draw(st.sampled_from([s for s in sizes if s % 2 == 0] if even else sizes)) for _ in range(Q)]
    B = sum(Gs)
    val = st.sampled_from([0.0, 1.0]) if binary else st.floats(-3, 3, allow_nan=False)
    r = torch.tensor(draw(st.lists(val, min_size=B, max_size=B)), dtype=torch.float64)
    M = torch.tensor(draw(st.lists(st.integers(0, 5), min_size=B, max_size=B)), dtype=torch.float64)
    labels = torch.tensor([q for q, G in enumerate(Gs) for _ in range(G)])
    perm = torch.from_numpy(np.random.default_rng(draw(st.integers(0, 99))).permutation(B))
    return r[perm], M[perm], (labels * 7 + 3)[perm]          # interleaved, non-contiguous group labels


def groups_of(gids):
    return [torch.nonzero(gids == g).squeeze(1) for g in torch.unique(gids)]


def fake_ctx(seed=0, step=0):
    logged = {}
    return SimpleNamespace(state={}, generator=torch.Generator().manual_seed(seed), rng=np.random.default_rng(seed),
                           step=step, max_new_tokens=Z, log=lambda **kw: logged.update(kw), logged=logged)


def make_batch(rewards, gids, lengths=None, entropy=None, T=6, seed=0):
    B = len(rewards)
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, T + 1, (B,), generator=g) if lengths is None else torch.as_tensor(lengths)
    mask = (torch.arange(T)[None, :] < lengths[:, None]).long()
    ent = torch.rand(B, T, generator=g, dtype=torch.float64) if entropy is None else entropy
    ent = torch.where(mask.bool(), ent, torch.full_like(ent, 1e9))     # junk off the mask must not count
    return RolloutBatch(prompt_ids=torch.ones(B, 2, dtype=torch.long), prompt_mask=torch.ones(B, 2, dtype=torch.long),
                        response_ids=torch.full((B, T), 5), response_mask=mask, old_logp=torch.zeros(B, T),
                        old_entropy=ent, group_ids=torch.as_tensor(gids), problems=[None] * B, texts=[""] * B,
                        truncated=torch.zeros(B, dtype=torch.bool),
                        rewards=torch.as_tensor(rewards, dtype=torch.float64))


def run(batch, ctx=None, **cfg):
    ctx = ctx or fake_ctx()
    return canon_advantage(batch, CanonConfig(**cfg), ctx), ctx


def row_adv(A, batch):
    """A_i from the broadcast [B, T] (every row has >= 1 valid token here)."""
    m = batch.response_mask.double()
    return (A * m).sum(1) / m.sum(1)


# ------------------------------------------------------------------ the claims of the card / PLAN

@given(data=grouped(even=True), metric=st.sampled_from(["entropy", "length", "random"]),
       ties=st.sampled_from(["random", "stable"]), norm=st.sampled_from(["none", "max_new_tokens"]))
def test_mu_half_even_groups_is_dr_grpo_exactly(data, metric, ties, norm):
    r, M, gids = data
    batch = make_batch(r, gids, lengths=(M + 1).long(), seed=int(M.sum()))
    A, _ = run(batch, metric=metric, mu=0.5, alpha=1.0, b=0.0, ties=ties, normalize=norm)
    ref = dr_grpo_advantage(batch, None, None) / (Z if norm == "max_new_tokens" else 1)
    torch.testing.assert_close(A, ref, rtol=0, atol=1e-12)


@given(data=grouped(even=True), mu=st.floats(0, 1))
def test_metric_direction_invariance_alpha1_even_no_tie_across_the_median(data, mu):
    r, M, gids = data
    for idx in groups_of(gids):                                  # ties inside a half are allowed
        s = torch.sort(M[idx]).values
        assume(s[len(idx) // 2 - 1] < s[len(idx) // 2])
    hi, _ = split_high(M, gids)
    hi_neg, _ = split_high(-M, gids)
    assert torch.equal(hi_neg, ~hi)                               # the partition is swapped ...
    for length_form in (False, True):                             # ... and A does not care
        torch.testing.assert_close(canon_values(r, hi, gids, mu, length_form=length_form),
                                   canon_values(r, hi_neg, gids, mu, length_form=length_form), rtol=0, atol=1e-12)


def test_metric_direction_invariance_breaks_where_it_should():
    r = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 1.0])
    flip = lambda M, gids, **kw: (canon_values(r[:len(M)], split_high(M, gids)[0], gids, 1.0, **kw),  # noqa: E731
                                  canon_values(r[:len(M)], split_high(-M, gids)[0], gids, 1.0, **kw))
    even, g4 = torch.tensor([0.0, 1.0, 2.0, 3.0]), torch.zeros(4, dtype=torch.long)
    a, b = flip(even, g4)
    assert torch.allclose(a, b)                                   # the control: alpha 1, b 0, even, no ties
    for kw in ({"alpha": 2.0}, {"b": 0.5}):                       # the directional knobs
        a, b = flip(even, g4, **kw)
        assert not torch.allclose(a, b)
    a, b = flip(torch.tensor([0.0, 1.0, 2.0]), torch.zeros(3, dtype=torch.long))   # odd G: the median stays in Hi
    assert not torch.allclose(a, b)
    a, b = flip(torch.tensor([0.0, 1.0, 1.0, 3.0]), g4)           # a tie across the median (stable rule)
    assert not torch.allclose(a, b)


@given(data=grouped(), mu=st.floats(0, 1), alpha=st.floats(0, 3), b=st.floats(-1, 1), length_form=st.booleans())
def test_group_sum_and_half_gap_closed_forms(data, mu, alpha, b, length_form):
    r, M, gids = data
    hi, _ = split_high(M, gids)
    A = canon_values(r, hi, gids, mu, alpha, b, length_form)
    for idx in groups_of(gids):
        h, rr = hi[idx], r[idx]
        m_lo, m_hi = rr[~h].mean(), rr[h].mean()
        inter_hi = alpha * m_hi - m_lo + b if length_form else m_hi - alpha * m_lo + b   # mean inter term of Hi
        n_h, n_l = int(h.sum()), int((~h).sum())
        assert math.isclose(float(A[idx].sum()), mu * (n_h - n_l) * float(inter_hi), abs_tol=1e-9)
        gap = A[idx][h].mean() - A[idx][~h].mean()
        assert math.isclose(float(gap), 2 * mu * float(inter_hi), abs_tol=1e-9)
        if n_h == n_l:
            assert abs(float(A[idx].sum())) < 1e-9                  # even G: zero sum for every alpha, b


@given(data=grouped(), mu=st.floats(0, 1), alpha=st.floats(0, 3), length_form=st.booleans())
def test_within_a_half_differences_follow_the_reward(data, mu, alpha, length_form):
    r, M, gids = data
    hi, _ = split_high(M, gids)
    A = canon_values(r, hi, gids, mu, alpha, 0.0, length_form)
    slope_hi = mu * alpha + 1 - mu if length_form else 1.0       # coefficient of r_i inside each half
    slope_lo = 1.0 if length_form else mu * alpha + 1 - mu
    for idx in groups_of(gids):
        for half, slope in ((hi[idx], slope_hi), (~hi[idx], slope_lo)):
            a, rr = A[idx][half], r[idx][half]
            torch.testing.assert_close(a - a[0], slope * (rr - rr[0]), rtol=0, atol=1e-9)


@given(data=grouped(), mu=st.floats(0, 1), c=st.floats(-5, 5), k=st.floats(-4, 4))
def test_shift_invariance_alpha1_and_scale_equivariance(data, mu, c, k):
    r, M, gids = data
    hi, _ = split_high(M, gids)
    A = canon_values(r, hi, gids, mu)
    torch.testing.assert_close(canon_values(r + c, hi, gids, mu), A, rtol=0, atol=1e-9)
    torch.testing.assert_close(canon_values(k * r, hi, gids, mu, alpha=2.0),
                               k * canon_values(r, hi, gids, mu, alpha=2.0), rtol=0, atol=1e-9)
    if mu > 0.01 and abs(c) > 0.1:                               # alpha != 1: a shift moves A by mu c (1 - alpha)
        shifted = canon_values(r + c, hi, gids, mu, alpha=2.0) - canon_values(r, hi, gids, mu, alpha=2.0)
        torch.testing.assert_close(shifted, (mu * c) * torch.where(hi, -1.0, 1.0).double(), rtol=0, atol=1e-9)


@given(G=st.integers(2, 9), c=st.floats(-10, 10), mu=st.floats(0, 1), seed=st.integers(0, 50),
       metric=st.sampled_from(["entropy", "length", "random"]))
def test_all_equal_rewards_give_exactly_zero(G, c, mu, seed, metric):
    batch = make_batch([c] * G, [0] * G, seed=seed)
    A, ctx = run(batch, metric=metric, mu=mu, ctx=fake_ctx(seed))
    assert torch.equal(A, torch.zeros_like(A))                    # exact: the half means are exact (group_mean_std)
    assert ctx.logged["canon/gap"] == 0.0 and ctx.logged["canon/frac_hi_better"] == 0.0
    assert ctx.logged["canon/frac_tie_decides"] == 0.0
    if G % 2 == 0:   # alpha != 1 or b != 0: A = +-mu (c (1 - alpha) + b), sign + on Hi (entropy form)
        A2, _ = run(batch, metric="entropy", mu=mu, alpha=3.0, b=0.25, normalize="none", ctx=fake_ctx(seed))
        hi, _ = split_high(response_metric(batch, "entropy"), batch.group_ids, tie_keys(seed, 0, G))
        want = mu * (c * (1 - 3.0) + 0.25) * torch.where(hi, 1.0, -1.0).double()
        torch.testing.assert_close(row_adv(A2, batch), want, rtol=0, atol=1e-9)


# ------------------------------------------------------------------ the split

@given(data=grouped(), keyed=st.booleans())
def test_split_sizes_and_order(data, keyed):
    r, M, gids = data
    hi, order = split_high(M, gids, tie_keys(1, 2, len(M)) if keyed else None)
    for idx in groups_of(gids):
        n, h = len(idx), hi[idx]
        assert int((~h).sum()) == n // 2 and int(h.sum()) == n - n // 2
        assert M[idx][~h].max() <= M[idx][h].min()                # every Lo metric <= every Hi metric
    assert sorted(order.tolist()) == list(range(len(M)))


@given(data=grouped())
def test_only_the_order_of_the_metric_matters(data):
    r, M, gids = data
    keys = tie_keys(3, 4, len(M))
    hi, _ = split_high(M, gids, keys)
    for f in (lambda x: x ** 3 + 2 * x - 7, lambda x: 10 * x + 0.5):   # strictly increasing, exact on small ints
        assert torch.equal(split_high(f(M), gids, keys)[0], hi)


@given(data=grouped(), seed=st.integers(0, 20))
def test_without_ties_the_split_ignores_row_order_and_the_tie_rule(data, seed):
    r, M, gids = data
    M = M + torch.arange(len(M), dtype=torch.float64) * 1e-3       # distinct values: no ties at all
    hi, _ = split_high(M, gids)
    assert torch.equal(split_high(M, gids, tie_keys(seed, 0, len(M)))[0], hi)
    perm = torch.from_numpy(np.random.default_rng(seed).permutation(len(M)))
    assert torch.equal(split_high(M[perm], gids[perm], tie_keys(seed, 1, len(M)))[0], hi[perm])
    torch.testing.assert_close(canon_values(r[perm], hi[perm], gids[perm], 0.3), canon_values(r, hi, gids, 0.3)[perm])


def test_stable_ties_keep_row_order_as_the_official_sort():
    gids = torch.tensor([0, 0, 0, 0, 0, 1, 1, 1, 1])
    hi, _ = split_high(torch.zeros(9, dtype=torch.float64), gids)
    assert hi.tolist() == [False, False, True, True, True, False, False, True, True]
    hi, _ = split_high(torch.tensor([2.0, 1.0, 1.0, 1.0, 0.0, 5.0, 5.0, 5.0, 5.0]), gids)
    assert hi.tolist() == [True, False, True, True, False, False, False, True, True]    # tied rows 1-3: row 1 goes low


def test_random_ties_are_seeded_per_step_uniform_and_leave_the_run_generators_alone():
    G = 6
    batch = make_batch([1.0, 0.0, 1.0, 0.0, 0.0, 1.0], [0] * G, lengths=[3] * G)      # every length tied
    ctx = fake_ctx(seed=5, step=7)
    gen_state, rng_state = ctx.generator.get_state(), dict(ctx.rng.bit_generator.state)
    A1, _ = run(batch, ctx=ctx, metric="length")
    assert torch.equal(ctx.generator.get_state(), gen_state) and ctx.rng.bit_generator.state == rng_state
    assert ctx.state["canon"]["seed"] == 5
    A2, _ = run(batch, ctx=fake_ctx(seed=5, step=7), metric="length")
    assert torch.equal(A1, A2)                                     # reproducible per (seed, step)
    ctx.generator.manual_seed(99)                                  # the stored seed wins (what a resume restores)
    assert torch.equal(run(batch, ctx=ctx, metric="length")[0], A1)
    assert any(not torch.equal(run(batch, ctx=fake_ctx(seed=5, step=s), metric="length")[0], A1) for s in range(8, 12))
    # each tied row lands in Hi half of the time (400 fixed seeds: deterministic, not flaky)
    M, gids = torch.zeros(G, dtype=torch.float64), torch.zeros(G, dtype=torch.long)
    freq = torch.stack([split_high(M, gids, tie_keys(s, 0, G))[0].double() for s in range(400)]).mean(0)
    assert ((freq > 0.4) & (freq < 0.6)).all(), freq
    stable, _ = run(batch, metric="length", ties="stable")
    first_half_low = canon_values(batch.rewards, torch.arange(G) >= 3, batch.group_ids, 1.0)
    torch.testing.assert_close(row_adv(stable, batch) * Z, first_half_low, rtol=0, atol=1e-12)


def test_random_metric_control():
    gids = [0] * 4 + [1] * 4
    batch = make_batch([1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 1.0], gids)
    A, ctx = run(batch, metric="random", ties="stable", normalize="none")   # official dr_random: first half = Lo
    want = canon_values(batch.rewards, torch.tensor([0, 0, 1, 1] * 2).bool(), batch.group_ids, 1.0)
    torch.testing.assert_close(row_adv(A, batch), want)
    assert ctx.logged["canon/metric_gap"] == 0.0 and ctx.logged["canon/frac_tied_median"] == 1.0
    assert ctx.logged["canon/frac_tie_decides"] == 1.0
    splits = {tuple(split_high(torch.zeros(8, dtype=torch.float64), torch.tensor(gids), tie_keys(0, s, 8))[0].tolist())
              for s in range(20)}
    assert len(splits) > 5                                         # seeded random halves vary by step


# ------------------------------------------------------------------ metrics, schedule, edge cases

def test_length_variant_on_known_lengths():
    batch = make_batch([1.0, 0.0, 1.0, 0.0], [0] * 4, lengths=[4, 1, 2, 3])   # by length: rows 1, 2 | 3, 0
    A, ctx = run(batch, metric="length", alpha=1.0)
    # Lo = rows 1, 2 (r 0, 1): mu_lo 0.5; Hi = rows 3, 0 (r 0, 1): mu_hi 0.5; mu = 1: A = r - other half's mean
    torch.testing.assert_close(A, torch.tensor([0.5, -0.5, 0.5, -0.5]).double()[:, None] * batch.response_mask / Z)
    assert ctx.logged["canon/metric_gap"] == 2.0 and ctx.logged["canon/gap"] == 0.0
    A2, _ = run(batch, metric="length", alpha=2.0, normalize="none")            # Hi: 2r - mu_lo;  Lo: r - 2 mu_hi
    torch.testing.assert_close(row_adv(A2, batch), torch.tensor([1.5, -1.0, 0.0, -0.5]).double())
    hi = torch.tensor([True, False, False, True])                              # entropy form, same split:
    torch.testing.assert_close(canon_values(batch.rewards, hi, batch.group_ids, 1.0, 2.0),
                               torch.tensor([0.0, -0.5, 1.5, -1.0]).double())   # Hi: r - 2 mu_lo;  Lo: 2r - mu_hi


def test_entropy_metric_is_the_masked_mean_of_the_old_entropy():
    batch = make_batch([1.0, 0.0, 0.0, 1.0], [0] * 4, lengths=[1, 3, 6, 2], seed=3)
    M = response_metric(batch, "entropy")
    for i in range(4):
        L = int(batch.response_mask[i].sum())
        assert math.isclose(float(M[i]), sum(float(x) for x in batch.old_entropy[i, :L]) / L, rel_tol=1e-12)
    A, ctx = run(batch, metric="entropy", normalize="none")
    hi = split_high(M, batch.group_ids, tie_keys(0, 0, 4))[0]
    assert torch.equal(hi, M > torch.sort(M).values[1])            # no ties: Hi = the two larger entropies
    r = batch.rewards
    assert ctx.logged["canon/gap"] == float(r[hi].mean() - r[~hi].mean())
    assert math.isclose(ctx.logged["canon/metric_gap"], float(M[hi].mean() - M[~hi].mean()), rel_tol=1e-12)


def test_logged_split_statistics_and_annealed_schedule():
    gids = [0] * 4 + [1] * 4 + [2] * 4
    r = [0.0, 0.0, 1.0, 1.0] + [1.0, 1.0, 0.0, 0.0] + [1.0, 1.0, 1.0, 1.0]
    batch = make_batch(r, gids, lengths=[1, 2, 3, 4] * 3)
    A, ctx = run(batch, metric="length", mu_schedule="annealed", normalize="none")
    L = ctx.logged
    assert L["canon/gap"] == pytest.approx((1.0 - 1.0 + 0.0) / 3) and L["canon/frac_hi_better"] == pytest.approx(1 / 3)
    assert L["canon/frac_lo_better"] == pytest.approx(1 / 3) and L["canon/frac_tied_median"] == 0.0
    assert L["canon/frac_tie_decides"] == 0.0
    pbar = sum(r) / len(r)
    assert L["canon/mu"] == pytest.approx(pbar)
    B, _ = run(batch, metric="length", mu=pbar, normalize="none")
    torch.testing.assert_close(A, B, rtol=0, atol=1e-12)           # annealed = constant mu at the batch mean reward
    # lengths tied across the median: among equal rewards (group 0: r 1, 1) the tie rule cannot matter,
    # in group 1 it can
    tb = make_batch([0.0, 1.0, 1.0, 0.0] + [0.0, 1.0, 0.0, 1.0], [0] * 4 + [1] * 4, lengths=[1, 2, 2, 5] * 2)
    _, ctx = run(tb, metric="length")
    assert ctx.logged["canon/frac_tied_median"] == 1.0 and ctx.logged["canon/frac_tie_decides"] == 0.5


def test_bad_choices_name_the_setting():
    for name in ("metric", "mu_schedule", "ties", "normalize"):
        with pytest.raises(ValueError, match=f"^CanonConfig.{name} must be one of"):
            CanonConfig(**{name: "nope"})
    with pytest.raises(ValueError, match="mu must be in"):
        CanonConfig(mu=1.5)


def test_groups_of_one_are_refused_and_groups_declared():
    batch = make_batch([1.0, 0.0, 1.0], [0, 0, 1])
    with pytest.raises(ValueError, match="group_size >= 2"):
        run(batch)
    assert "groups" in get_stage("advantage", "canon").needs_for(CanonConfig())


@given(seed=st.integers(0, 50), scale=st.sampled_from([1e-12, 1.0, 1e6]))
def test_finite_with_extreme_rewards_empty_rows_and_one_token_responses(seed, scale):
    g = torch.Generator().manual_seed(seed)
    r = (torch.rand(8, generator=g, dtype=torch.float64) * scale).tolist()
    batch = make_batch(r, [0] * 4 + [1] * 4, lengths=[0, 1, 1, 6, 1, 1, 1, 1], seed=seed)   # an empty row, ties
    for metric in ("entropy", "length", "random"):
        A, ctx = run(batch, metric=metric, ctx=fake_ctx(seed))
        assert torch.isfinite(A).all() and A[0].abs().sum() == 0
        assert all(math.isfinite(v) for v in ctx.logged.values())


def test_half_means_match_a_loop():
    gids = torch.tensor([5, 2, 5, 2, 5, 2])
    hi = torch.tensor([True, False, False, True, True, False])
    v = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], dtype=torch.float64)
    lo, hi_m, inv = half_means(v, hi, gids)
    assert lo.tolist() == [4.0, 3.0] and hi_m.tolist() == [4.0, 3.0] and inv.tolist() == [1, 0, 1, 0, 1, 0]


# ------------------------------------------------------------------ recipes and runs

def test_recipes():
    for name, metric in (("canon", "entropy"), ("canon_random_split", "random"), ("canon_length", "length")):
        rec = get_recipe(name)
        assert rec.advantage == "canon" and rec.advantage_cfg["metric"] == metric and rec.train_cfg == {}
        assert rec.advantage_cfg["mu"] == 1.0 and rec.advantage_cfg["alpha"] == 1.0 and rec.advantage_cfg["b"] == 0.0
        assert rec.loss == "ppo_clip" and rec.loss_cfg == {"clip_low": 0.2, "clip_high": 0.28, "clip_ratio_c": 3.0,
                                                           "agg": "seq-mean-token-sum"}


def small(tmp_path, ckpt, **kw):
    from minirlvr.trainer import TrainConfig
    base = dict(task="addition", steps=2, prompts_per_step=4, group_size=4, minibatches=2, eval_every=0,
                progress=False, out_dir=str(tmp_path), init=ckpt, max_new_tokens=6, save_every=1)
    return TrainConfig(**{**base, **kw})


def test_short_run_and_resume(tmp_path, tiny_ckpt):
    from minirlvr.trainer import train
    strip = lambda h: [{k: v for k, v in x.items() if not k.startswith("time")} for x in h]  # noqa: E731
    full = train(small(tmp_path / "a", tiny_ckpt, recipe="canon_length", name="r"))["history"]
    for h in full:
        assert all(math.isfinite(v) for v in h.values() if isinstance(v, float))
        assert 0 <= h["canon/frac_hi_better"] + h["canon/frac_lo_better"] <= 1 and h["canon/mu"] == 1.0
    train(small(tmp_path / "b", tiny_ckpt, recipe="canon_length", name="r", steps=1))
    out = train(small(tmp_path / "b", tiny_ckpt, recipe="canon_length", name="r", resume=True))
    assert strip(out["history"]) == strip(full)
    assert out["state"]["canon"] == {"seed": 0}                    # the tie seed is saved and restored


def test_mu_half_run_is_the_dr_grpo_run(tmp_path, tiny_ckpt):
    """End to end: CANON at mu 1/2 vs Dr.GRPO with the same loss; the same problems and samples (CANON's
    tie stream does not touch the run's generators), the same losses up to float rounding."""
    from minirlvr.trainer import train
    loss = {"loss.clip_high": 0.28, "loss.clip_ratio_c": 3.0, "loss.agg": "seq-mean-token-sum"}
    a = train(small(tmp_path, None, recipe="dr_grpo", name="d", overrides=loss))["history"]   # the shipped base:
    b = train(small(tmp_path, None, recipe="canon_length", name="c",                          # rewards vary
                    overrides={"advantage.mu": 0.5, "advantage.normalize": "none"}))["history"]
    assert any(h["canon/frac_tie_decides"] > 0 for h in b) and any(h["canon/gap"] != 0 for h in b)
    for ha, hb in zip(a, b):
        assert ha["reward"] == hb["reward"] and ha["completion_length"] == hb["completion_length"]
        assert hb["loss"] == pytest.approx(ha["loss"], rel=1e-5, abs=1e-7)
        assert hb["grad_norm"] == pytest.approx(ha["grad_norm"], rel=1e-4)
