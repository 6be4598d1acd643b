"""The Policy Cliff (arXiv 2507.20150): softmax Jacobian vs autograd, its spectrum, the Lipschitz bound,
the tie discontinuity of the hard policy vs the linear change of the soft one, the alpha -> 0 limit with
its exponential rate, entropy monotone in alpha, and the effective-reward weight scan."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from minirlvr.methods.policy_cliff import (cliff_curve, hard_optimal, lipschitz_bound, policy_entropy, soft_optimal,
                                           softmax_jacobian, tv_distance, weight_scan)

alphas = st.floats(0.05, 20.0)


@st.composite
def rewards(draw, min_v=2, max_v=8, scale=None):
    V = draw(st.integers(min_v, max_v))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    return rng.normal(0, scale or draw(st.sampled_from([0.01, 1.0, 10.0])), V)


@given(r=rewards(), alpha=alphas)
def test_jacobian_equals_autograd_and_its_spectrum_is_in_0_to_half_over_alpha(r, alpha):
    J = softmax_jacobian(r, alpha)
    auto = torch.autograd.functional.jacobian(lambda x: torch.softmax(x / alpha, -1), torch.tensor(r))
    torch.testing.assert_close(J, auto, rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(J, J.T, rtol=0, atol=0)
    eig = torch.linalg.eigvalsh(J)
    assert eig.min() >= -1e-12 / alpha and eig.max() <= 1 / (2 * alpha) * (1 + 1e-12)
    torch.testing.assert_close(J.sum(1), torch.zeros(len(r), dtype=torch.float64), rtol=0, atol=1e-12 / alpha)


def test_the_half_is_tight():
    """Two equally likely actions: top eigenvalue exactly 1/(2 alpha) (v = (e_0 - e_1)/sqrt 2)."""
    for alpha in (0.1, 1.0, 3.0):
        eig = torch.linalg.eigvalsh(softmax_jacobian([2.0, 2.0, -1e4], alpha))
        assert abs(float(eig.max()) - 1 / (2 * alpha)) < 1e-12 / alpha


@given(r=rewards(), delta=rewards(scale=1.0), alpha=alphas, size=st.sampled_from([1e-3, 1.0, 30.0]))
def test_lipschitz_bound(r, delta, alpha, size):
    n = min(len(r), len(delta))
    r, r2 = r[:n], r[:n] + size * delta[:n]
    gap = torch.linalg.vector_norm(soft_optimal(r, alpha) - soft_optimal(r2, alpha))
    bound = lipschitz_bound(r, r2, alpha)
    assert float(gap) <= bound * (1 + 1e-9) + 1e-15
    assert bound == pytest.approx(np.linalg.norm(r - r2) / (2 * alpha), rel=1e-12)


@given(eps=st.floats(1e-12, 1.0), k=st.integers(2, 4), V=st.integers(4, 7), i=st.integers(0, 3))
def test_hard_policy_jumps_at_a_tie(eps, k, V, i):
    """k-way tie: r + eps e_i (i in the tie) makes the hard policy the point mass on i, at TV 1 - 1/k
    from the tie-breaking policy however small eps is; two such point masses are at TV 1."""
    i = i % k
    r = np.r_[np.ones(k), np.zeros(V - k)]
    base = hard_optimal(r)
    torch.testing.assert_close(base, torch.tensor(np.r_[np.ones(k) / k, np.zeros(V - k)]))
    up = hard_optimal(r + eps * np.eye(V)[i])
    assert torch.equal(up, torch.tensor(np.eye(V)[i]))
    assert float(tv_distance(up, base)) == pytest.approx(1 - 1 / k, abs=1e-15)
    other = hard_optimal(r + eps * np.eye(V)[(i + 1) % k])
    assert float(tv_distance(up, other)) == 1.0


def test_cliff_curve_hard_is_flat_soft_is_linear():
    eps = np.geomspace(1e-8, 1e-3, 6)
    curves = cliff_curve(np.r_[0.0, eps], alphas=(0.0, 0.1, 0.5))
    np.testing.assert_array_equal(curves[0.0], np.r_[0.0, np.full(6, 0.5)])        # the cliff: 1/2 for all eps > 0
    for alpha in (0.1, 0.5):
        tv = curves[alpha]
        assert tv[0] == 0.0
        slope = 0.5 * float(softmax_jacobian([1.0, 1.0, 0.0], alpha)[:, 0].abs().sum())   # TV ~ eps ||J e_0||_1 / 2
        np.testing.assert_allclose(tv[1:] / eps, slope, rtol=1e-3)
        assert slope <= 1 / alpha                      # ||J e_0||_1 = 2 pi_0 (1 - pi_0) / alpha <= 1 / (2 alpha)
    assert (curves[0.1][1:] > curves[0.5][1:]).all()   # smaller alpha: steeper (less stable)


@given(r=rewards(min_v=3), k=st.integers(1, 3), alpha=st.floats(0.01, 2.0))
def test_alpha_to_zero_breaks_ties_uniformly_at_an_exponential_rate(r, k, alpha):
    """TV(pi_alpha, uniform on argmax) <= ((V - k) / k) exp(-gap / alpha)."""
    r = np.sort(r)[::-1].copy()
    k = min(k, len(r) - 1)
    r[:k] = r[0]                                        # an exact k-way tie at the top
    gap = r[0] - r[k]
    if gap <= 0:
        return
    tv = float(tv_distance(soft_optimal(r, alpha), hard_optimal(r)))
    assert tv <= (len(r) - k) / k * math.exp(-gap / alpha) * (1 + 1e-9) + 1e-15
    assert float(tv_distance(soft_optimal(r, 1e-6 * gap), hard_optimal(r))) < 1e-12
    assert torch.equal(soft_optimal(r, 0.0), hard_optimal(r))
    assert torch.equal(soft_optimal(r, 5e-324), hard_optimal(r))          # no inf - inf: (r - max r) / alpha


@given(r=rewards())
def test_large_alpha_is_uniform(r):
    V = len(r)
    assert float(tv_distance(soft_optimal(r, 1e9), torch.full((V,), 1 / V, dtype=torch.float64))) < 1e-6


@given(r=rewards(), a=st.lists(st.floats(0.0, 50.0), min_size=2, max_size=6))
def test_entropy_is_non_decreasing_in_alpha(r, a):
    H = [policy_entropy(r, x) for x in sorted(a)]
    assert all(h1 <= h2 + 1e-12 for h1, h2 in zip(H, H[1:]))
    assert all(-1e-12 <= h <= math.log(len(r)) + 1e-12 for h in H)


@given(r=rewards(), alpha=alphas)
def test_entropy_derivative_is_var_over_alpha_cubed(r, alpha):
    a = torch.tensor(alpha, dtype=torch.float64, requires_grad=True)
    pi = torch.softmax(torch.tensor(r) / a, -1)
    H = -(pi * torch.log(pi.clamp_min(1e-300))).sum()
    (dH,) = torch.autograd.grad(H, a)
    p = pi.detach().numpy()
    var = float((p * r ** 2).sum() - (p * r).sum() ** 2)
    assert float(dH) == pytest.approx(var / alpha ** 3, rel=1e-6, abs=1e-12)


def test_effective_reward_weight_scan():
    """r1 is blind between actions 0 and 1; r2 prefers 1 slightly. r_eff(w) = w r1 + (1 - w) r2 has a tie
    only at w = 1: the hard policy is constant on [0, 1) and jumps there; the soft one moves smoothly."""
    r1, r2 = np.array([1.0, 1.0, 0.0]), np.array([0.0, 0.01, 0.0])
    w = np.linspace(0, 1, 101)
    hard = weight_scan(w, r1, r2, 0.0)
    np.testing.assert_array_equal(hard[:-1], np.tile([0.0, 1.0, 0.0], (100, 1)))
    np.testing.assert_array_equal(hard[-1], [0.5, 0.5, 0.0])
    soft = weight_scan(w, r1, r2, 0.1)
    steps = np.abs(np.diff(soft, axis=0)).sum(1) / 2
    assert steps.max() <= lipschitz_bound(r1, r2, 0.1) * (w[1] - w[0]) * np.sqrt(3)   # ||.||_1 <= sqrt(V) ||.||_2


@pytest.mark.parametrize("bad", [-1.0, 0.0])
def test_bad_alpha(bad):
    with pytest.raises(ValueError, match="alpha"):
        softmax_jacobian([0.0, 1.0], bad)
    with pytest.raises(ValueError, match="alpha"):
        lipschitz_bound([0.0, 1.0], [1.0, 0.0], bad)
    if bad < 0:
        with pytest.raises(ValueError, match="alpha"):
            soft_optimal([0.0, 1.0], bad)
