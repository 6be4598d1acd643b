"""The RL loop: registry, config errors, determinism, resume, divergence handling, GPU smoke test.

Runs use a tiny random GPT saved to a temporary checkpoint, so they take seconds.
"""
import json
import math
import os
from dataclasses import dataclass

import pytest
import torch

from minirlvr import registry
from minirlvr.trainer import TrainConfig, TrainingDiverged, build_pipeline, train


def small(tmp_path, ckpt, **kw):
    base = dict(task="addition", steps=3, prompts_per_step=4, group_size=4, minibatches=2, eval_every=0,
                progress=False, out_dir=str(tmp_path), init=ckpt, max_new_tokens=6, save_every=1)
    base.update(kw)
    return TrainConfig(**base)


# ---------------------------------------------------------------- registry and configs

def test_unknown_names_list_the_known_ones():
    with pytest.raises(ValueError, match="known recipes: .*grpo"):
        registry.get_recipe("nope")
    with pytest.raises(ValueError, match="known: .*ppo_clip"):
        registry.get_stage("loss", "nope")
    with pytest.raises(ValueError, match="stages are"):
        registry.get_stage("critic", "x")


def test_config_overrides_are_typed_and_checked():
    pipe = build_pipeline(TrainConfig(overrides={"loss.clip_high": "0.28", "loss.agg": "token-mean"}))
    assert pipe.configs["loss"].clip_high == 0.28 and pipe.configs["loss"].agg == "token-mean"
    with pytest.raises(ValueError, match="unknown setting.*valid settings"):
        build_pipeline(TrainConfig(overrides={"loss.clip_hihg": 0.3}))
    with pytest.raises(ValueError, match="expected float"):
        build_pipeline(TrainConfig(overrides={"loss.clip_high": "wide"}))
    with pytest.raises(ValueError, match="is not one of"):
        build_pipeline(TrainConfig(overrides={"loss.agg": "mean"}))
    with pytest.raises(ValueError, match="stage.key"):
        build_pipeline(TrainConfig(overrides={"clip_high": 0.3}))
    # optional settings: "none" switches off, a number is parsed, anything else is an error
    assert build_pipeline(TrainConfig(recipe="dapo", overrides={"loss.clip_ratio_c": "none"})).configs["loss"].clip_ratio_c is None
    assert build_pipeline(TrainConfig(overrides={"loss.clip_ratio_c": "3"})).configs["loss"].clip_ratio_c == 3.0
    with pytest.raises(ValueError, match="fits none of"):
        build_pipeline(TrainConfig(overrides={"loss.clip_ratio_c": "x"}))


def test_recipe_settings_do_not_leak_into_a_replaced_stage():
    # the dapo recipe sets clip_high=0.28 for ppo_clip; it must apply to ppo_clip only
    assert build_pipeline(TrainConfig(recipe="dapo")).configs["loss"].clip_high == 0.28


@pytest.mark.parametrize("bad", [dict(steps=0), dict(group_size=0), dict(lr=-1.0), dict(device="tpu"),
                                 dict(minibatches=0), dict(eval_every=-1)])
def test_invalid_train_config(bad):
    with pytest.raises(ValueError):
        TrainConfig(**bad)


def test_group_statistics_need_two_samples(tmp_path, tiny_ckpt):
    with pytest.raises(ValueError, match="group_size must be >= 2"):
        train(small(tmp_path, tiny_ckpt, group_size=1))


def test_missing_and_corrupt_checkpoints(tmp_path):
    with pytest.raises(FileNotFoundError):
        train(small(tmp_path, str(tmp_path / "none.pt")))
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="could not be read"):
        train(small(tmp_path, str(bad)))


# ---------------------------------------------------------------- the loop

@pytest.mark.parametrize("recipe", ["grpo", "dr_grpo", "dapo", "rloo", "reinforce_pp"])
def test_every_baseline_recipe_trains_and_logs_finite_metrics(tmp_path, tiny_ckpt, recipe):
    hist = train(small(tmp_path, tiny_ckpt, recipe=recipe, steps=2))["history"]
    assert [h["step"] for h in hist] == [1, 2]
    for key in ("reward", "accuracy", "entropy", "entropy_p50", "completion_length", "clipfrac", "grad_norm",
                "time_step", "frac_reward_zero_std", "kl_ref"):
        assert all(math.isfinite(h[key]) for h in hist), key


def test_same_seed_same_metrics(tmp_path, tiny_ckpt):
    strip = lambda hist: [{k: v for k, v in h.items() if not k.startswith("time")} for h in hist]  # noqa: E731
    a = train(small(tmp_path / "a", tiny_ckpt, eval_every=2))["history"]
    b = train(small(tmp_path / "b", tiny_ckpt, eval_every=2))["history"]
    c = train(small(tmp_path / "c", tiny_ckpt, eval_every=2, seed=1))["history"]
    assert strip(a) == strip(b)
    assert strip(a) != strip(c)


def test_resume_continues_exactly(tmp_path, tiny_ckpt):
    strip = lambda hist: [{k: v for k, v in h.items() if not k.startswith("time")} for h in hist]  # noqa: E731
    full = train(small(tmp_path / "full", tiny_ckpt, steps=4, name="r"))["history"]
    train(small(tmp_path / "part", tiny_ckpt, steps=2, name="r"))
    resumed = train(small(tmp_path / "part", tiny_ckpt, steps=4, name="r", resume=True))["history"]
    assert strip(resumed) == strip(full)
    with open(tmp_path / "part" / "r" / "metrics.jsonl") as f:
        assert [json.loads(line)["step"] for line in f] == [1, 2, 3, 4]


@dataclass
class _NanConfig:
    at_step: int = 1


@registry.register("loss", "_test_nan", config=_NanConfig, paper="test only")
def _nan_loss(out, batch, cfg, ctx):
    loss = (out.logp * batch.response_mask).sum() * 0.0
    if ctx.step >= cfg.at_step:
        loss = loss + float("nan")
    return loss, {"pg_loss": float(loss.detach())}


def test_nan_stops_the_run_naming_step_and_term(tmp_path, tiny_ckpt):
    with pytest.raises(TrainingDiverged, match=r"step 2: loss '_test_nan' is nan.*pg_loss"):
        train(small(tmp_path, tiny_ckpt, loss="_test_nan", steps=3, name="n"))
    # the checkpoint of the last good step (step 1, saved every step here) is kept
    assert os.path.isfile(tmp_path / "n" / "policy.pt")


def test_evaluation_logs_pass_at_k(tmp_path, tiny_ckpt):
    hist = train(small(tmp_path, tiny_ckpt, eval_every=2, eval_problems=4, eval_k=4))["history"]
    evals = [h for h in hist if "eval/pass@4" in h]
    assert [h["step"] for h in evals] == [0, 2, 3]
    for h in evals:
        curve = [h[f"eval/pass@{k}"] for k in range(1, 5)]
        assert all(a <= b + 1e-12 for a, b in zip(curve, curve[1:]))


def test_kl_to_reference_starts_at_zero_and_grows(tmp_path, tiny_ckpt):
    hist = train(small(tmp_path, tiny_ckpt, steps=3, lr=1e-3))["history"]
    assert hist[0]["kl_ref"] < 1e-6          # step 1 samples from the initial policy itself
    assert hist[-1]["kl_ref"] > hist[0]["kl_ref"]


def test_reference_policy_is_loaded_for_kl(tmp_path, tiny_ckpt):
    hist = train(small(tmp_path, tiny_ckpt, overrides={"loss.kl_coef": 0.1}, steps=2))["history"]
    assert all("kl" in h and h["kl"] >= 0 for h in hist)  # k3 >= 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU on this machine")
def test_trains_on_gpu(tmp_path, tiny_ckpt):
    hist = train(small(tmp_path, tiny_ckpt, device="cuda", steps=2))["history"]
    assert all(math.isfinite(h["reward"]) for h in hist)
