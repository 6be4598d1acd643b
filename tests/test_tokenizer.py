"""Tokenizer: round trips, errors, padding layouts."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from minirlvr.tokenizer import BOS, CHARS, EOS, PAD, SPECIALS, VOCAB, VOCAB_SIZE, decode, encode, pad_left, pad_right

texts = st.text(alphabet=CHARS, max_size=40)
token_lists = st.lists(st.lists(st.integers(0, VOCAB_SIZE - 1), max_size=8), min_size=1, max_size=6)


def test_vocabulary_layout():
    assert (PAD, BOS, EOS) == (0, 1, 2)
    assert VOCAB_SIZE == len(SPECIALS) + len(CHARS) == len(VOCAB)
    assert len(set(CHARS)) == len(CHARS)


@given(text=texts, bos=st.booleans(), eos=st.booleans())
def test_round_trip(text, bos, eos):
    ids = encode(text, bos=bos, eos=eos)
    assert len(ids) == len(text) + bos + eos
    assert all(0 <= t < VOCAB_SIZE for t in ids)
    if bos:
        assert ids[0] == BOS
    if eos:
        assert ids[-1] == EOS
    body = ids[int(bos): len(ids) - int(eos)]
    assert [VOCAB[t] for t in body] == list(text)  # independent lookup through the VOCAB list
    assert decode(ids) == text


@given(prefix=texts, bad=st.characters().filter(lambda c: c not in CHARS), suffix=texts)
def test_unknown_character_is_named(prefix, bad, suffix):
    with pytest.raises(ValueError) as e:
        encode(prefix + bad + suffix)
    assert repr(bad) in str(e.value)
    assert f"position {len(prefix)}" in str(e.value)


@given(a=texts, b=texts)
def test_decode_stops_at_eos(a, b):
    ids = encode(a) + [EOS] + encode(b)
    assert decode(ids) == a
    assert decode(ids, stop_at_eos=False) == a + b  # EOS is a special: dropped, not a stop
    assert decode([PAD, BOS] + encode(a) + [PAD]) == a  # specials are dropped
    assert decode(torch.tensor(encode(a) + [EOS], dtype=torch.long)) == a


@pytest.mark.parametrize("bad", [VOCAB_SIZE, VOCAB_SIZE + 5, -1, -3])
def test_decode_rejects_ids_outside_vocabulary(bad):
    with pytest.raises(ValueError, match=str(bad)):
        decode([3, bad])


@given(seqs=token_lists)
def test_pad_left(seqs):
    ids, mask = pad_left(seqs)
    width = max(len(s) for s in seqs)
    assert ids.shape == mask.shape == (len(seqs), width)
    assert ids.dtype == mask.dtype == torch.long
    for i, s in enumerate(seqs):
        pad = width - len(s)
        assert ids[i].tolist() == [PAD] * pad + list(s)
        assert mask[i].tolist() == [0] * pad + [1] * len(s)


@given(seqs=token_lists, width=st.one_of(st.none(), st.integers(1, 10)))
def test_pad_right(seqs, width):
    ids, mask = pad_right(seqs, width)
    w = width or max(len(s) for s in seqs)
    assert ids.shape == mask.shape == (len(seqs), w)
    for i, s in enumerate(seqs):
        s = list(s)[:w]
        assert ids[i].tolist() == s + [PAD] * (w - len(s))
        assert mask[i].tolist() == [1] * len(s) + [0] * (w - len(s))


def test_pad_empty_list_errors():
    with pytest.raises(ValueError):
        pad_left([])
    with pytest.raises(ValueError):
        pad_right([])
