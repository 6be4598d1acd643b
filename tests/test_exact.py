"""minirlvr.exact: the expected PG / NPG directions against autograd and enumeration, the Entropy-Clip rule
against the true entropy, the clipped-surrogate gradient against its closed form, and the GRPO bandit loop
(determinism per seed, on-policy coincidence of the clip variants, learning under the true reward)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minirlvr.core import entropy_from_logits, policy_covariance
from minirlvr.exact import (clipped_surrogate, clipped_surrogate_grad_logits, expected_direction,
                            first_order_entropy_change, gradient_is_zero, simulate_bandit, softmax_bandit_step, softmax_fisher)

f64 = dict(dtype=torch.float64)


@st.composite
def bandits(draw, max_v=8):
    """(z [V], A [V], X [V] 0/1) float64: logits of spread 0.1-5, advantages, a random clip mask."""
    V = draw(st.integers(2, max_v))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    z = torch.tensor(rng.normal(0, draw(st.sampled_from([0.1, 1.0, 5.0])), V), **f64)
    A = torch.tensor(rng.normal(0, 1, V), **f64)
    X = torch.tensor(rng.random(V) < draw(st.sampled_from([0.0, 0.5, 1.0])), **f64)
    return z, A, X


# ------------------------------------------------------------------ expected directions

@given(b=bandits())
def test_pg_direction_is_the_gradient_of_the_expected_advantage_and_its_enumeration(b):
    z, A, X = b
    zz = z.clone().requires_grad_(True)
    (g,) = torch.autograd.grad((torch.softmax(zz, -1) * A * X).sum(), zz)        # grad_z E_pi[A X]
    d = expected_direction(z, A, "pg", X)
    torch.testing.assert_close(d, g, rtol=1e-12, atol=1e-14)
    pi = torch.softmax(z, -1)                                                     # E_{a~pi}[A X grad log pi(a)]
    enum = sum(pi[a] * A[a] * X[a] * (torch.eye(len(z), **f64)[a] - pi) for a in range(len(z)))
    torch.testing.assert_close(d, enum, rtol=1e-12, atol=1e-14)


@given(b=bandits())
def test_npg_direction_is_the_fisher_preimage_of_pg(b):
    z, A, X = b
    pi = torch.softmax(z, -1)
    fisher = softmax_fisher(z)
    torch.testing.assert_close(fisher, torch.autograd.functional.jacobian(lambda x: torch.softmax(x, -1), z))
    npg = expected_direction(z, A, "npg", X)
    torch.testing.assert_close(fisher @ npg, expected_direction(z, A, "pg", X), rtol=1e-12, atol=1e-14)
    assert abs(float((pi * npg).sum())) < 1e-12                                  # centred under pi


@given(b=bandits(), lr=st.floats(0.01, 3.0))
def test_npg_step_is_mirror_descent(b, lr):
    """softmax(z + lr (AX - c)) = pi exp(lr A X) / Z: the card's pi_new ∝ pi_old exp(eta A~)."""
    z, A, X = b
    pi = torch.softmax(z, -1)
    want = pi * torch.exp(lr * A * X)
    torch.testing.assert_close(torch.softmax(softmax_bandit_step(z, A, "npg", lr, X), -1), want / want.sum(),
                               rtol=1e-10, atol=1e-14)


@given(b=bandits(), kind=st.sampled_from(["pg", "npg"]))
def test_mask_edges(b, kind):
    z, A, _ = b
    torch.testing.assert_close(softmax_bandit_step(z, A, kind, 0.7, torch.ones_like(A)),
                               softmax_bandit_step(z, A, kind, 0.7))
    assert torch.equal(softmax_bandit_step(z, A, kind, 0.7, torch.zeros_like(A)), z)   # all clipped: no move
    with pytest.raises(ValueError, match="kind"):
        expected_direction(z, A, "sgd")


# ------------------------------------------------------------------ the Entropy-Clip rule

@given(b=bandits(), kind=st.sampled_from(["pg", "npg"]), lr=st.floats(0.01, 2.0))
def test_entropy_clip_rule(b, kind, lr):
    """First-order dH of the step is -lr Cov_pi(log pi, A X) (NPG) or -lr Cov_pi(log pi, pi (AX - E AX)) (PG), equals
    the directional derivative of the true entropy, and the remainder of a step of size h is O(h^2)."""
    z, A, X = b
    pi = torch.softmax(z, -1)
    dH1 = first_order_entropy_change(z, A, kind, lr, X)
    AX = A * X
    y = AX if kind == "npg" else pi * (AX - (pi * AX).sum())       # PG: centring matters (c pi is no constant)
    torch.testing.assert_close(dH1, -lr * policy_covariance(pi, torch.log(pi), y), rtol=1e-9, atol=1e-13)
    d = lr * expected_direction(z, A, kind, X)
    zz = z.clone().requires_grad_(True)
    (gH,) = torch.autograd.grad(entropy_from_logits(zz), zz)
    torch.testing.assert_close(dH1, (gH * d).sum(), rtol=1e-9, atol=1e-13)
    errs = [abs(float(entropy_from_logits(z + h * d) - entropy_from_logits(z)) - h * float(dH1)) for h in (1e-2, 5e-3)]
    assert errs[1] <= errs[0] / 4 * 1.2 + 1e-13                                   # halving h quarters the error


# ------------------------------------------------------------------ clipped surrogate

@st.composite
def sampled_groups(draw):
    V, N = draw(st.integers(2, 6)), draw(st.integers(1, 8))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    z_old = torch.tensor(rng.normal(0, 1.5, V), **f64)
    spread = draw(st.sampled_from([0.0, 0.1, 0.5, 2.0, 30.0]))                  # 30: |log r| beyond core's clamp
    z = z_old + torch.tensor(rng.normal(0, spread, V), **f64)
    actions = torch.tensor(rng.integers(0, V, N))
    adv = torch.tensor(rng.normal(0, 1, N) * (rng.random(N) < 0.8), **f64)      # some A = 0
    return z, z_old, actions, adv


@given(g=sampled_groups(), low=st.sampled_from([0.0, 0.2, 0.5, 1.0, None]), high=st.sampled_from([0.0, 0.2, 1.0, None]))
def test_clipped_surrogate_gradient_closed_form(g, low, high):
    """The closed-form gradient equals autograd of J through core.ppo_clip_per_token; where core's log-ratio clamp
    (|log r| <= 20) is inactive both are (1/N) sum_j A_j r_j X_j (e_{a_j} - pi), X_j = not gradient_is_zero,
    and J = mean min(r A, clip(r) A)."""
    z, z_old, actions, adv = g
    eps_l, eps_h = (1.0 if low is None else low), (math.inf if high is None else high)
    grad = clipped_surrogate_grad_logits(z, z_old, actions, adv, low, high)
    zz = z.clone().requires_grad_(True)
    (auto,) = torch.autograd.grad(clipped_surrogate(zz, z_old, actions, adv, low, high), zz)
    torch.testing.assert_close(grad, auto, rtol=1e-10, atol=1e-13)
    logr = torch.log_softmax(z, -1)[actions] - torch.log_softmax(z_old, -1)[actions]
    if logr.abs().max() < 20:
        pi, r = torch.softmax(z, -1), logr.exp()
        X = (~gradient_is_zero(r, adv, eps_l, eps_h)).to(torch.float64)
        want = ((adv * r * X)[:, None] * (torch.eye(len(z), **f64)[actions] - pi)).mean(0)
        torch.testing.assert_close(grad, want, rtol=1e-9, atol=1e-13)
        J = torch.minimum(r * adv, r.clamp(1 - eps_l, 1 + eps_h) * adv).mean()
        torch.testing.assert_close(clipped_surrogate(z, z_old, actions, adv, low, high), J, rtol=1e-12, atol=1e-14)


def test_closed_form_gradient_at_the_edges():
    """Ratios exactly ON a clip bound keep their gradient (the clipped branch is not strictly larger), and
    log-ratios beyond core's clamp at +-20 get none: closed form = autograd in both cases."""
    z_old, a = torch.zeros(3, **f64), torch.tensor([0, 0, 2, 2])
    adv = torch.tensor([1.0, -1.0, -1.0, 1.0], **f64)
    z = torch.tensor([0.3, 0.0, -0.2], **f64)
    r = (torch.log_softmax(z, -1) - torch.log_softmax(z_old, -1)).exp()
    high, low = float(r[0]) - 1, 1 - float(r[2])         # exact in float: r[0] = 1 + high, r[2] = 1 - low
    for zz_, lo, hi in ((z, low, high), (torch.tensor([25.0, 0.0, -25.0], **f64), 0.2, 0.2)):
        zz = zz_.clone().requires_grad_(True)
        (auto,) = torch.autograd.grad(clipped_surrogate(zz, z_old, a, adv, lo, hi), zz)
        grad = clipped_surrogate_grad_logits(zz_, z_old, a, adv, lo, hi)
        torch.testing.assert_close(grad, auto, rtol=1e-12, atol=1e-15)
    pi = torch.softmax(z, -1)                            # on the bounds every token carries A r (e_a - pi) / N
    want = sum(adv[j] * r[a[j]] * (torch.eye(3, **f64)[a[j]] - pi) for j in range(4)) / 4
    torch.testing.assert_close(clipped_surrogate_grad_logits(z, z_old, a, adv, low, high), want, rtol=1e-12, atol=1e-15)


@given(g=sampled_groups())
def test_on_policy_clipping_is_inactive(g):
    """z = z_old: every clip setting gives the same (on-policy PG) gradient, (1/N) sum_j A_j (e_{a_j} - pi)."""
    _, z_old, actions, adv = g
    grads = [clipped_surrogate_grad_logits(z_old, z_old, actions, adv, lo, hi)
             for lo, hi in ((None, None), (0.2, 0.2), (1.0, 0.2), (0.2, None), (0.0, 0.0))]
    pg = (adv[:, None] * (torch.eye(len(z_old), **f64)[actions] - torch.softmax(z_old, -1))).mean(0)
    for gr in grads:
        assert torch.equal(gr, grads[0])
    torch.testing.assert_close(grads[0], pg, rtol=1e-12, atol=1e-14)


@settings(max_examples=10)
@given(seed=st.integers(0, 1000))
def test_rows_are_independent(seed):
    rng = np.random.default_rng(seed)
    z_old = torch.tensor(rng.normal(size=(3, 5)), **f64)
    z = z_old + torch.tensor(rng.normal(size=(3, 5)), **f64)
    a, adv = torch.tensor(rng.integers(0, 5, (3, 4))), torch.tensor(rng.normal(size=(3, 4)), **f64)
    g = clipped_surrogate_grad_logits(z, z_old, a, adv, 0.2, 0.2)
    for i in range(3):
        torch.testing.assert_close(g[i], clipped_surrogate_grad_logits(z[i], z_old[i], a[i], adv[i], 0.2, 0.2),
                                   rtol=1e-14, atol=1e-16)


def test_bad_clip_bounds():
    z = torch.zeros(3, **f64)
    for low, high in ((-0.1, 0.2), (1.5, 0.2), (0.2, -1.0)):
        with pytest.raises(ValueError, match="clip_low"):
            clipped_surrogate(z, z, torch.tensor([0]), torch.ones(1, **f64), low, high)


# ------------------------------------------------------------------ the GRPO bandit loop

def test_simulation_is_deterministic_per_seed():
    a = simulate_bandit(steps=40, seed=[3, 5, 7])
    b = simulate_bandit(steps=40, seed=5)
    assert a["entropy"].shape == (3, 41) and b["entropy"].shape == (41,) and b["z"].shape == (8,)
    np.testing.assert_array_equal(a["entropy"][1], b["entropy"])                 # a seed's row = its run alone
    np.testing.assert_array_equal(simulate_bandit(steps=40, seed=5)["z"], b["z"])
    assert not np.array_equal(a["entropy"][0], a["entropy"][2])


def test_one_inner_step_makes_every_clip_variant_coincide():
    """The first inner step is on-policy (r = 1): with inner_steps = 1 the clip settings give identical runs."""
    runs = [simulate_bandit(steps=30, inner_steps=1, seed=[0, 1, 2], clip_low=lo, clip_high=hi)["entropy"]
            for lo, hi in ((None, None), (0.2, 0.2), (1.0, 0.2), (0.2, None))]
    for r in runs[1:]:
        np.testing.assert_array_equal(r, runs[0])
    four = [simulate_bandit(steps=30, inner_steps=4, seed=[0, 1, 2], clip_low=lo, clip_high=hi)["entropy"]
            for lo, hi in ((None, None), (1.0, 0.2))]
    assert not np.array_equal(four[0], four[1])                                   # ... but not with 4


def test_no_inner_steps_leave_the_policy_alone():
    out = simulate_bandit(V=5, steps=5, inner_steps=0, seed=0)
    np.testing.assert_allclose(out["entropy"], math.log(5), rtol=1e-14)
    np.testing.assert_array_equal(out["z"], np.zeros(5))


def test_true_reward_learns_the_correct_arms():
    out = simulate_bandit(V=6, G=8, steps=60, reward="true", correct=(1, 4), seed=list(range(8)))
    np.testing.assert_allclose(out["p_correct"][:, 0], 2 / 6, rtol=1e-12)
    assert (out["p_correct"][:, -1] > 0.9).all()
    assert (out["entropy"][:, -1] < out["entropy"][:, 0]).all()


def test_simulation_rejects_bad_settings():
    for kw in (dict(reward="noise"), dict(V=1), dict(G=1), dict(p=1.5), dict(clip_low=2.0)):
        with pytest.raises(ValueError):
            simulate_bandit(steps=1, **kw)
