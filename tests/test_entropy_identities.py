"""The entropy-dynamics identities the entropy methods rely on, checked on a softmax over
a random small vocabulary in float64 (autograd and exact entropy differences as the
independent side; minirlvr.core provides the quantities under test)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from minirlvr.core import entropy_change_first_order, entropy_from_logits, group_advantages, ppo_clip_per_token

logit_vectors = arrays(np.float64, st.integers(2, 16), elements=st.floats(-4, 4))


def t64(x):
    return torch.tensor(np.asarray(x), dtype=torch.float64)


def probs_logp(z):
    lp = torch.log_softmax(z, -1)
    return lp.exp(), lp


def cov(p, x, y):
    return (p * x * y).sum() - (p * x).sum() * (p * y).sum()


def exact_change(z, step):
    return (entropy_from_logits(z + step) - entropy_from_logits(z)).item()


def second_order(z, direction):
    hess = torch.autograd.functional.hessian(entropy_from_logits, z)
    return 0.5 * (direction @ hess @ direction).item()


# 1 ------------------------------------------------------------------------------------------

@given(z=logit_vectors)
def test_entropy_gradient_closed_form(z):
    zt = t64(z).requires_grad_(True)
    h = entropy_from_logits(zt)
    (g,) = torch.autograd.grad(h, zt)
    p, lp = probs_logp(t64(z))
    np.testing.assert_allclose(g.numpy(), (-p * (lp + h.detach())).numpy(), atol=1e-12)
    assert abs(g.sum().item()) < 1e-12  # the gradient is orthogonal to the all-ones shift


# 2 ------------------------------------------------------------------------------------------

@given(z=logit_vectors, d=st.data())
def test_natural_gradient_step_entropy_change(z, d):
    """logits += eta * A (tabular natural-gradient / softmax-policy NPG step):
    dH = -eta Cov_pi(log pi, A) + O(eta^2)."""
    A = d.draw(arrays(np.float64, z.shape, elements=st.floats(-1, 1)))
    assume(np.abs(A).max() > 0.1)
    zt, At = t64(z), t64(A / np.abs(A).max())
    p, lp = probs_logp(zt)
    s2 = second_order(zt, At)
    assume(abs(s2) > 1e-2)  # a genuinely second-order error, so the eta^2 ratio is measurable

    def err(eta):
        predicted = -eta * cov(p, lp, At).item()
        assert predicted == pytest.approx(eta * entropy_change_first_order(zt, At).item(), rel=1e-9, abs=1e-15)
        return abs(exact_change(zt, eta * At) - predicted)

    eta = 1e-3
    e1, e2 = err(eta), err(eta / 2)
    assert e1 == pytest.approx(abs(s2) * eta ** 2, rel=0.1)
    assert 0.2 < e2 / e1 < 0.3


# 3 ------------------------------------------------------------------------------------------

@given(z=logit_vectors, d=st.data())
def test_vanilla_policy_gradient_step_entropy_change(z, d):
    """logits += eta * grad_z E_pi[A] with E_pi[A] = 0: grad = pi * A and
    dH = -eta Cov_pi(log pi, pi * A) + O(eta^2)."""
    zt = t64(z)
    p, lp = probs_logp(zt)
    A = t64(d.draw(arrays(np.float64, z.shape, elements=st.floats(-1, 1))))
    A = A - (p * A).sum()  # centred under pi
    assume(A.abs().max() > 0.1)
    zg = zt.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad((torch.softmax(zg, -1) * A).sum(), zg)  # autograd, not the closed form
    np.testing.assert_allclose(grad.numpy(), (p * A).numpy(), atol=1e-12)  # the closed form it should equal
    scale = grad.abs().max().item()
    assume(scale > 1e-3)
    direction = grad / scale
    s2 = second_order(zt, direction)
    assume(abs(s2) > 1e-2)

    def err(eta):  # step eta * grad, written as (eta * scale) * direction
        predicted = -eta * cov(p, lp, p * A).item()
        assert predicted == pytest.approx(eta * entropy_change_first_order(zt, grad).item(), rel=1e-9, abs=1e-15)
        return abs(exact_change(zt, eta * grad) - predicted)

    eta = 1e-3 / scale
    e1, e2 = err(eta), err(eta / 2)
    assert e1 == pytest.approx(abs(s2) * (eta * scale) ** 2, rel=0.1)
    assert 0.2 < e2 / e1 < 0.3


# 4 ------------------------------------------------------------------------------------------

@given(G=st.integers(1, 8), n_groups=st.integers(1, 5), d=st.data())
def test_grpo_and_dr_grpo_group_identities(G, n_groups, d):
    eps = 1e-6
    rewards = []
    for g in range(n_groups):
        if d.draw(st.booleans()):  # an all-equal group
            rewards += [d.draw(st.sampled_from([0.0, 1.0, 0.1, 1 / 3]))] * G
        else:
            rewards += d.draw(st.lists(st.sampled_from([0.0, 1.0, 0.5, 0.1]), min_size=G, max_size=G))
    r = t64(rewards)
    gid = torch.arange(n_groups).repeat_interleave(G)
    grpo = group_advantages(r, gid, "std", eps)
    dr = group_advantages(r, gid, "none")
    for g in range(n_groups):
        sl = slice(g * G, (g + 1) * G)
        vals = np.array(rewards[sl])
        assert abs(grpo[sl].sum().item()) < 1e-9 and abs(dr[sl].sum().item()) < 1e-12
        if np.all(vals == vals[0]):
            assert torch.all(grpo[sl] == 0) and torch.all(dr[sl] == 0)
        std = vals.std(ddof=1) if G > 1 else 0.0
        np.testing.assert_allclose((grpo[sl] * (std + eps)).numpy(), dr[sl].numpy(), rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(dr[sl].numpy(), vals - vals.mean(), atol=1e-12)


# 5 ------------------------------------------------------------------------------------------

@given(z=logit_vectors, d=st.data())
def test_ppo_clip_gradient_zero_on_clipped_side(z, d):
    V = z.shape[0]
    tok = d.draw(st.integers(0, V - 1))
    log_r = d.draw(st.floats(-1.5, 1.5))
    A = d.draw(st.one_of(st.floats(0.05, 3), st.floats(-3, -0.05)))
    lo, hi = d.draw(st.sampled_from([(0.2, 0.2), (0.2, 0.28), (0.1, 0.5)]))
    r = np.exp(log_r)
    assume(abs(r - (1 - lo)) > 1e-6 and abs(r - (1 + hi)) > 1e-6)
    zt = t64(z).requires_grad_(True)
    logp = torch.log_softmax(zt, -1)[tok]
    old = logp.detach() - log_r
    loss, ratio, clipped = ppo_clip_per_token(logp, old, t64(A), lo, hi)
    (g,) = torch.autograd.grad(loss, zt)
    outside = (A > 0 and r > 1 + hi) or (A < 0 and r < 1 - lo)
    assert bool(clipped) == outside
    if outside:
        assert torch.all(g == 0)
        assert loss.item() == pytest.approx(-A * (1 + hi if A > 0 else 1 - lo), rel=1e-12)
    else:
        p = torch.softmax(t64(z), -1)
        onehot = torch.nn.functional.one_hot(torch.tensor(tok), V).double()
        # d(-A r)/dz = -A r d(log pi_tok)/dz = -A r (onehot - pi)
        np.testing.assert_allclose(g.numpy(), (-A * r * (onehot - p)).numpy(), rtol=1e-9, atol=1e-12)
        assert g.abs().max() > 0


@given(z=logit_vectors, d=st.data())
def test_ppo_at_ratio_one_is_plain_policy_gradient(z, d):
    V = z.shape[0]
    tok = d.draw(st.integers(0, V - 1))
    A = d.draw(st.floats(-3, 3))
    zt = t64(z).requires_grad_(True)
    logp = torch.log_softmax(zt, -1)[tok]
    loss, ratio, clipped = ppo_clip_per_token(logp, logp.detach(), t64(A), 0.2, 0.28)
    assert ratio.item() == 1.0 and not bool(clipped)
    assert loss.item() == pytest.approx(-A, abs=1e-15)
    (g,) = torch.autograd.grad(loss, zt)
    (glogp,) = torch.autograd.grad(torch.log_softmax(zt, -1)[tok], zt)
    np.testing.assert_allclose(g.numpy(), (-A * glogp).numpy(), atol=1e-14)
