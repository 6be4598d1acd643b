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


# ================================================================ stage contract v2
# Test-only stages: a spy loss whose declared needs come from its config (so one stage exercises every
# need), a counting reward with per-run state, a provider / requirer pair of extras, a probe.

from collections import Counter  # noqa: E402

from minirlvr.baselines import PPOClipConfig, ppo_terms  # noqa: E402
from minirlvr.trainer import ProblemSource, resolve_config  # noqa: E402

strip = lambda hist: [{k: v for k, v in h.items() if not k.startswith("time")} for h in hist]  # noqa: E731


@dataclass
class _SpyConfig(PPOClipConfig):
    needs: tuple[str, ...] = ()   # what the spy declares (a config-dependent declaration, like kl_coef > 0)


def _spy_prepare(batch, cfg, ctx):
    _seen.setdefault("events", []).append(("prepare", ctx.step, batch.size, batch.advantages is not None,
                                           batch.ref_logp is not None))


@registry.register("loss", "_test_spy", config=_SpyConfig, paper="test only", needs=lambda cfg: set(cfg.needs),
                   prepare=_spy_prepare)
def _spy_loss(out, batch, cfg, ctx):
    _seen.setdefault("events", []).append(("loss", ctx.step, batch.size))
    _seen.setdefault("calls", []).append(dict(step=ctx.step, ref=ctx.ref_policy is not None,
                                              ref_logp=batch.ref_logp is not None, hidden=out.hidden,
                                              groups=batch.group_ids.tolist(), problems=list(batch.problems)))
    return ppo_terms(out, batch, cfg)


def spy(tmp_path, ckpt, needs=(), **kw):
    _seen.clear()
    overrides = {"loss.needs": ",".join(needs), **kw.pop("overrides", {})}   # the CLI string form of a tuple
    res = train(small(tmp_path, ckpt, loss="_test_spy", overrides=overrides, **kw))
    return res, _seen.get("calls", [])


def test_needs_are_checked_at_registration_and_build():
    with pytest.raises(ValueError, match=r"unknown need\(s\) \['gpu'\]; known needs: reference, hidden"):
        registry.register("loss", "_test_bad_need", needs={"gpu"})(lambda *a: None)
    with pytest.raises(ValueError, match="only a loss may have a prepare"):
        registry.register("advantage", "_test_bad_prepare", prepare=lambda *a: None)(lambda *a: None)
    with pytest.raises(ValueError, match=r"loss '_test_spy': unknown need\(s\) \['gpu'\]"):
        build_pipeline(TrainConfig(loss="_test_spy", overrides={"loss.needs": "gpu"}))


def test_declared_needs_follow_the_config():
    assert "reference" not in build_pipeline(TrainConfig()).needs
    assert build_pipeline(TrainConfig(overrides={"loss.kl_coef": 0.1})).needs["reference"] == ["loss 'ppo_clip'"]
    assert "reference" in build_pipeline(TrainConfig(recipe="reinforce_pp", overrides={"advantage.kl_coef": 0.1})).needs
    assert "reference" in build_pipeline(TrainConfig(recipe="forking_tokens", overrides={"loss.kl_coef": 0.1})).needs
    assert "reference" not in build_pipeline(TrainConfig(recipe="kl_cov")).needs
    assert build_pipeline(TrainConfig(recipe="dapo")).needs["groups"] == ["rollout 'dynamic'", "advantage 'grpo'"]
    assert "groups" not in build_pipeline(TrainConfig(recipe="reinforce_pp")).needs


def test_reference_is_loaded_iff_a_stage_needs_it_or_kl_ref_is_logged(tmp_path, tiny_ckpt):
    res, calls = spy(tmp_path / "a", tiny_ckpt, log_ref_kl=False, steps=1)
    assert not any(c["ref"] or c["ref_logp"] for c in calls) and "kl_ref" not in res["history"][-1]
    _, calls = spy(tmp_path / "b", tiny_ckpt, needs=("reference",), log_ref_kl=False, steps=1)
    assert all(c["ref"] and c["ref_logp"] for c in calls)
    _, calls = spy(tmp_path / "c", tiny_ckpt, log_ref_kl=True, steps=1)            # kept: log_ref_kl loads it
    assert all(c["ref"] and c["ref_logp"] for c in calls)
    # a built-in declaration: ppo_clip needs the reference only when kl_coef > 0
    hist = train(small(tmp_path / "d", tiny_ckpt, log_ref_kl=False, steps=1, overrides={"loss.kl_coef": 0.1}))["history"]
    assert "kl" in hist[-1] and "kl_ref" in hist[-1]
    hist = train(small(tmp_path / "e", tiny_ckpt, log_ref_kl=False, steps=1))["history"]
    assert "kl_ref" not in hist[-1]


def test_hidden_states_only_when_declared(tmp_path, tiny_ckpt):
    _, calls = spy(tmp_path / "a", tiny_ckpt, needs=("hidden",), steps=1)
    assert all(len(c["hidden"]) == 2 and c["hidden"][0].shape[0] == len(c["groups"]) for c in calls)  # 2 layers
    _, calls = spy(tmp_path / "b", tiny_ckpt, steps=1)
    assert all(c["hidden"] is None for c in calls)


def test_group_size_is_checked_iff_groups_are_needed(tmp_path, tiny_ckpt):
    with pytest.raises(ValueError, match=r"loss '_test_spy' needs group statistics: group_size must be >= 2"):
        spy(tmp_path / "a", tiny_ckpt, needs=("groups",), advantage="reinforce_pp", group_size=1)
    _, calls = spy(tmp_path / "b", tiny_ckpt, advantage="reinforce_pp", group_size=1, steps=1)
    assert calls


def test_group_minibatches_keep_whole_groups(tmp_path, tiny_ckpt):
    def split_groups(calls):
        return sum(Counter(c["groups"])[g] != 4 for c in calls for g in set(c["groups"]))
    _, calls = spy(tmp_path / "a", tiny_ckpt, needs=("group_minibatches",), steps=2, ppo_epochs=2,
                   prompts_per_step=4, group_size=4, minibatches=2)
    assert len(calls) == 2 * 2 * 2 and split_groups(calls) == 0
    for i in range(0, len(calls), 2):   # one epoch: two minibatches of two whole groups, all four groups
        assert sorted(set(calls[i]["groups"]) | set(calls[i + 1]["groups"])) == [0, 1, 2, 3]
        assert len(set(calls[i]["groups"])) == 2
    _, calls = spy(tmp_path / "b", tiny_ckpt, steps=2, ppo_epochs=2, prompts_per_step=4, group_size=4, minibatches=2)
    assert split_groups(calls) > 0      # rows are permuted: groups are cut across minibatches
    with pytest.raises(ValueError, match=r"prompts_per_step \(2\) must be >= minibatches \(4\)"):
        spy(tmp_path / "c", tiny_ckpt, needs=("group_minibatches",), prompts_per_step=2, minibatches=4)


def test_prepare_runs_once_per_step_on_the_full_batch_before_the_updates(tmp_path, tiny_ckpt):
    spy(tmp_path, tiny_ckpt, steps=3, prompts_per_step=4, group_size=4, minibatches=2, ppo_epochs=2)
    events = _seen["events"]
    assert [e[0] for e in events] == ["prepare", "loss", "loss", "loss", "loss"] * 3
    preps = [e for e in events if e[0] == "prepare"]
    assert preps == [("prepare", s, 16, True, True) for s in range(3)]   # full batch, advantages and ref_logp set
    assert all(e[2] == 8 for e in events if e[0] == "loss")


# ---------------------------------------------------------------- per-run state, history, ctx.log

@registry.register("reward", "_test_counting", paper="test only")
def _counting_reward(batch, cfg, ctx):
    st = ctx.state["_test_counting"]
    st["steps"] = st.get("steps", 0) + 1
    st["lengths"] = st.get("lengths", torch.zeros(())) + batch.lengths.float().sum()   # a tensor
    st["log"] = st.get("log", []) + [{"step": ctx.step, "first": batch.texts[0]}]
    ctx.log(counted=st["steps"], seen_records=len(ctx.history), length_sum=st["lengths"])
    return torch.tensor([float(t.startswith("1")) for t in batch.texts])


def test_reuse_loads_a_finished_run_of_the_same_configuration_and_reruns_otherwise(tmp_path, tiny_ckpt):
    first = train(small(tmp_path, tiny_ckpt, name="r"))
    metrics = os.path.join(first["run_dir"], "metrics.jsonl")
    stamp = os.stat(metrics).st_mtime_ns
    again = train(small(tmp_path, tiny_ckpt, name="r", reuse=True, progress=True, save_every=7))  # no-result fields
    assert again["history"] == json.loads(json.dumps(first["history"])) and os.stat(metrics).st_mtime_ns == stamp
    assert all(torch.equal(a, b) for a, b in zip(again["policy"].state_dict().values(),
                                                 first["policy"].state_dict().values()))
    # another setting, more steps than were run, or no reuse: trained again
    for kw in (dict(lr=3e-4), dict(steps=4), dict(reuse=False), dict(eval_max_new_tokens=3)):
        stamp = os.stat(metrics).st_mtime_ns
        train(small(tmp_path, tiny_ckpt, name="r", **{"reuse": True, **kw}))
        assert os.stat(metrics).st_mtime_ns != stamp, kw
    # a run saved before a TrainConfig field existed is reused while the new field is at its default (None)
    train(small(tmp_path, tiny_ckpt, name="r"))
    cfg_path = os.path.join(first["run_dir"], "config.json")
    with open(cfg_path) as f:
        record = json.load(f)
    del record["train"]["eval_max_new_tokens"]
    with open(cfg_path, "w") as f:
        json.dump(record, f)
    stamp = os.stat(metrics).st_mtime_ns
    train(small(tmp_path, tiny_ckpt, name="r", reuse=True))
    assert os.stat(metrics).st_mtime_ns == stamp
    train(small(tmp_path, tiny_ckpt, name="r", reuse=True, eval_max_new_tokens=3))
    assert os.stat(metrics).st_mtime_ns != stamp


def test_evaluation_uses_its_own_length_limit(tmp_path, tiny_ckpt):
    """eval_max_new_tokens bounds the evaluation's samples, max_new_tokens the training rollouts."""
    run = train(small(tmp_path, tiny_ckpt, max_new_tokens=1, eval_max_new_tokens=6, eval_every=1))
    assert max(h["completion_length_max"] for h in run["history"] if "completion_length_max" in h) <= 1
    assert max(h["eval/len_mean"] for h in run["history"] if "eval/len_mean" in h) > 1
    short = train(small(tmp_path, tiny_ckpt, name="s", max_new_tokens=1, eval_every=1))
    assert max(h["eval/len_mean"] for h in short["history"] if "eval/len_mean" in h) <= 1


def test_state_survives_resume_exactly(tmp_path, tiny_ckpt):
    kw = dict(reward="_test_counting", eval_every=0, overrides=MOVING, lr=1e-3)
    full = train(small(tmp_path / "full", tiny_ckpt, steps=4, name="r", **kw))
    train(small(tmp_path / "part", tiny_ckpt, steps=2, name="r", **kw))
    resumed = train(small(tmp_path / "part", tiny_ckpt, steps=4, name="r", resume=True, **kw))
    assert strip(resumed["history"]) == strip(full["history"])
    assert [h["counted"] for h in full["history"]] == [1, 2, 3, 4]
    assert [h["seen_records"] for h in full["history"]] == [0, 1, 2, 3]     # ctx.history: the records so far
    a, b = full["state"]["_test_counting"], resumed["state"]["_test_counting"]
    assert a["steps"] == b["steps"] == 4 and a["log"] == b["log"] and torch.equal(a["lengths"], b["lengths"])
    assert full["history"][-1]["length_sum"] == float(a["lengths"])         # a 0-d tensor is logged as a float
    assert set(full["state"]) == {"plain", "_test_counting", "grpo", "ppo_clip"}   # one dict per stage function


@registry.register("reward", "_test_history", paper="test only")
def _history_reward(batch, cfg, ctx):
    if len(ctx.history):
        with pytest.raises(TypeError):
            ctx.history[-1]["reward"] = 0.0
        with pytest.raises((TypeError, AttributeError)):
            ctx.history.append({})
        _seen["last"] = dict(ctx.history[-1])
    return torch.zeros(batch.size)


def test_history_is_a_read_only_view(tmp_path, tiny_ckpt):
    _seen.clear()
    hist = train(small(tmp_path, tiny_ckpt, reward="_test_history", steps=2, eval_every=0))["history"]
    assert _seen["last"] == hist[0]


@dataclass
class _BadStateConfig:
    what: str = "array"


@registry.register("reward", "_test_bad_state", config=_BadStateConfig, paper="test only")
def _bad_state_reward(batch, cfg, ctx):
    import numpy as np
    ctx.state["_test_bad_state"]["buffer"] = {"ok": [1, 2.0, "x", None, torch.ones(2)],
                                              "arr": np.zeros(3) if cfg.what == "array" else batch}
    return torch.zeros(batch.size)


@pytest.mark.parametrize("what,kind", [("array", "ndarray"), ("batch", "RolloutBatch")])
def test_state_that_cannot_load_with_weights_only_is_a_clear_error(tmp_path, tiny_ckpt, what, kind):
    with pytest.raises(ValueError, match=rf"ctx.state\['_test_bad_state'\]\['buffer'\]\['arr'\] holds a {kind}: "
                                         r"stage state must be tensors"):
        train(small(tmp_path, tiny_ckpt, reward="_test_bad_state", steps=1, overrides={"reward.what": what}))


@registry.register("reward", "_test_bad_log", paper="test only")
def _bad_log_reward(batch, cfg, ctx):
    ctx.log(note="text")
    return torch.zeros(batch.size)


def test_ctx_log_takes_numbers_only(tmp_path, tiny_ckpt):
    with pytest.raises(ValueError, match="metric 'note' must be a number, got str"):
        train(small(tmp_path, tiny_ckpt, reward="_test_bad_log", steps=1))


def test_dynamic_sampling_metrics_go_through_ctx_log(tmp_path, tiny_ckpt):
    hist = train(small(tmp_path, tiny_ckpt, recipe="dapo", steps=1))["history"]
    assert isinstance(hist[-1]["dynamic_sampling_tries"], int) and "dynamic_sampling_dropped_groups" in hist[-1]


# ---------------------------------------------------------------- provides / requires

@registry.register("advantage", "_test_provider", config=registry.get_stage("advantage", "grpo").config,
                   paper="test only", provides={"_test_key"}, needs={"groups"})
def _provider_advantage(batch, cfg, ctx):
    batch.extras["_test_key"] = torch.arange(batch.size)
    return registry.get_stage("advantage", "grpo").fn(batch, cfg, ctx)


@registry.register("loss", "_test_requirer", config=PPOClipConfig, paper="test only", requires={"_test_key"})
def _requirer_loss(out, batch, cfg, ctx):
    _seen.setdefault("keys", []).append(batch.extras["_test_key"].tolist())
    return ppo_terms(out, batch, cfg)


@registry.register("rollout", "_test_early_requirer", paper="test only", requires={"_test_key"})
def _early_requirer(problems, cfg, ctx):
    raise AssertionError("never runs")


def test_a_missing_extras_key_is_a_clear_error():
    with pytest.raises(ValueError) as e:
        build_pipeline(TrainConfig(loss="_test_requirer"))
    assert str(e.value) == ("loss '_test_requirer' requires extras ['_test_key'], which no earlier stage of this "
                            "pipeline provides (rollout 'plain', reward 'verifier', advantage 'grpo'); "
                            "stages that provide it: advantage '_test_provider'")
    build_pipeline(TrainConfig(loss="_test_requirer", advantage="_test_provider"))
    # provided only by a LATER stage: the rollout runs before the advantage writes the key
    with pytest.raises(ValueError, match=r"rollout '_test_early_requirer' requires extras \['_test_key'\].*\(none\)"):
        build_pipeline(TrainConfig(rollout="_test_early_requirer", advantage="_test_provider"))


def test_provided_extras_reach_the_loss_sliced_per_minibatch(tmp_path, tiny_ckpt):
    _seen.clear()
    train(small(tmp_path, tiny_ckpt, loss="_test_requirer", advantage="_test_provider", steps=1, minibatches=2))
    assert sorted(_seen["keys"][0] + _seen["keys"][1]) == list(range(16)) and len(_seen["keys"][0]) == 8


# ---------------------------------------------------------------- recipes fix trainer settings

def test_recipe_train_settings_apply_and_explicit_values_win(tmp_path, tiny_ckpt):
    recipe = registry.register_recipe(registry.Recipe("_test_stale", loss="_test_spy",
                                                      train_cfg={"minibatches": 2, "lr": 3e-4, "ppo_epochs": 2}))
    cfg, sources = resolve_config(TrainConfig(recipe=recipe.name, lr=1e-4))
    assert (cfg.minibatches, cfg.ppo_epochs, cfg.lr, cfg.steps) == (2, 2, 1e-4, 300)
    assert sources["minibatches"] == "recipe '_test_stale'" and sources["lr"] == "explicit" and sources["steps"] == "default"
    assert resolve_config(TrainConfig(recipe=recipe.name, minibatches=4))[0].minibatches == 4   # even = the default
    _seen.clear()
    res = train(small(tmp_path, tiny_ckpt, recipe=recipe.name, loss=None, steps=1, minibatches=None))
    assert len(_seen["calls"]) == 2 * 2 and res["config"].minibatches == 2
    with open(os.path.join(res["run_dir"], "config.json")) as f:
        saved = json.load(f)
    assert saved["train"]["minibatches"] == 2 and saved["train_sources"]["minibatches"] == "recipe '_test_stale'"
    assert saved["train"]["max_new_tokens"] == 6 and saved["train_sources"]["max_new_tokens"] == "explicit"


@pytest.mark.parametrize("train_cfg,message", [
    ({"minibatch": 2}, r"recipe '_test_bad_recipe': unknown train_cfg setting\(s\) \['minibatch'\]; a recipe may set steps"),
    ({"lr": -1.0}, r"recipe '_test_bad_recipe' train_cfg: lr must be a finite number > 0, got -1.0"),
    ({"eval_k": 4}, r"unknown train_cfg setting\(s\) \['eval_k'\]"),   # evaluation stays the caller's
])
def test_bad_recipe_train_settings(train_cfg, message):
    registry._RECIPES.pop("_test_bad_recipe", None)
    registry.register_recipe(registry.Recipe("_test_bad_recipe", train_cfg=train_cfg))
    try:
        with pytest.raises(ValueError, match=message):
            resolve_config(TrainConfig(recipe="_test_bad_recipe"))
    finally:
        registry._RECIPES.pop("_test_bad_recipe")


def test_unset_settings_are_none_until_resolved():
    cfg = TrainConfig()
    assert cfg.lr is None and cfg.minibatches is None and cfg.train_split is None
    eff = resolve_config(cfg)[0]
    assert (eff.steps, eff.prompts_per_step, eff.group_size, eff.minibatches, eff.lr, eff.train_split) == \
        (300, 16, 8, 4, 1e-4, "train")


# ---------------------------------------------------------------- probes

@dataclass
class _ProbeConfig:
    scale: float = 1.0

    def __post_init__(self):
        registry.check_range(self, "scale")


@registry.register("probe", "_test_probe", config=_ProbeConfig, paper="test only")
def _test_probe(policy, batch, cfg, ctx):
    return {"probe/step": cfg.scale * (ctx.step + 1), "probe/rows": torch.tensor(batch.size)}


def test_probes_run_every_n_steps(tmp_path, tiny_ckpt):
    hist = train(small(tmp_path, tiny_ckpt, steps=5, probes=("_test_probe",), probe_every=2,
                       overrides={"probe._test_probe.scale": "10"}))["history"]
    assert [h.get("probe/step") for h in hist] == [None, 20.0, None, 40.0, None]
    assert hist[1]["probe/rows"] == 16 and isinstance(hist[1]["probe/rows"], int)


def test_probe_errors():
    with pytest.raises(ValueError, match="unknown probe function 'nope'; known: .*entropy_change"):
        build_pipeline(TrainConfig(probes=("nope",)))
    with pytest.raises(ValueError, match="probe.NAME.key"):
        build_pipeline(TrainConfig(overrides={"probe._test_probe.scale": 2}))   # not a probe of this run
    with pytest.raises(ValueError, match="probe_every"):
        TrainConfig(probe_every=0)
    with pytest.raises(ValueError, match="entropy_diagnostics.*probe_every=2"):
        TrainConfig(entropy_diagnostics=True, probe_every=2)
    with pytest.raises(ValueError, match="probes must be a tuple"):
        TrainConfig(probes="entropy_change")


def test_entropy_diagnostics_is_the_entropy_change_probe(tmp_path, tiny_ckpt):
    a = train(small(tmp_path / "a", tiny_ckpt, steps=2, entropy_diagnostics=True, overrides=MOVING))["history"]
    b = train(small(tmp_path / "b", tiny_ckpt, steps=2, probes=("entropy_change",), overrides=MOVING))["history"]
    assert strip(a) == strip(b)
    assert all(k in a[-1] for k in ("cov_logp_adv", "dH_measured", "dH_first_order"))


def test_the_trainer_tests_no_method_name_or_config_field():
    import inspect
    import minirlvr.trainer as t
    src = inspect.getsource(t)
    assert "from .methods" not in src and "minirlvr.methods" not in src     # probes replaced the import
    for name in ("kl_coef", "needs_reference", '"dr_grpo"', '"rloo"', "entropy_change_diagnostics"):
        assert name not in src, name


# ---------------------------------------------------------------- problem distribution

@registry.register("reward", "_test_record_problems", paper="test only")
def _record_problems(batch, cfg, ctx):
    _seen.setdefault("problems", []).append(batch.problems[::ctx.group_size])
    return torch.zeros(batch.size)


def test_difficulty_mixture_for_training_and_per_level_eval(tmp_path, tiny_ckpt):
    _seen.clear()
    hist = train(small(tmp_path, tiny_ckpt, reward="_test_record_problems", steps=2, prompts_per_step=8,
                       difficulty=(1, 2), eval_every=2, eval_problems=16, eval_k=2))["history"]
    levels = Counter(p.difficulty for ps in _seen["problems"] for p in ps)
    assert set(levels) == {1, 2}
    assert {"eval/greedy_acc@d1", "eval/greedy_acc@d2", "eval/pass@1@d1", "eval/pass@1@d2"} <= set(hist[0])
    hist = train(small(tmp_path / "one", tiny_ckpt, steps=1, eval_every=1, eval_problems=4, eval_k=2))["history"]
    assert not any("@d" in k for k in hist[0])          # one level: no breakdown


def test_test_split_training(tmp_path, tiny_ckpt):
    from toy_tasks import get_task
    _seen.clear()
    train(small(tmp_path, tiny_ckpt, reward="_test_record_problems", steps=2, train_split="test"))
    task = get_task("addition")
    assert all(task.split_of(p) == "test" for ps in _seen["problems"] for p in ps)


def test_problem_pool_is_served_in_shuffled_epochs_and_resumes(tmp_path, tiny_ckpt):
    _seen.clear()
    kw = dict(reward="_test_record_problems", prompts_per_step=4, problem_pool=6, eval_every=0)
    train(small(tmp_path / "full", tiny_ckpt, steps=3, name="p", **kw))
    drawn = [p for ps in _seen["problems"] for p in ps]          # 12 problems = 2 epochs of the pool
    pool = Counter(drawn[:6])
    assert Counter(drawn[6:]) == pool and sum(pool.values()) == 6 and drawn[:6] != drawn[6:]
    _seen.clear()
    train(small(tmp_path / "part", tiny_ckpt, steps=1, name="p", **kw))
    train(small(tmp_path / "part", tiny_ckpt, steps=3, name="p", resume=True, **kw))
    assert [p for ps in _seen["problems"] for p in ps] == drawn


def test_default_problem_source_draws_exactly_like_task_sample():
    import numpy as np
    from toy_tasks import get_task
    task = get_task("addition")
    src = ProblemSource(task, np.random.default_rng(5), "train", None, None)
    ref = np.random.default_rng(5)
    assert src(7) + src(3) == task.sample(7, ref, split="train") + task.sample(3, ref, split="train")


@pytest.mark.parametrize("bad,message", [
    (dict(problem_pool=0), "problem_pool must be a positive integer or None"),
    (dict(difficulty=()), "difficulty must be a level"),
    (dict(difficulty="2"), "difficulty must be a level"),
    (dict(eval_difficulty=(1, "x")), "eval_difficulty must be a level"),
    (dict(eval_max_new_tokens=0), "eval_max_new_tokens must be a positive integer or None"),
    (dict(train_split="val"), "train_split must be 'train' or 'test'"),
])
def test_problem_distribution_errors(bad, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**bad)


def test_unknown_level_lists_the_valid_ones(tmp_path, tiny_ckpt):
    with pytest.raises(ValueError, match=r"difficulty \(1, 9\) is not valid for task 'addition'; valid difficulties"):
        train(small(tmp_path, tiny_ckpt, difficulty=(1, 9)))


def test_seed_stats_averages_each_run_then_the_seeds():
    from minirlvr.compare import seed_stats
    runs = [[{"step": 0, "a": 9.0}, {"step": 1, "a": 1.0, "b": 5.0}, {"step": 2, "a": 3.0}],
            [{"step": 1, "a": 5.0}, {"step": 2, "a": 7.0}]]
    assert seed_stats(runs, "a") == (5.0, 2.0)                       # final values 3 and 7
    assert seed_stats(runs, "a", last=2) == (4.0, 2.0)               # (1+3)/2 and (5+7)/2
    assert seed_stats(runs, "b") == (5.0, 0.0)                       # a run without the key is left out
    m, s = seed_stats(runs, "missing")
    assert math.isnan(m) and s == 0.0


def test_plot_curves_keeps_each_recipe_colour_when_another_lacks_a_key():
    import matplotlib
    matplotlib.use("Agg")
    from minirlvr.plots import plot_curves
    runs = {"a": [[{"step": 1, "x": 1.0}, {"step": 2, "x": 2.0}]],
            "b": [[{"step": 1, "x": 0.5, "y": 1.0}, {"step": 2, "x": 0.7, "y": 2.0}]]}
    fig = plot_curves(runs, keys=("x", "y"))
    colour = {ln.get_label(): ln.get_color() for ln in fig.axes[0].lines}
    assert [ln.get_color() for ln in fig.axes[1].lines] == [colour["b (n=1)"]]   # "a" has no "y"
