"""RiskPO (arXiv 2510.00911): an explicit per-paper loop written after the official
`compute_grpo_bundle_rvar_outcome_advantage_quantile_tracking`, sign and range of the MVaR advantage, monotonicity
and flatness in the paper score, the REINFORCE-with-max-baseline reduction, invariances, credit modes, the
multiple-of-B validation, all-equal rewards, no NaN, tracking as logging only, recipes."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minirlvr.methods.riskpo import (CREDITS, MEASURES, RiskpoConfig, bundle_quantiles, bundle_rows, credit_assign,
                                     paper_advantage, riskpo_advantage, riskpo_terms)
from minirlvr.registry import get_recipe, get_stage
from minirlvr.rollout import RolloutBatch
from minirlvr.trainer import TrainConfig, build_pipeline

SET = settings(max_examples=60, deadline=None)
levels_st = st.tuples(st.floats(0.0, 1.0), st.floats(0.0, 1.0)).map(sorted)


@st.composite
def rewards_st(draw, max_bundles=3, values=(0.0, 1.0)):
    """(rewards [N] float64, group_ids [N], B): k bundles of B prompts with n responses each."""
    B, n, k = draw(st.integers(1, 4)), draw(st.integers(2, 6)), draw(st.integers(1, max_bundles))
    N = k * B * n
    r = draw(st.lists(st.sampled_from(values), min_size=N, max_size=N))
    return torch.tensor(r, dtype=torch.float64), torch.arange(k * B).repeat_interleave(n), B


def scores_st(min_size=1, max_size=10):
    return st.lists(st.floats(-10, 10, allow_nan=False), min_size=min_size, max_size=max_size).map(
        lambda v: torch.tensor(v, dtype=torch.float64)[None, :])


def make_batch(rewards, group_ids, T=4):
    B = rewards.numel()
    mask = torch.ones(B, T, dtype=torch.long)
    mask[:, T - 1] = 0
    return RolloutBatch(prompt_ids=torch.ones(B, 2, dtype=torch.long), prompt_mask=torch.ones(B, 2, dtype=torch.long),
                        response_ids=torch.zeros(B, T, dtype=torch.long), response_mask=mask,
                        old_logp=torch.zeros(B, T), old_entropy=torch.zeros(B, T), group_ids=group_ids,
                        problems=[None] * B, texts=[""] * B, truncated=torch.zeros(B, dtype=torch.bool),
                        rewards=rewards.float())


def fake_ctx():
    logged = {}
    return SimpleNamespace(log=lambda **kw: logged.update(kw), logged=logged, state={})


def reference(rewards, group_ids, cfg, eps=1e-6):
    """A plain loop, step by step as the official function (bundles = consecutive prompts, papers = j-th responses)."""
    r, gids = rewards.tolist(), group_ids.tolist()
    prompts = list(dict.fromkeys(gids))
    resp = {q: [i for i in range(len(r)) if gids[i] == q] for q in prompts}
    adv = [0.0] * len(r)
    for b0 in range(0, len(prompts), cfg.bundle_size):
        qs = prompts[b0:b0 + cfg.bundle_size]
        qstd = {}
        for q in qs:
            s = torch.std(torch.tensor([r[i] for i in resp[q]], dtype=torch.float64))
            qstd[q] = s if s > 1e-3 else 1.0
        papers = [[resp[q][j] for q in qs] for j in range(min(len(resp[q]) for q in qs))]
        S = torch.tensor([sum(r[i] for i in p) for p in papers], dtype=torch.float64)
        if len(S) == 1:
            qd, qu, sd = S[0], S[0], torch.tensor(1.0)
        else:
            qd, qu, sd = torch.quantile(S, cfg.alpha), torch.quantile(S, cfg.beta), torch.std(S)
        for p, s in zip(papers, S):
            a = torch.clamp(s - qd, min=0) - torch.clamp(s - qu, min=0) + (qd - qu if cfg.natural_baseline else 0)
            a = a / (cfg.beta - cfg.alpha + eps)
            if cfg.measure == "mvar":
                a = (cfg.omega * (-torch.clamp(qd - s, min=0) / (cfg.alpha + eps)) + a) / (cfg.omega + 1)
            elif cfg.measure == "risk_seeking":
                a = (cfg.upper_weight * torch.clamp(s - qu, min=0) / (1 - cfg.beta + eps) + a) / (cfg.upper_weight + 1)
            if cfg.norm_by_std:
                a = a / (sd + eps)
            d = [r[i] - sum(r[k] for k in resp[gids[i]]) / len(resp[gids[i]]) for i in p]
            for i, di in zip(p, d):
                if cfg.credit == "uniform":
                    adv[i] = float(a)
                elif cfg.credit == "score":
                    adv[i] = float((0.5 if r[i] > 0 else 1.5) * a)
                elif cfg.credit == "std":
                    adv[i] = float(a / (qstd[gids[i]] + eps))
                else:
                    adv[i] = float(a * di / sum(d)) if abs(sum(d)) > 1e-6 else float(a / len(p))
    return torch.tensor(adv, dtype=torch.float64)


# ------------------------------------------------------------------ against the official loop

@SET
@given(data=rewards_st(values=(0.0, 1.0, -1.0, 0.5, 0.02)), levels=levels_st, omega=st.floats(0, 3),
       measure=st.sampled_from(MEASURES), credit=st.sampled_from(CREDITS), natural=st.booleans(), norm=st.booleans())
def test_matches_the_official_loop(data, levels, omega, measure, credit, natural, norm):
    r, gids, B = data
    cfg = RiskpoConfig(bundle_size=B, alpha=levels[0], beta=levels[1], omega=omega, measure=measure, credit=credit,
                       natural_baseline=natural, norm_by_std=norm)
    got, want = riskpo_terms(r, gids, cfg)["adv"], reference(r, gids, cfg)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9 * (1 + float(want.abs().max())))


# ------------------------------------------------------------------ the paper advantage as a function of S

@SET
@given(S=scores_st(), levels=levels_st, omega=st.floats(0, 3), norm=st.booleans(),
       measure=st.sampled_from(["mvar", "rvar"]))
def test_natural_baseline_gives_nonpositive_advantages_with_the_ranges(S, levels, omega, norm, measure):
    cfg = RiskpoConfig(alpha=levels[0], beta=levels[1], omega=omega, norm_by_std=norm, measure=measure)
    qa, qb, sigma = bundle_quantiles(S, cfg.alpha, cfg.beta)
    a = paper_advantage(S, qa, qb, sigma, cfg)
    assert (a <= 0).all() and torch.isfinite(a).all()
    raw = RiskpoConfig(alpha=levels[0], beta=levels[1], measure="rvar", norm_by_std=False)
    width = (qb - qa) / (cfg.beta - cfg.alpha + cfg.eps)
    a_r = paper_advantage(S, qa, qb, sigma, raw)                                       # in [-(qb - qa)/(b - a), 0]
    assert (a_r >= -width * (1 + 1e-12)).all() and (a_r <= 0).all()
    up = paper_advantage(S, qa, qb, sigma, RiskpoConfig(alpha=levels[0], beta=levels[1], measure="rvar",
                                                        norm_by_std=False, natural_baseline=False))
    assert (up >= 0).all() and (up <= width * (1 + 1e-12)).all()        # without: in [0, (qb - qa)/(b - a)]
    torch.testing.assert_close(up - width, a_r, rtol=0, atol=1e-12 * (1 + float(width.max())))   # kappa: a constant


@SET
@given(S=scores_st(min_size=2), levels=levels_st, omega=st.floats(0, 3), natural=st.booleans(),
       measure=st.sampled_from(MEASURES), norm=st.booleans())
def test_monotone_in_S_and_flat_above_qb(S, levels, omega, natural, measure, norm):
    cfg = RiskpoConfig(alpha=levels[0], beta=levels[1], omega=omega, natural_baseline=natural, measure=measure,
                       norm_by_std=norm)
    qa, qb, sigma = bundle_quantiles(S, cfg.alpha, cfg.beta)
    grid = torch.linspace(float(S.min()) - 3, float(S.max()) + 3, 301, dtype=torch.float64)[None, :]
    a = paper_advantage(grid, qa, qb, sigma, cfg)[0]                    # a(S) at the bundle's fixed quantiles
    if measure != "risk_seeking":
        assert (a[1:] >= a[:-1]).all()                                  # non-decreasing in S
        top = a[grid[0] >= qb[0, 0]]
        assert (top == top[0]).all()                                    # flat for S >= qb (exactly)
        if natural:
            assert (top == 0).all()
    else:                                                               # the ablation: increasing above qb
        assert (a[1:] >= a[:-1]).all()
    mid = (grid[0] >= qa[0, 0]) & (grid[0] <= qb[0, 0])                 # between the quantiles only aR varies
    if measure == "mvar" and mid.sum() > 1:
        no_cvar = paper_advantage(grid, qa, qb, sigma, RiskpoConfig(alpha=levels[0], beta=levels[1], measure="rvar",
                                                                    natural_baseline=natural, norm_by_std=norm))[0]
        torch.testing.assert_close(a[mid], no_cvar[mid] / (omega + 1))
    ranks = torch.argsort(S[0])
    a_S = paper_advantage(S, qa, qb, sigma, cfg)[0]
    assert (a_S[ranks][1:] >= a_S[ranks][:-1] - 1e-12).all()            # the papers of the bundle, in score order


@SET
@given(S=scores_st(min_size=2), levels=levels_st, c=st.floats(-5, 5), k=st.floats(0.1, 10),
       measure=st.sampled_from(MEASURES), natural=st.booleans())
def test_shift_and_scale(S, levels, c, k, measure, natural):
    def a_of(x, norm):
        cfg = RiskpoConfig(alpha=levels[0], beta=levels[1], measure=measure, natural_baseline=natural, norm_by_std=norm)
        return paper_advantage(x, *bundle_quantiles(x, cfg.alpha, cfg.beta), cfg)
    a = a_of(S, False)
    tol = 1e-9 * (1 + float(a.abs().max()))
    torch.testing.assert_close(a_of(S + c, False), a, rtol=0, atol=tol * 10)           # shift invariant
    torch.testing.assert_close(a_of(k * S, False), k * a, rtol=1e-8, atol=tol * 10 * k)  # scales with k
    if float(S.std()) > 1e-3:                                                          # /sigma_S: scale invariant
        torch.testing.assert_close(a_of(k * S, True), a_of(S, True), rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------ the REINFORCE reduction

@SET
@given(data=rewards_st(values=(0.0, 1.0, 0.25, -2.0)), natural=st.booleans())
def test_b1_is_reinforce_with_a_max_baseline(data, natural):
    r, gids, _ = data
    cfg = RiskpoConfig(**{**get_recipe("riskpo_b1").advantage_cfg, "natural_baseline": natural})
    assert (cfg.bundle_size, cfg.alpha, cfg.beta, cfg.omega, cfg.norm_by_std) == (1, 0.0, 1.0, 0.0, False)
    adv = riskpo_terms(r, gids, cfg)["adv"]
    per_group = r.view(-1, int((gids == 0).sum()))
    base = (per_group.max(1, keepdim=True).values if natural else per_group.min(1, keepdim=True).values)
    want = ((per_group - base) / (1 + cfg.eps)).reshape(-1)           # eps of (beta - alpha + eps)
    torch.testing.assert_close(adv, want, rtol=0, atol=1e-15)
    if natural:
        assert (adv <= 0).all()


# ------------------------------------------------------------------ credit, bundling, edge cases

@SET
@given(data=rewards_st(), credit=st.sampled_from(CREDITS), measure=st.sampled_from(MEASURES),
       natural=st.booleans(), levels=levels_st)
def test_all_equal_rewards_give_zero_and_no_nan(data, credit, measure, natural, levels):
    r, gids, B = data
    r = torch.full_like(r, float(r[0]))
    cfg = RiskpoConfig(bundle_size=B, credit=credit, measure=measure, natural_baseline=natural, alpha=levels[0],
                       beta=levels[1])
    adv = riskpo_terms(r, gids, cfg)["adv"]
    assert (adv == 0).all()


@SET
@given(data=rewards_st(values=(0.0, 1.0, -1.0)), credit=st.sampled_from(CREDITS), measure=st.sampled_from(MEASURES),
       levels=levels_st, natural=st.booleans())
def test_every_row_finite_and_sign_follows_the_paper(data, credit, measure, levels, natural):
    r, gids, B = data
    cfg = RiskpoConfig(bundle_size=B, credit=credit, measure=measure, alpha=levels[0], beta=levels[1],
                       natural_baseline=natural)
    t = riskpo_terms(r, gids, cfg)
    assert torch.isfinite(t["adv"]).all()
    A = t["adv"][t["rows"]]                                             # [k, B, n]
    a = t["a"][:, None, :].expand_as(A)
    if credit != "sum-mean":                                           # positive factors: the paper's sign
        assert (torch.sign(A) == torch.sign(a)).all()
    if natural and measure != "risk_seeking":
        assert (t["adv"] <= 0).all()


@SET
@given(data=rewards_st())
def test_sum_mean_credit_shares_the_paper_advantage(data):
    r, gids, B = data
    t = riskpo_terms(r, gids, RiskpoConfig(bundle_size=B, credit="sum-mean"))
    A = t["adv"][t["rows"]]
    torch.testing.assert_close(A.sum(1), t["a"], rtol=1e-9, atol=1e-9)   # sum_q A_{q,j} = a_j (both branches)
    R = r[t["rows"]]
    flat_prompt = (R == R[..., :1]).all(-1)                               # d_{q,j} = 0 for every j
    D = (R - R.mean(-1, keepdim=True)).sum(1)
    big = D.abs() > 1e-6
    assert (A.masked_select(flat_prompt[..., None] & big[:, None, :]) == 0).all()


def test_a_constant_prompt_still_learns_through_its_bundle():
    """Prompt 0 always wrong, prompt 1 mixed: with credit std prompt 0 gets a nonzero advantage (sigma_q -> 1),
    while GRPO would give it 0."""
    r = torch.tensor([0, 0, 0, 0, 1, 0, 1, 0], dtype=torch.float64)
    t = riskpo_terms(r, torch.tensor([0] * 4 + [1] * 4), RiskpoConfig(bundle_size=2, credit="std"))
    assert (t["adv"][:4] != 0).any()
    torch.testing.assert_close(t["adv"][:4], t["a"][0] / (1 + 1e-6))


@pytest.mark.parametrize("spread", [0.0, 5e-4, 0.02, 1.0])
def test_std_credit_divides_by_the_prompt_std_unless_it_is_below_1e_3(spread):
    r = torch.tensor([0, spread, 0, spread, 0, 1, 1, 1], dtype=torch.float64)
    t = riskpo_terms(r, torch.tensor([0] * 4 + [1] * 4), RiskpoConfig(bundle_size=2, credit="std"))
    s0 = float(r[:4].std())
    want = t["a"][0] / ((s0 if s0 > 1e-3 else 1.0) + 1e-6)
    assert (t["a"][0] != 0).any()
    torch.testing.assert_close(t["adv"][:4], want, rtol=1e-12, atol=0)


def test_bundles_are_consecutive_prompts_and_papers_are_jth_responses():
    gids = torch.tensor([7, 7, 7, 3, 3, 3, 9, 9, 9, 5, 5, 5])[torch.tensor([0, 3, 1, 4, 2, 5, 6, 9, 7, 10, 8, 11])]
    rows = bundle_rows(gids, 2)
    assert rows.shape == (2, 2, 3)
    assert [sorted(set(gids[rows[k].reshape(-1)].tolist())) for k in range(2)] == [[3, 5], [7, 9]]  # sorted ids
    assert all((rows[k, q, 1:] > rows[k, q, :-1]).all() for k in range(2) for q in range(2))          # row order


@pytest.mark.parametrize("n_prompts,B", [(6, 4), (16, 5), (3, 2)])
def test_prompts_must_be_a_multiple_of_the_bundle_size(n_prompts, B):
    r = torch.zeros(n_prompts * 4, dtype=torch.float64)
    batch = make_batch(r, torch.arange(n_prompts).repeat_interleave(4))
    with pytest.raises(ValueError) as e:
        riskpo_advantage(batch, RiskpoConfig(bundle_size=B), fake_ctx())
    msg = str(e.value)
    assert "\n" not in msg and "bundle_size" in msg and f"{n_prompts} prompts" in msg and str(B) in msg
    riskpo_advantage(batch, RiskpoConfig(bundle_size=math.gcd(n_prompts, B)), fake_ctx())   # a divisor works


def test_unequal_groups_are_refused():
    with pytest.raises(ValueError, match="same number of responses"):
        bundle_rows(torch.tensor([0, 0, 0, 1, 1]), 1)


def test_config_checks():
    with pytest.raises(ValueError, match=r"alpha must be <= RiskpoConfig.beta"):
        RiskpoConfig(alpha=0.9, beta=0.5)
    for bad in ({"measure": "cvar"}, {"credit": "mean"}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            RiskpoConfig(**bad)
    with pytest.raises(ValueError, match="credit mode"):
        credit_assign(torch.zeros(1, 2), torch.zeros(1, 1, 2), "nope")


# ------------------------------------------------------------------ the stage, tracking, recipes

def test_stage_broadcasts_logs_and_tracking_does_not_drive_the_advantage():
    g = torch.Generator().manual_seed(0)
    r = torch.randint(0, 2, (16 * 8,), generator=g).double()
    gids = torch.arange(16).repeat_interleave(8)
    batch, ctx, cfg = make_batch(r, gids), fake_ctx(), RiskpoConfig()
    A1 = riskpo_advantage(batch, cfg, ctx)
    t = riskpo_terms(r, gids, cfg)
    torch.testing.assert_close(A1, (t["adv"][:, None] * batch.response_mask).float())
    assert (A1[:, -1] == 0).all()
    S = t["S"].reshape(-1)
    q0 = [float(torch.quantile(S, lv)) for lv in (cfg.alpha, cfg.beta)]
    assert ctx.state["riskpo"]["q_track"] == q0 and all(math.isfinite(v) for v in ctx.logged.values())
    assert {"riskpo/frac_nonzero_adv", "riskpo/q_track_alpha", "riskpo/frac_papers_at_or_above_qb"} <= set(ctx.logged)
    A2 = riskpo_advantage(batch, cfg, ctx)                                  # tracked q moved, A did not
    assert torch.equal(A1, A2)
    want = [q + cfg.lr_q * (lv - float((S < q).double().mean())) for q, lv in zip(q0, (cfg.alpha, cfg.beta))]
    assert ctx.state["riskpo"]["q_track"] == pytest.approx(want)


def test_recipes():
    assert get_stage("advantage", "riskpo").needs_for(RiskpoConfig()) == {"groups"}
    mvar = RiskpoConfig(**get_recipe("riskpo").advantage_cfg)
    assert (mvar.bundle_size, mvar.alpha, mvar.beta, mvar.omega, mvar.credit, mvar.measure) == (4, 0.2, 0.8, 1.5, "std",
                                                                                                 "mvar")
    assert 16 % mvar.bundle_size == 0                                       # the library's prompts_per_step
    assert get_recipe("riskpo").loss_cfg == get_recipe("grpo").loss_cfg     # only the advantage differs from grpo
    assert RiskpoConfig(**get_recipe("riskpo_risky").advantage_cfg).measure == "risk_seeking"
    for name in ("riskpo", "riskpo_b1", "riskpo_risky"):
        assert build_pipeline(TrainConfig(recipe=name)).advantage.name == "riskpo"
