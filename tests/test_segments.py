"""minirlvr.segments against plain-Python readings of the response text."""
from __future__ import annotations

import numpy as np
import torch
from hypothesis import given
from hypothesis import strategies as st

from minirlvr.segments import plan_mask, step_ids, step_mean
from minirlvr.tokenizer import EOS, PAD, encode, pad_right
from toy_tasks import get_task

rows = st.lists(st.text(alphabet="0123456789+-=c;[]#", max_size=14), min_size=1, max_size=5)


def batch_of(texts):
    ids, mask = pad_right([encode(t, eos=True) for t in texts])
    return ids, mask


def ref_steps(text):
    out, s = [], 0
    for ch in text + "\x00":          # "\x00" stands for EOS: it belongs to the final step
        out.append(s)
        s += ch == ";"
    return out


def ref_plan(text):
    out, inside = [], False
    for ch in text + "\x00":
        if ch == "[":
            inside = True
        out.append(inside or ch == "]")
        if ch == "]":
            inside = False
    return out


@given(texts=rows)
def test_step_ids_and_plan_mask_match_a_reading_of_the_text(texts):
    ids, mask = batch_of(texts)
    steps, plan = step_ids(ids, mask), plan_mask(ids, mask)
    for i, t in enumerate(texts):
        n = len(t) + 1
        assert steps[i, :n].tolist() == ref_steps(t) and (steps[i, n:] == -1).all()
        assert plan[i, :n].tolist() == ref_plan(t) and not plan[i, n:].any()


@given(texts=rows, seed=st.integers(0, 10 ** 6))
def test_step_mean_is_the_mean_over_each_step(texts, seed):
    ids, mask = batch_of(texts)
    steps = step_ids(ids, mask)
    values = torch.randn(ids.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    got = step_mean(values, steps)
    for i in range(len(texts)):
        for j in range(ids.shape[1]):
            s = int(steps[i, j])
            want = values[i][steps[i] == s].mean() if s >= 0 else torch.tensor(0.0, dtype=torch.float64)
            assert torch.allclose(got[i, j], want)


def test_the_task_formats():
    ids, mask = batch_of(["6+7=3c1;8+6+1=5c1;#153", "[7+6]13;[13+7]20;#20"])
    assert step_ids(ids, mask)[0].tolist() == [0] * 8 + [1] * 10 + [2] * 5          # "#153" + EOS: the last step
    assert step_ids(ids, mask)[1].tolist()[-3:] == [2, -1, -1]                        # padding
    plan = plan_mask(ids, mask)[1]
    text = "[7+6]13;[13+7]20;#20"
    assert "".join(c for c, p in zip(text, plan.tolist()) if p) == "[7+6][13+7]"
    # a chain demonstration: plan + execution tokens cover the response exactly
    task = get_task("chain")
    p = task.sample(1, np.random.default_rng(0))[0]
    ids, mask = batch_of([task.demonstration(p, np.random.default_rng(0))])
    assert int(plan_mask(ids, mask).sum()) > 0 and int((mask.bool() & ~plan_mask(ids, mask)).sum()) > 0


def test_padding_only_and_empty_rows():
    ids = torch.full((2, 4), PAD)
    mask = torch.zeros(2, 4, dtype=torch.long)
    assert (step_ids(ids, mask) == -1).all() and not plan_mask(ids, mask).any()
    assert (step_mean(torch.ones(2, 4), step_ids(ids, mask)) == 0).all()
    ids[0, 0], mask[0, 0] = EOS, 1                       # a one-token response: EOS alone is step 0
    assert step_ids(ids, mask)[0].tolist() == [0, -1, -1, -1]
