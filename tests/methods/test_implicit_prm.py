"""Implicit PRM (arXiv 2412.01981): the q identity q_t = beta log E_ref[exp(r_phi / beta) | prefix] exactly on an
enumerable tabular model (vocab 3, length <= 4), telescoping over any segmentation, zero rewards at pi_phi = pi_ref,
beta linearity, logit-shift invariance, the CE gradient, min-step scores, first wrong step, best-of-N against
exact enumeration, PRM training on a tiny GPT, and the PRIME-style advantage (RLOO reduction, explicit loop,
pipeline coupling, a short run)."""
from __future__ import annotations

import copy
import itertools
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minirlvr.baselines import rloo_advantage, whiten
from minirlvr.methods.implicit_prm import (ImplicitPRMRewardConfig, PRMTrainConfig, PrimeConfig, bon_accuracy,
                                           bon_curves, first_wrong_step, implicit_token_rewards, leave_one_out,
                                           min_step_score, prime_advantage, prm_ce_loss, q_values, score_responses,
                                           segment_sums, step_rewards, token_rewards, token_rewards_from_logits,
                                           train_prm)
from minirlvr.model import GPT, GPTConfig
from minirlvr.registry import get_recipe, get_stage, make_config
from minirlvr.rollout import RolloutBatch, sample
from minirlvr.segments import step_ids
from minirlvr.tokenizer import encode
from toy_tasks import get_task

EOS3, L = 2, 4            # the tabular model: tokens {0, 1, EOS = 2}, at most 4 tokens


# ------------------------------------------------------------------ the exact q identity on a tabular model

def tabular(seed):
    """Random conditional log-prob tables of pi_phi and pi_ref: prefix (tuple) -> log-probs [3] (float64)."""
    g = torch.Generator().manual_seed(seed)
    prefixes = [p for k in range(L) for p in itertools.product((0, 1), repeat=k)]
    return [{p: torch.log_softmax(3 * torch.randn(3, generator=g, dtype=torch.float64), 0) for p in prefixes}
            for _ in range(2)]


def all_sequences():
    """Every complete response: ends at EOS, or has L tokens (truncated). Their probabilities sum to 1."""
    seqs = [p + (EOS3,) for k in range(L) for p in itertools.product((0, 1), repeat=k)]
    return seqs + list(itertools.product((0, 1), repeat=L))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("beta", [0.05, 0.5, 2.0])
def test_q_is_beta_log_expected_exp_outcome_under_the_reference(seed, beta):
    phi, ref = tabular(seed)
    seqs = all_sequences()
    ids = torch.tensor([list(s) + [0] * (L - len(s)) for s in seqs])
    mask = torch.tensor([[1] * len(s) + [0] * (L - len(s)) for s in seqs])
    lp = lambda tab: torch.tensor([[float(tab[s[:t]][s[t]]) if t < len(s) else 0.0 for t in range(L)]  # noqa: E731
                                   for s in seqs], dtype=torch.float64)
    logp_phi, logp_ref = lp(phi), lp(ref)
    assert float(logp_ref.sum(1).exp().sum()) == pytest.approx(1.0, abs=1e-12)          # a proper distribution
    q = q_values(token_rewards(logp_phi, logp_ref, mask, beta))
    r_phi = beta * (logp_phi.sum(1) - logp_ref.sum(1))                                   # sequence-level, by hand
    for i, s in enumerate(seqs):
        for t in range(len(s)):
            ext = [j for j, u in enumerate(seqs) if u[:t + 1] == s[:t + 1]]
            cont = torch.stack([logp_ref[j, t + 1:].sum() + r_phi[j] / beta for j in ext])   # log pi_ref(y'|.) + r/b
            assert float(q[i, t]) == pytest.approx(beta * float(torch.logsumexp(cont, 0)), rel=0, abs=1e-12)
    assert torch.allclose(q[:, -1], r_phi, rtol=0, atol=1e-12)


# ------------------------------------------------------------------ exact properties of the rewards

@st.composite
def token_data(draw, max_b=4, max_t=7):
    B, T = draw(st.integers(1, max_b)), draw(st.integers(1, max_t))
    seed = draw(st.integers(0, 10 ** 6))
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor(draw(st.lists(st.integers(0, T), min_size=B, max_size=B)))
    mask = (torch.arange(T)[None] < lengths[:, None]).long()
    logp_phi = -torch.rand(B, T, generator=g, dtype=torch.float64) * 4
    logp_ref = -torch.rand(B, T, generator=g, dtype=torch.float64) * 4
    return logp_phi, logp_ref, mask, g


@given(token_data(), st.floats(0.01, 5.0), st.data())
def test_telescoping_over_any_segmentation(case, beta, data):
    logp_phi, logp_ref, mask, g = case
    d = token_rewards(logp_phi, logp_ref, mask, beta)
    n_seg = data.draw(st.integers(1, 5))
    seg = torch.where(mask.bool(), torch.randint(0, n_seg, mask.shape, generator=g), torch.full_like(mask, -1))
    sums, present = segment_sums(d, seg)
    outcome = beta * ((logp_phi - logp_ref) * mask).sum(1)
    torch.testing.assert_close(sums.sum(1), outcome, rtol=0, atol=1e-12)
    torch.testing.assert_close(q_values(d)[:, -1], outcome, rtol=0, atol=1e-12)
    assert ((sums != 0) <= present).all() and (d[~mask.bool()] == 0).all()


@given(token_data(), st.floats(0.01, 5.0), st.floats(0.1, 10.0))
def test_zero_at_equal_models_and_linear_in_beta(case, beta, k):
    logp_phi, logp_ref, mask, _ = case
    assert (token_rewards(logp_ref, logp_ref, mask, beta) == 0).all()
    d = token_rewards(logp_phi, logp_ref, mask, beta)
    torch.testing.assert_close(token_rewards(logp_phi, logp_ref, mask, k * beta), k * d, rtol=1e-12, atol=1e-14)
    ids = torch.randint(3, 6, mask.shape)
    r, p = step_rewards(d, ids, mask)
    r2, _ = step_rewards(k * d, ids, mask)
    torch.testing.assert_close(min_step_score(r2, p), k * min_step_score(r, p), rtol=1e-12, atol=1e-14)


def test_masked_positions_contribute_nothing_even_if_not_finite():
    lp = torch.tensor([[-1.0, -math.inf, math.nan]])
    d = token_rewards(lp, torch.zeros(1, 3), torch.tensor([[1, 0, 0]]), 0.5)
    assert d.tolist() == [[-0.5, 0.0, 0.0]]


@given(st.integers(0, 10 ** 6), st.floats(0.05, 2.0))
def test_a_per_position_logit_shift_of_either_model_changes_nothing(seed, beta):
    g = torch.Generator().manual_seed(seed)
    z_phi, z_ref = (torch.randn(3, 5, 7, generator=g, dtype=torch.float64) for _ in range(2))
    tokens, mask = torch.randint(0, 7, (3, 5), generator=g), torch.ones(3, 5)
    shift = 50 * torch.randn(3, 5, 1, generator=g, dtype=torch.float64)
    d = token_rewards_from_logits(z_phi, z_ref, tokens, mask, beta)
    torch.testing.assert_close(token_rewards_from_logits(z_phi + shift, z_ref - shift, tokens, mask, beta), d,
                               rtol=0, atol=1e-12)


@given(st.lists(st.tuples(st.floats(-20, 20), st.sampled_from([0.0, 1.0])), min_size=1, max_size=8),
       st.floats(0.01, 2.0))
def test_ce_gradient_is_sigmoid_minus_label(rows, beta):
    s = torch.tensor([r for r, _ in rows], dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([l for _, l in rows], dtype=torch.float64)
    loss = prm_ce_loss(s, torch.zeros_like(s), labels, beta)
    g, = torch.autograd.grad(loss, s)
    r_phi = beta * s.detach()
    torch.testing.assert_close(g, beta * (torch.sigmoid(r_phi) - labels) / len(rows), rtol=1e-10, atol=1e-15)
    want = -(labels * torch.nn.functional.logsigmoid(r_phi) + (1 - labels) * torch.nn.functional.logsigmoid(-r_phi))
    assert float(loss.detach()) == pytest.approx(float(want.mean()), rel=1e-10)
    assert ((g < 0) == (labels == 1)).all()                        # descent raises r_phi of correct answers


@given(token_data())
def test_min_step_score_against_a_loop(case):
    logp_phi, logp_ref, mask, g = case
    d = token_rewards(logp_phi, logp_ref, mask, 1.0)
    ids = torch.where(torch.rand(mask.shape, generator=g) < 0.3, encode(";")[0], encode("5")[0])
    r, present = step_rewards(d, ids, mask)
    steps = step_ids(ids, mask)
    for i in range(d.shape[0]):
        per = [float(d[i][steps[i] == k].sum()) for k in range(int(steps[i].max()) + 1)]
        assert float(min_step_score(r, present)[i]) == pytest.approx(min(per) if per else 0.0, abs=1e-12)
        assert r[i][present[i]].tolist() == pytest.approx(per, abs=1e-12)


def test_first_wrong_step():
    ref = "3+8=1c1;2+4+1=7;#71"
    assert first_wrong_step(ref, ref) is None
    assert first_wrong_step("3+8=1c1;2+4+1=8;#81", ref) == 1
    assert first_wrong_step("3+8=1;2+4=6;#61", ref) == 0
    assert first_wrong_step("3+8=1c1;2+4+1=7;#72", ref) == 2
    assert first_wrong_step("3+8=1c1", ref) == 0                 # EOS where ";" belongs: step 0 is wrong
    assert first_wrong_step("3+8=1c1;2+4+1=7;#71;", ref) == 2
    assert first_wrong_step("", ref) == 0


@given(st.text("0123456789+=c;#", max_size=25))
def test_first_wrong_step_is_a_step_of_the_text(text):
    ref = "6+7=3c1;8+6+1=5c1;#153"
    k = first_wrong_step(text, ref)
    ids = torch.tensor([encode(text) + [2]])
    n_steps = int(step_ids(ids, torch.ones_like(ids)).max()) + 1
    assert (k is None) == (text == ref)
    if k is not None:
        assert 0 <= k < n_steps and text.split(";")[:k] == ref.split(";")[:k]


# ------------------------------------------------------------------ best-of-N

def exact_bon(scores, correct, n):
    """Average over all n-subsets of each prompt of the correctness of the best (ties: uniform)."""
    accs = []
    for s, c in zip(scores, correct):
        vals = []
        for sub in itertools.combinations(range(len(s)), n):
            best = max(s[j] for j in sub)
            vals.append(np.mean([c[j] for j in sub if s[j] == best]))
        accs.append(np.mean(vals))
    return float(np.mean(accs))


@settings(max_examples=10)
@given(st.integers(0, 10 ** 6), st.integers(1, 4))
def test_bon_accuracy_matches_exact_enumeration(seed, n):
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 3, (5, 4)).astype(float)           # ties on purpose
    correct = rng.integers(0, 2, (5, 4))
    got = bon_accuracy(scores, correct, n, np.random.default_rng(1), resamples=3000)
    assert got == pytest.approx(exact_bon(scores, correct, n), abs=0.03)
    curves = bon_curves({"outcome": scores}, correct, [4], resamples=5)
    assert curves["oracle"][0] == correct.max(1).mean()          # n = M: pass@M, exactly
    with pytest.raises(ValueError, match="n must be"):
        bon_accuracy(scores, correct, 5, rng)


# ------------------------------------------------------------------ on a tiny GPT: zero rewards, training

@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    base = GPT(GPTConfig(d_model=32, n_layers=2, n_heads=2))
    task = get_task("addition_scratchpad")
    probs = task.sample(6, np.random.default_rng(0), difficulty=1)
    batch = sample(base, probs, 4, 12, generator=torch.Generator().manual_seed(0))
    return base, batch


def test_copy_of_the_reference_gives_exactly_zero_rewards(tiny):
    base, batch = tiny
    out = score_responses(copy.deepcopy(base), base, batch, 0.05)
    for k in ("token", "q", "outcome", "steps", "min_step"):
        assert (out[k] == 0).all(), k
    assert out["steps"].shape[0] == batch.size


def test_train_prm_lowers_the_loss_and_leaves_the_reference_alone(tiny):
    base, batch = tiny
    before = [p.detach().clone() for p in base.parameters()]
    labels = (torch.arange(batch.size) % 3 == 0).float()
    cfg = PRMTrainConfig(beta=0.5, lr=3e-3, epochs=8, batch_size=batch.size)
    prm, losses = train_prm(base, batch, labels, cfg)
    assert all(torch.equal(a, b) for a, b in zip(before, base.parameters()))
    assert losses[0] == pytest.approx(math.log(2), abs=1e-6)     # pi_phi = pi_ref: sigmoid(0) = 1/2
    assert losses[-1] < losses[0] and all(map(math.isfinite, losses))
    r = implicit_token_rewards(prm, base, batch, 0.5).sum(1)
    assert float(r[labels == 1].mean()) > float(r[labels == 0].mean())
    with pytest.raises(ValueError, match="beta"):
        PRMTrainConfig(beta=0.0)


# ------------------------------------------------------------------ the PRIME-style advantage

def prime_batch(G, Q, seed, T=6, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    B = G * Q
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    mask = (torch.arange(T)[None] < lengths[:, None]).long()
    batch = RolloutBatch(prompt_ids=torch.ones(B, 2, dtype=torch.long), prompt_mask=torch.ones(B, 2, dtype=torch.long),
                         response_ids=torch.full((B, T), 5), response_mask=mask, old_logp=torch.zeros(B, T, dtype=dtype),
                         old_entropy=torch.zeros(B, T, dtype=dtype), group_ids=torch.arange(B) // G,
                         problems=[None] * B, texts=[""] * B, truncated=torch.zeros(B, dtype=torch.bool),
                         rewards=torch.randint(0, 2, (B,), generator=g).to(dtype))
    batch.extras["token_rewards"] = torch.randn(B, T, generator=g, dtype=dtype) * mask
    return batch


@given(st.sampled_from([2, 3, 4, 8]), st.integers(1, 4), st.integers(0, 10 ** 6))
def test_prime_outcome_only_is_whitened_rloo(G, Q, seed):
    batch = prime_batch(G, Q, seed)
    a = prime_advantage(batch, PrimeConfig(dense_coef=0.0, outcome_coef=1.0), None)
    want = whiten(rloo_advantage(batch, None, None), batch.response_mask.double(), 1e-8)
    torch.testing.assert_close(a, want, rtol=0, atol=1e-12)


@given(st.sampled_from([2, 3, 5]), st.integers(1, 3), st.integers(0, 10 ** 6), st.booleans(),
       st.floats(0.0, 5.0), st.floats(0.0, 5.0))
def test_prime_against_an_explicit_loop(G, Q, seed, norm, cd, co):
    batch = prime_batch(G, Q, seed)
    a = prime_advantage(batch, PrimeConfig(dense_coef=cd, outcome_coef=co, batch_norm=norm), None)
    m, d, r = batch.response_mask.tolist(), batch.extras["token_rewards"].tolist(), batch.rewards.tolist()
    B, T = len(m), len(m[0])
    n_valid = [sum(row) for row in m]
    if norm:
        top = max(abs(sum(d[i][s] for s in range(t, n_valid[i]))) for i in range(B) for t in range(n_valid[i]))
        d = [[x / (top + 1e-6) for x in row] for row in d]
    R = [[0.0] * T for _ in range(B)]
    for i in range(B):
        grp = [j for j in range(B) if j // G == i // G]
        base_d = sum(sum(d[j][:n_valid[j]]) / n_valid[j] for j in grp) / (G - 1)
        base_o = sum(r[j] for j in grp) / (G - 1)
        for t in range(n_valid[i]):
            R[i][t] = cd * (d[i][t] * G / (G - 1) - base_d)
        R[i][n_valid[i] - 1] += co * (r[i] * G / (G - 1) - base_o)
    ret = torch.tensor([[sum(R[i][t:]) if t < n_valid[i] else 0.0 for t in range(T)] for i in range(B)],
                       dtype=torch.float64)
    torch.testing.assert_close(a, whiten(ret, batch.response_mask.double(), 1e-8), rtol=1e-9, atol=1e-9)
    assert torch.isfinite(a).all() and (a[batch.response_mask == 0] == 0).all()


def test_leave_one_out_and_edge_cases():
    x = torch.tensor([[1.0, 3.0], [5.0, 0.0]], dtype=torch.float64)
    m = torch.tensor([[1, 1], [1, 0]])
    out = leave_one_out(x, m, torch.tensor([0, 0]))
    # n/(n-1) = 2; the baseline sums the row means of the WHOLE group, own included: (2 + 5) / (2 - 1) = 7
    assert out.tolist() == [[2 * 1 - 7, 2 * 3 - 7], [2 * 5 - 7, 0.0]]
    with pytest.raises(ValueError, match="at least 2 responses"):
        leave_one_out(x, m, torch.tensor([0, 1]))
    batch = prime_batch(4, 2, 0)
    batch.extras["token_rewards"].zero_()
    batch.rewards.fill_(1.0)                                                # nothing to learn: exactly 0
    assert (prime_advantage(batch, PrimeConfig(), None) == 0).all()


def test_configs_and_pipeline_coupling():
    from minirlvr.trainer import TrainConfig, build_pipeline
    for cls, field, v in ((ImplicitPRMRewardConfig, "beta", 0.0), (PrimeConfig, "dense_coef", -1.0),
                          (PrimeConfig, "eps", 0.0)):
        with pytest.raises(ValueError, match=field) as e:
            cls(**{field: v})
        assert "\n" not in str(e.value)
        with pytest.raises(ValueError, match=field):
            make_config(cls, {field: str(v)}, where="x")
    with pytest.raises(ValueError, match=r"advantage 'prime' requires extras \['token_rewards'\]"):
        build_pipeline(TrainConfig(recipe="grpo", advantage="prime"))
    pipe = build_pipeline(TrainConfig(recipe="grpo", reward="implicit_prm", advantage="prime"))
    assert "reference" in pipe.needs and get_stage("reward", "implicit_prm").provides == {"token_rewards"}
    for name, dense in (("implicit_prm_prime", 5.0), ("implicit_prm_outcome_only", 0.0)):
        r = get_recipe(name)
        assert (r.reward, r.advantage) == ("implicit_prm", "prime") and "prm_path" in r.paper
        assert make_config(PrimeConfig, r.advantage_cfg).dense_coef == dense
    ctx = SimpleNamespace(ref_policy=None)
    with pytest.raises(ValueError, match="prm_path"):
        get_stage("reward", "implicit_prm").fn(None, ImplicitPRMRewardConfig(), ctx)


def test_short_run_with_the_init_as_its_own_prm(tmp_path, tiny_ckpt):
    """pi_phi = pi_ref = the init: every token reward is 0, so the dense term vanishes."""
    from minirlvr.trainer import TrainConfig, train
    hist = train(TrainConfig(recipe="grpo", reward="implicit_prm", advantage="prime", task="addition_scratchpad",
                             steps=2, prompts_per_step=3, group_size=4, minibatches=2, eval_every=0, progress=False,
                             out_dir=str(tmp_path), init=tiny_ckpt, max_new_tokens=10,
                             overrides={"reward.prm_path": tiny_ckpt}))["history"]
    assert len(hist) == 2
    for h in hist:
        assert h["prm/outcome_reward"] == 0.0 and h["prm/token_reward_abs"] == 0.0
        assert all(math.isfinite(v) for v in h.values() if isinstance(v, float))
