"""sample() / policy_forward / RolloutBatch with a tiny random model: masks, the
"old_logp needs no extra forward" guarantee, layout, determinism, select/concat, errors."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from minirlvr.model import GPTConfig
from minirlvr.rollout import RolloutBatch, concat_batches, policy_forward, sample
from minirlvr.tokenizer import EOS, PAD, decode, encode
from toy_tasks import Problem

from test_model import make_model


MODEL = make_model(cfg=GPTConfig(d_model=32, n_layers=2, n_heads=2, context=32))  # sharp random model


def prob(a: int, b: int) -> Problem:
    return Problem(task="addition", prompt=f"{a}+{b}=", answer=str(a + b), difficulty=1, data=(a, b))


problem_lists = st.lists(st.builds(prob, st.integers(0, 999), st.integers(0, 999)), min_size=1, max_size=3)
sample_args = dict(problems=problem_lists, G=st.integers(1, 3), max_new=st.integers(1, 10),
                   temperature=st.sampled_from([1.0, 0.7, 1.5]), seed=st.integers(0, 2 ** 16))


def run(problems, G, max_new, temperature=1.0, seed=0, **kw):
    return sample(MODEL, problems, G, max_new, temperature=temperature,
                  generator=torch.Generator().manual_seed(seed), **kw)


def expected_mask(ids: torch.Tensor, widths=None) -> torch.Tensor:
    """1 up to and including the first EOS, 0 after (explicit loop); a row sampled with a
    smaller width (then right-padded by concat_batches) ends there."""
    out = torch.zeros_like(ids)
    for i, row in enumerate(ids.tolist()):
        for t, tok in enumerate(row[: None if widths is None else widths[i]]):
            out[i, t] = 1
            if tok == EOS:
                break
    return out


def check_batch_invariants(b: RolloutBatch, widths=None):
    assert torch.equal(b.response_mask, expected_mask(b.response_ids, widths))
    after = b.response_mask == 0
    assert (b.response_ids[after] == PAD).all()  # nothing but PAD after EOS
    assert b.truncated.tolist() == [EOS not in row for row in b.response_ids.tolist()]
    if widths is None:  # straight from sample(): a truncated row fills the whole width
        assert all(b.lengths[b.truncated] == b.response_ids.shape[1])
    assert b.texts == [decode(r) for r in b.response_ids.tolist()]
    for i, p in enumerate(b.problems):  # each prompt row is BOS + the problem's prompt, left-padded
        real = b.prompt_ids[i][b.prompt_mask[i].bool()].tolist()
        assert real == encode(p.prompt, bos=True)
        assert (b.prompt_ids[i][~b.prompt_mask[i].bool()] == PAD).all()
    for t in (b.old_logp, b.old_entropy):
        assert torch.isfinite(t).all() and (t[after] == 0).all()


@given(**sample_args)
def test_sample_masks_and_old_logp_match_policy_forward(problems, G, max_new, temperature, seed):
    b = run(problems, G, max_new, temperature, seed)
    B = len(problems) * G
    assert b.response_ids.shape[0] == B and b.response_ids.shape[1] <= max_new
    assert b.temperature == temperature
    check_batch_invariants(b)
    with torch.no_grad():
        out = policy_forward(MODEL, b)
    m = b.response_mask.bool()
    # the "no extra forward needed" guarantee: sampling-time quantities == a fresh full forward
    assert torch.allclose(b.old_logp[m], out.logp[m], atol=1e-5, rtol=0)
    assert torch.allclose(b.old_entropy[m], out.entropy[m], atol=1e-5, rtol=0)
    assert torch.allclose(b.old_logits[m], out.logits[m], atol=1e-4, rtol=0)
    # and the tempered distribution is the one measured: logits == raw logits / T
    with torch.no_grad():
        raw = policy_forward(MODEL, b, temperature=1.0).logits
    assert torch.allclose(out.logits[m], raw[m] / temperature, atol=1e-5)


def test_sampling_is_not_vacuous():
    """With this model, some rows stop at EOS early and some hit the length limit."""
    b = run([prob(12, 34), prob(7, 5), prob(123, 4)], 4, 10, seed=0)
    lengths = b.lengths.tolist()
    assert min(lengths) < 10 and b.truncated.any() and not b.truncated.all()
    check_batch_invariants(b)


@given(problems=problem_lists, G=st.integers(1, 4), offset=st.integers(0, 50))
def test_group_layout_problem_major(problems, G, offset):
    b = sample(MODEL, problems, G, 2, generator=torch.Generator().manual_seed(0), group_offset=offset)
    assert b.group_ids.tolist() == [offset + i for i in range(len(problems)) for _ in range(G)]
    assert b.problems == [p for p in problems for _ in range(G)]


@given(**sample_args)
def test_same_seed_same_samples(problems, G, max_new, temperature, seed):
    a = run(problems, G, max_new, temperature, seed)
    b = run(problems, G, max_new, temperature, seed)
    assert torch.equal(a.response_ids, b.response_ids) and torch.equal(a.old_logp, b.old_logp)


def test_different_seeds_differ():
    ps = [prob(1, 2), prob(33, 44)]
    outs = {tuple(run(ps, 3, 8, seed=s).response_ids.flatten().tolist()) for s in range(4)}
    assert len(outs) > 1


@given(problems=problem_lists, max_new=st.integers(1, 10))
def test_greedy_is_deterministic_argmax(problems, max_new):
    a = sample(MODEL, problems, 2, max_new, greedy=True, generator=torch.Generator().manual_seed(1))
    b = sample(MODEL, problems, 2, max_new, greedy=True, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a.response_ids, b.response_ids)
    check_batch_invariants(a)
    with torch.no_grad():
        out = policy_forward(MODEL, a)
    m = a.response_mask.bool()
    assert torch.equal(out.logits.argmax(-1)[m], a.response_ids[m])  # every kept token is the argmax
    # a nucleus so small it keeps one token is greedy too
    c = sample(MODEL, problems, 2, max_new, top_p=1e-6, generator=torch.Generator().manual_seed(3))
    assert torch.equal(c.response_ids, a.response_ids)


@given(problems=problem_lists, G=st.integers(1, 3), d=st.data())
def test_select_keeps_rows_consistent(problems, G, d):
    b = run(problems, G, 6, seed=d.draw(st.integers(0, 100)))
    b.rewards = torch.arange(b.size, dtype=torch.float32)
    b.extras["per_row"] = list(range(b.size))
    b.extras["scalar"] = 3.5
    idx = d.draw(st.lists(st.integers(0, b.size - 1), min_size=1, max_size=b.size))
    s = b.select(idx)
    for j, i in enumerate(idx):
        for name in ("prompt_ids", "prompt_mask", "response_ids", "response_mask", "old_logp", "old_entropy",
                     "group_ids", "truncated", "rewards", "old_logits"):
            assert torch.equal(getattr(s, name)[j], getattr(b, name)[i]), name
        assert s.problems[j] == b.problems[i] and s.texts[j] == b.texts[i]
        assert s.extras["per_row"][j] == i
    assert s.extras["scalar"] == 3.5 and s.temperature == b.temperature


@given(d=st.data())
def test_concat_batches_repads_and_keeps_rows(d):
    parts = [run(d.draw(problem_lists), d.draw(st.integers(1, 2)), d.draw(st.integers(1, 8)), seed=d.draw(st.integers(0, 99)))
             for _ in range(d.draw(st.integers(1, 3)))]
    for k, p in enumerate(parts):
        p.rewards = torch.full((p.size,), float(k))
    c = concat_batches(parts)
    assert c.size == sum(p.size for p in parts)
    assert c.old_logits.shape[:2] == c.response_ids.shape
    rows = [(p, i) for p in parts for i in range(p.size)]
    for j, (p, i) in enumerate(rows):
        assert c.prompt_ids[j][c.prompt_mask[j].bool()].tolist() == p.prompt_ids[i][p.prompt_mask[i].bool()].tolist()
        n = int(p.response_mask[i].sum())
        assert c.response_ids[j, :n].tolist() == p.response_ids[i, :n].tolist()
        assert int(c.response_mask[j].sum()) == n
        assert torch.equal(c.old_logp[j, :n], p.old_logp[i, :n])
        assert c.group_ids[j] == p.group_ids[i] and c.rewards[j] == p.rewards[i]
        assert c.problems[j] == p.problems[i] and c.texts[j] == p.texts[i]
    check_batch_invariants(c, widths=[p.response_ids.shape[1] for p, _ in rows])
    # re-padded rows still score the same: the stored old_logp stays valid after concatenation
    with torch.no_grad():
        out = policy_forward(MODEL, c)
    m = c.response_mask.bool()
    assert torch.allclose(c.old_logp[m], out.logp[m], atol=1e-5, rtol=0)


@given(d=st.data())
def test_concat_batches_keeps_per_row_extras(d):
    parts = [run(d.draw(problem_lists), d.draw(st.integers(1, 2)), d.draw(st.integers(1, 8)), seed=d.draw(st.integers(0, 99)))
             for _ in range(d.draw(st.integers(1, 3)))]
    for k, p in enumerate(parts):
        p.extras["tag"] = [(k, i) for i in range(p.size)]                       # a per-row list
        p.extras["score"] = torch.arange(p.size, dtype=torch.float32) + 10 * k  # a per-row tensor
        p.extras["tok"] = p.response_mask.bool()                                 # a per-token [B, T_k] tensor
        p.extras["note"] = f"batch {k}"                                          # not per-row: the first's is kept
    c = concat_batches(parts)
    rows = [(k, i) for k, p in enumerate(parts) for i in range(p.size)]
    assert c.extras["tag"] == rows
    assert c.extras["score"].tolist() == [float(i + 10 * k) for k, i in rows]
    assert torch.equal(c.extras["tok"], c.response_mask.bool())                  # right-padded with False
    assert c.extras["note"] == "batch 0"
    s = c.select(torch.arange(c.size - 1, -1, -1))                               # and select() slices them again
    assert s.extras["tag"] == rows[::-1]


def test_concat_batches_rejects_ragged_extras():
    a, b = run([prob(1, 2)], 2, 4, seed=0), run([prob(3, 4)], 2, 4, seed=1)
    a.extras["x"] = [1, 2]
    with pytest.raises(ValueError, match=r"extras\['x'\] is per-row in the first batch"):
        concat_batches([a, b])
    b.extras["x"] = torch.zeros(2)   # per-row, but a tensor where the first batch has a list
    with pytest.raises(ValueError, match="per-row"):
        concat_batches([a, b])


def test_policy_forward_hidden_and_grad():
    b = run([prob(5, 6)], 2, 5, seed=1)
    out = policy_forward(MODEL, b, output_hidden=True)
    assert len(out.hidden) == MODEL.cfg.n_layers
    assert all(h.shape == (b.size, b.response_ids.shape[1], MODEL.cfg.d_model) for h in out.hidden)
    assert out.logp.requires_grad and out.entropy.requires_grad
    assert out.logits.shape == (*b.response_ids.shape, MODEL.cfg.vocab_size)


@pytest.mark.parametrize("kwargs", [dict(temperature=0.0), dict(temperature=-1.0), dict(group_size=0),
                                    dict(max_new_tokens=0), dict(top_p=0.0), dict(top_p=1.5), dict(top_p=-0.1),
                                    dict(problems=[])])
def test_bad_arguments(kwargs):
    args = dict(problems=[prob(1, 2)], group_size=2, max_new_tokens=4)
    args.update(kwargs)
    with pytest.raises(ValueError):
        sample(MODEL, args.pop("problems"), args.pop("group_size"), args.pop("max_new_tokens"), **args)


def test_prompt_longer_than_context():
    long = Problem(task="addition", prompt="1" * 40 + "=", answer="", difficulty=1, data=())
    with pytest.raises(ValueError, match="context"):
        sample(MODEL, [long], 1, 4)


def test_concat_empty_errors():
    with pytest.raises(ValueError):
        concat_batches([])
