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
                                 dict(minibatches=0), dict(eval_every=-1), dict(lr=float("inf")),
                                 dict(lr=float("nan")), dict(temperature=float("inf")), dict(grad_clip=0.0),
                                 dict(weight_decay=-0.1), dict(warmup_steps=-1), dict(max_new_tokens=0),
                                 dict(threads=0)])
def test_invalid_train_config(bad):
    (name, value), = bad.items()
    with pytest.raises(ValueError, match=name):
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


# The tiny random checkpoint earns no reward, so every advantage is 0 and the policy-gradient term
# has zero gradient. These tests add an entropy bonus (or a reward the random model earns) so that
# an update really moves the policy, and then check what the update must do.
MOVING = {"loss.entropy_coef": 0.05}


def test_kl_to_reference_starts_at_zero_and_grows(tmp_path, tiny_ckpt):
    hist = train(small(tmp_path, tiny_ckpt, steps=3, lr=1e-3, overrides=MOVING))["history"]
    assert hist[0]["kl_ref"] < 1e-6          # step 1 samples from the initial policy itself
    assert hist[-1]["kl_ref"] > 1e-4 > 100 * hist[0]["kl_ref"]   # far above float noise


_seen: dict = {}


@registry.register("loss", "_test_grad_probe", paper="test only")
def _grad_probe_loss(out, batch, cfg, ctx):
    """Entropy bonus; records the gradient THIS minibatch's loss alone has, and checks on the
    parameter's accumulate hook that backward leaves exactly that in .grad (nothing carried over)."""
    from minirlvr.baselines import PPOClipConfig, ppo_terms
    loss, m = ppo_terms(out, batch, PPOClipConfig(entropy_coef=0.05))
    p = ctx.policy.tok_emb.weight
    expected = torch.autograd.grad(loss, p, retain_graph=True)[0]
    if "hook" not in _seen:
        def check(param):
            _seen["max_err"] = max(_seen.get("max_err", 0.0), float((param.grad - _seen["expected"]).abs().max()))
            _seen["calls"] = _seen.get("calls", 0) + 1
        _seen["hook"] = p.register_post_accumulate_grad_hook(check)
    _seen["expected"] = expected
    assert float(expected.abs().max()) > 0  # the test means something only if the gradient is not zero
    return loss, m


def test_each_optimizer_step_sees_only_its_own_minibatch_gradient(tmp_path, tiny_ckpt):
    _seen.clear()
    try:
        train(small(tmp_path, tiny_ckpt, loss="_test_grad_probe", steps=2, minibatches=2, ppo_epochs=2))
    finally:
        _seen.pop("hook").remove()
    assert _seen["calls"] == 2 * 2 * 2
    assert _seen["max_err"] < 1e-6


@dataclass
class _FirstCharConfig:
    char: str = "1"


@registry.register("reward", "_test_first_char", config=_FirstCharConfig, paper="test only")
def _first_char_reward(batch, cfg, ctx):
    """1 when the completion starts with `char`: a reward a random model earns sometimes."""
    return torch.tensor([float(t.startswith(cfg.char)) for t in batch.texts])


@registry.register("loss", "_test_keep_batch", config=registry.get_stage("loss", "ppo_clip").config, paper="test only")
def _keep_batch_loss(out, batch, cfg, ctx):
    _seen.setdefault("batches", []).append(batch)
    return registry.get_stage("loss", "ppo_clip").fn(out, batch, cfg, ctx)


def test_an_update_makes_positive_advantage_responses_more_likely(tmp_path, tiny_ckpt):
    from minirlvr.rollout import policy_forward
    _seen.clear()
    res = train(small(tmp_path, tiny_ckpt, reward="_test_first_char", loss="_test_keep_batch", steps=1,
                      minibatches=1, prompts_per_step=8, group_size=8, lr=1e-3))
    batch = _seen["batches"][0]
    adv = batch.advantages.sum(1) / batch.response_mask.sum(1)
    assert (adv > 0).any() and (adv < 0).any()
    with torch.no_grad():
        new_logp = policy_forward(res["policy"], batch).logp
    gain = ((new_logp - batch.old_logp) * batch.response_mask).sum(1)
    assert gain[adv > 0].mean() > 0 > gain[adv < 0].mean()


@registry.register("reward", "_test_threads", paper="test only")
def _threads_reward(batch, cfg, ctx):
    _seen["threads"] = torch.get_num_threads()
    return torch.zeros(batch.size)


def test_threads_are_set_for_the_run_and_restored(tmp_path, tiny_ckpt):
    before = torch.get_num_threads()
    want = 2 if before != 2 else 3
    train(small(tmp_path, tiny_ckpt, steps=1, threads=want, reward="_test_threads"))
    assert _seen["threads"] == want and torch.get_num_threads() == before
    with pytest.raises(ValueError, match="threads"):
        TrainConfig(threads=0)


def test_reference_policy_is_loaded_for_kl(tmp_path, tiny_ckpt):
    hist = train(small(tmp_path, tiny_ckpt, overrides={"loss.kl_coef": 0.1}, steps=2))["history"]
    assert all("kl" in h and h["kl"] >= 0 for h in hist)  # k3 >= 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU on this machine")
def test_trains_on_gpu(tmp_path, tiny_ckpt):
    hist = train(small(tmp_path, tiny_ckpt, device="cuda", steps=2))["history"]
    assert all(math.isfinite(h["reward"]) for h in hist)
