"""VERL effective rank (arXiv 2509.23808): ER's invariances, bounds and exact values; masks and prefixes;
ERV / ERA closed forms against a scalar reference; the shaping's lambda = 0 -> GRPO reduction, zero
group-sum (also where the clip binds) and detachment; the probe against a direct numpy computation;
edge cases (one token, all-zero states, empty masks), config errors, recipes and a short trainer run."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minirlvr.baselines import GRPOAdvantageConfig, grpo_advantage
from minirlvr.methods.verl_rank import (EffectiveRankConfig, EffectiveRankShapingConfig, centred_zscore,
                                        effective_rank, effective_rank_probe, effective_rank_shaping,
                                        length_normalised, prefix_effective_ranks, rank_dynamics,
                                        rank_statistics, response_hidden, shaping_bonus)
from minirlvr.model import GPT, GPTConfig
from minirlvr.registry import get_recipe, get_stage, make_config
from minirlvr.rollout import RolloutBatch, policy_forward
from minirlvr.tokenizer import VOCAB_SIZE

dims = st.integers(1, 7)
seeds = st.integers(0, 2**16)


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def orthogonal(n, seed):
    q, r = torch.linalg.qr(randn(n, n, seed=seed))
    return q * torch.sign(torch.diagonal(r))


def er_numpy(Z: np.ndarray) -> float:
    """Reference: ER of one matrix with numpy's SVD."""
    s = np.linalg.svd(Z, compute_uv=False)
    if s.sum() == 0:
        return 0.0
    p = s / s.sum()
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


# ------------------------------------------------------------------ ER: invariances, bounds, exact values

@given(T=dims, d=dims, seed=seeds, c=st.one_of(st.floats(1e-3, 1e3), st.floats(-1e3, -1e-3)))
def test_er_is_invariant_to_scale_orthogonal_maps_and_row_order(T, d, seed, c):
    Z = randn(T, d, seed=seed)
    er = effective_rank(Z)
    U, V = orthogonal(T, seed + 1), orthogonal(d, seed + 2)
    perm = torch.randperm(T, generator=torch.Generator().manual_seed(seed))
    for other in (c * Z, U @ Z @ V, Z[perm]):
        assert torch.allclose(effective_rank(other), er, rtol=1e-9, atol=1e-9)
    assert abs(float(er) - er_numpy(Z.numpy())) < 1e-9


@given(T=dims, d=dims, r=st.integers(1, 7), seed=seeds)
def test_er_is_between_one_and_the_rank(T, d, r, seed):
    r = min(r, T, d)
    Z = randn(T, r, seed=seed) @ randn(r, d, seed=seed + 1)           # rank r (almost surely)
    er = float(effective_rank(Z))
    assert 1 - 1e-9 <= er <= r + 1e-9 <= min(T, d) + 1e-9


@given(T=dims, d=dims, r=st.integers(1, 7), seed=seeds, scale=st.floats(1e-3, 1e3))
def test_er_of_rank_one_is_one_and_of_r_equal_singular_values_is_r(T, d, r, seed, scale):
    assert abs(float(effective_rank(torch.outer(randn(T, seed=seed), randn(d, seed=seed + 1)))) - 1) < 1e-9
    r = min(r, T, d)
    Z = orthogonal(T, seed)[:, :r] @ (scale * orthogonal(d, seed + 1)[:r])   # r equal singular values
    assert abs(float(effective_rank(Z)) - r) < 1e-8
    rows = orthogonal(d, seed + 2)[:r]                                         # orthonormal rows
    assert abs(float(effective_rank(rows)) - r) < 1e-8


def test_er_depends_on_centring_which_is_not_done():
    Z = torch.ones(4, 3, dtype=torch.float64) + torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    assert abs(float(effective_rank(Z)) - 1) < 1e-12                   # identical rows: rank 1
    assert float(effective_rank(Z - Z.mean(0))) == 0                     # centred: the zero matrix
    Z = randn(5, 4, seed=3) + 2.0
    assert abs(float(effective_rank(Z)) - float(effective_rank(Z - Z.mean(0)))) > 1e-3


def test_edge_cases_one_token_zero_states_empty_mask():
    assert abs(float(effective_rank(randn(1, 6, seed=1))) - 1) < 1e-12     # T = 1
    assert float(effective_rank(torch.zeros(5, 4))) == 0                    # all-zero hidden states
    H = randn(3, 4, 6, seed=2)
    mask = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0]])
    er = effective_rank(H, mask)
    assert er[1] == 0 and abs(float(er[2]) - 1) < 1e-12 and torch.isfinite(er).all()
    norm = length_normalised(er, mask.sum(1), 6)
    assert norm[1] == 0 and torch.all((norm >= 0) & (norm <= 1 + 1e-12))
    assert torch.isfinite(effective_rank(torch.full((3, 3), 1e-300, dtype=torch.float64)))


@given(B=st.integers(1, 4), T=dims, d=dims, seed=seeds, data=st.data())
def test_batched_masked_er_is_the_er_of_the_kept_rows(B, T, d, seed, data):
    H = randn(B, T, d, seed=seed)
    mask = torch.tensor(data.draw(st.lists(st.lists(st.integers(0, 1), min_size=T, max_size=T), min_size=B, max_size=B)))
    er = effective_rank(H, mask)
    for i in range(B):
        kept = H[i][mask[i].bool()].numpy()
        assert abs(float(er[i]) - er_numpy(kept if len(kept) else np.zeros((1, d)))) < 1e-9
    assert torch.allclose(length_normalised(er, mask.sum(1), d) * mask.sum(1).clamp(max=d), er, atol=1e-12)


# ------------------------------------------------------------------ prefixes, ERV, ERA

def dynamics_reference(E: list[float], eta: float) -> tuple[float, float]:
    """The module doc's recursions, one response, plain Python."""
    v = [E[k] - E[k - 1] for k in range(1, len(E))]
    V = []
    for x in v:
        V.append(x if not V else eta * x + (1 - eta) * V[-1])
    a = [V[k] - V[k - 1] for k in range(1, len(V))]
    Acc = []
    for x in a:
        Acc.append(x if not Acc else eta * x + (1 - eta) * Acc[-1])
    return (V[-1] if V else 0.0), (Acc[-1] if Acc else 0.0)


@given(B=st.integers(1, 4), T=st.integers(1, 9), d=dims, stride=st.integers(1, 4), seed=seeds, data=st.data())
def test_prefix_ers_and_dynamics_against_a_direct_computation(B, T, d, stride, seed, data):
    H = randn(B, T, d, seed=seed)
    n = data.draw(st.lists(st.integers(0, T), min_size=B, max_size=B))
    eta = data.draw(st.sampled_from([0.2, 0.5, 1.0]))
    mask = (torch.arange(T)[None] < torch.tensor(n)[:, None]).long()
    E, valid = prefix_effective_ranks(H, mask, stride)
    erv, era = rank_dynamics(E, valid, eta)
    for i in range(B):
        K = math.ceil(n[i] / stride)
        assert valid[i].sum() == K
        Ei = [er_numpy(H[i, :min(k * stride, n[i])].numpy()) for k in range(1, K + 1)]
        assert np.allclose(E[i, :K].numpy(), Ei, atol=1e-9)
        if K:
            assert abs(Ei[-1] - float(effective_rank(H[i], mask[i]))) < 1e-9     # the last prefix = whole response
        ref = dynamics_reference(Ei, eta)
        assert abs(float(erv[i]) - ref[0]) < 1e-9 and abs(float(era[i]) - ref[1]) < 1e-9


@given(K=st.integers(1, 12), c0=st.floats(-5, 5), slope=st.floats(-2, 2), eta=st.floats(0.01, 1.0), data=st.data())
def test_dynamics_closed_forms(K, c0, slope, eta, data):
    valid = torch.ones(1, K, dtype=torch.bool)
    const = torch.full((1, K), c0, dtype=torch.float64)
    assert rank_dynamics(const, valid, eta) == (0, 0)                      # constant ER: ERV = ERA = 0
    lin = c0 + slope * torch.arange(K, dtype=torch.float64)[None]
    erv, era = rank_dynamics(lin, valid, eta)                              # linear ER: ERV = slope, ERA = 0
    assert abs(float(erv) - (slope if K >= 2 else 0)) < 1e-9 and abs(float(era)) < 1e-9
    E = torch.tensor([data.draw(st.lists(st.floats(0, 10), min_size=K, max_size=K))], dtype=torch.float64)
    erv, era = rank_dynamics(E, valid, 1.0)                                # eta = 1: plain differences
    e = E[0]
    assert abs(float(erv) - (float(e[-1] - e[-2]) if K >= 2 else 0)) < 1e-9
    assert abs(float(era) - (float(e[-1] - 2 * e[-2] + e[-3]) if K >= 3 else 0)) < 1e-9


# ------------------------------------------------------------------ a tiny model and rollout-like batch

def make_model(seed=0, n_layers=2):
    torch.manual_seed(seed)
    return GPT(GPTConfig(d_model=16, n_layers=n_layers, n_heads=2, context=32))


def make_batch(B=8, P=3, T=6, seed=0, G=4, rewards=None):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    mask = (torch.arange(T)[None] < lengths[:, None]).long()
    return RolloutBatch(prompt_ids=torch.randint(3, VOCAB_SIZE, (B, P), generator=g),
                        prompt_mask=torch.ones(B, P, dtype=torch.long),
                        response_ids=torch.randint(3, VOCAB_SIZE, (B, T), generator=g), response_mask=mask,
                        old_logp=torch.zeros(B, T), old_entropy=torch.zeros(B, T), group_ids=torch.arange(B) // G,
                        problems=[None] * B, texts=[""] * B, truncated=torch.zeros(B, dtype=torch.bool),
                        rewards=(torch.randint(0, 2, (B,), generator=g).float() if rewards is None else rewards))


def ctx_for(model):
    logged = {}
    return SimpleNamespace(policy=model, step=0, log=lambda **kw: logged.update(kw), logged=logged)


# ------------------------------------------------------------------ shaping

@settings(max_examples=15)
@given(seed=seeds, eta=st.sampled_from([0.2, 1.0]), length_norm=st.booleans())
def test_lambda_zero_is_grpo_exactly_and_group_sums_are_unchanged(seed, eta, length_norm):
    model, batch = make_model(seed % 7), make_batch(seed=seed)
    grpo = grpo_advantage(batch, GRPOAdvantageConfig(), None)
    ctx = ctx_for(model)
    cfg0 = EffectiveRankShapingConfig(coef=0.0, eta=eta, length_norm=length_norm)
    assert torch.equal(effective_rank_shaping(batch, cfg0, ctx), grpo)
    assert all(math.isfinite(v) or k.endswith("corr_er_erv") for k, v in ctx.logged.items())
    cfg = EffectiveRankShapingConfig(coef=0.1, eta=eta, length_norm=length_norm)
    A = effective_rank_shaping(batch, cfg, ctx)
    assert not A.requires_grad and all(p.grad is None for p in model.parameters())
    assert torch.equal(A, A * batch.response_mask)                               # zero off the response
    a, a0 = A[:, 0].double(), grpo[:, 0].double()                                # per-response advantages
    for gid in batch.group_ids.unique():
        sel = batch.group_ids == gid
        assert abs(float(a[sel].sum() - a0[sel].sum())) < 1e-5
    st_ = rank_statistics(model, batch, cfg)                                     # = A + lambda * b, by hand
    b, w = shaping_bonus(st_["er_norm" if length_norm else "er"], st_["erv"], st_["era"], batch.group_ids,
                         cfg.gain, cfg.clip, cfg.eps)
    assert torch.allclose(a, a0 + 0.1 * b, atol=1e-6) and ctx.logged["verl_rank/w_exp"] == w


@given(G=st.integers(2, 24), seed=seeds, clip=st.floats(0.1, 5.0), outlier=st.floats(-1e3, 1e3))
def test_centred_zscores_sum_to_zero_per_group_even_where_the_clip_binds(G, seed, clip, outlier):
    x = randn(3 * G, seed=seed)
    x[0] = outlier
    gids = torch.arange(3 * G) // G
    z = centred_zscore(x, gids, clip, 1e-6)
    for g in range(3):
        assert abs(float(z[gids == g].sum())) < 1e-9
    assert torch.all(z.abs() <= 2 * clip + 1e-9)


def test_the_card_claim_fails_without_recentring():
    """G = 16, one outlier: its z-score (G-1)/sqrt(G) = 3.75 exceeds c = 3, so the clipped z-scores alone
    would not sum to zero (the card's claim); the re-centred ones do. At G = 8 the bound 2.47 < 3: inert."""
    x = torch.zeros(16, dtype=torch.float64)
    x[0] = 1.0
    gids = torch.zeros(16, dtype=torch.long)
    raw = (x - x.mean()) / x.std()
    assert abs(float(raw[0]) - 15 / 4) < 1e-12 and abs(float(raw.clamp(-3, 3).sum())) > 0.5
    assert abs(float(centred_zscore(x, gids, 3.0, 0.0).sum())) < 1e-12
    x8 = torch.zeros(8, dtype=torch.float64)
    x8[0] = 1.0
    assert torch.allclose(centred_zscore(x8, gids[:8], 3.0, 0.0), (x8 - x8.mean()) / x8.std(), atol=1e-12)


@given(era=st.floats(-1.0, 1.0), gain=st.floats(0.0, 1e3), seed=seeds)
def test_controller_weights(era, gain, seed):
    er, erv = randn(8, seed=seed), randn(8, seed=seed + 1)
    gids = torch.arange(8) // 4
    b, w = shaping_bonus(er, erv, torch.full((8,), era, dtype=torch.float64), gids, gain, 3.0, 1e-6)
    assert 0 <= w <= 1 and abs(w - 1 / (1 + math.exp(min(700, gain * era)))) < 1e-12
    z_er, z_v = centred_zscore(er, gids, 3.0, 1e-6), centred_zscore(erv, gids, 3.0, 1e-6)
    assert torch.allclose(b, w * z_er + (1 - w) * z_v, atol=1e-12)           # w_exp + w_vel = 1
    assert shaping_bonus(er, erv, torch.full((8,), era), gids, 0.0, 3.0, 1e-6)[1] == 0.5
    if gain * era < -1e-9:
        assert w > 0.5                                                         # decelerating: explore more


def test_identical_responses_get_no_bonus_and_equal_rewards_get_lambda_b():
    model = make_model(1)
    batch = make_batch(seed=4, rewards=torch.ones(8))
    for f in ("prompt_ids", "response_ids", "response_mask"):                   # group 0: 4 identical rows
        v = getattr(batch, f)
        v[1:4] = v[0]
    A = effective_rank_shaping(batch, EffectiveRankShapingConfig(coef=0.1), ctx_for(model))
    assert torch.isfinite(A).all() and A[:4].abs().max() < 1e-6                # z = 0 in a constant group
    st_ = rank_statistics(model, batch, EffectiveRankConfig())
    b, _ = shaping_bonus(st_["er_norm"], st_["erv"], st_["era"], batch.group_ids, 100.0, 3.0, 1e-6)
    assert torch.allclose(A[4:, 0].double(), 0.1 * b[4:], atol=1e-6)           # GRPO's A = 0: only the bonus


# ------------------------------------------------------------------ hidden states and the probe

def test_layer_choice_and_its_bound():
    model, batch = make_model(2, n_layers=3), make_batch(seed=1)
    with torch.no_grad():
        hidden = policy_forward(model, batch, output_hidden=True).hidden
    assert torch.equal(response_hidden(model, batch, None), model.ln_f(hidden[-1]))
    assert torch.equal(response_hidden(model, batch, 2), hidden[1])
    with pytest.raises(ValueError, match="EffectiveRankConfig.layer"):
        response_hidden(model, batch, 4)


@settings(max_examples=10)
@given(seed=seeds)
def test_probe_matches_a_direct_numpy_computation(seed):
    model, batch = make_model(seed % 5), make_batch(B=12, T=7, seed=seed)
    cfg = EffectiveRankConfig(eta=0.5)
    with torch.no_grad():
        P = batch.prompt_ids.shape[1]
        _, hidden = model(batch.input_ids, batch.attention_mask, output_hidden=True)
        H = model.ln_f(hidden[-1])[:, P - 1:-1].double().numpy()                  # state before each response token
    n = batch.response_mask.sum(1).numpy()
    er = np.array([er_numpy(H[i, :n[i]]) for i in range(len(n))])
    dyn = np.array([dynamics_reference([er_numpy(H[i, :t]) for t in range(1, n[i] + 1)], 0.5) for i in range(len(n))])
    er_norm = er / np.minimum(n, H.shape[-1])
    out = effective_rank_probe(model, batch, cfg, None)
    r = batch.rewards.numpy()
    expect = {"er_mean": er.mean(), "er_std": er.std(ddof=1), "er_norm_mean": er_norm.mean(),
              "erv_mean": dyn[:, 0].mean(), "era_mean": dyn[:, 1].mean(), "length_mean": n.mean(),
              "corr_er_erv": np.corrcoef(er, dyn[:, 0])[0, 1], "corr_er_length": np.corrcoef(er, n)[0, 1],
              "corr_er_norm_length": np.corrcoef(er_norm, n)[0, 1], "corr_er_reward": np.corrcoef(er, r)[0, 1]}
    for k, v in expect.items():
        assert abs(out[f"verl_rank/{k}"] - v) < 1e-6, k
    assert all(isinstance(v, float) for v in out.values())


# ------------------------------------------------------------------ configs, recipes, training

@pytest.mark.parametrize("key,value", [("layer", 0), ("stride", 0), ("eta", 0.0), ("eta", 1.5), ("coef", -0.1),
                                       ("gain", -1.0), ("clip", 0.0), ("eps", 0.0)])
def test_bad_settings_name_the_setting(key, value):
    with pytest.raises(ValueError, match=rf"^EffectiveRankShapingConfig\.{key} must be") as e:
        EffectiveRankShapingConfig(**{key: value})
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match=key):
        make_config(EffectiveRankShapingConfig, {key: str(value)}, where="advantage 'effective_rank_shaping'")


def test_recipes_differ_from_grpo_only_in_the_advantage():
    grpo = get_recipe("grpo")
    for name, coef in (("effective_rank_shaping", 0.05), ("effective_rank_shaping_l01", 0.1)):
        r = get_recipe(name)
        assert (r.advantage, r.advantage_cfg, r.loss, r.loss_cfg, r.train_cfg) == \
            ("effective_rank_shaping", {"coef": coef}, grpo.loss, grpo.loss_cfg, grpo.train_cfg)
    assert get_stage("advantage", "effective_rank_shaping").needs_for(EffectiveRankShapingConfig()) == {"groups"}
    assert get_stage("probe", "effective_rank").config is EffectiveRankConfig


def test_trainer_run_logs_the_statistics_and_the_probe(tmp_path, tiny_ckpt):
    from minirlvr.trainer import TrainConfig, train
    res = train(TrainConfig(task="addition", recipe="effective_rank_shaping", steps=2, prompts_per_step=3,
                            group_size=4, minibatches=1, eval_every=0, progress=False, out_dir=str(tmp_path),
                            init=tiny_ckpt, max_new_tokens=6, probes=("effective_rank",)))
    for h in res["history"]:
        assert 1 <= h["verl_rank/er"] <= 6 and 0 < h["verl_rank/w_exp"] < 1 and math.isfinite(h["verl_rank/erv"])
        assert 1 <= h["verl_rank/er_mean"] <= 6 and "verl_rank/corr_er_erv" in h
