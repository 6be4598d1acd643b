"""BuPO (arXiv 2512.19673): gradient locality of the layer-k loss, the K_iter = 0 and k = L reductions,
ratio = 1 only with the layer-k old_logp, the switch at step K_iter, the logit-lens probe, edge cases,
config errors, and a short training run with resume."""
from __future__ import annotations

import math
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from minirlvr.baselines import PPOClipConfig, ppo_clip_loss
from minirlvr.methods.bupo import (EXTRA, BupoConfig, bupo_loss, bupo_needs, bupo_prepare, layer_entropies,
                                   layer_logits)
from minirlvr.model import GPT, GPTConfig
from minirlvr.registry import get_recipe, get_stage, make_config
from minirlvr.rollout import RolloutBatch, policy_forward
from minirlvr.tokenizer import VOCAB_SIZE

PPO = dict(agg="token-mean", clip_low=0.2, clip_high=0.2, clip_ratio_c=10.0)


# ------------------------------------------------------------------ helpers

def make_model(n_layers=3, seed=0):
    torch.manual_seed(seed)
    return GPT(GPTConfig(d_model=32, n_layers=n_layers, n_heads=2, context=32))


def make_batch(model, B=4, P=3, T=5, seed=0, temperature=1.0, lengths=None):
    """A rollout-like batch: random prompt/response ids, old_logp / old_entropy from the FULL policy."""
    g = torch.Generator().manual_seed(seed)
    lengths = lengths if lengths is not None else torch.randint(1, T + 1, (B,), generator=g).tolist()
    mask = (torch.arange(T)[None] < torch.tensor(lengths)[:, None]).long()
    batch = RolloutBatch(prompt_ids=torch.randint(3, VOCAB_SIZE, (B, P), generator=g),
                         prompt_mask=torch.ones(B, P, dtype=torch.long),
                         response_ids=torch.randint(3, VOCAB_SIZE, (B, T), generator=g), response_mask=mask,
                         old_logp=torch.zeros(B, T), old_entropy=torch.zeros(B, T), group_ids=torch.arange(B) // 2,
                         problems=[None] * B, texts=[""] * B, truncated=torch.zeros(B, dtype=torch.bool),
                         temperature=temperature)
    with torch.no_grad():
        out = policy_forward(model, batch)
    batch.old_logp, batch.old_entropy = out.logp, out.entropy
    batch.advantages = torch.randn(B, generator=g)[:, None] * mask
    batch.rewards = torch.zeros(B)
    return batch


def ctx_for(model, step=0):
    logged = {}
    return SimpleNamespace(policy=model, step=step, log=lambda **kw: logged.update(kw), logged=logged)


def loss_and_grads(model, batch, fn, cfg, ctx, hidden=True):
    model.zero_grad(set_to_none=True)
    out = policy_forward(model, batch, output_hidden=hidden)
    loss, metrics = fn(out, batch, cfg, ctx)
    loss.backward()
    return loss.detach(), metrics, {n: (None if p.grad is None else p.grad.clone()) for n, p in model.named_parameters()}


def zero(g):
    return g is None or not g.any()


# ------------------------------------------------------------------ gradient locality

@given(L=st.integers(2, 4), data=st.data(), seed=st.integers(0, 2**16))
def test_layer_k_loss_leaves_blocks_above_k_and_ln_f_without_gradient(L, data, seed):
    k = data.draw(st.integers(1, L - 1))
    model = make_model(L, seed)
    batch = make_batch(model, seed=seed, lengths=[5, 4, 3, 5])
    cfg, ctx = BupoConfig(**PPO, layer=k, iterative_steps=1), ctx_for(model)
    bupo_prepare(batch, cfg, ctx)
    _, _, grads = loss_and_grads(model, batch, bupo_loss, cfg, ctx)
    for name, g in grads.items():
        if name.startswith("ln_f.") or (name.startswith("blocks.") and int(name.split(".")[1]) >= k):
            assert zero(g), name                          # blocks.{k..L-1} are layers k+1..L (1-indexed)
        else:                                             # tok_emb (tied head), pos_emb, blocks 1..k
            assert g is not None and g.abs().sum() > 0, name


def test_final_norm_all_ablation_moves_ln_f_but_still_not_the_blocks_above():
    model = make_model(3)
    batch = make_batch(model, lengths=[5, 4, 3, 5])
    cfg, ctx = BupoConfig(**PPO, layer=1, iterative_steps=1, final_norm="all"), ctx_for(model)
    bupo_prepare(batch, cfg, ctx)
    _, _, grads = loss_and_grads(model, batch, bupo_loss, cfg, ctx)
    assert grads["ln_f.weight"].abs().sum() > 0
    assert all(zero(g) for n, g in grads.items() if n.startswith(("blocks.1.", "blocks.2.")))


# ------------------------------------------------------------------ reductions

@given(seed=st.integers(0, 2**16), step=st.integers(0, 5), K=st.integers(0, 5))
def test_full_phase_and_k_iter_zero_are_ppo_clip_exactly(seed, step, K):
    model = make_model(2, seed)
    batch = make_batch(model, seed=seed)
    cfg = BupoConfig(**PPO, layer=1, iterative_steps=K)
    if step < K:
        return                                            # internal phase: other tests
    ctx = ctx_for(model, step)
    bupo_prepare(batch, cfg, ctx)
    assert EXTRA not in batch.extras and ctx.logged["bupo/internal"] == 0.0
    lb, mb, gb = loss_and_grads(model, batch, bupo_loss, cfg, ctx, hidden="hidden" in bupo_needs(cfg))
    lp, mp, gp = loss_and_grads(model, batch, ppo_clip_loss, PPOClipConfig(**PPO), ctx, hidden=False)
    assert torch.equal(lb, lp) and mb == mp
    assert all((gb[n] is None and gp[n] is None) or torch.equal(gb[n], gp[n]) for n in gb)


def test_k_iter_zero_declares_no_hidden_states():
    assert bupo_needs(BupoConfig(iterative_steps=0)) == set()
    assert bupo_needs(BupoConfig(iterative_steps=3)) == {"hidden"}
    assert bupo_needs(BupoConfig(iterative_steps=3, kl_coef=0.1)) == {"hidden", "reference"}


@given(seed=st.integers(0, 2**16), L=st.integers(1, 3), temp=st.sampled_from([1.0, 0.7]))
def test_top_layer_with_its_final_norm_is_the_full_policy(seed, L, temp):
    """k = L: the official head of the last layer is W_U ln_f(h^L), the model's own logits; so the
    internal-phase loss equals ppo_clip (to float rounding of the two graphs) with the same old_logp."""
    model = make_model(L, seed)
    batch = make_batch(model, seed=seed, temperature=temp)
    out = policy_forward(model, batch, output_hidden=True)
    assert torch.equal(layer_logits(model, out.hidden, L) / temp, out.logits)
    cfg, ctx = BupoConfig(**PPO, layer=L, iterative_steps=1), ctx_for(model)
    bupo_prepare(batch, cfg, ctx)
    assert torch.equal(batch.extras[EXTRA], batch.old_logp)
    lb, _, gb = loss_and_grads(model, batch, bupo_loss, cfg, ctx)
    lp, _, gp = loss_and_grads(model, batch, ppo_clip_loss, PPOClipConfig(**PPO), ctx, hidden=False)
    assert torch.allclose(lb, lp, rtol=0, atol=1e-6)
    assert all(torch.allclose(gb[n], gp[n], rtol=1e-5, atol=1e-7) for n in gb)


# ------------------------------------------------------------------ the ratio

@given(seed=st.integers(0, 2**16), k=st.integers(1, 2))
def test_ratio_is_one_with_the_layer_k_old_logp_and_not_with_the_rollouts(seed, k):
    model = make_model(3, seed)
    batch = make_batch(model, B=6, seed=seed, lengths=[5, 5, 4, 3, 5, 2])
    cfg, ctx = BupoConfig(**PPO, layer=k, iterative_steps=1), ctx_for(model)
    bupo_prepare(batch, cfg, ctx)
    mb = batch.select(torch.tensor([4, 0, 3]))            # a minibatch, before any optimizer step
    _, m, _ = loss_and_grads(model, mb, bupo_loss, cfg, ctx)
    assert abs(m["ratio_mean"] - 1) < 1e-6 and abs(m["ppo_kl"]) < 1e-6 and m["clipfrac"] == 0
    wrong = replace(mb, extras={EXTRA: mb.old_logp})      # the bug: the rollout's (full-policy) old_logp
    _, mw, _ = loss_and_grads(model, wrong, bupo_loss, cfg, ctx)
    ratio_gap = (mb.extras[EXTRA] - mb.old_logp)[mb.response_mask.bool()].abs().max()   # per-token log ratio
    assert ratio_gap > 1e-4 and mw["ratio_mean"] != m["ratio_mean"]


def test_internal_phase_without_prepare_is_an_error():
    model = make_model(2)
    batch = make_batch(model)
    with pytest.raises(ValueError, match="bupo_prepare"):
        bupo_loss(policy_forward(model, batch, output_hidden=True), batch, BupoConfig(layer=1), ctx_for(model))


# ------------------------------------------------------------------ probe and edge cases

def test_layer_entropies_are_bounded_and_the_top_layer_is_the_rollout_entropy():
    model = make_model(3)
    batch = make_batch(model, lengths=[5, 1, 3, 4])
    res = layer_entropies(model, batch)
    assert all(0 <= res[f"bupo/H_l{l}{t}"] <= math.log(VOCAB_SIZE) + 1e-6 for l in (1, 2, 3) for t in ("", "_ln"))
    assert res["bupo/H_l3"] == res["bupo/H_l3_ln"]
    m = batch.response_mask
    assert abs(res["bupo/H_l3"] - float((batch.old_entropy * m).sum() / m.sum())) < 1e-5


@pytest.mark.parametrize("kind", ["single_token", "zero_advantage", "big_temperature_gap", "one_row"])
def test_edge_cases_stay_finite(kind):
    model = make_model(2)
    B = 1 if kind == "one_row" else 4
    batch = make_batch(model, B=B, lengths=[1] * B if kind == "single_token" else None,
                       temperature=0.05 if kind == "big_temperature_gap" else 1.0)
    if kind == "zero_advantage":
        batch.advantages = torch.zeros_like(batch.advantages)
    cfg, ctx = BupoConfig(**PPO, layer=1, iterative_steps=1), ctx_for(model)
    bupo_prepare(batch, cfg, ctx)
    loss, m, grads = loss_and_grads(model, batch, bupo_loss, cfg, ctx)
    assert torch.isfinite(loss) and all(math.isfinite(v) for v in m.values())
    assert all(g is None or torch.isfinite(g).all() for g in grads.values())
    assert all(math.isfinite(v) for v in ctx.logged.values())


@pytest.mark.parametrize("field,value", [("layer", 0), ("layer", -2), ("iterative_steps", -1), ("clip_low", -0.1)])
def test_bad_config_values_name_the_field(field, value):
    with pytest.raises(ValueError, match=rf"BupoConfig\.{field} must be"):
        BupoConfig(**{field: value})
    with pytest.raises(ValueError, match=field):
        make_config(BupoConfig, {field: value}, "loss 'bupo'")


def test_layer_above_n_layers_and_bad_final_norm_are_one_line_errors():
    model = make_model(2)
    with pytest.raises(ValueError, match=r"BupoConfig\.layer must be in \[1, 2\]"):
        bupo_prepare(make_batch(model), BupoConfig(layer=3), ctx_for(model))
    with pytest.raises(ValueError, match=r"BupoConfig\.final_norm"):
        BupoConfig(final_norm="none")


def test_registry_and_recipes():
    assert get_stage("loss", "bupo").prepare is bupo_prepare
    assert get_stage("probe", "layer_entropy").fn is not None
    r, b = get_recipe("bupo"), get_recipe("bupo_baseline")
    assert (r.advantage, r.loss, r.loss_cfg["layer"], r.loss_cfg["iterative_steps"]) == ("grpo", "bupo", 2, 30)
    assert (b.advantage, b.loss) == ("grpo", "ppo_clip")
    assert {k: v for k, v in r.loss_cfg.items() if k not in ("layer", "iterative_steps")} == b.loss_cfg
    assert r.train_cfg == b.train_cfg == {}


# ------------------------------------------------------------------ training and resume

def _small(tmp_path, ckpt, **kw):
    from minirlvr.trainer import TrainConfig
    base = dict(task="addition", recipe="bupo", steps=3, prompts_per_step=4, group_size=4, minibatches=2,
                eval_every=0, progress=False, out_dir=str(tmp_path), init=ckpt, max_new_tokens=6, save_every=1,
                overrides={"loss.layer": 1, "loss.iterative_steps": 2})   # tiny_ckpt has 2 layers
    base.update(kw)
    return TrainConfig(**base)


def test_switch_at_k_iter_ratio_one_and_frozen_top_in_a_trainer_run(tmp_path, tiny_ckpt):
    from minirlvr.model import load_checkpoint
    from minirlvr.trainer import train
    res = train(_small(tmp_path, tiny_ckpt, minibatches=1, name="one", probes=("layer_entropy",)))
    hist = res["history"]
    assert [h["bupo/internal"] for h in hist] == [1.0, 1.0, 0.0]
    assert ["bupo/layer_entropy" in h for h in hist] == [True, True, False]
    for h in hist[:2]:                  # one minibatch: every update starts from the policy that prepared
        assert abs(h["ratio_mean"] - 1) < 1e-6 and h["clipfrac"] == 0
    assert all(math.isfinite(h[f"bupo/H_l{l}"]) for h in hist for l in (1, 2))
    # AdamW skips a parameter whose grad is None (weight decay included) and decays one whose grad is a
    # zero tensor: with decay on, exactly block 2 and ln_f stay bitwise equal (their grad is None); the
    # zero-initialised biases are skipped (decay leaves 0 at 0)
    two = train(_small(tmp_path, tiny_ckpt, steps=2, name="two", weight_decay=0.1))["policy"]
    init, _ = load_checkpoint(tiny_ckpt)
    for (n, p), q in zip(two.named_parameters(), init.parameters()):
        if q.any():
            assert torch.equal(p, q) == n.startswith(("blocks.1.", "ln_f.")), n


def test_internal_phase_trains_the_bottom_of_the_shipped_base_only(tmp_path):
    """On the addition base (4 layers, nonzero advantages), layer 2: blocks 3-4 and ln_f stay bitwise
    equal, everything else moves (no weight decay: moving needs a nonzero gradient)."""
    import os
    from minirlvr.model import load_checkpoint
    from minirlvr.sft import default_checkpoint
    from minirlvr.trainer import train
    ckpt = default_checkpoint("addition")
    if not os.path.isfile(ckpt):
        pytest.skip("no shipped addition base")
    res = train(_small(tmp_path, ckpt, steps=2, name="base", overrides={"loss.layer": 2, "loss.iterative_steps": 2},
                       max_new_tokens=None))
    assert all(h["grad_norm"] > 0 for h in res["history"])
    init, _ = load_checkpoint(ckpt)
    for (n, p), q in zip(res["policy"].named_parameters(), init.parameters()):
        assert torch.equal(p, q) == n.startswith(("blocks.2.", "blocks.3.", "ln_f.")), n


def test_resume_gives_the_same_run_across_the_switch(tmp_path, tiny_ckpt):
    from minirlvr.trainer import train
    strip = lambda hist: [{k: v for k, v in h.items() if not k.startswith("time")} for h in hist]  # noqa: E731
    full = train(_small(tmp_path / "full", tiny_ckpt, name="s"))
    train(_small(tmp_path / "part", tiny_ckpt, name="s", steps=1))
    resumed = train(_small(tmp_path / "part", tiny_ckpt, name="s", resume=True))
    assert strip(resumed["history"]) == strip(full["history"])
    for a, b in zip(full["policy"].parameters(), resumed["policy"].parameters()):
        assert torch.equal(a, b)
