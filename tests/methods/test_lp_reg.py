"""Lp-Reg (arXiv 2510.03222): the min-p proxy, the k3 regulariser, the token selection and the loss,
checked against brute-force loops, closed forms, autograd and the PPO baseline (value and gradient)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minirlvr.baselines import PPOClipConfig, ppo_clip_loss
from minirlvr.core import aggregate, kl_estimate, logprobs_from_logits
from minirlvr.methods.lp_reg import (EXTRA, FILTERED_LOGIT, LpRegConfig, ProxyMassConfig, lp_reg_loss,
                                     lp_reg_prepare, min_p_keep, proxy_logits, proxy_logprobs, proxy_mass_stats,
                                     select_tokens)
from minirlvr.registry import get_recipe, get_stage, make_config
from minirlvr.rollout import PolicyOutput, RolloutBatch

AGG = ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]
PPO_1_9 = dict(clip_low=1.0, clip_high=9.0)


# ------------------------------------------------------------------ helpers

grid = st.integers(-640, 640).map(lambda i: i / 32)          # logits on a grid in [-20, 20]: ties happen


@st.composite
def logits_rows(draw, max_n=4, max_v=9, elems=grid):
    n, V = draw(st.integers(1, max_n)), draw(st.integers(2, max_v))
    return torch.tensor(draw(st.lists(elems, min_size=n * V, max_size=n * V)), dtype=torch.float64).view(n, V)


kappas = st.sampled_from([0.0, 1e-3, 0.02, 0.1, 0.5, 1.0]) | st.floats(0.0, 1.0)
temps = st.sampled_from([1.0, 0.5, 1.7])


def make_batch(seed=0, B=4, T=6, V=7, gap=0.3, scale=2.0, p_mask=0.8, adv=None, mask=None):
    """RolloutBatch with old_logits (tempered, T = 1) + PolicyOutput whose logp is a grad leaf, float64."""
    g = torch.Generator().manual_seed(seed)
    old_logits = torch.randn(B, T, V, generator=g, dtype=torch.float64) * scale
    tokens = torch.distributions.Categorical(logits=old_logits).sample()
    if mask is None:
        mask = (torch.rand(B, T, generator=g) < p_mask).long()
    mask = torch.as_tensor(mask).long()
    old_logp = logprobs_from_logits(old_logits, tokens) * mask
    if adv is None:
        adv = torch.tensor([-1.5, -0.5, 0.0, 0.7, 1.2], dtype=torch.float64)[torch.randint(0, 5, (B,), generator=g)]
    adv = torch.as_tensor(adv, dtype=torch.float64)[:, None] * mask
    logp = (old_logp + gap * torch.randn(B, T, generator=g, dtype=torch.float64)).requires_grad_(True)
    batch = RolloutBatch(prompt_ids=torch.ones(B, 2, dtype=torch.long), prompt_mask=torch.ones(B, 2, dtype=torch.long),
                         response_ids=tokens, response_mask=mask, old_logp=old_logp,
                         old_entropy=torch.zeros(B, T, dtype=torch.float64), group_ids=torch.arange(B),
                         problems=[None] * B, texts=[""] * B, truncated=torch.zeros(B, dtype=torch.bool),
                         old_logits=old_logits, advantages=adv, rewards=torch.zeros(B, dtype=torch.float64))
    out = PolicyOutput(logp=logp, entropy=torch.rand(B, T, generator=g, dtype=torch.float64),
                       logits=torch.zeros(B, T, V, dtype=torch.float64))
    return batch, out


def loss_and_grad(fn, out, batch, cfg):
    out.logp.grad = None
    loss, metrics = fn(out, batch, cfg, None)
    loss.backward()
    return loss.detach(), out.logp.grad.clone(), metrics


def k3_ref(l, q):
    x = q - l
    return min(10.0, math.exp(x) - x - 1) if x < 700 else 10.0


# ------------------------------------------------------------------ proxy

@given(z=logits_rows(), kappa=kappas, temp=temps)
def test_proxy_is_the_renormalised_min_p_filter(z, kappa, temp):
    """K by a Python loop over untempered probs; pi_proxy sums to 1 over K, is 0 off K, pi_proxy / pi_old = 1 / Z
    on K; the argmax is always kept."""
    zp, keep = proxy_logits(z, kappa, temp)
    pi_old, pi_proxy = torch.softmax(z, -1), torch.softmax(zp, -1)
    for i in range(z.shape[0]):
        p1 = [math.exp(v) for v in (z[i] * temp).tolist()]
        p1 = [v / sum(p1) for v in p1]
        ref = [v >= kappa * max(p1) for v in p1]
        assert keep[i].tolist() == ref or kappa not in (0.0, 1.0) and _near_threshold(p1, kappa)
        K = keep[i]
        assert bool(K[int(z[i].argmax())])
        Z = float(pi_old[i][K].sum())
        assert abs(float(pi_proxy[i][K].sum()) - 1) < 1e-12 and float(pi_proxy[i][~K].sum()) == 0.0
        assert torch.allclose(pi_proxy[i][K] / pi_old[i][K], torch.full((int(K.sum()),), 1 / Z, dtype=z.dtype),
                              rtol=1e-10)
        assert (zp[i][~K] == FILTERED_LOGIT / temp).all() and torch.isfinite(zp[i]).all()


def _near_threshold(p, kappa):   # float rounding of softmax may flip a token lying exactly on kappa * max
    return any(abs(v - kappa * max(p)) < 1e-12 for v in p)


@given(z=logits_rows(), temp=temps, data=st.data())
def test_kappa_zero_is_pi_old_and_kappa_one_keeps_only_the_argmax_ties_included(z, temp, data):
    tok = torch.tensor(data.draw(st.lists(st.integers(0, z.shape[1] - 1), min_size=z.shape[0], max_size=z.shape[0])))
    assert torch.equal(proxy_logprobs(z, tok, 0.0, temp), logprobs_from_logits(z, tok))   # q = l_old exactly
    assert min_p_keep(z, 0.0, temp).all()
    top = min_p_keep(z, 1.0, temp)
    assert torch.equal(top, (z * temp) == (z * temp).amax(-1, keepdim=True))


def test_filtered_tokens_get_minus_1e4_and_everything_stays_finite_at_extreme_logits():
    z = torch.tensor([[0.0, -3.0, -9.0, -50.0], [1e6, -1e6, 1e6 - 1, 0.0], [-5e4, -5e4 - 2, -6e4, -5e4]],
                     dtype=torch.float64)
    for kappa in (0.02, 0.5, 1.0):
        q = proxy_logprobs(z[:, None, :].expand(3, 4, 4), torch.arange(4).expand(3, 4), kappa)
        assert torch.isfinite(q).all()
        keep = min_p_keep(z, kappa)
        pi = torch.softmax(proxy_logits(z, kappa)[0], -1)
        assert torch.allclose(pi[keep].sum() / 3, torch.tensor(1.0, dtype=torch.float64))   # even at |z| ~ 1e4
        assert (q[~keep] < FILTERED_LOGIT + 10).all() and (q[keep] > -100).all()


# ------------------------------------------------------------------ k3

@given(i=st.integers(-1280, 1280), j=st.integers(-1280, 1280))
def test_k3_value_sign_gradient_and_clamp(i, j):
    """k3(l, q) = clamp(e^{q-l} - (q-l) - 1, 10) >= 0, = 0 iff q = l; d/dl = 1 - e^{q-l} below the clamp, 0 above."""
    l = torch.tensor(i / 64, dtype=torch.float64, requires_grad=True)
    q = torch.tensor(j / 64, dtype=torch.float64)
    k3 = kl_estimate(l, q, "k3", clamp=10.0)
    k3.backward()
    k3 = k3.detach()
    assert float(k3) >= 0 and (float(k3) == 0) == (i == j)
    assert math.isclose(float(k3), k3_ref(i / 64, j / 64), rel_tol=1e-12, abs_tol=1e-15)
    if k3_ref(i / 64, j / 64) < 10 - 1e-9:
        assert math.isclose(float(l.grad), 1 - math.exp((j - i) / 64), rel_tol=1e-10, abs_tol=1e-15)
    elif k3_ref(i / 64, j / 64) == 10 and math.exp((j - i) / 64) - (j - i) / 64 - 1 > 10 + 1e-9:
        assert float(l.grad) == 0.0


# ------------------------------------------------------------------ selection

@st.composite
def selection_cases(draw):
    B, T = draw(st.integers(1, 5)), draw(st.integers(1, 8))
    n = B * T
    mask = torch.tensor(draw(st.lists(st.booleans(), min_size=n, max_size=n))).view(B, T)
    adv = torch.tensor(draw(st.lists(st.sampled_from([-1.0, -0.3, 0.0, 0.5]), min_size=B, max_size=B)))[:, None]
    adv = adv.expand(B, T).clone()
    vals = st.integers(-40, 0).map(lambda v: v / 8)     # ties in l and l = q happen
    l = torch.tensor(draw(st.lists(vals, min_size=n, max_size=n)), dtype=torch.float64).view(B, T)
    q = torch.tensor(draw(st.lists(vals | st.just(FILTERED_LOGIT), min_size=n, max_size=n)),
                     dtype=torch.float64).view(B, T)
    rho = draw(st.sampled_from([0.0, 0.01, 0.05, 0.2, 0.5, 1.0]) | st.floats(0.0, 1.0))
    return l, q, adv, mask, rho, draw(st.integers(1, 3))


@given(case=selection_cases())
def test_selection_is_the_k_lowest_negatives_below_their_proxy(case):
    l, q, adv, mask, rho, min_sel = case
    sel, k, n_neg = select_tokens(l, q, adv, mask, rho, min_sel)
    flat_l, flat_q = l.flatten().tolist(), q.flatten().tolist()
    neg = [i for i, (m, a) in enumerate(zip(mask.flatten().tolist(), adv.flatten().tolist())) if m and a < 0]
    assert n_neg == len(neg)
    assert k == (0 if rho == 0 or not neg else max(1, int(len(neg) * rho)))
    lowest = sorted(neg, key=lambda i: (flat_l[i], i))[:k]
    expect = {i for i in lowest if flat_l[i] < flat_q[i]} if k >= min_sel else set()
    got = set(sel.flatten().nonzero().squeeze(1).tolist())
    assert got == expect and len(got) <= k
    for i in got:                            # the card's claims, one by one
        assert mask.flatten()[i] and adv.flatten()[i] < 0 and flat_l[i] < flat_q[i] and i in lowest


def test_official_quirk_k_must_exceed_one_and_the_toy_setting_applies_at_k_1():
    """70 negative tokens, rho = 1%: k = max(1, 0) = 1, so the official rule (min_selected 2) selects nothing."""
    l = -torch.arange(70, dtype=torch.float64)[None] / 10
    q, adv, mask = torch.zeros_like(l), -torch.ones_like(l), torch.ones_like(l)
    assert select_tokens(l, q, adv, mask, 0.01, 2)[0].sum() == 0
    sel, k, _ = select_tokens(l, q, adv, mask, 0.01, 1)
    assert k == 1 and sel.flatten().nonzero().tolist() == [[69]]            # the lowest-l token
    assert select_tokens(l, q, adv, mask, 0.05, 2)[1] == 3 and select_tokens(l, q, adv, mask, 0.05, 2)[0].sum() == 3
    assert select_tokens(l, q, adv, mask, 0.0, 1)[0].sum() == 0            # rho = 0: off under either rule


# ------------------------------------------------------------------ loss

@settings(max_examples=25)
@given(seed=st.integers(0, 10 ** 6), agg=st.sampled_from(AGG), gap=st.sampled_from([0.0, 0.3, 3.0]),
       zero=st.sampled_from(["beta", "rho"]), kappa=st.sampled_from([0.02, 0.3]))
def test_beta_zero_or_rho_zero_is_ppo_exactly(seed, agg, gap, zero, kappa):
    """In value and gradient, for any ratio (gap 3 puts r far above 10): with eps_l = 1 and no dual clip an
    A < 0 token is never clipped, so dropping its clip changes nothing."""
    batch, out = make_batch(seed, gap=gap)
    cfg = LpRegConfig(agg=agg, kappa=kappa, min_selected=1, rho=0.0 if zero == "rho" else 0.5,
                      beta=0.0 if zero == "beta" else 1.0)
    lv, lg, m = loss_and_grad(lp_reg_loss, out, batch, cfg)
    pv, pg, _ = loss_and_grad(ppo_clip_loss, out, batch, PPOClipConfig(agg=agg, **PPO_1_9))
    assert torch.allclose(lv, pv, rtol=1e-12, atol=1e-14) and torch.allclose(lg, pg, rtol=1e-12, atol=1e-14)
    assert m["lpreg/n_reg"] == 0 if zero == "rho" else m["lpreg/k"] > 0 or m["lpreg/n_neg"] == 0


@settings(max_examples=25)
@given(seed=st.integers(0, 10 ** 6), agg=st.sampled_from(AGG), beta=st.sampled_from([0.0, 0.5, 1.0]),
       clip=st.sampled_from([(1.0, 9.0, None), (0.2, 0.28, 3.0)]))
def test_loss_against_an_explicit_per_token_loop(seed, agg, beta, clip):
    """L_j = -A r + beta k3 on S (unclipped even at eps = 0.2 / dual clip), the PPO-clip loss elsewhere."""
    batch, out = make_batch(seed, gap=0.8)
    cfg = LpRegConfig(agg=agg, rho=0.5, min_selected=1, beta=beta, clip_low=clip[0], clip_high=clip[1],
                      clip_ratio_c=clip[2])
    loss, _ = lp_reg_loss(out, batch, cfg, None)
    q = proxy_logprobs(batch.old_logits, batch.response_ids, cfg.kappa)
    sel, _, _ = select_tokens(out.logp, q, batch.advantages, batch.response_mask, cfg.rho, 1)
    L = torch.zeros_like(batch.old_logp)
    for i in range(L.shape[0]):
        for j in range(L.shape[1]):
            a, r = float(batch.advantages[i, j]), math.exp(float(out.logp[i, j].detach() - batch.old_logp[i, j]))
            if sel[i, j]:
                L[i, j] = -a * r + beta * k3_ref(float(out.logp[i, j].detach()), float(q[i, j]))
            else:
                v = max(-a * r, -a * min(max(r, 1 - clip[0]), 1 + clip[1]))
                L[i, j] = min(v, -a * clip[2]) if clip[2] is not None and a < 0 else v
    assert torch.allclose(loss.detach(), aggregate(L, batch.response_mask, agg), rtol=1e-10, atol=1e-12)


@settings(max_examples=25)
@given(seed=st.integers(0, 10 ** 6), beta=st.sampled_from([0.1, 1.0, 3.0]))
def test_descent_on_the_regulariser_raises_the_selected_log_probs(seed, beta):
    """grad(beta) - grad(0) = beta (1 - e^{q-l}) / N on S (< 0: a descent step raises l), 0 off S."""
    batch, out = make_batch(seed, gap=0.5)
    cfg = LpRegConfig(rho=0.5, min_selected=1, beta=beta)
    _, g1, m = loss_and_grad(lp_reg_loss, out, batch, cfg)
    _, g0, _ = loss_and_grad(lp_reg_loss, out, batch, LpRegConfig(rho=0.5, min_selected=1, beta=0.0))
    q = batch.extras.get(EXTRA, proxy_logprobs(batch.old_logits, batch.response_ids, cfg.kappa))
    sel, _, _ = select_tokens(out.logp, q, batch.advantages, batch.response_mask, cfg.rho, 1)
    l = out.logp.detach()
    unclamped = (q - l).exp() - (q - l) - 1 < 10
    expect = torch.where(sel & unclamped, beta * (1 - (q - l).exp()), 0.0) / batch.response_mask.sum()
    assert torch.allclose(g1 - g0, expect, rtol=1e-9, atol=1e-15)
    assert ((g1 - g0)[sel] <= 0).all() and ((g1 - g0)[sel & unclamped] < 0).all()
    assert m["lpreg/n_reg"] == int(sel.sum()) and (m["lpreg/gap_reg"] > 0) == bool(sel.any())


def test_on_policy_at_kappa_zero_nothing_is_selected():
    batch, out = make_batch(3, B=6, T=8, gap=0.0)
    assert torch.equal(out.logp, batch.old_logp)
    _, m = lp_reg_loss(out, batch, LpRegConfig(kappa=0.0, rho=1.0, min_selected=1), None)
    assert m["lpreg/k"] > 0 and m["lpreg/n_reg"] == 0
    _, m = lp_reg_loss(out, batch, LpRegConfig(kappa=0.3, rho=1.0, min_selected=1), None)
    assert m["lpreg/n_reg"] > 0          # a real filter makes Z < 1, so kept tokens sit below their proxy


@pytest.mark.parametrize("kind", ["empty_mask", "no_negative", "one_token", "extreme"])
def test_edge_cases_stay_finite(kind):
    kw = dict(empty_mask=dict(mask=torch.zeros(3, 4)), no_negative=dict(adv=[0.0, 1.0, 0.5]),
              one_token=dict(mask=torch.tensor([[1, 0, 0, 0]] * 3)), extreme=dict(scale=1e5, gap=50.0))[kind]
    batch, out = make_batch(7, B=3, T=4, **kw)
    if kind == "extreme":
        with torch.no_grad():
            out.logp.copy_(torch.where(batch.response_mask.bool(), -torch.rand(3, 4, dtype=torch.float64) * 1e5, 0.0))
    cfg = LpRegConfig(rho=1.0, min_selected=1)
    loss, grad, m = loss_and_grad(lp_reg_loss, out, batch, cfg)
    assert torch.isfinite(loss) and torch.isfinite(grad).all() and all(math.isfinite(v) for v in m.values())
    if kind in ("empty_mask", "no_negative"):
        assert m["lpreg/n_reg"] == 0 and m["lpreg/k"] == 0
        pv, _, _ = loss_and_grad(ppo_clip_loss, out, batch, PPOClipConfig(**PPO_1_9))
        assert float(loss) == float(pv)


# ------------------------------------------------------------------ mass stats, prepare, registry

@given(z=logits_rows(max_n=3, max_v=8), kappa=kappas, spark=st.sampled_from([0.0, 0.1, 0.5, 1.0]))
def test_proxy_mass_stats_against_numpy(z, kappa, spark):
    z3, mask = z[None], torch.ones(1, z.shape[0])
    s = proxy_mass_stats(z3, mask, kappa, spark_max=spark)
    p = np.exp(z.numpy() - z.numpy().max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    keep = min_p_keep(z, kappa).numpy()
    assert math.isclose(s["noise_mass"], (p * ~keep).sum(-1).mean(), abs_tol=1e-12)
    assert math.isclose(s["spark_mass"], (p * (keep & (p <= spark))).sum(-1).mean(), abs_tol=1e-12)
    assert math.isclose(s["kept_size"], keep.sum(-1).mean())
    if spark == 1.0:
        assert math.isclose(s["noise_mass"] + s["spark_mass"], 1.0, rel_tol=1e-12)
    if kappa == 0.0:
        assert s["noise_mass"] == 0.0


def test_prepare_stores_the_proxy_once_and_it_survives_minibatch_selection():
    batch, out = make_batch(11)
    logged = {}
    ctx = type("Ctx", (), {"log": lambda self, **kw: logged.update(kw), "policy": None})()
    cfg = LpRegConfig(rho=0.5, min_selected=1)
    lp_reg_prepare(batch, cfg, ctx)
    assert torch.equal(batch.extras[EXTRA], proxy_logprobs(batch.old_logits, batch.response_ids, cfg.kappa))
    assert set(logged) == {"lpreg/frac_sampled_filtered", "lpreg/log_inv_Z"} and logged["lpreg/log_inv_Z"] >= 0
    mb = batch.select(torch.tensor([2, 0]))
    assert torch.equal(mb.extras[EXTRA], batch.extras[EXTRA][[2, 0]])
    a, _ = lp_reg_loss(out, batch, cfg, None)
    del batch.extras[EXTRA]
    b, _ = lp_reg_loss(out, batch, cfg, None)                   # without prepare: the same proxy
    assert torch.equal(a, b)


@pytest.mark.parametrize("field,value", [("kappa", 1.5), ("kappa", -0.1), ("rho", 2.0), ("beta", -1.0),
                                         ("min_selected", 0), ("clip_low", 1.5)])
def test_bad_config_values_name_the_field(field, value):
    with pytest.raises(ValueError, match=rf"^LpRegConfig\.{field} must"):
        LpRegConfig(**{field: value})
    with pytest.raises(ValueError, match=field):
        make_config(LpRegConfig, {field: str(value)}, where="loss 'lp_reg'")
    with pytest.raises(ValueError, match="spark_max"):
        ProxyMassConfig(spark_max=1.5)


def test_registry_recipes_and_official_defaults():
    c = LpRegConfig()
    assert (c.clip_low, c.clip_high, c.clip_ratio_c, c.agg) == (1.0, 9.0, None, "token-mean")
    assert (c.kappa, c.rho, c.beta, c.min_selected, c.kl_coef, c.entropy_coef) == (0.02, 0.01, 1.0, 2, 0.0, 0.0)
    assert get_stage("loss", "lp_reg").prepare is lp_reg_prepare and get_stage("probe", "proxy_mass").config
    r, g = get_recipe("lp_reg"), get_recipe("grpo")
    assert (r.rollout, r.advantage, r.loss, r.train_cfg) == ("plain", "grpo", "lp_reg", {"minibatches": 1})
    assert (r.loss_cfg["rho"], r.loss_cfg["min_selected"], r.loss_cfg["kappa"]) == (0.01, 2, 0.02)  # official
    t = get_recipe("lp_reg_rho05")
    assert (t.loss_cfg["rho"], t.loss_cfg["min_selected"], t.train_cfg) == (0.05, 1, {"minibatches": 1})
    b, e = get_recipe("grpo_onpolicy"), get_recipe("entropy_bonus_onpolicy")
    assert (b.loss, b.advantage, b.loss_cfg, b.train_cfg) == (g.loss, g.advantage, {"agg": "token-mean"}, {"minibatches": 1})
    assert e.loss_cfg == {"agg": "token-mean", "entropy_coef": 0.005} and e.train_cfg == {"minibatches": 1}


def test_short_on_policy_training_run(tmp_path, tiny_ckpt):
    from minirlvr.trainer import TrainConfig, train
    res = train(TrainConfig(task="addition", recipe="lp_reg", steps=2, prompts_per_step=4, group_size=4,
                            eval_every=0, progress=False, out_dir=str(tmp_path), init=tiny_ckpt, max_new_tokens=6,
                            probes=("proxy_mass",), overrides={"loss.rho": 1.0}))
    for h in res["history"]:
        assert abs(h["ratio_mean"] - 1) < 1e-6 and h["lpreg/n_reg"] <= h["lpreg/k"] <= h["lpreg/n_neg"]
        assert 0 <= h["proxy/noise_mass"] <= 1 and 0 <= h["proxy/spark_mass"] <= 1
        assert all(math.isfinite(v) for v in h.values() if isinstance(v, float))
