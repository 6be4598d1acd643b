"""The engine-side records (no engine needed): Missing fields fail loudly and only when used, and a loss on an
engine-built batch equals the same loss on the trainer's own RolloutBatch."""
from __future__ import annotations

import dataclasses

import numpy as np

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minirlvr import registry
from minirlvr.integrations import (EngineContext, Missing, MissingInput, call_loss, engine_batch, engine_output,
                                   resolve)
from minirlvr.model import GPT, GPTConfig
from minirlvr.rollout import policy_forward, sample
from toy_tasks import get_task


def test_missing_is_inert_until_used():
    m = Missing("batch.old_logits", "the engine does not have it")
    assert m is not None and repr(m) == "Missing(batch.old_logits)"
    for use in (lambda: m * 2, lambda: 2 * m, lambda: m[0], lambda: m.shape, lambda: torch.exp(m),
                lambda: torch.where(torch.ones(2, dtype=torch.bool), torch.ones(2), m), lambda: torch.ones(2) + m,
                lambda: float(m), lambda: bool(m), lambda: torch.cat([torch.ones(1), m])):
        with pytest.raises(MissingInput, match="batch.old_logits.*does not have it"):
            use()


def test_engine_batch_checks_shapes_and_names():
    mask = torch.ones(2, 3)
    with pytest.raises(ValueError, match="old_logp has shape"):
        engine_batch("E", response_mask=mask, old_logp=torch.zeros(2, 4))
    with pytest.raises(TypeError, match="unknown field"):
        engine_batch("E", response_mask=mask, logits=torch.zeros(2, 3))
    with pytest.raises(ValueError, match="response_mask"):
        engine_batch("E", old_logp=torch.zeros(2, 3))
    b = engine_batch("E", {"rewards": "E drops them"}, response_mask=mask)
    assert b.extras == {}
    assert dataclasses.replace(b, advantages=torch.zeros(2, 3)).advantages.shape == (2, 3)  # stages do this
    with pytest.raises(MissingInput, match="batch.rewards.*E drops them"):
        b.rewards.sum()


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10 ** 6), name=st.sampled_from(["ppo_clip", "kl_cov", "clip_cov", "forking_tokens",
                                                            "bapo", "agentic_aepo"]))
def test_a_loss_on_engine_records_equals_the_trainers(seed, name):
    """Same tensors, two containers: the trainer's RolloutBatch / PolicyOutput, and what an engine adapter builds
    (logp, entropy, mask, old_logp, advantages only). Same loss value and gradient."""
    torch.manual_seed(seed)
    task = get_task("addition")
    policy = GPT(GPTConfig())
    batch = sample(policy, task.sample(3, np.random.default_rng(seed)), 4, 6, generator=torch.Generator().manual_seed(seed))
    g = torch.Generator().manual_seed(seed)
    batch.old_logp = batch.old_logp + 0.3 * torch.randn(batch.old_logp.shape, generator=g) * batch.response_mask
    batch.advantages = torch.randn(batch.size, 1, generator=g) * batch.response_mask
    stage = resolve("loss", name, None, "E", has_reference=False)
    entry = registry.get_stage("loss", name)

    out = policy_forward(policy, batch)
    ctx = EngineContext("E", seed=seed, max_new_tokens=6)
    loss_a, _ = entry.fn(out, batch, stage.cfg, ctx)
    params = list(policy.parameters())
    grad_a = torch.autograd.grad(loss_a, params, allow_unused=True)

    out = policy_forward(policy, batch)
    eb = engine_batch("E", response_mask=batch.response_mask, old_logp=batch.old_logp, advantages=batch.advantages,
                      response_ids=batch.response_ids, old_entropy=batch.old_entropy)
    ctx = EngineContext("E", seed=seed, max_new_tokens=6)
    loss_b, metrics = call_loss(stage, engine_output("E", out.logp, out.entropy), eb, ctx)
    grad_b = torch.autograd.grad(loss_b, params, allow_unused=True)
    torch.testing.assert_close(loss_b, loss_a)
    for ga, gb in zip(grad_a, grad_b):
        assert (ga is None) == (gb is None)
        if ga is not None:
            torch.testing.assert_close(gb, ga)
    assert all(isinstance(v, float) for v in metrics.values())
