"""Forking tokens (Wang et al. 2025, arXiv 2506.01939): the entropy top-k mask and the masked
DAPO loss, checked against explicit loops, exact rational counts and the DAPO baseline."""
from __future__ import annotations

import math
import os
from fractions import Fraction
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from minirlvr.baselines import PPOClipConfig, ppo_clip_loss
from minirlvr.methods.forking_tokens import ForkingTokensConfig, forking_tokens_loss, top_entropy_mask
from minirlvr.registry import get_recipe, get_stage, make_config
from minirlvr.rollout import PolicyOutput, RolloutBatch

AGG = ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]
DAPO_PPO = dict(clip_low=0.2, clip_high=0.28, clip_ratio_c=10.0)


# ------------------------------------------------------------------ helpers

@st.composite
def masks(draw, max_b=5, max_t=8):
    B, T = draw(st.integers(1, max_b)), draw(st.integers(1, max_t))
    return np.array(draw(st.lists(st.booleans(), min_size=B * T, max_size=B * T))).reshape(B, T)


@st.composite
def entropy_cases(draw, distinct=False):
    """(entropy [B, T] float64, mask [B, T] bool). Ties are likely unless distinct; padding holds huge values."""
    m = draw(masks())
    n = m.size
    if distinct:  # distinct multiples of 1e-3: every transform below keeps them distinct in float64
        vals = np.array(draw(st.lists(st.integers(0, 10 ** 4), min_size=n, max_size=n, unique=True))) * 1e-3
    else:
        vals = np.array(draw(st.lists(st.sampled_from([0.0, 0.0, 0.1, 0.5, 1.0, 2.3]) | st.floats(0, 5),
                                      min_size=n, max_size=n)))
    vals = vals.reshape(m.shape)
    pad = draw(st.sampled_from([1e30, np.inf, 0.0, -1.0]))
    return torch.tensor(np.where(m, vals, pad)), torch.tensor(m)


fractions_ = st.integers(1, 100).flatmap(lambda q: st.tuples(st.integers(1, q), st.just(q)))  # rho = p / q in (0, 1]


def ref_top(entropy, mask, k):
    """The k valid tokens first in (entropy descending, then flat index ascending) order, by a Python sort."""
    h, m = entropy.flatten().tolist(), mask.flatten().tolist()
    valid = [i for i in range(len(h)) if m[i]]
    order = sorted(valid, key=lambda i: (-h[i], i))
    out = np.zeros(len(h), dtype=bool)
    out[order[:k]] = True
    return out.reshape(tuple(mask.shape))


def ceil_frac(p, q, n):
    return -(-p * n // q)


def make_batch(mask, seed=0, adv_scale=1.0, gap=0.3):
    """RolloutBatch + PolicyOutput (logp a leaf with grad) on the given [B, T] response mask, float64."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.as_tensor(mask).long()
    B, T = mask.shape
    old_logp = -torch.rand(B, T, generator=g, dtype=torch.float64) * 3 * mask
    adv = (torch.randn(B, generator=g, dtype=torch.float64) * adv_scale)[:, None] * mask
    logp = (old_logp + gap * torch.randn(B, T, generator=g, dtype=torch.float64)).requires_grad_(True)
    ent = torch.rand(B, T, generator=g, dtype=torch.float64) * 2
    batch = RolloutBatch(prompt_ids=torch.ones(B, 2, dtype=torch.long), prompt_mask=torch.ones(B, 2, dtype=torch.long),
                         response_ids=torch.full((B, T), 5), response_mask=mask, old_logp=old_logp,
                         old_entropy=ent.flip(1), group_ids=torch.arange(B), problems=[None] * B, texts=[""] * B,
                         truncated=torch.zeros(B, dtype=torch.bool), advantages=adv,
                         rewards=torch.zeros(B, dtype=torch.float64))
    out = PolicyOutput(logp=logp, entropy=ent, logits=torch.zeros(B, T, 3, dtype=torch.float64))
    return batch, out


def grad_of(fn, out):
    out.logp.grad = None
    loss, metrics = fn()
    loss.backward()
    return loss.detach(), out.logp.grad.clone(), metrics


def explicit_dapo_terms(batch, out):
    """Per-token DAPO loss by an explicit loop: max(-A r, -A clip(r, 0.8, 1.28)), then min(., -10 A) for A < 0."""
    B, T = batch.response_mask.shape
    L = np.zeros((B, T))
    for i in range(B):
        for t in range(T):
            A = float(batch.advantages[i, t])
            r = math.exp(min(20.0, max(-20.0, float(out.logp[i, t].detach()) - float(batch.old_logp[i, t]))))
            val = max(-A * r, -A * min(max(r, 0.8), 1.28))
            L[i, t] = min(val, -A * 10.0) if A < 0 else val
    return L


# ------------------------------------------------------------------ the mask

@given(entropy_cases(), fractions_)
def test_top_mask_count_padding_and_tie_break(case, pq):
    ent, m = case
    p, q = pq
    sel = top_entropy_mask(ent, m, p / q)
    n = int(m.sum())
    assert sel.dtype == torch.bool and sel.shape == m.shape
    assert not (sel & ~m).any()                                   # padding never selected
    assert int(sel.sum()) == (max(1, ceil_frac(p, q, n)) if n else 0)
    np.testing.assert_array_equal(sel.numpy(), ref_top(ent, m, int(sel.sum())))  # documented tie-break


@given(entropy_cases(), st.floats(0, 1))
def test_kept_entropies_dominate_dropped(case, rho):
    ent, m = case
    sel = top_entropy_mask(ent, m, rho)
    dropped = m & ~sel
    if sel.any() and dropped.any():
        assert ent[sel].min() >= ent[dropped].max()
    bot = top_entropy_mask(ent, m, rho, select="bottom")
    if bot.any() and (m & ~bot).any():
        assert ent[bot].max() <= ent[m & ~bot].min()


@given(entropy_cases(distinct=True), st.floats(0, 1))
def test_invariant_under_increasing_transforms(case, rho):
    ent, m = case
    h = torch.where(m, ent, torch.zeros_like(ent))  # transforms need finite padding; padding is ignored anyway
    for select in ("top", "bottom"):
        base = top_entropy_mask(h, m, rho, select)
        for f in (lambda x: 2 * x + 3, lambda x: torch.log(x + 1e-3), lambda x: x ** 3):
            assert torch.equal(top_entropy_mask(f(h), m, rho, select), base)


@given(entropy_cases(), fractions_)
def test_top_and_bottom_complement_partition_valid_tokens(case, pq):
    ent, m = case
    p, q = pq
    top = top_entropy_mask(ent, m, p / q, "top")
    bot = top_entropy_mask(ent, m, 1 - p / q, "bottom")
    assert not (top & bot).any()
    assert torch.equal(top | bot, m)
    n = int(m.sum())
    assert int(bot.sum()) == (n * (q - p)) // q   # bottom(rho) keeps floor(rho N) tokens


@pytest.mark.parametrize("rho", [0.1, 0.2, 0.5, 0.8, 1.0])
@pytest.mark.parametrize("n", [1, 5, 7, 10, 15, 33, 100])
def test_complement_on_common_ratios(rho, n):
    g = torch.Generator().manual_seed(n)
    ent, m = torch.rand(1, n, generator=g), torch.ones(1, n, dtype=torch.bool)
    top, bot = top_entropy_mask(ent, m, rho), top_entropy_mask(ent, m, 1 - rho, "bottom")
    assert int(top.sum()) == max(1, ceil_frac(Fraction(rho).limit_denominator(100).numerator,
                                              Fraction(rho).limit_denominator(100).denominator, n))
    assert torch.equal(top ^ bot, m) and not (top & bot).any()


def test_edge_ratios_and_bad_arguments():
    ent, m = torch.tensor([[0.3, 0.1, 0.2]]), torch.ones(1, 3, dtype=torch.bool)
    assert top_entropy_mask(ent, m, 0.0).tolist() == [[True, False, False]]   # rho -> 0 keeps one (verl's max(1, .))
    assert top_entropy_mask(ent, m, 1.0, "bottom").all() and not top_entropy_mask(ent, m, 0.0, "bottom").any()
    empty = torch.zeros(2, 3, dtype=torch.bool)
    for select in ("top", "bottom", "random"):
        assert not top_entropy_mask(torch.full((2, 3), 9.0), empty, 0.5, select).any()  # N = 0: all False
    with pytest.raises(ValueError):
        top_entropy_mask(ent, m, 1.5)
    with pytest.raises(ValueError):
        top_entropy_mask(ent, m, 0.2, "middle")
    with pytest.raises(ValueError):
        top_entropy_mask(ent, m[:, :2], 0.2)


@given(masks(), st.floats(0, 1), st.integers(0, 2 ** 31))
def test_random_mask_count_padding_and_seed(m, rho, seed):
    m = torch.tensor(m)
    ent = torch.where(m, torch.zeros(m.shape), torch.full(m.shape, 1e30))
    a = top_entropy_mask(ent, m, rho, "random", torch.Generator().manual_seed(seed))
    b = top_entropy_mask(ent, m, rho, "random", torch.Generator().manual_seed(seed))
    n = int(m.sum())
    assert torch.equal(a, b) and not (a & ~m).any()
    assert int(a.sum()) == (max(1, math.ceil(round(rho * n, 6))) if n else 0)


def test_random_mask_is_uniform():
    m = torch.ones(2, 5, dtype=torch.bool)
    ent = torch.arange(10.0).view(2, 5)          # entropy must not matter
    g = torch.Generator().manual_seed(0)
    freq = torch.stack([top_entropy_mask(ent, m, 0.2, "random", g) for _ in range(3000)]).float().mean(0)
    assert torch.allclose(freq, torch.full_like(freq, 0.2), atol=0.03)   # each token with prob k/N = 0.2


# ------------------------------------------------------------------ the loss

@pytest.mark.parametrize("agg", AGG)
@pytest.mark.parametrize("normalizer", ["all", "selected"])
@given(m=masks(), seed=st.integers(0, 10 ** 6))
def test_rho_one_is_dapo_in_value_and_gradient(agg, normalizer, m, seed):
    batch, out = make_batch(m, seed)
    dapo = PPOClipConfig(**DAPO_PPO, agg=agg)
    ft = ForkingTokensConfig(**DAPO_PPO, agg=agg, rho=1.0, normalizer=normalizer)
    l0, g0, _ = grad_of(lambda: ppo_clip_loss(out, batch, dapo, None), out)
    l1, g1, met = grad_of(lambda: forking_tokens_loss(out, batch, ft, None), out)
    assert torch.equal(l0, l1) and torch.equal(g0, g1)
    assert met["frac_selected"] == (1.0 if m.any() else 0.0)


@pytest.mark.parametrize("normalizer", ["all", "selected"])
@given(m=masks(), pq=fractions_, seed=st.integers(0, 10 ** 6))
def test_gradient_zero_off_mask_and_scaled_dapo_on_mask(normalizer, m, pq, seed):
    batch, out = make_batch(m, seed)
    cfg = ForkingTokensConfig(rho=pq[0] / pq[1], normalizer=normalizer)
    sel = top_entropy_mask(out.entropy, batch.response_mask, cfg.rho)
    _, g_dapo, _ = grad_of(lambda: ppo_clip_loss(out, batch, PPOClipConfig(**DAPO_PPO), None), out)
    _, g, _ = grad_of(lambda: forking_tokens_loss(out, batch, cfg, None), out)
    assert (g[~sel] == 0).all()
    if normalizer == "all":
        assert torch.equal(g[sel], g_dapo[sel])
    else:
        scale = int(batch.response_mask.sum()) / max(1, int(sel.sum()))
        torch.testing.assert_close(g[sel], g_dapo[sel] * scale, rtol=1e-12, atol=0)


@given(m=masks(), rho=st.floats(0, 1, exclude_min=True), seed=st.integers(0, 10 ** 6),
       select=st.sampled_from(["top", "bottom", "random"]))
def test_loss_value_against_explicit_loop(m, rho, seed, select):
    batch, out = make_batch(m, seed)
    L = explicit_dapo_terms(batch, out)
    sel = top_entropy_mask(out.entropy, batch.response_mask, rho, select, torch.Generator().manual_seed(7))
    M, n = sel.numpy(), int(m.sum())
    for normalizer, den in (("all", n), ("selected", int(M.sum()))):
        cfg = ForkingTokensConfig(rho=rho, select=select, normalizer=normalizer, seed=7)
        loss, _ = forking_tokens_loss(out, batch, cfg, None)
        want = sum(L[i, t] for i, t in zip(*np.nonzero(M))) / max(den, 1)
        assert float(loss.detach()) == pytest.approx(want, rel=1e-9, abs=1e-12)
    # seq-mean-token-mean: row means over all tokens ("all") or over selected tokens ("selected")
    for normalizer in ("all", "selected"):
        cfg = ForkingTokensConfig(rho=rho, select=select, normalizer=normalizer, seed=7, agg="seq-mean-token-mean")
        rows = []
        for i in range(m.shape[0]):
            count = int(m[i].sum()) if normalizer == "all" else int(M[i].sum())
            if count:
                rows.append(sum(L[i, t] for t in range(m.shape[1]) if M[i, t]) / count)
        want = sum(rows) / max(len(rows), 1)
        assert float(forking_tokens_loss(out, batch, cfg, None)[0].detach()) == pytest.approx(want, rel=1e-9, abs=1e-12)
    # seq-mean-token-sum: row sums of M L over the rows with a valid ("all") or a selected ("selected") token,
    # as verl's agg_loss counts rows; -norm divides by the constant B either way
    total = sum(L[i, t] for i, t in zip(*np.nonzero(M)))
    for normalizer, rows_counted in (("all", int(m.any(1).sum())), ("selected", int(M.any(1).sum()))):
        for agg, want in (("seq-mean-token-sum", total / max(rows_counted, 1)),
                          ("seq-mean-token-sum-norm", total / m.shape[0] / m.shape[1])):
            cfg = ForkingTokensConfig(rho=rho, select=select, normalizer=normalizer, seed=7, agg=agg)
            got = float(forking_tokens_loss(out, batch, cfg, None)[0].detach())
            assert got == pytest.approx(want, rel=1e-9, abs=1e-12)


@given(m=masks(), rho=st.floats(0, 1, exclude_min=True), seed=st.integers(0, 10 ** 6))
def test_metrics(m, rho, seed):
    batch, out = make_batch(m, seed)
    _, met = forking_tokens_loss(out, batch, ForkingTokensConfig(rho=rho), None)
    h, n = out.entropy.detach().numpy(), int(m.sum())
    vals = sorted(h[m].tolist(), reverse=True)
    k = max(1, math.ceil(round(rho * n, 6))) if n else 0
    assert met["frac_selected"] == pytest.approx(k / n if n else 0.0)
    assert met["entropy_threshold"] == (vals[k - 1] if k else 0.0)
    assert met["entropy_selected_mean"] == pytest.approx(np.mean(vals[:k]) if k else 0.0)
    assert met["entropy_unselected_mean"] == pytest.approx(np.mean(vals[k:]) if k < n else 0.0)
    assert all(math.isfinite(v) for v in met.values())


def test_mask_uses_current_policy_entropy_not_rollout_entropy():
    batch, out = make_batch(np.ones((2, 5), dtype=bool), seed=3, gap=0.0)  # r = 1: no clipping, grad != 0 where kept
    assert not torch.equal(top_entropy_mask(batch.old_entropy, batch.response_mask, 0.2),
                           top_entropy_mask(out.entropy, batch.response_mask, 0.2))  # old_entropy = out.entropy reversed
    _, g, _ = grad_of(lambda: forking_tokens_loss(out, batch, ForkingTokensConfig(rho=0.2), None), out)
    assert torch.equal(g != 0, top_entropy_mask(out.entropy, batch.response_mask, 0.2))


def test_random_select_seeding_in_the_loss():
    batch, out = make_batch(np.ones((3, 6), dtype=bool), seed=1, gap=0.0)
    cfg = ForkingTokensConfig(rho=0.3, select="random", seed=5)
    _, g1, _ = grad_of(lambda: forking_tokens_loss(out, batch, cfg, None), out)
    _, g2, _ = grad_of(lambda: forking_tokens_loss(out, batch, cfg, None), out)
    assert torch.equal(g1, g2) and int((g1 != 0).sum()) == 6           # ctx None: seeded from cfg.seed
    ctx = SimpleNamespace(generator=torch.Generator().manual_seed(5))
    _, g3, _ = grad_of(lambda: forking_tokens_loss(out, batch, cfg, ctx), out)
    assert torch.equal(g3 != 0, g1 != 0)                               # the trainer's generator, same seed


@pytest.mark.parametrize("normalizer", ["all", "selected"])
@pytest.mark.parametrize("select", ["top", "bottom", "random"])
def test_no_valid_tokens_and_one_token_responses(normalizer, select):
    for m in (np.zeros((3, 4), dtype=bool), np.eye(3, 4, dtype=bool), np.ones((1, 1), dtype=bool)):
        batch, out = make_batch(m, seed=2)
        cfg = ForkingTokensConfig(rho=0.5, select=select, normalizer=normalizer)
        loss, g, met = grad_of(lambda: forking_tokens_loss(out, batch, cfg, None), out)
        assert torch.isfinite(loss) and torch.isfinite(g).all() and all(math.isfinite(v) for v in met.values())
        if not m.any():
            assert float(loss) == 0.0 and (g == 0).all()


@pytest.mark.parametrize("normalizer", ["all", "selected"])
@pytest.mark.parametrize("select", ["top", "bottom", "random"])
@given(m=masks(), seed=st.integers(0, 10 ** 6), adv_scale=st.sampled_from([1e-30, 1.0, 1e6]),
       gap=st.sampled_from([0.0, 5.0, 100.0]), big=st.sampled_from([1e30, 1e300]))
def test_extreme_values_stay_finite(normalizer, select, m, seed, adv_scale, gap, big):
    batch, out = make_batch(m, seed, adv_scale=adv_scale, gap=gap)
    ent = out.entropy.detach().clone()
    ent[0, 0] = 0.0
    ent[-1, -1] = big                                   # a huge entropy (if valid), and inf on padding
    out.entropy = torch.where(batch.response_mask.bool(), ent, torch.full_like(ent, np.inf))
    cfg = ForkingTokensConfig(rho=0.2, select=select, normalizer=normalizer)
    loss, g, met = grad_of(lambda: forking_tokens_loss(out, batch, cfg, None), out)
    assert torch.isfinite(loss) and torch.isfinite(g).all()
    assert all(math.isfinite(v) for v in met.values())


# ------------------------------------------------------------------ registry and training

def test_registry_and_recipes():
    assert get_stage("loss", "forking_tokens").config is ForkingTokensConfig
    for name, rho, select in (("forking_tokens", 0.2, "top"), ("forking_tokens_bottom80", 0.8, "bottom"),
                              ("forking_tokens_random20", 0.2, "random")):
        r = get_recipe(name)
        assert (r.rollout, r.reward, r.advantage, r.loss) == ("dynamic", "overlong", "grpo", "forking_tokens")
        assert "2506.01939" in r.paper
        cfg = make_config(ForkingTokensConfig, r.loss_cfg)
        assert (cfg.rho, cfg.select, cfg.normalizer) == (rho, select, "all")
        assert (cfg.clip_low, cfg.clip_high, cfg.clip_ratio_c, cfg.agg, cfg.kl_coef, cfg.entropy_coef) == \
            (0.2, 0.28, 10.0, "token-mean", 0.0, 0.0)
    assert ForkingTokensConfig() == make_config(ForkingTokensConfig, get_recipe("forking_tokens").loss_cfg)


def _train_two_steps(tmp_path, init=None):
    from minirlvr.trainer import TrainConfig, train
    res = train(TrainConfig(recipe="forking_tokens", prompts_per_step=4, group_size=4, eval_every=0,
                            progress=False, out_dir=str(tmp_path), steps=2, init=init))
    hist = res["history"]
    assert len(hist) == 2 and all("frac_selected" in h for h in hist)
    assert all(math.isfinite(v) for h in hist for v in h.values() if isinstance(v, float))
    assert all(0.0 < h["frac_selected"] <= 1.0 for h in hist)


def test_smoke_train_shipped_base(tmp_path):
    from minirlvr.sft import default_checkpoint
    if not os.path.isfile(default_checkpoint("addition")):
        pytest.skip("toy_tasks/checkpoints/addition.pt is not built")
    _train_two_steps(tmp_path)


def test_smoke_train_random_tiny_policy(tmp_path):
    from minirlvr.model import GPT, GPTConfig, save_checkpoint
    torch.manual_seed(0)
    path = str(tmp_path / "tiny.pt")
    save_checkpoint(path, GPT(GPTConfig(d_model=16, n_layers=1, n_heads=2)))
    _train_two_steps(tmp_path, init=path)


def test_selected_normalizer_restricts_only_the_pg_term():
    """verl: the PG term is aggregated over m * M, while a KL penalty still covers every token."""
    from minirlvr.core import aggregate, kl_estimate
    m = np.ones((3, 5), dtype=bool)
    m[1, 3:] = False
    batch, out = make_batch(m, seed=4)
    batch.ref_logp = batch.old_logp - 0.3 * torch.rand(batch.old_logp.shape, dtype=torch.float64)
    base = dict(rho=0.4, normalizer="selected")
    with torch.no_grad():
        plain, _ = forking_tokens_loss(out, batch, ForkingTokensConfig(**base), None)
        with_kl, _ = forking_tokens_loss(out, batch, ForkingTokensConfig(**base, kl_coef=0.5), None)
        kl_all = aggregate(kl_estimate(out.logp, batch.ref_logp, "k3"), batch.response_mask, "token-mean")
    assert float(with_kl - plain) == pytest.approx(0.5 * float(kl_all), rel=1e-12)
