"""minirlvr's GSPO, CISPO, GMPO, SAPO against the engines' own code on identical tensors: verl's gspo, cispo,
geo_mean, sapo (through verl's registry), TRL's loss_type "sapo", "cispo" and importance_sampling_level
"sequence" (GSPO) on one GRPOTrainer batch."""
from __future__ import annotations

import sys

import pytest
import torch

pytest.importorskip("verl", reason="needs the [integrations] extra")
pytest.importorskip("trl", reason="needs the [integrations] extra")
sys.path.insert(0, __file__.rsplit("/", 1)[0])
import engine_fixtures as F  # noqa: E402
from test_trl import loss_and_grads, stale_batch  # noqa: E402
from test_verl import make_batch, value_and_grad, verl_config  # noqa: E402
from trl import GRPOTrainer  # noqa: E402
from verl.trainer.ppo.core_algos import get_policy_loss_fn  # noqa: E402

from minirlvr.integrations import verl as adapter  # noqa: E402
from minirlvr.integrations.trl import MinirlvrGRPOTrainer  # noqa: E402

# verl_config: clip_ratio_low 0.2, clip_ratio_high 0.28; ActorConfig's SAPO temperatures 1.0 / 1.05
TWINS = [("gspo", {"clip_low": 0.2, "clip_high": 0.28}, "gspo", "seq-mean-token-mean"),
         ("cispo", {"clip_low": 0.2, "clip_high": 0.28}, "cispo", "token-mean"),
         ("gmpo", {"clip_low": 0.2, "clip_high": 0.28}, "geo_mean", "token-mean"),
         ("sapo", {"tau_pos": 1.0, "tau_neg": 1.05}, "sapo", "seq-mean-token-mean")]


@pytest.mark.parametrize("ours,cfg,theirs,mode", TWINS)
@pytest.mark.parametrize("seed", range(4))
def test_equal_to_verls_own(ours, cfg, theirs, mode, seed):
    logp, old, adv, mask = make_batch(seed, 7, 9, empty_row=False)
    name = adapter.register_loss(ours, cfg, as_name=f"twin_{ours}")
    v_mine, g_mine, _ = value_and_grad(get_policy_loss_fn(name), logp, old, adv, mask, mode, verl_config(name), 0)
    v_ref, g_ref, _ = value_and_grad(get_policy_loss_fn(theirs), logp, old, adv, mask, mode, verl_config(theirs), 0)
    torch.testing.assert_close(v_mine, v_ref, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(g_mine, g_ref, rtol=1e-5, atol=1e-7)


def trl_pair(tmp, trl_args, loss, loss_cfg):
    data, reward = F.dataset_and_reward()
    model = F.model()
    common = dict(epsilon=0.2, epsilon_high=0.28)
    a = GRPOTrainer(model=model, reward_funcs=reward, args=F.grpo_config(tmp / "a", **{**common, **trl_args}),
                    train_dataset=data, processing_class=F.tokenizer())
    b = MinirlvrGRPOTrainer(model=model, reward_funcs=reward, args=F.grpo_config(tmp / "b", **common),
                            train_dataset=data, processing_class=F.tokenizer(), loss=loss, loss_cfg=loss_cfg)
    for t in (a, b):
        t.current_gradient_accumulation_steps = 1
    return a, b, data


@pytest.mark.slow
@pytest.mark.parametrize("trl_args,loss,loss_cfg", [
    ({"loss_type": "sapo"}, "sapo", {"tau_pos": 1.0, "tau_neg": 1.05}),
    ({"loss_type": "grpo", "importance_sampling_level": "sequence"}, "gspo", {"clip_low": 0.2, "clip_high": 0.28}),
    # TRL's cispo: weight capped at epsilon_high (absolute), no floor; token sum / tokens of the batch
    ({"loss_type": "cispo", "epsilon_high": 5.0}, "cispo", {"clip_low": None, "clip_high": 4.0}),
])
def test_equal_to_trls_own_loss_type(tmp_path, trl_args, loss, loss_cfg):
    a, b, data = trl_pair(tmp_path, trl_args, loss, loss_cfg)
    inputs = stale_batch(a, data)
    loss_a, grads_a = loss_and_grads(a, GRPOTrainer._compute_loss, inputs)
    loss_b, grads_b = loss_and_grads(b, MinirlvrGRPOTrainer._compute_loss, inputs)
    torch.testing.assert_close(loss_b, loss_a, rtol=1e-5, atol=1e-7)
    for ga, gb in zip(grads_a, grads_b):
        torch.testing.assert_close(gb, ga, rtol=1e-4, atol=1e-7)
