"""SIREN (arXiv 2509.25133): the top-p nucleus and its entropy, the per-response quantile mask, the
selective entropy, the anchor, the lambda = 0 reduction, edge cases, prepare and resume, checked against
brute-force loops and analytic gradients."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from minirlvr.baselines import PPOClipConfig, ppo_clip_loss
from minirlvr.core import entropy_from_logits, logprobs_from_logits
from minirlvr.methods.siren import (SirenConfig, junk_tokens, nucleus_mask, peak_mask, selective_entropy,
                                    siren_loss, siren_prepare, siren_stats_probe, topp_entropy)
from minirlvr.registry import get_recipe, get_stage, make_config
from minirlvr.rollout import PolicyOutput, RolloutBatch
from minirlvr.tokenizer import EOS, VOCAB, VOCAB_SIZE, encode

BASELINE = PPOClipConfig(clip_low=0.28, clip_high=0.28, agg="seq-mean-token-sum-norm")  # the paper's PG loss


# ------------------------------------------------------------------ helpers

@st.composite
def logit_rows(draw, max_v=7):
    """[V] float64 logits: moderate, huge (+-1e4) or -inf entries; at least one finite."""
    V = draw(st.integers(2, max_v))
    vals = draw(st.lists(st.floats(-6, 6) | st.sampled_from([1e4, -1e4, -np.inf, 0.0]), min_size=V, max_size=V))
    assume(any(np.isfinite(vals)))
    return torch.tensor(vals, dtype=torch.float64)


def brute_nucleus(z: torch.Tensor, p: float, top_k=None):
    """(set of token ids, H^p) by Python loops: sort by (-prob, id), keep while the running sum < p."""
    probs = torch.softmax(z, -1).tolist()
    order = sorted(range(len(probs)), key=lambda v: (-probs[v], v))
    keep, c = [], 0.0
    for rank, v in enumerate(order):
        c += probs[v]
        if c >= p or (top_k is not None and rank >= top_k):
            break
        keep.append(v)
    tot = sum(probs[v] for v in keep)
    h = -sum(probs[v] / tot * math.log(probs[v] / tot) for v in keep if probs[v] > 0) if keep else 0.0
    return set(keep), h, order, probs


def cumsums(probs, order):
    return np.cumsum([probs[v] for v in order])


@st.composite
def masks(draw, max_b=5, max_t=6):
    B, T = draw(st.integers(1, max_b)), draw(st.integers(1, max_t))
    return np.array(draw(st.lists(st.booleans(), min_size=B * T, max_size=B * T))).reshape(B, T)


def make_case(mask, seed=0, V=6, scale=3.0, gap=0.3):
    """RolloutBatch + PolicyOutput computed from a float64 logits leaf [B, T, V] (grad w.r.t. the logits)."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.as_tensor(mask).long()
    B, T = mask.shape
    logits = (torch.randn(B, T, V, generator=g, dtype=torch.float64) * scale).requires_grad_(True)
    ids = torch.randint(0, V, (B, T), generator=g)
    logp = logprobs_from_logits(logits, ids)
    old_logp = (logp.detach() + gap * torch.randn(B, T, generator=g, dtype=torch.float64))
    adv = torch.randn(B, generator=g, dtype=torch.float64)[:, None] * mask
    batch = RolloutBatch(prompt_ids=torch.ones(B, 2, dtype=torch.long), prompt_mask=torch.ones(B, 2, dtype=torch.long),
                         response_ids=ids, response_mask=mask, old_logp=old_logp,
                         old_entropy=entropy_from_logits(logits).detach(),
                         group_ids=torch.arange(B), problems=[None] * B, texts=[""] * B,
                         truncated=torch.zeros(B, dtype=torch.bool), old_logits=logits.detach().clone(),
                         advantages=adv, rewards=torch.zeros(B, dtype=torch.float64))
    return batch, logits


def forward(logits, batch):
    return PolicyOutput(logp=logprobs_from_logits(logits, batch.response_ids), entropy=entropy_from_logits(logits),
                        logits=logits)


def loss_and_grad(fn, logits, batch):
    logits.grad = None
    loss, metrics = fn(forward(logits, batch))
    loss.backward()
    return loss.detach(), logits.grad.clone(), metrics


def ctx_with(h0=None):
    return SimpleNamespace(state={"siren": {} if h0 is None else {"H0": h0}})


# ------------------------------------------------------------------ the nucleus and H^p

@given(logit_rows(), st.floats(0.01, 1.0))
def test_nucleus_and_topp_entropy_match_brute_force(z, p):
    keep, h, order, probs = brute_nucleus(z, p)
    assume(np.all(np.abs(cumsums(probs, order) - p) > 1e-9))   # no float tie at the boundary
    hp, nuc = topp_entropy(z, p)
    assert set(torch.nonzero(nuc).flatten().tolist()) == keep
    assert float(hp) == pytest.approx(h, abs=1e-9)
    assert 0.0 <= float(hp) <= math.log(max(len(keep), 1)) + 1e-9          # 0 <= H^p <= log |N^p|


@given(logit_rows(), st.floats(0.01, 1.0), st.integers(1, 4))
def test_top_k_prefilter(z, p, k):
    keep, _, order, probs = brute_nucleus(z, p, top_k=k)
    assume(np.all(np.abs(cumsums(probs, order) - p) > 1e-9))
    assert set(torch.nonzero(nucleus_mask(z, p, k)).flatten().tolist()) == keep
    assert torch.equal(nucleus_mask(z, p, 10000), nucleus_mask(z, p))      # k >= V: inert (min(k, V))


@given(logit_rows(), st.floats(0.01, 1.0))
def test_crossing_token_excluded_and_peaked_gives_zero(z, p):
    probs = torch.softmax(z, -1)
    hp, nuc = topp_entropy(z, p)
    assert int(nuc.sum()) == int((cumsums(probs.tolist(), brute_nucleus(z, p)[2]) < p).sum())
    if float(probs.max()) >= p:
        assert not nuc.any() and float(hp) == 0.0


def test_nucleus_is_v_minus_last_when_p_exceeds_one_minus_min():
    z = torch.tensor([2.0, 1.0, 0.5, -1.0], dtype=torch.float64)
    pmin = float(torch.softmax(z, -1).min())
    nuc = nucleus_mask(z, 1 - pmin + 1e-6)
    assert nuc.tolist() == [True, True, True, False]
    assert nucleus_mask(z, 1 - pmin - 1e-6).tolist() == [True, True, False, False]


@given(logit_rows(), st.floats(0.01, 1.0))
def test_gradient_is_zero_outside_nucleus_and_analytic_inside(z, p):
    z = z.clone().requires_grad_(True)
    hp, nuc = topp_entropy(z, p)
    (g,) = torch.autograd.grad(hp, z)
    assert torch.isfinite(g).all()
    assert (g[~nuc] == 0).all()                                            # dH^p/dz_v = 0, v outside N^p
    if nuc.any():
        pi = torch.softmax(z.detach(), -1)[nuc]
        rho = pi / pi.sum()
        want = -rho * (torch.log(rho) + float(hp.detach()))                         # dH^p/dz_v = -rho_v (log rho_v + H^p)
        torch.testing.assert_close(g[nuc], want, rtol=1e-7, atol=1e-10)


@given(logit_rows(), st.floats(0.01, 1.0), st.floats(-50, 50))
def test_shift_invariance(z, p, c):
    keep, _, order, probs = brute_nucleus(z, p)
    assume(np.all(np.abs(cumsums(probs, order) - p) > 1e-6))
    assert float(topp_entropy(z + c, p)[0]) == pytest.approx(float(topp_entropy(z, p)[0]), abs=1e-9)


# ------------------------------------------------------------------ the per-response mask

@st.composite
def hp_cases(draw):
    m = draw(masks())
    vals = np.array(draw(st.lists(st.sampled_from([0.0, 0.0, 0.0, 0.3, 1.1]) | st.floats(0, 3),
                                  min_size=m.size, max_size=m.size))).reshape(m.shape)
    pad = draw(st.sampled_from([0.0, 9.0, 1e30]))                           # padding may hold anything large
    return torch.tensor(np.where(m, vals, pad)), torch.tensor(m)


@given(hp_cases(), st.floats(0, 1))
def test_peak_mask_matches_brute_force_per_response(case, ratio):
    h, m = case
    M, tau = peak_mask(h, m, ratio)
    for i in range(h.shape[0]):
        vals = h[i][m[i]].numpy()
        if vals.size == 0:
            assert not M[i].any() and math.isnan(float(tau[i]))
            continue
        t = np.quantile(vals, ratio)                                        # linear interpolation
        assert float(tau[i]) == pytest.approx(t, abs=1e-12)
        want = [bool(m[i, j]) and float(h[i, j]) > float(tau[i]) for j in range(h.shape[1])]
        assert M[i].tolist() == want
        if M[i].any() and (m[i] & ~M[i]).any():                             # kept entropies exceed the others
            assert h[i][M[i]].min() > h[i][m[i] & ~M[i]].max()
    assert not (M & ~m).any()                                               # padding never masked


@given(hp_cases(), st.floats(0, 1))
def test_second_mask_pass_of_the_official_code_selects_the_same_set(case, ratio):
    h, m = case
    M, _ = peak_mask(h, m, ratio)
    M2, _ = peak_mask(torch.where(M, h, torch.zeros_like(h)), m, ratio)
    assert torch.equal(M, M2)


@given(hp_cases(), st.floats(0, 1))
def test_selective_entropy_is_row_mean_over_all_rows(case, ratio):
    h, m = case
    M, _ = peak_mask(h, m, ratio)
    rows = [float(h[i][M[i]].mean()) if M[i].any() else 0.0 for i in range(h.shape[0])]
    assert float(selective_entropy(h, M)) == pytest.approx(sum(rows) / h.shape[0], rel=1e-12, abs=1e-15)


# ------------------------------------------------------------------ the loss

@given(masks(), st.integers(0, 10 ** 6), st.floats(0, 3), st.sampled_from([0.3, 0.8, 1.0]))
def test_lambda_zero_is_the_baseline_in_value_and_gradient(m, seed, h0, p):
    batch, logits = make_case(m, seed)
    l0, g0, _ = loss_and_grad(lambda o: ppo_clip_loss(o, batch, BASELINE, None), logits, batch)
    for ctx in (ctx_with(h0), None):
        l1, g1, _ = loss_and_grad(lambda o: siren_loss(o, batch, SirenConfig(reg_coef=0.0, top_p=p), ctx), logits, batch)
        assert torch.equal(l0, l1) and torch.equal(g0, g1)


@given(masks(), st.integers(0, 10 ** 6), st.sampled_from([0.5, 0.8, 0.95]))
def test_anchor_gradient_vanishes_at_h0_and_has_the_sign_of_the_gap(m, seed, p):
    batch, logits = make_case(m, seed, scale=1.0)
    with torch.no_grad():
        hp, _ = topp_entropy(logits, p)
        h_now = float(selective_entropy(hp, peak_mask(hp, batch.response_mask, 0.8)[0]))
    _, g0, _ = loss_and_grad(lambda o: ppo_clip_loss(o, batch, BASELINE, None), logits, batch)
    cfg = SirenConfig(reg_coef=1.0, top_p=p)
    _, g, met = loss_and_grad(lambda o: siren_loss(o, batch, cfg, ctx_with(h_now)), logits, batch)
    assert met["siren/reg"] == 0.0 and torch.equal(g, g0)                   # at Hsel = H0: no pull at all
    # elsewhere: grad(loss) - grad(PG) = 2 (Hsel - H0) grad(Hsel)
    logits.grad = None
    hp, _ = topp_entropy(logits, p)
    selective_entropy(hp, peak_mask(hp, batch.response_mask, 0.8)[0]).backward()
    g_sel = logits.grad.clone()
    for h0 in (h_now - 0.7, h_now + 0.7):
        _, g, _ = loss_and_grad(lambda o: siren_loss(o, batch, cfg, ctx_with(h0)), logits, batch)
        torch.testing.assert_close(g - g0, 2 * (h_now - h0) * g_sel, rtol=1e-9, atol=1e-12)


def test_loss_value_is_pg_plus_lambda_gap_squared():
    batch, logits = make_case(np.ones((4, 5), dtype=bool), seed=3, scale=0.5)
    pg, _ = ppo_clip_loss(forward(logits, batch), batch, BASELINE, None)
    loss, met = siren_loss(forward(logits, batch), batch, SirenConfig(reg_coef=0.3), ctx_with(0.1))
    assert met["siren/selective_entropy_current"] > 0                       # flat logits: nuclei are non-empty
    gap = met["siren/selective_entropy_current"] - 0.1
    assert float(loss.detach()) == pytest.approx(float(pg.detach()) + 0.3 * gap ** 2, rel=1e-12)


def test_missing_anchor_is_an_error_unless_lambda_is_zero():
    batch, logits = make_case(np.ones((2, 3), dtype=bool))
    with pytest.raises(ValueError, match="anchor H0"):
        siren_loss(forward(logits, batch), batch, SirenConfig(reg_coef=0.1), ctx_with())


@pytest.mark.parametrize("kind", ["peaked", "empty_mask", "one_token", "huge", "neg_inf"])
def test_edge_cases_stay_finite(kind):
    m = {"empty_mask": np.zeros((3, 4), bool), "one_token": np.eye(3, 4, dtype=bool)}.get(kind, np.ones((3, 4), bool))
    batch, logits = make_case(m, seed=5, V=VOCAB_SIZE)
    with torch.no_grad():
        if kind == "peaked":
            logits[..., 0] = 50.0                                             # pi_max ~ 1 >= p: every nucleus empty
        if kind == "huge":
            logits.copy_(torch.sign(logits) * 1e4)
            logits[..., 1] = 1e4                                              # ties at the top
        if kind == "neg_inf":
            logits[..., 2:] = -np.inf
            batch.response_ids.clamp_(max=1)
    batch.old_logp = logprobs_from_logits(logits.detach(), batch.response_ids)
    batch.old_logits = logits.detach().clone()
    _, g0, _ = loss_and_grad(lambda o: ppo_clip_loss(o, batch, BASELINE, None), logits, batch)
    for h0 in (0.0, 0.7):
        loss, g, met = loss_and_grad(lambda o: siren_loss(o, batch, SirenConfig(reg_coef=0.5), ctx_with(h0)), logits, batch)
        assert torch.isfinite(loss) and torch.isfinite(g).all() and all(math.isfinite(v) for v in met.values())
        if kind in ("peaked", "empty_mask"):                               # no selective entropy anywhere
            pg, _ = ppo_clip_loss(forward(logits, batch), batch, BASELINE, None)
            assert met["siren/selective_entropy_current"] == 0.0 and torch.equal(g, g0)
            assert float(loss.detach()) == float(pg.detach()) + 0.5 * h0 ** 2                  # the baseline + a constant
    ctx = SimpleNamespace(state={}, step=0, task=_task("addition"), policy=None, log=lambda **kw: logged.update(kw))
    logged = {}
    siren_prepare(batch, SirenConfig(), ctx)
    assert all(math.isfinite(v) for v in logged.values())


# ------------------------------------------------------------------ junk tokens, prepare, config

def _task(name):
    from toy_tasks import get_task
    return get_task(name)


def test_junk_tokens_of_addition_are_the_18_never_emitted():
    junk = junk_tokens(_task("addition"))
    assert junk == [v for v in range(VOCAB_SIZE) if VOCAB[v] not in list("0123456789") + ["<eos>"]]
    assert len(junk) == 18
    task, rng = _task("addition_scratchpad"), np.random.default_rng(1)
    emitted = {t for p in task.sample(200, rng) for t in encode(task.demonstration(p, rng))} | {EOS}
    assert set(junk_tokens(task)) == set(range(VOCAB_SIZE)) - emitted


def test_prepare_sets_the_anchor_once_and_logs_the_rollout_metrics():
    logged = {}
    ctx = SimpleNamespace(state={}, step=0, task=_task("addition"), policy=None, log=lambda **kw: logged.update(kw))
    cfg = SirenConfig()
    b1, _ = make_case(np.ones((4, 5), dtype=bool), seed=1, scale=0.5, V=VOCAB_SIZE)
    siren_prepare(b1, cfg, ctx)
    hp, nuc = topp_entropy(b1.old_logits, cfg.top_p)
    want = float(selective_entropy(hp, peak_mask(hp, b1.response_mask, cfg.mask_ratio)[0]))
    assert ctx.state["siren"]["H0"] == want == logged["siren/H0"] == logged["siren/selective_entropy"]
    assert ctx.state["siren"]["anchor_step"] == 1
    probs = torch.softmax(b1.old_logits, -1)
    junk = ctx.state["siren"]["junk"]
    assert logged["siren/junk_mass"] == pytest.approx(float(probs[..., junk].sum(-1).mean()))
    assert logged["siren/nucleus_empty_frac"] == pytest.approx(float((~nuc.any(-1)).double().mean()))
    for step, seed in ((1, 2), (2, 3)):
        ctx.step = step
        b, _ = make_case(np.ones((4, 5), dtype=bool), seed=seed, scale=0.5, V=VOCAB_SIZE)
        siren_prepare(b, cfg, ctx)
        assert ctx.state["siren"]["H0"] == want and logged["siren/H0"] == want        # never changes
        assert logged["siren/selective_entropy"] != want
    # the probe (for baselines) computes the same numbers on the same batch, with its own anchor
    probe_ctx = SimpleNamespace(state={}, task=ctx.task)
    assert siren_stats_probe(None, b, None, probe_ctx) == {**logged, "siren/H0": logged["siren/selective_entropy"]}
    assert siren_stats_probe(None, b1, None, probe_ctx)["siren/H0"] == logged["siren/selective_entropy"]


@pytest.mark.parametrize("field,value", [("reg_coef", -0.1), ("top_p", 0.0), ("top_p", 1.5), ("top_k", 0),
                                         ("mask_ratio", 1.2), ("junk_demos", 0), ("clip_low", -1.0)])
def test_bad_config_values_name_the_field(field, value):
    with pytest.raises(ValueError, match=f"SirenConfig.{field} must be") as e:
        SirenConfig(**{field: value})
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match=field):
        make_config(SirenConfig, {field: value}, where="loss 'siren'")


def test_registry_and_recipes():
    entry = get_stage("loss", "siren")
    assert entry.config is SirenConfig and entry.prepare is siren_prepare and "2509.25133" in entry.paper
    cfg = make_config(SirenConfig, get_recipe("siren").loss_cfg)
    assert (cfg.reg_coef, cfg.top_p, cfg.mask_ratio, cfg.clip_low, cfg.clip_high, cfg.agg, cfg.entropy_coef) == \
        (0.05, 0.8, 0.8, 0.28, 0.28, "seq-mean-token-sum-norm", 0.0)
    for name, coef in (("siren_baseline", 0.0), ("siren_entropy_bonus", 0.01)):
        r = get_recipe(name)
        c = make_config(PPOClipConfig, r.loss_cfg)
        assert (r.advantage, r.loss, c.entropy_coef) == ("dr_grpo", "ppo_clip", coef)
        assert (c.clip_low, c.clip_high, c.agg) == (BASELINE.clip_low, BASELINE.clip_high, BASELINE.agg)
    assert all(get_recipe(n).train_cfg == {} for n in ("siren", "siren_baseline", "siren_entropy_bonus"))


# ------------------------------------------------------------------ training and resume

def _small(tmp_path, ckpt, **kw):
    from minirlvr.trainer import TrainConfig
    base = dict(task="addition", recipe="siren", steps=3, prompts_per_step=4, group_size=4, minibatches=2,
                eval_every=0, progress=False, out_dir=str(tmp_path), init=ckpt, max_new_tokens=6, save_every=1)
    base.update(kw)
    return TrainConfig(**base)


def test_state_survives_resume_exactly(tmp_path, tiny_ckpt):
    from minirlvr.trainer import train
    strip = lambda hist: [{k: v for k, v in h.items() if not k.startswith("time")} for h in hist]  # noqa: E731
    full = train(_small(tmp_path / "full", tiny_ckpt, name="s"))
    train(_small(tmp_path / "part", tiny_ckpt, name="s", steps=1))
    resumed = train(_small(tmp_path / "part", tiny_ckpt, name="s", resume=True))
    assert strip(resumed["history"]) == strip(full["history"])
    assert resumed["state"]["siren"] == full["state"]["siren"]
    assert [h["siren/H0"] for h in full["history"]] == [full["state"]["siren"]["H0"]] * 3
    assert full["state"]["siren"]["anchor_step"] == 1
    for a, b in zip(full["policy"].parameters(), resumed["policy"].parameters()):
        assert torch.equal(a, b)


def test_probe_gives_baselines_the_same_curves(tmp_path, tiny_ckpt):
    from minirlvr.trainer import train
    runs = {r: train(_small(tmp_path, tiny_ckpt, recipe=r, name=r, steps=2, probes=("siren_stats",)))["history"]
            for r in ("siren_baseline", "siren")}
    keys = ("siren/H0", "siren/selective_entropy", "siren/nucleus_empty_frac", "siren/frac_masked", "siren/junk_mass")
    for hist in runs.values():
        assert all(k in h and math.isfinite(h[k]) for h in hist for k in keys)
        assert 0.0 <= hist[0]["siren/junk_mass"] <= 1.0 and hist[0]["siren/H0"] == hist[1]["siren/H0"]
    assert all(runs["siren"][0][k] == runs["siren_baseline"][0][k] for k in keys)   # same step-1 rollout
