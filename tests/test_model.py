"""The tiny GPT: causality, KV-cache decoding == full forward, left-padding invariance,
hidden states, checkpoint round trips and damaged checkpoints, config validation."""
from __future__ import annotations

import os
import tempfile

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from minirlvr.model import CHECKPOINT_FORMAT, GPT, GPTConfig, load_checkpoint, save_checkpoint
from minirlvr.tokenizer import PAD, VOCAB_SIZE, pad_left

CFG = GPTConfig(d_model=32, n_layers=2, n_heads=2, context=32)


def make_model(seed: int = 0, cfg: GPTConfig = CFG) -> GPT:
    """A random model with weights large enough that attention is far from uniform and the
    logits depend strongly on the context (GPT init at std 0.02 would hide masking bugs)."""
    torch.manual_seed(seed)
    model = GPT(cfg)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.3)
            else:
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


MODEL = make_model()
real_tokens = st.integers(1, VOCAB_SIZE - 1)
prompt_lists = st.lists(st.lists(real_tokens, min_size=1, max_size=8), min_size=1, max_size=4)


# ----------------------------------------------------------------------------- causality

@torch.no_grad()
@given(prompts=prompt_lists, d=st.data())
def test_causality(prompts, d):
    ids, mask = pad_left(prompts)
    B, T = ids.shape
    j = d.draw(st.integers(0, T - 1))
    base = MODEL(ids, mask)
    changed = ids.clone()
    new = torch.tensor(d.draw(st.lists(real_tokens, min_size=B * (T - j), max_size=B * (T - j)))).view(B, T - j)
    changed[:, j:] = new
    mask2 = mask.clone()
    mask2[:, j:] = 1  # later positions may even switch from padding to real
    out = MODEL(changed, mask2)
    assert torch.allclose(out[:, :j], base[:, :j], atol=1e-6, rtol=0)


def test_causality_is_not_vacuous():
    ids = torch.tensor([[5, 6, 7, 8]])
    a = MODEL(ids)
    ids2 = ids.clone()
    ids2[0, 1] = 9
    b = MODEL(ids2)
    assert (a[0, 1:] - b[0, 1:]).abs().max() > 1e-2  # later positions do see the change


# ----------------------------------------------------------------------------- KV cache

@torch.no_grad()
@given(prompts=prompt_lists, d=st.data())
def test_kv_cache_matches_full_forward(prompts, d):
    ids, mask = pad_left(prompts)
    B, P = ids.shape
    n = d.draw(st.integers(1, 8))
    cont = torch.tensor(d.draw(st.lists(real_tokens, min_size=B * n, max_size=B * n))).view(B, n)
    full_ids = torch.cat([ids, cont], 1)
    full_mask = torch.cat([mask, torch.ones_like(cont)], 1)
    full = MODEL(full_ids, full_mask)

    # chunk sizes: all ones (token by token) or a random partition of n
    if d.draw(st.booleans()):
        sizes = [1] * n
    else:
        sizes, left = [], n
        while left:
            sizes.append(d.draw(st.integers(1, left)))
            left -= sizes[-1]
    cache = MODEL.new_cache(B)
    parts = [MODEL(ids, mask, cache=cache)]
    start = 0
    for s in sizes:
        parts.append(MODEL(cont[:, start:start + s], torch.ones(B, s, dtype=torch.long), cache=cache))
        start += s
    inc = torch.cat(parts, 1)
    assert cache.length == P + n
    assert cache.n_real.tolist() == (mask.sum(1) + n).tolist()
    real = full_mask.bool()
    assert torch.allclose(inc[real], full[real], atol=1e-4, rtol=0)


# ----------------------------------------------------------------------------- left padding

@torch.no_grad()
@given(seq=st.lists(real_tokens, min_size=1, max_size=10), pads=st.lists(st.integers(0, 6), min_size=1, max_size=3),
       junk=st.lists(st.integers(0, VOCAB_SIZE - 1), min_size=6, max_size=6))
def test_left_padding_invariance(seq, pads, junk):
    ref = MODEL(torch.tensor([seq]))[0]
    for k in pads:
        for filler in ([PAD] * k, junk[:k]):  # what sits under the padding must not matter either
            ids = torch.tensor([filler + seq])
            mask = torch.tensor([[0] * k + [1] * len(seq)])
            out = MODEL(ids, mask)[0, k:]
            assert torch.allclose(out, ref, atol=1e-5, rtol=0)


@torch.no_grad()
@given(prompts=prompt_lists)
def test_row_independent_of_batch_padding(prompts):
    ids, mask = pad_left(prompts)
    out = MODEL(ids, mask)
    for i, s in enumerate(prompts):
        alone = MODEL(torch.tensor([s]))[0]
        assert torch.allclose(out[i, ids.shape[1] - len(s):], alone, atol=1e-5, rtol=0)
        assert torch.isfinite(out[i]).all()  # padded positions are finite too


# ----------------------------------------------------------------------------- hidden states

@torch.no_grad()
def test_output_hidden():
    ids, mask = pad_left([[3, 4, 5, 6], [7, 8]])
    logits, hidden = MODEL(ids, mask, output_hidden=True)
    assert isinstance(hidden, list) and len(hidden) == CFG.n_layers
    assert all(h.shape == (2, 4, CFG.d_model) for h in hidden)
    assert torch.equal(logits, MODEL(ids, mask))
    manual = MODEL.ln_f(hidden[-1]) @ MODEL.tok_emb.weight.t()  # last hidden state -> tied head
    assert torch.allclose(manual, logits, atol=1e-5)
    assert not torch.allclose(hidden[0], hidden[1])


# ----------------------------------------------------------------------------- checkpoints

def test_checkpoint_round_trip(tmp_path):
    model = make_model(3)
    ids, mask = pad_left([[3, 4, 5, 6, 7], [8, 9]])
    with torch.no_grad():
        ref = model(ids, mask)
    path = str(tmp_path / "sub" / "model.pt")
    save_checkpoint(path, model, meta={"step": 7, "task": "addition"})
    loaded, meta = load_checkpoint(path)
    assert meta == {"step": 7, "task": "addition"}
    assert not loaded.training and loaded.cfg == model.cfg
    with torch.no_grad():
        assert torch.equal(loaded(ids, mask), ref)

    half_path = str(tmp_path / "half.pt")
    save_checkpoint(half_path, model, half=True)
    assert all(v.dtype == torch.float16 for v in torch.load(half_path)["state_dict"].values() if v.is_floating_point())
    loaded_h, meta_h = load_checkpoint(half_path)
    assert meta_h == {}
    assert all(p.dtype == torch.float32 for p in loaded_h.parameters())
    with torch.no_grad():
        out = loaded_h(ids, mask)
    assert not torch.equal(out, ref)  # it really went through fp16
    assert torch.allclose(out, ref, atol=2e-2, rtol=0)  # fp16 weights: ~5e-4 relative error each


def _expect_load_error(path, exc=ValueError):
    with pytest.raises(exc) as e:
        load_checkpoint(path)
    assert os.path.basename(path) in str(e.value)
    return str(e.value)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch's remark on junk that looks like a pickle
@given(junk=st.binary(min_size=0, max_size=300))
def test_load_random_bytes(junk):
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "junk.pt")
        with open(path, "wb") as f:
            f.write(junk)
        _expect_load_error(path)


def test_load_truncated(tmp_path):
    path = str(tmp_path / "good.pt")
    save_checkpoint(path, make_model(1))
    with open(path, "rb") as f:
        blob = f.read()
    for frac in (0.0, 0.1, 0.5, 0.9, 0.99):
        cut = str(tmp_path / f"cut{frac}.pt")
        with open(cut, "wb") as f:
            f.write(blob[: int(len(blob) * frac)])
        _expect_load_error(cut)


def test_load_foreign_structures(tmp_path):
    good = make_model(2)
    cfg = {"vocab_size": VOCAB_SIZE, "context": 32, "d_model": 32, "n_layers": 2, "n_heads": 2, "dropout": 0.0}
    other = GPT(GPTConfig(d_model=16, n_layers=1, n_heads=2, context=32)).state_dict()
    cases = {
        "tensor": torch.zeros(3),
        "plain_dict": {"a": torch.zeros(2)},
        "wrong_format": {"format": "something-else", "config": cfg, "state_dict": good.state_dict()},
        "no_config": {"format": CHECKPOINT_FORMAT, "state_dict": good.state_dict()},
        "bad_config": {"format": CHECKPOINT_FORMAT, "config": dict(cfg, d_model=33), "state_dict": good.state_dict()},
        "unknown_config_key": {"format": CHECKPOINT_FORMAT, "config": dict(cfg, width=3), "state_dict": {}},
        "config_not_dict": {"format": CHECKPOINT_FORMAT, "config": None, "state_dict": good.state_dict()},
        "no_state_dict": {"format": CHECKPOINT_FORMAT, "config": cfg},
        "state_dict_list": {"format": CHECKPOINT_FORMAT, "config": cfg, "state_dict": [1, 2]},
        "state_dict_not_tensors": {"format": CHECKPOINT_FORMAT, "config": cfg, "state_dict": {"tok_emb.weight": 1}},
        "weights_of_other_shape": {"format": CHECKPOINT_FORMAT, "config": cfg, "state_dict": other},
        "missing_weights": {"format": CHECKPOINT_FORMAT, "config": cfg, "state_dict": {}},
        "meta_not_dict": {"format": CHECKPOINT_FORMAT, "config": cfg, "state_dict": good.state_dict(), "meta": 5},
    }
    for name, blob in cases.items():
        path = str(tmp_path / f"{name}.pt")
        torch.save(blob, path)
        _expect_load_error(path)


def test_load_missing_path(tmp_path):
    msg = _expect_load_error(str(tmp_path / "nope.pt"), FileNotFoundError)
    assert "does not exist" in msg
    with pytest.raises(FileNotFoundError):
        load_checkpoint(str(tmp_path))  # a directory is not a checkpoint file


# ----------------------------------------------------------------------------- errors

def test_context_overflow():
    with pytest.raises(ValueError, match="context"):
        MODEL(torch.ones(1, CFG.context + 1, dtype=torch.long))
    cache = MODEL.new_cache(1)
    MODEL(torch.ones(1, CFG.context - 2, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match="context"):
        MODEL(torch.ones(1, 3, dtype=torch.long), cache=cache)
    assert MODEL(torch.ones(1, 2, dtype=torch.long), cache=cache).shape == (1, 2, VOCAB_SIZE)  # exactly full is fine
    assert cache.length == CFG.context
    assert MODEL(torch.ones(1, CFG.context, dtype=torch.long)).shape == (1, CFG.context, VOCAB_SIZE)


def test_attention_mask_shape_mismatch():
    with pytest.raises(ValueError, match="attention_mask"):
        MODEL(torch.ones(2, 4, dtype=torch.long), torch.ones(2, 3, dtype=torch.long))


@pytest.mark.parametrize("kwargs", [dict(d_model=30, n_heads=4), dict(d_model=32, n_heads=3), dict(d_model=0),
                                    dict(n_layers=-1), dict(context=0), dict(n_heads=2.0), dict(vocab_size="29")])
def test_bad_config(kwargs):
    with pytest.raises(ValueError):
        GPTConfig(**kwargs)


def test_a_short_cache_gives_the_same_logits_and_refuses_overflow():
    torch.manual_seed(0)
    ids = torch.randint(3, 20, (3, 6))
    full = MODEL(ids)
    cache = MODEL.new_cache(3, 6)
    step = torch.cat([MODEL(ids[:, :4], cache=cache), MODEL(ids[:, 4:5], cache=cache), MODEL(ids[:, 5:], cache=cache)], 1)
    assert torch.allclose(step, full, atol=1e-5)
    with pytest.raises(ValueError, match="cache length of 6"):
        MODEL(ids[:, :1], cache=cache)
    with pytest.raises(ValueError, match="cache length"):
        MODEL.new_cache(1, MODEL.cfg.context + 1)


def test_cache_index_select_continues_each_row_like_its_own_prefill():
    # a prompt computed once and copied to several rows (the sampler's shared prefill) must give every
    # copy the logits it would have had from its own prefill, with different continuations per row
    torch.manual_seed(1)
    prompts = torch.randint(3, 20, (2, 5))
    mask = torch.ones_like(prompts)
    mask[1, :2] = 0                                   # a left-padded prompt
    rows = torch.tensor([0, 0, 1, 1, 1])
    nxt = torch.randint(3, 20, (5, 2))
    shared = MODEL.new_cache(2, 7)
    MODEL(prompts, mask, cache=shared)
    shared = shared.index_select(rows)
    own = MODEL.new_cache(5, 7)
    MODEL(prompts[rows], mask[rows], cache=own)
    for t in range(2):
        a = MODEL(nxt[:, t:t + 1], torch.ones_like(nxt[:, t:t + 1]), cache=shared)
        b = MODEL(nxt[:, t:t + 1], torch.ones_like(nxt[:, t:t + 1]), cache=own)
        assert torch.allclose(a, b, atol=1e-6)
    full = MODEL(torch.cat([prompts[rows], nxt], 1), torch.cat([mask[rows], torch.ones_like(nxt)], 1))
    assert torch.allclose(a[:, -1], full[:, -1], atol=1e-5)
