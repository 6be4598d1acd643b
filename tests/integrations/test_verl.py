"""The verl adapter against verl 0.9.1's own functions, looked up through verl's own registries.

minirlvr/ppo_clip, minirlvr/clip_cov, minirlvr/kl_cov vs verl's vanilla, clip_cov, kl_cov on identical tensors:
values and gradients, in every aggregation mode, with and without verl's global batch info, with and without an
empty row. The one convention difference (seq-mean-token-sum-norm divides by B' in verl, B in minirlvr) is
measured, and the adapter returns verl's value. Advantages: minirlvr/grpo, dr_grpo, rloo vs verl's grpo / rloo.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("verl", reason="the verl adapter tests need the [integrations] extra")
from verl.trainer.ppo.core_algos import get_adv_estimator_fn, get_policy_loss_fn  # noqa: E402
from verl.workers.config.actor import ActorConfig, PolicyLossConfig  # noqa: E402

from minirlvr.core import AGG_MODES, aggregate  # noqa: E402
from minirlvr.integrations import MissingInput  # noqa: E402
from minirlvr.integrations import verl as adapter  # noqa: E402

CLIP_COV = {"clip_cov_ratio": 0.1, "clip_cov_lb": 0.0, "clip_cov_ub": 5.0}
KL_COV = {"kl_cov_ratio": 0.1, "ppo_kl_coef": 0.1}
# the same settings on the minirlvr side (its own configs; verl's are not read by the adapter)
OURS = {"ppo_clip": {"clip_low": 0.2, "clip_high": 0.28, "clip_ratio_c": 3.0},
        "clip_cov": {"clip_ratio": 0.1, "cov_lb": 0.0, "cov_ub": 5.0, "clip_low": 0.2, "clip_high": 0.28},
        "kl_cov": {"kl_ratio": 0.1, "ppo_kl_coef": 0.1}}
VERL_TWIN = {"ppo_clip": "vanilla", "clip_cov": "clip_cov", "kl_cov": "kl_cov"}


def verl_config(loss_mode: str, info: dict | None = None) -> ActorConfig:
    cfg = ActorConfig(strategy="fsdp", rollout_n=4, ppo_mini_batch_size=4, ppo_micro_batch_size_per_gpu=4,
                      clip_ratio=0.2, clip_ratio_low=0.2, clip_ratio_high=0.28,
                      policy_loss=PolicyLossConfig(loss_mode=loss_mode, **CLIP_COV, **KL_COV))
    cfg.global_batch_info.update(info or {})
    return cfg


def make_batch(seed: int, B: int, T: int, empty_row: bool):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    if empty_row:
        lengths[0] = 0
    mask = torch.arange(T)[None] < lengths[:, None]                       # bool, as verl passes it
    logp = -torch.rand(B, T, generator=g, dtype=torch.float32) * 3 - 0.05
    old = logp + 0.4 * torch.randn(B, T, generator=g)                     # both clip bounds bind
    adv = torch.randn(B, 1, generator=g).expand(B, T) * mask
    return logp, old, adv, mask


def value_and_grad(fn, logp, old, adv, mask, mode, config, rng_seed):
    leaf = logp.clone().requires_grad_(True)
    torch.manual_seed(rng_seed)                                            # verl's clip_cov draws from the global RNG
    loss, metrics = fn(old_log_prob=old, log_prob=leaf, advantages=adv, response_mask=mask, loss_agg_mode=mode,
                       config=config, rollout_is_weights=None)
    loss.backward()
    return loss.detach(), leaf.grad, metrics


@pytest.mark.parametrize("ours", list(VERL_TWIN))
@pytest.mark.parametrize("mode", AGG_MODES)
@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 10 ** 6), B=st.integers(2, 9), T=st.integers(1, 12), empty_row=st.booleans(),
       dp=st.sampled_from([None, 2]))
def test_minirlvr_losses_equal_verls_own_in_every_mode(ours, mode, seed, B, T, empty_row, dp):
    """At least two responses with distinct advantages: with ONE (all valid advantages equal) every covariance
    score is 0 up to rounding, Clip-Cov / KL-Cov pick among ties, and the two sides may pick different tokens."""
    logp, old, adv, mask = make_batch(seed, B + empty_row, T, empty_row)   # >= 2 non-empty rows: no tie (below)
    info = {}
    if dp:  # as verl's ppo_loss fills it: this rank's batch is one of dp; global counts are larger
        info = {"dp_size": dp, "batch_num_tokens": int(mask.sum()) * 3 + 1, "global_batch_size": B * 2 + 1,
                "loss_scale_factor": None}
    name = adapter.register_loss(ours, OURS[ours], as_name=f"test_{ours}")
    mine = get_policy_loss_fn(name)                                        # through verl's own registry
    theirs = get_policy_loss_fn(VERL_TWIN[ours])
    mine.minirlvr_context.generator.manual_seed(seed)
    v_mine, g_mine, m_mine = value_and_grad(mine, logp, old, adv, mask, mode, verl_config(name, info), seed)
    v_ref, g_ref, m_ref = value_and_grad(theirs, logp, old, adv, mask, mode, verl_config(VERL_TWIN[ours], info), seed)
    torch.testing.assert_close(v_mine, v_ref, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(g_mine, g_ref, rtol=1e-5, atol=1e-7)
    if ours == "ppo_clip":  # metric names follow verl's
        assert m_mine["actor/pg_clipfrac"] == pytest.approx(m_ref["actor/pg_clipfrac"], abs=1e-6)
        assert m_mine["actor/ppo_kl"] == pytest.approx(m_ref["actor/ppo_kl"], abs=1e-6)


def test_the_parity_test_can_fail():
    """Different settings on one side (clip_high 0.2 vs verl's 0.28) give a different value."""
    logp, old, adv, mask = make_batch(0, 8, 10, False)
    name = adapter.register_loss("ppo_clip", {"clip_low": 0.2, "clip_high": 0.2, "clip_ratio_c": 3.0},
                                 as_name="test_wrong_clip")
    v_mine, _, _ = value_and_grad(get_policy_loss_fn(name), logp, old, adv, mask, "token-mean", verl_config(name), 0)
    v_ref, _, _ = value_and_grad(get_policy_loss_fn("vanilla"), logp, old, adv, mask, "token-mean",
                                 verl_config("vanilla"), 0)
    assert not torch.allclose(v_mine, v_ref, rtol=1e-4)


def test_norm_mode_convention_gap_is_B_over_B_prime():
    """minirlvr's own seq-mean-token-sum-norm divides by all rows B, verl's by non-empty rows B'. Measured on a
    batch with 2 empty rows of 8; the adapter returns verl's value (the test above)."""
    logp, old, adv, mask = make_batch(3, 8, 6, empty_row=True)
    mask[1] = False
    loss_mat = -adv * (logp - old).exp()
    ours = aggregate(loss_mat, mask.float(), "seq-mean-token-sum-norm")
    from verl.trainer.ppo.core_algos import agg_loss
    theirs = agg_loss(loss_mat, mask.float(), "seq-mean-token-sum-norm")
    torch.testing.assert_close(theirs / ours, torch.tensor(8 / 6))


def test_a_loss_verl_cannot_feed_names_what_is_missing():
    logp, old, adv, mask = make_batch(0, 4, 5, False)
    fn = get_policy_loss_fn("minirlvr/forking_tokens")                     # reads out.entropy
    with pytest.raises(MissingInput, match="out.entropy.*verl"):
        fn(old, logp, adv, mask, "token-mean", verl_config("minirlvr/forking_tokens"))
    with pytest.raises(MissingInput, match="rollout_is_weights"):
        get_policy_loss_fn("minirlvr/ppo_clip")(old, logp, adv, mask, "token-mean", verl_config("x"),
                                                torch.ones_like(logp))
    with pytest.raises(ValueError, match="token-sum.*token-mean"):
        get_policy_loss_fn("minirlvr/ppo_clip")(old, logp, adv, mask, "token-sum", verl_config("x"))
    assert any(s.startswith("loss bupo") and "hidden" in s for s in adapter.REGISTERED["skipped"])
    with pytest.raises(ValueError, match="known:"):
        adapter.register_loss("no_such_loss")


def verl_advantage(name, rewards, mask, index, **kw):
    token_rewards = torch.zeros(mask.shape)
    token_rewards[torch.arange(len(rewards)), (mask.sum(1) - 1).clamp(min=0)] = rewards  # reward on the last token
    return get_adv_estimator_fn(name)(token_level_rewards=token_rewards, response_mask=mask.float(), index=index,
                                      **kw)[0]


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10 ** 6), groups=st.integers(1, 5), G=st.integers(2, 6))
def test_minirlvr_advantages_equal_verls(seed, groups, G):
    rng = np.random.default_rng(seed)
    rewards = torch.tensor(rng.integers(0, 2, groups * G), dtype=torch.float32)
    index = np.array([f"uid-{i}" for i in rng.permutation(groups).repeat(G)], dtype=object)
    mask = torch.arange(7)[None] < torch.tensor(rng.integers(1, 8, groups * G))[:, None]
    for ours, theirs, kw in (("grpo", "grpo", {}), ("dr_grpo", "grpo", {"norm_adv_by_std_in_grpo": False}),
                             ("rloo", "rloo", {})):
        mine = verl_advantage(f"minirlvr/{ours}", rewards, mask, index)
        ref = verl_advantage(theirs, rewards, mask, index, **kw)
        torch.testing.assert_close(mine, ref, rtol=1e-5, atol=1e-5)


def test_group_of_one_convention_differs():
    """verl's GRPO: a lone response keeps advantage r (mean 0, std 1); minirlvr's: 0 (no baseline, no signal)."""
    mask = torch.ones(1, 3, dtype=torch.bool)
    index = np.array(["a"], dtype=object)
    assert float(verl_advantage("grpo", torch.tensor([1.0]), mask, index)[0, 0]) == pytest.approx(1.0, abs=1e-5)
    assert float(verl_advantage("minirlvr/grpo", torch.tensor([1.0]), mask, index)[0, 0]) == 0.0


USER_LOSS = '''
from minirlvr.baselines import PPOClipConfig, ppo_terms
from minirlvr.registry import register

@register("loss", "user_half_ppo", config=PPOClipConfig, paper="a user's own file")
def half_ppo(out, batch, cfg, ctx):
    loss, metrics = ppo_terms(out, batch, cfg)
    return 0.5 * loss, metrics
'''


def test_a_users_own_loss_file_runs_in_verl(tmp_path):
    path = tmp_path / "user_half_ppo.py"
    path.write_text(USER_LOSS)
    spec = importlib.util.spec_from_file_location("user_half_ppo", path)
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
    name = adapter.register_loss("user_half_ppo", {"clip_ratio_c": 3.0, "clip_high": 0.28})
    logp, old, adv, mask = make_batch(1, 6, 7, False)
    v_user, g_user, _ = value_and_grad(get_policy_loss_fn(name), logp, old, adv, mask, "token-mean",
                                       verl_config(name), 0)
    v_ref, g_ref, _ = value_and_grad(get_policy_loss_fn("vanilla"), logp, old, adv, mask, "token-mean",
                                     verl_config("vanilla"), 0)
    torch.testing.assert_close(v_user, 0.5 * v_ref)
    torch.testing.assert_close(g_user, 0.5 * g_ref)


def test_importing_verl_registers_minirlvr_through_its_plugin_entry_point():
    """The one-line config change works because `import verl` alone loads minirlvr's verl.plugins entry point
    (needs minirlvr installed, e.g. pip install -e .)."""
    from importlib.metadata import entry_points
    if not any(ep.value == "minirlvr.integrations.verl" for ep in entry_points(group="verl.plugins")):
        pytest.skip("minirlvr is not pip-installed here, so its entry point is not declared")
    code = ("import verl; from verl.trainer.ppo.core_algos import POLICY_LOSS_REGISTRY as R, "
            "ADV_ESTIMATOR_REGISTRY as A; print('minirlvr/clip_cov' in R, 'minirlvr/rloo' in A)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "VERL_USE_EXTERNAL_PLUGINS": "auto"})
    assert out.stdout.split() == ["True", "True"], out.stderr[-2000:]


def test_every_registered_loss_runs_or_names_what_verl_lacks():
    """Each loss registered at import either gives a finite loss from verl's inputs or raises MissingInput
    naming the field; the refused ones are listed with their reason."""
    logp, old, adv, mask = make_batch(5, 6, 8, False)
    outcomes = {}
    for name in adapter.REGISTERED["loss"]:
        try:
            loss, _ = get_policy_loss_fn(name)(old, logp.clone().requires_grad_(True), adv, mask, "token-mean",
                                               verl_config(name))
            assert torch.isfinite(loss), name
            outcomes[name] = "runs"
        except MissingInput as err:
            assert "verl" in str(err) and ("out." in str(err) or "batch." in str(err)), err
            outcomes[name] = "missing: " + str(err)[:80]
    print(outcomes, adapter.REGISTERED["skipped"])
    assert outcomes["minirlvr/ppo_clip"] == outcomes["minirlvr/clip_cov"] == outcomes["minirlvr/kl_cov"] == "runs"
    assert "out.entropy" in outcomes["minirlvr/forking_tokens"]
