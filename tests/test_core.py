"""Property tests of minirlvr.core against independent computations (numpy float64,
explicit Python loops, autograd, finite differences)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from minirlvr.core import (AGG_MODES, aggregate, entropy_change_first_order, entropy_from_logits, group_advantages,
                           kl_estimate, logprobs_from_logits, masked_mean, ppo_clip_per_token)

DTYPES = {torch.float32: (np.float32, 1e-5), torch.float64: (np.float64, 1e-12)}


# ----------------------------------------------------------------------------- strategies / references

@st.composite
def matrices(draw, lo=-8.0, hi=8.0, rows=(1, 6), cols=(2, 16)):
    """A float64 array [B, V] with entries in [lo, hi]."""
    b = draw(st.integers(*rows))
    v = draw(st.integers(*cols))
    return draw(arrays(np.float64, (b, v), elements=st.floats(lo, hi, allow_nan=False, allow_infinity=False)))


@st.composite
def values_and_masks(draw, rows=(1, 6), cols=(1, 8)):
    b, t = draw(st.integers(*rows)), draw(st.integers(*cols))
    x = draw(arrays(np.float64, (b, t), elements=st.floats(-100, 100, allow_nan=False)))
    m = draw(arrays(np.int64, (b, t), elements=st.integers(0, 1)))
    return x, m


def np_log_softmax(z):
    z = np.asarray(z, dtype=np.float64)
    mx = z.max(-1, keepdims=True)
    return z - mx - np.log(np.exp(z - mx).sum(-1, keepdims=True))


def np_entropy(z):
    lp = np_log_softmax(z)
    p = np.exp(lp)
    return -(np.where(p > 0, p * lp, 0.0)).sum(-1)


def t64(x):
    return torch.tensor(np.asarray(x), dtype=torch.float64)


# ----------------------------------------------------------------------------- entropy_from_logits

@pytest.mark.parametrize("dtype", list(DTYPES))
@given(z=matrices())
def test_entropy_matches_numpy(dtype, z):
    tol = DTYPES[dtype][1]
    zt = torch.tensor(z, dtype=dtype)
    h = entropy_from_logits(zt)
    assert h.dtype == dtype and h.shape == (z.shape[0],)
    expect = np_entropy(zt.double().numpy())  # the same (rounded) inputs, float64 reference
    np.testing.assert_allclose(h.double().numpy(), expect, rtol=tol, atol=tol * 10)


@pytest.mark.parametrize("dtype", list(DTYPES))
@given(z=matrices(lo=-1e4, hi=1e4), extreme=st.lists(st.sampled_from([-1e4, 1e4, 0.0]), min_size=1, max_size=16))
def test_entropy_extreme_logits_finite_and_bounded(dtype, z, extreme):
    z = z.copy()
    flat = z.reshape(-1)
    flat[: len(extreme)] = extreme[: flat.size]
    zt = torch.tensor(z, dtype=dtype, requires_grad=True)
    h = entropy_from_logits(zt)
    assert torch.isfinite(h).all()
    V = z.shape[-1]
    assert (h >= -1e-6).all() and (h <= math.log(V) + 1e-5).all()
    np.testing.assert_allclose(h.detach().double().numpy(), np_entropy(zt.detach().double().numpy()), atol=1e-5)
    h.sum().backward()
    assert torch.isfinite(zt.grad).all()


@pytest.mark.parametrize("dtype", list(DTYPES))
@given(z=matrices(lo=-6, hi=6), data=st.data())
def test_entropy_with_minus_inf_entries(dtype, z, data):
    B, V = z.shape
    dead = data.draw(arrays(np.bool_, (B, V)))
    keep_col = data.draw(st.lists(st.integers(0, V - 1), min_size=B, max_size=B))
    dead[np.arange(B), keep_col] = False  # every row keeps at least one finite logit
    zt = torch.tensor(np.where(dead, -np.inf, z), dtype=dtype, requires_grad=True)
    h = entropy_from_logits(zt)
    # reference: the entropy of the distribution over the finite entries only
    expect = np.array([np_entropy(z[i][~dead[i]]) for i in range(B)])
    np.testing.assert_allclose(h.detach().double().numpy(), expect, rtol=DTYPES[dtype][1], atol=DTYPES[dtype][1] * 10)
    h.sum().backward()
    g = zt.grad
    assert torch.isfinite(g).all(), "NaN/inf gradient leaked from a -inf logit"
    assert (g[torch.tensor(dead)] == 0).all()
    # on the finite entries the gradient is the closed form -pi (log pi + H)
    for i in range(B):
        lp = np_log_softmax(zt.detach()[i][~torch.tensor(dead[i])].double().numpy())
        closed = -np.exp(lp) * (lp + expect[i])
        np.testing.assert_allclose(g[i][~torch.tensor(dead[i])].double().numpy(), closed,
                                   atol=DTYPES[dtype][1] * 100)


@given(z=matrices(), c=st.floats(-100, 100))
def test_entropy_shift_invariant(z, c):
    zt = t64(z)
    np.testing.assert_allclose(entropy_from_logits(zt + c).numpy(), entropy_from_logits(zt).numpy(), atol=1e-11)


def test_entropy_known_values():
    assert entropy_from_logits(torch.zeros(7, dtype=torch.float64)).item() == pytest.approx(math.log(7), abs=1e-14)
    assert entropy_from_logits(torch.tensor([0.0, -math.inf, -math.inf])).item() == 0.0


# ----------------------------------------------------------------------------- logprobs_from_logits

@pytest.mark.parametrize("dtype", list(DTYPES))
@given(z=matrices(), data=st.data())
def test_logprobs_matches_numpy(dtype, z, data):
    B, V = z.shape
    tok = np.array(data.draw(st.lists(st.integers(0, V - 1), min_size=B, max_size=B)))
    zt = torch.tensor(z, dtype=dtype)
    lp = logprobs_from_logits(zt, torch.tensor(tok))
    expect = np_log_softmax(zt.double().numpy())[np.arange(B), tok]
    np.testing.assert_allclose(lp.double().numpy(), expect, rtol=DTYPES[dtype][1], atol=DTYPES[dtype][1] * 10)
    # 3-d input [B, T, V] with tokens [B, T]
    z3 = zt.reshape(1, B, V).expand(2, B, V)
    lp3 = logprobs_from_logits(z3, torch.tensor(tok).expand(2, B))
    assert lp3.shape == (2, B)
    np.testing.assert_allclose(lp3.double().numpy(), np.stack([expect, expect]), atol=DTYPES[dtype][1] * 10)


def test_logprobs_shape_mismatch():
    with pytest.raises(ValueError, match="disagree"):
        logprobs_from_logits(torch.zeros(2, 3, 5), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError):
        logprobs_from_logits(torch.zeros(2, 3, 5), torch.zeros(3, 2, dtype=torch.long))


# ----------------------------------------------------------------------------- masked_mean

def np_masked_mean(x, m, axis=None):
    xs = np.where(m.astype(bool), x, 0.0)
    cnt = m.sum(axis=axis)
    return xs.sum(axis=axis) / np.maximum(cnt, 1)


@given(xm=values_and_masks(), dim=st.sampled_from([None, 0, 1, -1]), poison=st.sampled_from([np.nan, np.inf, -np.inf]))
def test_masked_mean_matches_numpy_and_ignores_masked(xm, dim, poison):
    x, m = xm
    expect = np_masked_mean(x, m, axis=dim)
    x_poisoned = np.where(m.astype(bool), x, poison)
    xt = t64(x_poisoned).requires_grad_(True)
    out = masked_mean(xt, torch.tensor(m), dim=dim)
    assert torch.isfinite(out).all()
    np.testing.assert_allclose(out.detach().numpy(), expect, rtol=1e-12, atol=1e-12)
    out.sum().backward()
    assert torch.isfinite(xt.grad).all()
    assert (xt.grad[torch.tensor(m) == 0] == 0).all()


def test_masked_mean_empty_mask_is_zero():
    x = torch.tensor([[math.nan, 1.0], [math.inf, 2.0]])
    m = torch.zeros(2, 2, dtype=torch.long)
    assert masked_mean(x, m).item() == 0.0
    assert torch.equal(masked_mean(x, m, dim=1), torch.zeros(2))
    m2 = torch.tensor([[0, 1], [0, 0]])
    assert torch.equal(masked_mean(x, m2, dim=1), torch.tensor([1.0, 0.0]))
    assert torch.equal(masked_mean(x, m2, dim=0), torch.tensor([0.0, 1.0]))


def test_masked_mean_shape_mismatch():
    with pytest.raises(ValueError, match="shape"):
        masked_mean(torch.zeros(2, 3), torch.ones(3, 2))
    with pytest.raises(ValueError):
        masked_mean(torch.zeros(2, 3), torch.ones(2, 3, 1))


# ----------------------------------------------------------------------------- aggregate

def loop_aggregate(L, m, mode, max_len=None):
    L, m = L.tolist(), m.tolist()
    B, T = len(L), len(L[0])
    if mode == "token-mean":
        tot = sum(L[i][t] for i in range(B) for t in range(T) if m[i][t])
        n = sum(int(m[i][t]) for i in range(B) for t in range(T))
        return tot / n if n else 0.0
    if mode == "seq-mean-token-mean":
        per = []
        for i in range(B):
            n = sum(int(v) for v in m[i])
            if n:
                per.append(sum(L[i][t] for t in range(T) if m[i][t]) / n)
        return sum(per) / len(per) if per else 0.0
    sums = [sum(L[i][t] for t in range(T) if m[i][t]) for i in range(B)]
    if mode == "seq-mean-token-sum":
        n_rows = sum(1 for i in range(B) if any(m[i]))  # rows with a valid token
        return sum(sums) / n_rows if n_rows else 0.0
    if mode == "seq-mean-token-sum-norm":
        return sum(s / (max_len or T) for s in sums) / B
    raise AssertionError(mode)


@given(xm=values_and_masks(), mode=st.sampled_from(AGG_MODES), max_len=st.one_of(st.none(), st.integers(1, 20)))
def test_aggregate_matches_loops(xm, mode, max_len):
    x, m = xm
    poisoned = t64(np.where(m.astype(bool), x, np.nan))
    out = aggregate(poisoned, torch.tensor(m), mode, max_len=max_len)
    assert torch.isfinite(out)
    expect = loop_aggregate(x, m, mode, max_len)
    assert out.item() == pytest.approx(expect, rel=1e-11, abs=1e-11)


def test_aggregate_modes_differ_on_a_hand_case():
    L = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]], dtype=torch.float64)
    m = torch.tensor([[1, 1, 1], [1, 0, 0]])
    assert aggregate(L, m, "token-mean").item() == pytest.approx(10 / 4)
    assert aggregate(L, m, "seq-mean-token-mean").item() == pytest.approx((2 + 4) / 2)
    assert aggregate(L, m, "seq-mean-token-sum").item() == pytest.approx((6 + 4) / 2)
    assert aggregate(L, m, "seq-mean-token-sum-norm").item() == pytest.approx((6 + 4) / 2 / 3)
    assert aggregate(L, m, "seq-mean-token-sum-norm", max_len=10).item() == pytest.approx((6 + 4) / 2 / 10)
    # a row with no valid token does not count in seq-mean-token-mean / seq-mean-token-sum (verl);
    # seq-mean-token-sum-norm divides by the constant B (verl: by nothing)
    m0 = torch.tensor([[1, 1, 1], [0, 0, 0]])
    assert aggregate(L, m0, "seq-mean-token-mean").item() == pytest.approx(2.0)
    assert aggregate(L, m0, "seq-mean-token-sum").item() == pytest.approx(6.0)
    assert aggregate(L, m0, "seq-mean-token-sum-norm").item() == pytest.approx(6 / 2 / 3)


def np_verl_agg_loss(L, m, mode, loss_scale_factor=None):
    """verl's core_algos.agg_loss (local batch: no global counts, dp_size = 1), in numpy float64."""
    L, m = np.where(m.astype(bool), L, 0.0), m.astype(np.float64)   # verl's masked_sum ignores masked NaN
    if mode == "token-mean":
        return (L * m).sum() / m.sum()
    count = m.sum(-1)
    seq_mask = (count > 0).astype(np.float64)                        # rows with a valid token
    if mode == "seq-mean-token-sum":
        return ((L * m).sum(-1) * seq_mask).sum() / seq_mask.sum()
    if mode == "seq-mean-token-mean":
        return ((L * m).sum(-1) / (count + 1e-8) * seq_mask).sum() / seq_mask.sum()
    if mode == "seq-mean-token-sum-norm":
        return (L * m).sum() / (loss_scale_factor or m.shape[-1])     # no row count at all
    raise AssertionError(mode)


@given(xm=values_and_masks(), mode=st.sampled_from(AGG_MODES), max_len=st.one_of(st.none(), st.integers(1, 20)))
def test_aggregate_matches_verl(xm, mode, max_len):
    """Equal to verl's agg_loss wherever verl is defined (some valid token); -norm: verl's value = ours * B."""
    x, m = xm
    assume(m.any())  # verl divides 0 by 0 on an all-empty mask
    out = aggregate(t64(np.where(m.astype(bool), x, np.nan)), torch.tensor(m), mode, max_len=max_len).item()
    verl = np_verl_agg_loss(x, m, mode, max_len)
    scale = m.shape[0] if mode == "seq-mean-token-sum-norm" else 1
    # verl's row means divide by count + 1e-8: a relative 1e-8 / count in float64
    assert out * scale == pytest.approx(verl, rel=1e-7, abs=1e-7)


@given(xm=values_and_masks(), mode=st.sampled_from(AGG_MODES), max_len=st.one_of(st.none(), st.integers(1, 20)),
       d=st.data())
def test_aggregate_ignores_rows_without_valid_tokens(xm, mode, max_len, d):
    """Inserting a row with an all-zero mask (any values, even NaN) changes no mode's result, except the
    constant B of seq-mean-token-sum-norm (there B * result, i.e. verl's value, is unchanged)."""
    x, m = xm
    B, T = m.shape
    at = d.draw(st.integers(0, B))
    junk = d.draw(st.sampled_from([0.0, 7.5, np.nan, np.inf]))
    x2, m2 = np.insert(x, at, junk, axis=0), np.insert(m, at, 0, axis=0)
    before = aggregate(t64(x), torch.tensor(m), mode, max_len=max_len).item()
    after = aggregate(t64(x2), torch.tensor(m2), mode, max_len=max_len).item()
    if mode == "seq-mean-token-sum-norm":
        before, after = before * B, after * (B + 1)
    assert math.isfinite(after)
    assert after == pytest.approx(before, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("mode", AGG_MODES)
@pytest.mark.parametrize("shape", [(1, 1), (3, 4), (0, 4)])
def test_aggregate_all_empty_mask_is_zero_not_nan(mode, shape):
    L = torch.full(shape, math.nan, dtype=torch.float64, requires_grad=True)
    out = aggregate(L, torch.zeros(shape), mode)
    out.backward()
    assert out.item() == 0.0 and not torch.isnan(L.grad).any()


def test_aggregate_errors():
    with pytest.raises(ValueError) as e:
        aggregate(torch.zeros(2, 3), torch.ones(2, 3), "bogus-mode")
    for mode in AGG_MODES:
        assert mode in str(e.value)
    assert "bogus-mode" in str(e.value)
    with pytest.raises(ValueError):
        aggregate(torch.zeros(3), torch.ones(3))
    with pytest.raises(ValueError):
        aggregate(torch.zeros(2, 3), torch.ones(3, 2))
    with pytest.raises(ValueError):
        aggregate(torch.zeros(2, 3, 1), torch.ones(2, 3, 1))


# ----------------------------------------------------------------------------- group_advantages

@st.composite
def grouped_rewards(draw, binary=False):
    """rewards [B] float64 and arbitrary integer group labels (non-contiguous, negative, interleaved)."""
    n = draw(st.integers(1, 12))
    labels = draw(st.lists(st.integers(-5, 5), min_size=n, max_size=n))
    elem = st.sampled_from([0.0, 1.0]) if binary else st.floats(-10, 10, allow_nan=False)
    rewards = draw(st.lists(elem, min_size=n, max_size=n))
    return np.array(rewards, dtype=np.float64), np.array(labels, dtype=np.int64)


def np_group_adv(r, g, scale, eps):
    out = np.zeros_like(r)
    for lab in set(g.tolist()):
        idx = np.where(g == lab)[0]
        vals = r[idx]
        mean = vals.mean()
        std = vals.std(ddof=1) if len(vals) > 1 else 0.0
        out[idx] = (vals - mean) / (std + eps) if scale == "std" else vals - mean
    return out, None


@given(rg=st.one_of(grouped_rewards(), grouped_rewards(binary=True)), eps=st.sampled_from([1e-6, 1e-3, 0.5]))
def test_group_advantages_match_numpy(rg, eps):
    r, g = rg
    for scale in ("std", "none"):
        a = group_advantages(t64(r), torch.tensor(g), scale, eps)
        expect, _ = np_group_adv(r, g, scale, eps)
        np.testing.assert_allclose(a.numpy(), expect, rtol=1e-9, atol=1e-9)
        for lab in set(g.tolist()):  # zero mean per group
            assert abs(a[torch.tensor(g == lab)].sum().item()) <= 1e-9 * max(1.0, np.abs(expect).max())


@given(rg=grouped_rewards())
def test_dr_grpo_is_grpo_times_std_plus_eps(rg):
    r, g = rg
    eps = 1e-6
    grpo = group_advantages(t64(r), torch.tensor(g), "std", eps)
    dr = group_advantages(t64(r), torch.tensor(g), "none")
    std = torch.tensor([r[g == lab].std(ddof=1) if (g == lab).sum() > 1 else 0.0 for lab in g], dtype=torch.float64)
    # equal up to the rounding of one division and one multiplication
    np.testing.assert_allclose((grpo * (std + eps)).numpy(), dr.numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@given(value=st.one_of(st.sampled_from([0.1, 1 / 3, 0.7, -2.3, 1e-7, 123.456]), st.floats(-1e3, 1e3)),
       n=st.integers(1, 9), other=st.lists(st.floats(-5, 5), min_size=0, max_size=4))
def test_group_advantages_all_equal_group_exactly_zero(dtype, value, n, other):
    rewards = torch.tensor([value] * n + other, dtype=dtype)
    gids = torch.tensor([7] * n + [100 + i for i in range(len(other))])  # the others are groups of one
    for scale in ("std", "none"):
        a = group_advantages(rewards, gids, scale)
        assert torch.all(a == 0), f"{scale}: all-equal / size-1 groups must give exactly 0, got {a.tolist()}"


@given(rg=grouped_rewards(), data=st.data())
def test_group_advantages_relabel_and_permutation_invariant(rg, data):
    r, g = rg
    labels = sorted(set(g.tolist()))
    new = data.draw(st.lists(st.integers(-1000, 1000), min_size=len(labels), max_size=len(labels), unique=True))
    mapping = dict(zip(labels, new))
    g2 = np.array([mapping[x] for x in g.tolist()])
    for scale in ("std", "none"):
        a = group_advantages(t64(r), torch.tensor(g), scale)
        assert torch.equal(a, group_advantages(t64(r), torch.tensor(g2), scale))
        perm = np.array(data.draw(st.permutations(list(range(len(r))))))
        ap = group_advantages(t64(r[perm]), torch.tensor(g2[perm]), scale)
        np.testing.assert_allclose(ap.numpy(), a.numpy()[perm], rtol=1e-12, atol=1e-12)


def test_group_advantages_errors():
    with pytest.raises(ValueError, match="scale"):
        group_advantages(torch.zeros(3), torch.zeros(3, dtype=torch.long), "mad")
    with pytest.raises(ValueError):
        group_advantages(torch.zeros(3), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError):
        group_advantages(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.long))


# ----------------------------------------------------------------------------- entropy_change_first_order

@given(z=matrices(lo=-5, hi=5), d=st.data())
def test_entropy_change_first_order_equals_autograd_and_covariance(z, d):
    delta = d.draw(arrays(np.float64, z.shape, elements=st.floats(-3, 3)))
    zt = t64(z).requires_grad_(True)
    entropy_from_logits(zt).sum().backward()
    directional = (zt.grad * t64(delta)).sum(-1)
    got = entropy_change_first_order(t64(z), t64(delta))
    np.testing.assert_allclose(got.numpy(), directional.numpy(), atol=1e-10)
    # -Cov_pi(log pi, delta), by hand
    lp = np_log_softmax(z)
    p = np.exp(lp)
    cov = (p * lp * delta).sum(-1) - (p * lp).sum(-1) * (p * delta).sum(-1)
    np.testing.assert_allclose(got.numpy(), -cov, atol=1e-10)
    # shift invariance in delta (softmax ignores a constant)
    c = d.draw(st.floats(-50, 50))
    np.testing.assert_allclose(entropy_change_first_order(t64(z), t64(delta + c)).numpy(), got.numpy(), atol=1e-10)


@given(z=matrices(lo=-5, hi=5), d=st.data())
def test_entropy_change_first_order_with_minus_inf_logits(z, d):
    B, V = z.shape
    assume(V >= 3)
    delta = d.draw(arrays(np.float64, z.shape, elements=st.floats(-3, 3)))
    dead_col = d.draw(st.integers(0, V - 1))
    z2 = z.copy()
    z2[:, dead_col] = -np.inf
    got = entropy_change_first_order(t64(z2), t64(delta))
    assert torch.isfinite(got).all()
    keep = [j for j in range(V) if j != dead_col]
    ref = entropy_change_first_order(t64(z[:, keep]), t64(delta[:, keep]))
    np.testing.assert_allclose(got.numpy(), ref.numpy(), atol=1e-10)


@given(z=arrays(np.float64, st.integers(2, 16), elements=st.floats(-4, 4)), d=st.data())
def test_entropy_change_finite_difference_converges_linearly(z, d):
    delta = d.draw(arrays(np.float64, z.shape, elements=st.floats(-1, 1)))
    assume(np.abs(delta).max() > 0.1)
    delta = delta / np.abs(delta).max()
    zt, dt = t64(z), t64(delta)
    hess = torch.autograd.functional.hessian(lambda x: entropy_from_logits(x), zt)
    second = 0.5 * (dt @ hess @ dt).item()
    assume(abs(second) > 1e-2)  # otherwise the O(e) term vanishes and the ratio is meaningless
    first = entropy_change_first_order(zt, dt).item()
    h0 = entropy_from_logits(zt).item()

    def err(e):
        return abs((entropy_from_logits(zt + e * dt).item() - h0) / e - first)

    e = 1e-4
    e1, e2 = err(e), err(e / 2)
    assert e1 == pytest.approx(abs(second) * e, rel=0.1)
    assert 0.4 < e2 / e1 < 0.6


def test_entropy_change_first_order_shape_mismatch():
    with pytest.raises(ValueError):
        entropy_change_first_order(torch.zeros(2, 3), torch.zeros(3))


# ----------------------------------------------------------------------------- kl_estimate

@given(lp=arrays(np.float64, st.integers(1, 12), elements=st.floats(-15, 0)), d=st.data())
def test_kl_estimators_match_formulas(lp, d):
    ref = d.draw(arrays(np.float64, lp.shape, elements=st.floats(-15, 0)))
    lr = lp - ref
    k1 = kl_estimate(t64(lp), t64(ref), "k1").numpy()
    k2 = kl_estimate(t64(lp), t64(ref), "k2").numpy()
    k3 = kl_estimate(t64(lp), t64(ref), "k3").numpy()
    np.testing.assert_allclose(k1, lr, atol=1e-12)
    np.testing.assert_allclose(k2, 0.5 * lr ** 2, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(k3, np.exp(-lr) + lr - 1.0, rtol=1e-9, atol=1e-12)
    assert torch.equal(kl_estimate(t64(lp), t64(ref)), torch.tensor(k3))  # default kind is k3


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@given(d=st.data())
def test_k3_is_nonnegative_and_finite(dtype, d):
    width = 32 if dtype == torch.float32 else 64
    elems = st.one_of(st.floats(-1e4, 1e4, width=width), st.floats(-2.0 ** -10, 2.0 ** -10, width=width),
                      st.sampled_from([-1e4, 1e4, 0.0, 20.0, -20.0, 1e-7, -1e-7]))
    n = d.draw(st.integers(1, 16))
    a = torch.tensor(d.draw(st.lists(elems, min_size=n, max_size=n)), dtype=dtype)
    b = torch.tensor(d.draw(st.lists(elems, min_size=n, max_size=n)), dtype=dtype)
    k3 = kl_estimate(a, b, "k3")
    assert torch.isfinite(k3).all()
    assert (k3 >= 0).all(), k3


def test_k3_clamps_huge_log_ratios():
    lr = torch.tensor([1e4, -1e4, 30.0, -30.0], dtype=torch.float64)
    k3 = kl_estimate(lr, torch.zeros(4, dtype=torch.float64), "k3")
    clamped = lr.clamp(-20, 20).numpy()
    np.testing.assert_allclose(k3.numpy(), np.exp(-clamped) + clamped - 1, rtol=1e-12)
    k3f = kl_estimate(lr.float(), torch.zeros(4), "k3")
    assert torch.isfinite(k3f).all()


@given(z=arrays(np.float64, st.integers(2, 16), elements=st.floats(-4, 4)), d=st.data())
def test_k1_and_k3_are_unbiased_exact_expectation(z, d):
    zr = d.draw(arrays(np.float64, z.shape, elements=st.floats(-4, 4)))
    lp, lref = np_log_softmax(z), np_log_softmax(zr)
    p = np.exp(lp)
    kl = float((p * (lp - lref)).sum())
    for kind in ("k1", "k3"):
        est = kl_estimate(t64(lp), t64(lref), kind).numpy()  # the estimator at every token of the support
        assert float((p * est).sum()) == pytest.approx(kl, abs=1e-10)
    k2 = kl_estimate(t64(lp), t64(lref), "k2").numpy()
    assert float((p * k2).sum()) >= 0


@given(lp=arrays(np.float64, st.integers(1, 12), elements=st.floats(-30, 0)), d=st.data(),
       kind=st.sampled_from(["k1", "k2", "k3"]), clamp=st.sampled_from([0.5, 1.0, 10.0]))
def test_kl_clamp(lp, d, kind, clamp):
    ref = d.draw(arrays(np.float64, lp.shape, elements=st.floats(-30, 0)))
    free = kl_estimate(t64(lp), t64(ref), kind)
    assert torch.equal(kl_estimate(t64(lp), t64(ref), kind, clamp=None), free)      # None: today's behaviour
    np.testing.assert_array_equal(kl_estimate(t64(lp), t64(ref), kind, clamp=clamp).numpy(),
                                  np.clip(free.numpy(), -clamp, clamp))


def np_verl_low_var_kl(logp, ref):
    """verl's kl_penalty_forward(..., "low_var_kl" / "k3"): log-ratio clamped to [-20, 20], k3, clamped to [-10, 10]."""
    kl = np.clip(ref - logp, -20, 20)
    return np.clip(np.exp(kl) - kl - 1, -10, 10)


@given(lp=arrays(np.float64, st.integers(1, 12), elements=st.floats(-40, 0)), d=st.data())
def test_k3_with_clamp_10_is_verls_low_var_kl(lp, d):
    ref = d.draw(arrays(np.float64, lp.shape, elements=st.floats(-40, 0)))
    np.testing.assert_allclose(kl_estimate(t64(lp), t64(ref), "k3", clamp=10.0).numpy(), np_verl_low_var_kl(lp, ref),
                               rtol=1e-9, atol=1e-12)


def test_kl_clamp_cuts_large_k3_and_its_gradient():
    lp = torch.tensor([0.0, 0.0, 0.0], dtype=torch.float64, requires_grad=True)
    ref = torch.tensor([0.5, 3.0, -12.0], dtype=torch.float64)   # k3 ~ 0.15, ~17.1, ~11.0
    k3 = kl_estimate(lp, ref, "k3", clamp=10.0)
    assert k3[0].item() == pytest.approx(math.exp(0.5) - 1.5) and k3[1].item() == 10.0 and k3[2].item() == 10.0
    k3.sum().backward()
    assert lp.grad[0] != 0 and lp.grad[1] == 0 and lp.grad[2] == 0
    for bad in (0.0, -1.0, math.nan):
        with pytest.raises(ValueError, match="clamp"):
            kl_estimate(lp, ref, "k3", clamp=bad)


def test_kl_unknown_kind():
    with pytest.raises(ValueError, match="k4"):
        kl_estimate(torch.zeros(2), torch.zeros(2), "k4")


# ----------------------------------------------------------------------------- ppo_clip_per_token

@st.composite
def ppo_inputs(draw):
    n = draw(st.integers(1, 12))
    logp = draw(arrays(np.float64, n, elements=st.floats(-6, 0)))
    gap = draw(arrays(np.float64, n, elements=st.one_of(st.floats(-3, 3), st.floats(-0.3, 0.3))))
    adv = draw(arrays(np.float64, n, elements=st.one_of(st.floats(-5, 5), st.floats(0.01, 5), st.floats(-5, -0.01))))
    clip_low = draw(st.floats(0.01, 0.9))
    clip_high = draw(st.floats(0.01, 2.0))
    c = draw(st.one_of(st.none(), st.floats(1.01, 10.0)))
    return logp, logp - gap, adv, clip_low, clip_high, c


def np_ppo(logp, old, adv, lo, hi, c):
    r = np.exp(np.clip(logp - old, -20, 20))
    unc = -adv * r
    clp = -adv * np.clip(r, 1 - lo, 1 + hi)
    loss = np.maximum(unc, clp)
    clipped = clp > unc
    if c is not None:
        dual = -adv * c
        use = (adv < 0) & (dual < loss)
        loss = np.where(use, dual, loss)
        clipped = clipped | use
    return loss, r, clipped


@given(inp=ppo_inputs())
def test_ppo_clip_matches_formula_and_gradient_zero_exactly_where_clipped(inp):
    logp, old, adv, lo, hi, c = inp
    r = np.exp(logp - old)
    # tokens where "gradient zero <=> clipped" is well defined: A != 0, ratio off every boundary
    regular = (np.abs(adv) > 1e-6) & (np.abs(r - (1 - lo)) > 1e-6) & (np.abs(r - (1 + hi)) > 1e-6)
    if c is not None:
        regular &= np.abs(r - c) > 1e-6
    lt = t64(logp).requires_grad_(True)
    loss, ratio, clipped = ppo_clip_per_token(lt, t64(old), t64(adv), lo, hi, c)
    e_loss, e_r, e_clipped = np_ppo(logp, old, adv, lo, hi, c)
    np.testing.assert_allclose(loss.detach().numpy(), e_loss, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ratio.detach().numpy(), e_r, rtol=1e-12)
    assert clipped.numpy().tolist() == e_clipped.tolist()
    loss.sum().backward()
    g = lt.grad.numpy()
    assert np.isfinite(g).all()
    assert ((g == 0) == clipped.numpy())[regular].all(), (g, clipped)
    # where unclipped the gradient is the plain policy-gradient one: d(-A r)/dlogp = -A r
    unc = ~clipped.numpy() & regular
    np.testing.assert_allclose(g[unc], (-adv * e_r)[unc], rtol=1e-12, atol=1e-12)


@given(n=st.integers(1, 10), d=st.data())
def test_dual_clip_bounds_negative_advantage_loss(n, d):
    gap = np.array(d.draw(st.lists(st.one_of(st.floats(-1e4, 1e4), st.floats(-5, 5)), min_size=n, max_size=n)))
    adv = np.array(d.draw(st.lists(st.floats(-5, -1e-3), min_size=n, max_size=n)))
    c = d.draw(st.floats(1.01, 10.0))
    loss, ratio, clipped = ppo_clip_per_token(t64(gap), torch.zeros(n, dtype=torch.float64), t64(adv), 0.2, 0.28, c)
    assert torch.isfinite(loss).all() and torch.isfinite(ratio).all()
    assert (loss <= t64(-adv * c) + 1e-12).all()


def test_dual_clip_constant_must_exceed_one():
    for c in (1.0, 0.5, -3.0):
        with pytest.raises(ValueError, match="> 1"):
            ppo_clip_per_token(torch.zeros(3), torch.zeros(3), -torch.ones(3), clip_ratio_c=c)


@given(st.lists(st.integers(0, 5), min_size=1, max_size=30))
def test_empirical_entropy_matches_numpy(samples):
    import numpy as np
    from minirlvr.core import empirical_entropy
    p = np.unique(samples, return_counts=True)[1] / len(samples)
    assert empirical_entropy(samples) == pytest.approx(float(-(p * np.log(p)).sum()), abs=1e-12)
    assert empirical_entropy(samples, bits=True) == pytest.approx(float(-(p * np.log2(p)).sum()), abs=1e-12)
    assert empirical_entropy(samples) >= 0 and str(empirical_entropy([7, 7])) == "0.0"


@given(n=st.integers(2, 30), seed=st.integers(0, 10 ** 6), a=st.floats(0.1, 10), b=st.floats(-5, 5))
def test_pearson_matches_numpy_and_is_zero_when_undefined(n, seed, a, b):
    from minirlvr.core import pearson
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, generator=g, dtype=torch.float64), torch.randn(n, generator=g, dtype=torch.float64)
    assert abs(pearson(x, y) - np.corrcoef(x.numpy(), y.numpy())[0, 1]) < 1e-9
    assert abs(pearson(x, a * x + b) - 1) < 1e-9 and abs(pearson(x, -a * x + b) + 1) < 1e-9
    assert pearson(torch.ones(n), y) == 0.0 and pearson(x[:1], y[:1]) == 0.0
