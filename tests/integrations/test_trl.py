"""The TRL adapter on a real GRPOTrainer (trl 1.16, transformers 5.24; `pip install -e ".[integrations]"`).

Parity: on one batch, minirlvr's ppo_clip through MinirlvrGRPOTrainer gives TRL's own loss and gradients for
each of TRL's loss types that has a minirlvr aggregation (grpo = seq-mean-token-mean, bnpo = token-mean,
dr_grpo = seq-mean-token-sum-norm with max_len = max_completion_length), with and without TRL's k3 KL term; then
whole train() runs of both agree step by step. Beyond parity: minirlvr-only losses train and log their metrics,
every registered loss either runs or names what TRL lacks, a user's own loss file runs unchanged.
"""
from __future__ import annotations

import importlib.util
import math
import sys

import pytest
import torch

pytest.importorskip("trl", reason="the TRL adapter tests need the [integrations] extra")
sys.path.insert(0, __file__.rsplit("/", 1)[0])
import engine_fixtures as F  # noqa: E402
from trl import GRPOTrainer  # noqa: E402

from minirlvr import registry  # noqa: E402
from minirlvr.integrations import MissingInput, resolve  # noqa: E402
from minirlvr.integrations.trl import MinirlvrGRPOTrainer  # noqa: E402

EPS_LOW, EPS_HIGH = 0.2, 0.28
AGG_OF_LOSS_TYPE = {"grpo": "seq-mean-token-mean", "bnpo": "token-mean", "dr_grpo": "seq-mean-token-sum-norm"}


def trainers(tmp, loss_type="grpo", beta=0.0, loss="ppo_clip", loss_cfg=None, bias_corrected_kl=False, **mr_kwargs):
    """TRL's own trainer and the minirlvr one on ONE model object, same settings."""
    data, reward = F.dataset_and_reward()
    model = F.model(save_dir=tmp / "init")
    args = dict(loss_type=loss_type, beta=beta, epsilon=EPS_LOW, epsilon_high=EPS_HIGH,
                use_bias_correction_kl=bias_corrected_kl)
    trl_trainer = GRPOTrainer(model=model, reward_funcs=reward, args=F.grpo_config(tmp / "a", **args),
                              train_dataset=data, processing_class=F.tokenizer())
    mr = MinirlvrGRPOTrainer(model=model, reward_funcs=reward, args=F.grpo_config(tmp / "b", **args),
                             train_dataset=data, processing_class=F.tokenizer(), loss=loss, loss_cfg=loss_cfg,
                             **mr_kwargs)
    for t in (trl_trainer, mr):
        t.current_gradient_accumulation_steps = 1  # set by train(); these tests call the loss directly
    return trl_trainer, mr, data


def stale_batch(trainer, data, seed=0):
    """One generation batch, with old log-probs moved off the current ones so that both clip bounds bind."""
    trainer.model.train()
    rows = [data[i] for i in range(F.N_PROMPTS) for _ in range(F.GROUP)]
    torch.manual_seed(seed)
    inputs = trainer._generate_and_score_completions(rows)
    with torch.no_grad():
        ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1)
        am = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1)
        logp, _, _ = trainer._get_per_token_logps_and_entropies(trainer.model, ids, am, ids.shape[1] -
                                                                inputs["prompt_ids"].shape[1])
    g = torch.Generator().manual_seed(seed)
    inputs["old_per_token_logps"] = logp + 0.3 * torch.randn(logp.shape, generator=g)
    inputs["advantages"] = torch.randn(logp.shape[0], generator=g)  # both signs, no all-zero group
    if trainer.beta != 0.0:
        inputs["ref_per_token_logps"] = logp + 0.2 * torch.randn(logp.shape, generator=g)
    return inputs


def loss_and_grads(trainer, compute, inputs):
    trainer.model.zero_grad()
    loss = compute(trainer, trainer.model, inputs)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in trainer.model.parameters() if p.grad is not None]


@pytest.mark.slow
@pytest.mark.parametrize("loss_type,beta", [("grpo", 0.0), ("bnpo", 0.0), ("dr_grpo", 0.0), ("grpo", 0.04),
                                            ("bnpo", 0.04)])
def test_ppo_clip_equals_trl_loss_and_gradients_on_one_batch(tmp_path, loss_type, beta):
    cfg = {"agg": AGG_OF_LOSS_TYPE[loss_type], "clip_low": EPS_LOW, "clip_high": EPS_HIGH, "kl_coef": beta,
           "kl_kind": "k3", "max_len": F.NEW_TOKENS}
    trl_trainer, mr, data = trainers(tmp_path, loss_type, beta, loss_cfg=cfg)
    inputs = stale_batch(trl_trainer, data)
    loss_a, grads_a = loss_and_grads(trl_trainer, GRPOTrainer._compute_loss, inputs)
    loss_b, grads_b = loss_and_grads(mr, MinirlvrGRPOTrainer._compute_loss, inputs)
    assert len(grads_a) == len(grads_b) > 0
    torch.testing.assert_close(loss_b, loss_a, rtol=1e-5, atol=1e-7)
    for ga, gb in zip(grads_a, grads_b):
        torch.testing.assert_close(gb, ga, rtol=1e-4, atol=1e-7)
    # the batch really exercises both bounds (else the test could not tell the clip from no clip)
    metrics = mr._metrics["train"]
    assert metrics["clip_ratio/low_mean"][-1] > 0 and metrics["clip_ratio/high_mean"][-1] > 0
    assert metrics["clip_ratio/low_mean"][-1] == pytest.approx(trl_trainer._metrics["train"]["clip_ratio/low_mean"][-1])
    assert metrics["entropy"][-1] == pytest.approx(trl_trainer._metrics["train"]["entropy"][-1], rel=1e-5)


@pytest.mark.slow
def test_trls_default_bias_corrected_kl_differs_by_the_measured_ratio_term(tmp_path):
    """TRL 1.16's default use_bias_correction_kl=True weighs its k3 term by the ratio r (DeepSeek-V3.2);
    minirlvr's ppo_clip KL is plain k3 (verl's low_var_kl). The gap is exactly beta * agg((r - 1) k3)."""
    beta = 0.04
    cfg = {"agg": "seq-mean-token-mean", "clip_low": EPS_LOW, "clip_high": EPS_HIGH, "kl_coef": beta}
    trl_trainer, mr, data = trainers(tmp_path, "grpo", beta, loss_cfg=cfg, bias_corrected_kl=True)
    inputs = stale_batch(trl_trainer, data)
    loss_a, _ = loss_and_grads(trl_trainer, GRPOTrainer._compute_loss, inputs)
    loss_b, _ = loss_and_grads(mr, MinirlvrGRPOTrainer._compute_loss, inputs)
    with torch.no_grad():
        ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1)
        am = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1)
        logp, _, _ = mr._get_per_token_logps_and_entropies(mr.model, ids, am, inputs["completion_ids"].shape[1])
    m = inputs["completion_mask"].float()
    d = inputs["ref_per_token_logps"] - logp
    k3, r = d.exp() - d - 1, (logp - inputs["old_per_token_logps"]).exp()
    gap = beta * (((r - 1) * k3 * m).sum(1) / m.sum(1)).mean()
    assert abs(float(gap)) > 1e-6                        # the conventions do differ on this batch (~1e-5)
    torch.testing.assert_close(loss_a - loss_b, gap, rtol=1e-3, atol=1e-7)


def test_parity_can_fail_a_different_clip_gives_a_different_loss(tmp_path):
    """The parity test above is not vacuous: clip_high 0.2 instead of TRL's 0.28 changes the loss."""
    trl_trainer, mr, data = trainers(tmp_path, loss_cfg={"agg": "seq-mean-token-mean", "clip_low": EPS_LOW,
                                                         "clip_high": 0.2})
    inputs = stale_batch(trl_trainer, data)
    loss_a, _ = loss_and_grads(trl_trainer, GRPOTrainer._compute_loss, inputs)
    loss_b, _ = loss_and_grads(mr, MinirlvrGRPOTrainer._compute_loss, inputs)
    assert not torch.allclose(loss_a, loss_b, rtol=1e-4)


def train_history(tmp, cls, steps=3, **kwargs):
    data, reward = F.dataset_and_reward()
    trainer = cls(model=F.model(), reward_funcs=reward, args=F.grpo_config(tmp, max_steps=steps, num_iterations=2),
                  train_dataset=data, processing_class=F.tokenizer(), **kwargs)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    return logs, [p.detach().clone() for p in trainer.model.parameters()]


@pytest.mark.slow
def test_trl_and_minirlvr_ppo_clip_train_the_same(tmp_path):
    """Three real train() steps each (num_iterations=2, so TRL computes old log-probs and ratios move):
    the same logged losses, entropies and final weights."""
    logs_a, params_a = train_history(tmp_path / "a", GRPOTrainer)
    logs_b, params_b = train_history(tmp_path / "b", MinirlvrGRPOTrainer, loss="ppo_clip",
                                     loss_cfg={"agg": "seq-mean-token-mean", "clip_low": 0.2, "clip_high": 0.2})
    assert len(logs_a) == len(logs_b) == 3
    for a, b in zip(logs_a, logs_b):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4, abs=1e-7)
        assert b["entropy"] == pytest.approx(a["entropy"], rel=1e-5)
    for pa, pb in zip(params_a, params_b):
        torch.testing.assert_close(pb, pa, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("loss,cfg,metric", [("kl_cov", {"kl_ratio": 0.05}, "n_selected"),
                                             ("forking_tokens", {"rho": 0.2}, "frac_selected"),
                                             ("clip_cov", {"clip_ratio": 0.05, "cov_lb": -1.0, "cov_ub": 5.0},
                                              "cov_candidates")])
def test_minirlvr_only_losses_train_in_trl_and_log_their_metrics(tmp_path, loss, cfg, metric):
    logs, params = train_history(tmp_path, MinirlvrGRPOTrainer, steps=2, loss=loss, loss_cfg=cfg)
    assert len(logs) == 2 and all(math.isfinite(h["loss"]) for h in logs)
    assert all(metric in h for h in logs), sorted(logs[0])
    assert all(torch.isfinite(p).all() for p in params)


@pytest.mark.slow
def test_minirlvr_advantage_replaces_trls(tmp_path):
    """advantage="rloo": the batch's advantages are minirlvr's leave-one-out values over TRL's rewards."""
    _, mr, data = trainers(tmp_path, advantage="rloo")
    mr.model.train()
    rows = [data[i] for i in range(F.N_PROMPTS) for _ in range(F.GROUP)]
    out = mr._generate_and_score_completions(rows)
    rewards = mr._last_rewards_per_func.sum(1)
    r = rewards.view(-1, F.GROUP)
    loo = (r - (r.sum(1, keepdim=True) - r) / (F.GROUP - 1)).reshape(-1)
    assert out["advantages"].shape == out["completion_mask"].shape
    torch.testing.assert_close(out["advantages"], loo[:, None] * out["completion_mask"].float())


def test_every_registered_loss_runs_or_names_what_trl_lacks(tmp_path):
    """No deep traceback: each loss gives a finite scalar, or MissingInput names the missing field."""
    trl_trainer, mr, data = trainers(tmp_path)
    inputs = stale_batch(trl_trainer, data)
    outcomes = {}
    for name in registry.list_stages()["loss"]:
        try:
            mr.minirlvr_loss = resolve("loss", name, None, "TRL", has_reference=False)
            loss = MinirlvrGRPOTrainer._compute_loss(mr, mr.model, inputs)
            assert torch.isfinite(loss), name
            outcomes[name] = "runs"
        except MissingInput as err:
            assert any(w in str(err) for w in ("out.", "batch.", "ctx.", "hidden", "prepare", "reference")), err
            assert "TRL" in str(err), err
            outcomes[name] = "missing: " + str(err)[:150]
    print(outcomes)
    assert outcomes["ppo_clip"] == outcomes["kl_cov"] == outcomes["clip_cov"] == outcomes["forking_tokens"] == "runs"
    assert outcomes["bupo"].startswith("missing")  # hidden states


def test_clear_errors(tmp_path):
    data, reward = F.dataset_and_reward()
    kw = dict(model=F.model(), reward_funcs=reward, train_dataset=data, processing_class=F.tokenizer())
    with pytest.raises(ValueError, match="known:.*ppo_clip"):
        MinirlvrGRPOTrainer(args=F.grpo_config(tmp_path), loss="no_such_loss", **kw)
    with pytest.raises(MissingInput, match="reference"):  # KL to a reference TRL will not compute at beta 0
        MinirlvrGRPOTrainer(args=F.grpo_config(tmp_path), loss="ppo_clip", loss_cfg={"kl_coef": 0.1}, **kw)
    with pytest.raises(ValueError, match="top_entropy_quantile"):
        MinirlvrGRPOTrainer(args=F.grpo_config(tmp_path, top_entropy_quantile=0.2), **kw)
    with pytest.raises(ValueError, match="clip_low"):
        MinirlvrGRPOTrainer(args=F.grpo_config(tmp_path), loss_cfg={"clip_low": -1.0}, **kw)


USER_LOSS = '''
from dataclasses import dataclass
import torch
from minirlvr.baselines import PPOClipConfig, ppo_terms
from minirlvr.registry import register

@dataclass
class DampedConfig(PPOClipConfig):
    gamma: float = 1.0

@register("loss", "user_damped_positive", config=DampedConfig, paper="a user's own file")
def damped(out, batch, cfg, ctx):
    pi_old = batch.old_logp.exp()
    weight = torch.where(batch.advantages > 0, (1 - pi_old).clamp(min=0) ** cfg.gamma, torch.ones_like(pi_old))
    return ppo_terms(out, batch, cfg, token_weight=weight)
'''


def import_user_loss(tmp_path):
    path = tmp_path / "my_user_loss.py"
    path.write_text(USER_LOSS)
    spec = importlib.util.spec_from_file_location("my_user_loss", path)
    spec.loader.exec_module(importlib.util.module_from_spec(spec))


@pytest.mark.slow
def test_a_users_own_loss_file_runs_in_trl(tmp_path):
    import_user_loss(tmp_path)
    logs, _ = train_history(tmp_path, MinirlvrGRPOTrainer, steps=2, loss="user_damped_positive",
                            loss_cfg={"gamma": 2.0})
    assert len(logs) == 2 and all(math.isfinite(h["loss"]) for h in logs)
