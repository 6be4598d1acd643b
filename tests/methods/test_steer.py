"""STEER (arXiv 2510.10150): Omega against explicit math and the entropy identities, the weight maps'
bounds / order / degenerate cases / scale invariance, the reduction to dual-clip PPO (loss and gradient),
detachment, clipping, edge cases, config checks and recipes."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from minirlvr.baselines import PPOClipConfig, ppo_clip_loss, ppo_terms
from minirlvr.core import entropy_change_first_order, entropy_from_logits, ppo_clip_per_token
from minirlvr.methods.steer import SteerConfig, entropy_change_score, steer_loss, steer_weights
from minirlvr.registry import get_recipe, make_config
from minirlvr.rollout import PolicyOutput, RolloutBatch

AGG = ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]
DAPO_PPO = dict(clip_low=0.2, clip_high=0.28, clip_ratio_c=10.0)


# ------------------------------------------------------------------ helpers

@st.composite
def masks(draw, max_b=5, max_t=7, nonempty=False):
    B, T = draw(st.integers(1, max_b)), draw(st.integers(1, max_t))
    m = np.array(draw(st.lists(st.booleans(), min_size=B * T, max_size=B * T))).reshape(B, T)
    if nonempty:
        m[draw(st.integers(0, B - 1)), draw(st.integers(0, T - 1))] = True
    return m


lam_pairs = st.tuples(st.floats(0.05, 3.0), st.floats(0.0, 2.0)).map(lambda t: (t[0], t[0] + t[1]))
seeds = st.integers(0, 10 ** 6)


def make_batch(mask, seed=0, gap=0.3, zero_rows=()):
    """RolloutBatch + PolicyOutput (logp a leaf with grad), float64; old_entropy independent of the current one."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.as_tensor(mask).long()
    B, T = mask.shape
    old_logp = -torch.rand(B, T, generator=g, dtype=torch.float64) * 3 * mask
    a = torch.randn(B, generator=g, dtype=torch.float64)
    a[list(zero_rows)] = 0.0
    adv = a[:, None] * mask
    logp = (old_logp + gap * torch.randn(B, T, generator=g, dtype=torch.float64)).clamp(max=0).requires_grad_(True)
    old_ent = torch.rand(B, T, generator=g, dtype=torch.float64) * 2 * mask
    batch = RolloutBatch(prompt_ids=torch.ones(B, 2, dtype=torch.long), prompt_mask=torch.ones(B, 2, dtype=torch.long),
                         response_ids=torch.full((B, T), 5), response_mask=mask, old_logp=old_logp,
                         old_entropy=old_ent, group_ids=torch.arange(B), problems=[None] * B, texts=[""] * B,
                         truncated=torch.zeros(B, dtype=torch.bool), advantages=adv,
                         rewards=torch.zeros(B, dtype=torch.float64))
    cur_ent = torch.rand(B, T, generator=g, dtype=torch.float64) * 5   # must NOT enter Omega
    out = PolicyOutput(logp=logp, entropy=cur_ent, logits=torch.zeros(B, T, 3, dtype=torch.float64))
    return batch, out


def grad_of(fn, out):
    out.logp.grad = None
    loss, metrics = fn()
    loss.backward()
    return loss.detach(), out.logp.grad.clone(), metrics


def weights_of(batch, out, cfg):
    omega = entropy_change_score(out.logp, batch.old_logp, batch.old_entropy, batch.advantages, batch.response_mask)
    return omega, steer_weights(omega, batch.response_mask, cfg.lambda_min, cfg.lambda_max, cfg.mode)


# ------------------------------------------------------------------ Omega

@given(masks(), seeds)
def test_omega_matches_explicit_formula_with_rollout_entropy(m, seed):
    batch, out = make_batch(m, seed, gap=0.5)
    omega = entropy_change_score(out.logp, batch.old_logp, batch.old_entropy, batch.advantages, batch.response_mask)
    assert not omega.requires_grad
    B, T = m.shape
    for i in range(B):
        for t in range(T):
            if not m[i, t]:
                assert omega[i, t] == 0
                continue
            p = min(max(math.exp(float(out.logp[i, t].detach())), 1e-8), 1 - 1e-8)
            q = min(max(math.exp(float(batch.old_logp[i, t])), 1e-8), 1.0)
            want = float(batch.advantages[i, t]) / q * p * (1 - p) * (math.log(p) + float(batch.old_entropy[i, t]))
            assert float(omega[i, t]) == pytest.approx(want, rel=1e-12, abs=1e-15)


def test_omega_on_policy_and_non_finite():
    logp = torch.log(torch.tensor([[0.3, 0.9, 1e-12, 0.5]], dtype=torch.float64))
    A = torch.tensor([[1.5, -2.0, 1.0, 1.0]], dtype=torch.float64)
    H = torch.tensor([[0.7, 0.1, 1.0, math.nan]], dtype=torch.float64)
    om = entropy_change_score(logp, logp, H, A, torch.ones(1, 4))
    p = logp.exp()
    # first minibatch (p = q): Omega = A (1 - p)(log p + H); p = 1e-12 is clamped to 1e-8 in both p and q
    np.testing.assert_allclose(om[0, :2].numpy(), (A * (1 - p) * (logp + H))[0, :2].numpy(), rtol=1e-13)
    assert float(om[0, 2]) == pytest.approx(1.0 * (1 - 1e-8) * (math.log(1e-8) + 1.0), rel=1e-12)
    assert om[0, 3] == 0                                                       # NaN entropy -> 0


@given(st.floats(1e-6, 1 - 1e-6), st.floats(0.0, 5.0), st.floats(0.01, 5.0), st.booleans())
def test_sign_table(p, H, a, positive):
    A = a if positive else -a
    om = float(entropy_change_score(torch.tensor([[math.log(p)]]), torch.tensor([[math.log(p)]]),
                                    torch.tensor([[H]]), torch.tensor([[A]]), torch.ones(1, 1)))
    lp_plus_h = math.log(p) + H
    if abs(lp_plus_h) > 1e-6:
        assert (om > 0) == ((lp_plus_h > 0) == positive)          # A > 0: Omega > 0 iff log p > -H; flips for A < 0


@given(st.integers(2, 8).flatmap(lambda V: st.tuples(
    st.lists(st.floats(-4, 4), min_size=V, max_size=V), st.integers(0, V - 1))),
    st.floats(-3, 3), st.floats(0.05, 1.0), st.floats(1e-3, 1.0))
def test_entropy_sensitivity_identity_and_single_logit_move(zk, A, q, eta):
    z, k = torch.tensor(zk[0], dtype=torch.float64), zk[1]
    e_k = torch.nn.functional.one_hot(torch.tensor(k), len(z)).double()
    eps0 = torch.zeros((), dtype=torch.float64, requires_grad=True)
    H = entropy_from_logits(z + eps0 * e_k)
    (dH,) = torch.autograd.grad(H, eps0)
    pi = z.softmax(-1)
    p, Hv = float(pi[k]), float(H.detach())
    assert float(dH) == pytest.approx(-p * (math.log(p) + Hv), rel=1e-9, abs=1e-12)   # dH/dz_k
    om = float(entropy_change_score(*(torch.tensor([[x]], dtype=torch.float64) for x in (math.log(p), math.log(q), Hv, A)),
                                    torch.ones(1, 1)))
    eps = eta * A * (1 - p) / q                                   # the single-logit move of the docstring
    assert float(entropy_change_first_order(z, eps * e_k)) == pytest.approx(-eta * om, rel=1e-9, abs=1e-12)
    assert float(eps * dH) == pytest.approx(-eta * om, rel=1e-9, abs=1e-12)


@given(st.integers(2, 8).flatmap(lambda V: st.tuples(
    st.lists(st.floats(-4, 4), min_size=V, max_size=V), st.integers(0, V - 1))), st.floats(-3, 3), st.floats(0.05, 1))
def test_docstring_remark_full_softmax_step(zk, A, q):
    """A gradient step on A r moves every logit; its first-order dH has the extra sum_v pi_v^2 term."""
    z, k = torch.tensor(zk[0], dtype=torch.float64, requires_grad=True), zk[1]
    (dz,) = torch.autograd.grad(A * z.softmax(-1)[k] / q, z)
    z = z.detach()
    pi, lp, H = z.softmax(-1), z.log_softmax(-1), entropy_from_logits(z)
    want = -A * pi[k] / q * (pi[k] * (lp[k] + H) - (pi ** 2 * (lp + H)).sum())
    assert float(entropy_change_first_order(z, dz)) == pytest.approx(float(want), rel=1e-9, abs=1e-12)


# ------------------------------------------------------------------ weights

@st.composite
def omega_cases(draw):
    m = draw(masks())
    vals = draw(st.lists(st.sampled_from([0.0, 0.5, -0.5, 2.0]) | st.floats(-1e3, 1e3) | st.floats(-1e-3, 1e-3),
                         min_size=m.size, max_size=m.size))
    om = np.where(m, np.array(vals).reshape(m.shape), draw(st.sampled_from([0.0, 1e9, -7.0])))
    return torch.tensor(om, dtype=torch.float64), torch.tensor(m)


@given(omega_cases(), lam_pairs, st.sampled_from(["linear", "exp"]))
def test_weights_bounds_order_and_extremes(case, lam, mode):
    om, m = case
    lo_l, hi_l = lam
    if mode == "exp":
        lo_l = min(lo_l, 1.0)
    w = steer_weights(om, m, lo_l, hi_l, mode)
    assert (w[~m] == 0).all()
    if not m.any():
        return
    a, wv = om[m].abs(), w[m]
    ceil = hi_l if mode == "linear" else 1.0
    assert (wv >= lo_l).all() and (wv <= ceil).all()
    order = torch.argsort(a, stable=True)
    assert (torch.diff(wv[order]) <= 0).all()                     # non-increasing in |Omega|
    M, mn = a.max(), a.min()
    if mode == "linear":
        if M > mn:
            assert float(wv[a == M].max()) == pytest.approx(lo_l, rel=1e-12)   # argmax |Omega| -> lambda_min
            assert (wv[a == mn] == hi_l).all()                                 # argmin |Omega| -> lambda_max
        else:
            assert (wv == (lo_l + hi_l) / 2).all()
    elif M >= 0.02:
        assert float(wv[a == M].max()) == pytest.approx(lo_l, rel=1e-12)


@given(masks(nonempty=True), st.floats(0.0, 50.0), lam_pairs, seeds)
def test_all_equal_abs_omega_gives_the_midpoint(m, c, lam, seed):
    signs = torch.randint(0, 2, m.shape, generator=torch.Generator().manual_seed(seed)).double() * 2 - 1
    w = steer_weights(c * signs, torch.tensor(m), *lam)
    assert (w[torch.tensor(m)] == (lam[0] + lam[1]) / 2).all()


@given(masks(nonempty=True), seeds, st.floats(1e-3, 1e3), st.sampled_from(["linear", "exp"]))
def test_scale_invariance_of_the_weights(m, seed, c, mode):
    batch, out = make_batch(m, seed, gap=0.4)
    cfg = SteerConfig(mode=mode)
    om1, w1 = weights_of(batch, out, cfg)
    batch.advantages = batch.advantages * c
    om2, w2 = weights_of(batch, out, cfg)
    np.testing.assert_allclose(om2.numpy(), c * om1.numpy(), rtol=1e-12, atol=1e-300)
    M1, M2 = float(om1.abs().max()), float(om2.abs().max())
    if mode == "linear" or min(M1, M2) >= 0.02:                   # exp: invariant only above the 0.02 floor
        np.testing.assert_allclose(w2.numpy(), w1.numpy(), rtol=0, atol=1e-9)


@given(masks(max_b=6), seeds, lam_pairs)
def test_zero_advantage_gets_lambda_max_and_no_gradient(m, seed, lam):
    m[:2, 0] = True                                           # rows 0, 1 non-empty
    batch, out = make_batch(m, seed, zero_rows=[0])
    omega, _ = weights_of(batch, out, SteerConfig())
    w = steer_weights(omega, batch.response_mask, *lam)
    zero = torch.tensor(m) & (batch.advantages == 0)
    assert zero.any()
    if (omega.abs()[torch.tensor(m)] > 0).any():
        assert (w[zero] == lam[1]).all()
    cfg = SteerConfig(lambda_min=min(lam[0], 1.0), lambda_max=max(lam[1], 1.0))
    _, g, _ = grad_of(lambda: steer_loss(out, batch, cfg, None), out)
    assert (g[zero] == 0).all()


# ------------------------------------------------------------------ the loss

@given(masks(), seeds, st.sampled_from(AGG), st.sampled_from(["linear", "exp"]), st.floats(0.0, 1.5))
def test_lambda_one_is_exactly_dual_clip_ppo(m, seed, agg, mode, gap):
    batch, out = make_batch(m, seed, gap=gap)
    cfg = SteerConfig(lambda_min=1.0, lambda_max=1.0, mode=mode, agg=agg)
    base = PPOClipConfig(**DAPO_PPO, agg=agg)
    l1, g1, _ = grad_of(lambda: steer_loss(out, batch, cfg, None), out)
    l2, g2, _ = grad_of(lambda: ppo_clip_loss(out, batch, base, None), out)
    assert torch.equal(l1, l2) and torch.equal(g1, g2)


@given(masks(), seeds, st.sampled_from(["linear", "exp"]), st.floats(0.0, 1.5))
def test_token_mean_of_weighted_explicit_terms(m, seed, mode, gap):
    """sum m w L / sum m with L by an explicit loop: the denominator counts tokens, not sum w."""
    batch, out = make_batch(m, seed, gap=gap)
    cfg = SteerConfig(mode=mode)
    loss, metrics = steer_loss(out, batch, cfg, None)
    _, w = weights_of(batch, out, cfg)
    tot = 0.0
    for i, t in zip(*np.nonzero(m)):
        A = float(batch.advantages[i, t])
        r = math.exp(min(20.0, max(-20.0, float(out.logp[i, t].detach()) - float(batch.old_logp[i, t]))))
        L = max(-A * r, -A * min(max(r, 0.8), 1.28))
        tot += float(w[i, t]) * (min(L, -A * 10.0) if A < 0 else L)
    assert float(loss) == pytest.approx(tot / max(1, int(m.sum())), rel=1e-12, abs=1e-15)
    assert all(math.isfinite(v) for v in metrics.values())
    if m.any():
        assert metrics["dH_pred"] == pytest.approx(-metrics["omega_mean"])
        assert cfg.lambda_min - 1e-12 <= metrics["w_min"] <= metrics["w_mean"] <= metrics["w_max"] <= 1.2 + 1e-12


@given(masks(), seeds, lam_pairs.filter(lambda p: p[0] <= 1 <= p[1]), st.sampled_from(["linear", "exp"]),
       st.floats(0.0, 2.0))
def test_gradient_is_weight_times_base_gradient_and_clipped_tokens_are_silent(m, seed, lam, mode, gap):
    batch, out = make_batch(m, seed, gap=gap)
    cfg = SteerConfig(lambda_min=lam[0], lambda_max=lam[1], mode=mode)
    _, g, _ = grad_of(lambda: steer_loss(out, batch, cfg, None), out)
    _, g0, _ = grad_of(lambda: ppo_terms(out, batch, cfg), out)
    _, w = weights_of(batch, out, cfg)
    np.testing.assert_allclose(g.numpy(), (w * g0).numpy(), rtol=1e-12, atol=1e-15)
    _, _, clipped = ppo_clip_per_token(out.logp.detach(), batch.old_logp, batch.advantages, 0.2, 0.28, 10.0)
    assert (g[clipped] == 0).all()


def test_clipped_tokens_have_zero_gradient_whatever_the_weight():
    # A > 0 above 1 + eps_h; A < 0 below 1 - eps_l; A < 0 with r > c (dual clip); one unclipped token
    old = torch.log(torch.tensor([[0.2, 0.5, 0.02, 0.3]], dtype=torch.float64))
    new = torch.log(torch.tensor([[0.4, 0.2, 0.6, 0.31]], dtype=torch.float64))
    m = np.ones((1, 4), dtype=bool)
    batch, out = make_batch(m)
    batch.old_logp, batch.advantages = old, torch.tensor([[1.0, -1.0, -0.5, 0.7]], dtype=torch.float64)
    out.logp = new.clone().requires_grad_(True)
    for lam in ((0.8, 1.2), (0.1, 3.0), (1.0, 1.0)):
        _, g, _ = grad_of(lambda: steer_loss(out, batch, SteerConfig(lambda_min=lam[0], lambda_max=lam[1]), None), out)
        _, w = weights_of(batch, out, SteerConfig(lambda_min=lam[0], lambda_max=lam[1]))
        assert (w > 0).all() and (g[0, :3] == 0).all() and g[0, 3] != 0


# ------------------------------------------------------------------ edge cases

@pytest.mark.parametrize("mode", ["linear", "exp"])
def test_empty_one_token_and_extreme_inputs_stay_finite(mode):
    cfg = SteerConfig(mode=mode)
    cases = []
    batch, out = make_batch(np.zeros((3, 4), dtype=bool))                       # empty mask
    cases.append((batch, out))
    m1 = np.zeros((4, 5), dtype=bool)
    m1[:, 0] = True
    cases.append(make_batch(m1, seed=3))                                        # one-token responses
    batch, out = make_batch(np.ones((3, 4), dtype=bool), seed=5)               # extreme values
    batch.old_logp = torch.tensor([[-1e4, 0.0, -50.0, -1e-12]] * 3, dtype=torch.float64)
    out.logp = torch.tensor([[0.0, -1e4, -1e-15, -60.0]] * 3, dtype=torch.float64).requires_grad_(True)
    batch.advantages = torch.tensor([[1e3], [-1e3], [0.0]], dtype=torch.float64).expand(3, 4).clone()
    batch.old_entropy = torch.tensor([[0.0, 1e4, 20.0, 1e-9]] * 3, dtype=torch.float64)
    cases.append((batch, out))
    for batch, out in cases:
        loss, g, metrics = grad_of(lambda: steer_loss(out, batch, cfg, None), out)
        assert torch.isfinite(loss) and torch.isfinite(g).all()
        assert all(math.isfinite(v) for v in metrics.values())
    batch, out = cases[0]
    assert float(steer_loss(out, batch, cfg, None)[0]) == 0.0


# ------------------------------------------------------------------ config and recipes

def test_config_checks():
    for kw, name in (({"lambda_min": 0.0}, "lambda_min"), ({"lambda_min": 1.1}, "lambda_min"),
                     ({"lambda_max": 0.9}, "lambda_max"), ({"mode": "cubic"}, "mode"), ({"clip_low": -1}, "clip_low")):
        with pytest.raises(ValueError, match=rf"^SteerConfig\.{name} must be"):
            SteerConfig(**kw)
    for args in ((1.2, 0.8, "linear"), (0.0, 1.0, "linear"), (1.2, 1.5, "exp"), (0.8, 1.2, "cubic")):
        with pytest.raises(ValueError):
            steer_weights(torch.ones(1, 2), torch.ones(1, 2), *args)


def test_recipes_differ_from_their_baselines_in_the_weights_only():
    stale = {"minibatches": 4, "ppo_epochs": 2}
    for name in ("steer", "steer_exp", "steer_extreme", "dapo_stale", "dapo_extreme"):
        r = get_recipe(name)
        assert (r.rollout, r.reward, r.advantage, r.train_cfg) == ("plain", "verifier", "grpo", stale)
    ppo = ("clip_low", "clip_high", "clip_ratio_c", "agg", "kl_coef", "entropy_coef")
    for steer, base in (("steer", "dapo_stale"), ("steer_exp", "dapo_stale"), ("steer_extreme", "dapo_extreme")):
        s = make_config(SteerConfig, get_recipe(steer).loss_cfg)
        b = make_config(PPOClipConfig, get_recipe(base).loss_cfg)
        assert [getattr(s, k) for k in ppo] == [getattr(b, k) for k in ppo]
    assert make_config(SteerConfig, get_recipe("steer").loss_cfg) == SteerConfig()
    assert (make_config(SteerConfig, get_recipe("steer_extreme").loss_cfg).clip_low, SteerConfig(
        **get_recipe("steer_extreme").loss_cfg).clip_high) == (0.99, 5.0)
    e = make_config(SteerConfig, get_recipe("steer_exp").loss_cfg)
    assert (e.mode, e.lambda_min, e.lambda_max) == ("exp", 0.8, 1.0)


def test_smoke_train_random_tiny_policy(tmp_path):
    from minirlvr.model import GPT, GPTConfig, save_checkpoint
    from minirlvr.trainer import TrainConfig, train
    tmp = tmp_path
    torch.manual_seed(0)
    save_checkpoint(str(tmp / "tiny.pt"), GPT(GPTConfig(d_model=16, n_layers=1, n_heads=2)))
    res = train(TrainConfig(recipe="steer", prompts_per_step=4, group_size=4, eval_every=0, progress=False,
                            out_dir=str(tmp), steps=2, init=str(tmp / "tiny.pt")))
    hist = res["history"]
    assert len(hist) == 2 and all(0.8 <= h["w_min"] <= h["w_mean"] <= h["w_max"] <= 1.2 for h in hist)
    assert all(math.isfinite(v) for h in hist for v in h.values() if isinstance(v, float))
