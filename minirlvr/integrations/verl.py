"""verl adapter: every registered minirlvr loss and advantage in verl's own registries, as `minirlvr/<name>`.

    pip install -e ".[integrations]"      # see the README: verl is installed with --no-deps beside transformers 5.24

Selecting one in a verl run is a config change: minirlvr declares a `verl.plugins` entry point, which verl
imports in every process that imports verl (its default VERL_USE_EXTERNAL_PLUGINS=auto), so

    actor_rollout_ref.actor.policy_loss.loss_mode=minirlvr/clip_cov
    algorithm.adv_estimator=minirlvr/rloo                                   (optional)

Settings. A minirlvr stage runs with its own dataclass config -- defaults, or the overrides given to
`register_loss` / `register_advantage` (a variant under a name of your choice). verl's clip_ratio*,
clip_cov_*, kl_cov_*, ppo_kl_coef, norm_adv_by_std_in_grpo are NOT read. From verl the loss takes only
  * loss_agg_mode -> the config's `agg` (minirlvr's four modes; verl's "token-sum" has no minirlvr twin and is
    refused), and `config.loss_scale_factor` -> `max_len` for seq-mean-token-sum-norm; a loss without an `agg`
    setting (gmpo: a mean over rows, as verl's own geo_mean) aggregates its own way and is not rescaled;
  * config.global_batch_info (dp_size, batch_num_tokens, global_batch_size): the local loss is rescaled to
    verl's global normalisation, exactly as verl's `agg_loss` does it (below).
A user's own loss: register it in minirlvr, then `register_loss("my_loss")` in a module that verl imports in
its workers (VERL_USE_EXTERNAL_MODULES=my_module).

What a verl policy loss receives is (old_log_prob, log_prob, advantages, response_mask [bool], loss_agg_mode,
config, rollout_is_weights): the minirlvr loss gets out.logp = log_prob, batch.old_logp, batch.advantages,
batch.response_mask; everything else (entropy, logits, hidden states, ref_logp, rewards, group_ids,
response_ids, temperature) is Missing and a loss that reads it fails naming it. rollout_is_weights (verl's
rollout correction) is refused: minirlvr losses take no per-token weights from outside.
An advantage receives token_level_rewards [B, T] (rewards = their row sum), response_mask and index (the uid
of each row's prompt -> group_ids); it returns (advantages, advantages) as verl's outcome estimators do.

Conventions, measured in tests/integrations/test_verl.py:
  * seq-mean-token-sum-norm: verl divides the summed row losses by the number of NON-EMPTY rows B'
    (global_batch_size), minirlvr's `core.aggregate` by all rows B. The adapter multiplies by B / B' (or by
    B dp / global_batch_size), so it returns verl's value; with no empty row the two agree anyway.
  * token-mean and the seq-mean modes with global_batch_info: local loss x (local count) dp / (global count),
    count = valid tokens (token-mean) or non-empty rows (seq-mean modes): verl's `agg_loss`, exactly, for a loss
    that is one aggregate of per-token terms (all of minirlvr's are).
  * Clip-Cov / KL-Cov pick tokens by covariance score; when every valid advantage of a micro-batch is equal
    (one response, or only all-equal groups) every score is 0 up to rounding, and verl and minirlvr may break
    that tie on different tokens (their policy-gradient terms are 0 there; KL-Cov's |log r| penalty is not).
  * verl's GRPO gives a group of one response advantage r (mean 0, std 1); minirlvr's gives 0.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

try:
    from verl.trainer.ppo import core_algos
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError("minirlvr.integrations.verl needs verl: see the README, 'Taking a method to a real "
                      "model' (pip install --no-deps verl==0.9.1 plus ray, tensordict, omegaconf, codetiming, "
                      "orjson)") from err

from .. import registry
from ..core import AGG_MODES
from . import EngineContext, MissingInput, call_advantage, call_loss, engine_batch, engine_output, resolve

ENGINE = "verl"
PREFIX = "minirlvr/"
VERL_METRIC_NAMES = {"ppo_kl": "actor/ppo_kl"}   # others: actor/<minirlvr name>; actor/pg_clipfrac below
_NOT_PASSED = "verl's policy-loss interface does not pass it"
_NO_REFERENCE = ("its policy-loss and estimator interfaces do not pass them (verl adds its own KL term: "
                 "actor.use_kl_loss / algorithm.use_kl_in_reward)")


def _global_scale(mask: torch.Tensor, mode: str, info: dict) -> float:
    """Factor taking minirlvr's local aggregate to verl's `agg_loss` value under global_batch_info."""
    dp = info.get("dp_size") or 1
    if mode == "token-mean":
        total = info.get("batch_num_tokens")
        return 1.0 if total is None else float(mask.sum()) * dp / float(total)
    rows = float((mask.sum(-1) > 0).sum())                      # B': non-empty rows
    total = info.get("global_batch_size")
    if mode == "seq-mean-token-sum-norm":                        # minirlvr: / B; verl: / global_batch_size (B')
        return mask.shape[0] * dp / float(rows if total is None else total) if (rows or total) else 1.0
    return 1.0 if total is None else rows * dp / float(total)


def _policy_loss(name: str, loss_cfg: dict | None, seed: int):
    stage = resolve("loss", name, loss_cfg, ENGINE, has_reference=False, reference_hint=_NO_REFERENCE)
    fields = {f.name for f in dataclasses.fields(stage.cfg)} if dataclasses.is_dataclass(stage.cfg) else set()
    ctx = EngineContext(ENGINE, seed=seed)

    def policy_loss(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode: str = "token-mean",
                    config=None, rollout_is_weights=None):
        if rollout_is_weights is not None:
            raise MissingInput(f"loss {PREFIX}{name}: verl passed rollout_is_weights (rollout correction); "
                               f"minirlvr losses take no outside per-token weights: turn rollout correction off")
        if loss_agg_mode not in AGG_MODES:
            raise ValueError(f"loss {PREFIX}{name}: loss_agg_mode {loss_agg_mode!r} has no minirlvr twin; "
                             f"use one of {', '.join(AGG_MODES)}")
        info = dict(getattr(config, "global_batch_info", None) or {}) if config is not None else {}
        scale_factor = info.get("loss_scale_factor", getattr(config, "loss_scale_factor", None))
        changes = {"agg": loss_agg_mode} if "agg" in fields else {}   # no `agg`: the loss aggregates its own way
        if changes and loss_agg_mode == "seq-mean-token-sum-norm":  # verl's normaliser: loss_scale_factor, else T
            width = int(scale_factor) if scale_factor is not None else log_prob.shape[-1]
            if "max_len" in fields:
                changes["max_len"] = width
            elif width != log_prob.shape[-1]:
                raise ValueError(f"loss {PREFIX}{name} has no `max_len` setting for verl's loss_scale_factor")
        run = dataclasses.replace(stage, cfg=dataclasses.replace(stage.cfg, **changes)) if changes else stage
        mask = response_mask.to(log_prob.dtype)
        ctx.max_new_tokens = mask.shape[1]
        batch = engine_batch(ENGINE, {k: _NOT_PASSED for k in ("ref_logp", "rewards", "group_ids", "old_entropy",
                                                               "old_logits", "response_ids", "temperature")},
                             response_mask=mask, old_logp=old_log_prob, advantages=advantages)
        loss, metrics = call_loss(run, engine_output(ENGINE, log_prob, None, _NOT_PASSED), batch, ctx)
        metrics.pop("pg_loss", None)                             # verl logs actor/pg_loss from the returned loss
        if "agg" in fields:
            loss = loss * _global_scale(mask, loss_agg_mode, info)
        out = {VERL_METRIC_NAMES.get(k, f"actor/{k}"): v for k, v in metrics.items()}
        if "clipfrac_low" in metrics and "clipfrac_high" in metrics:  # verl's: the PPO clip region, no dual clip
            out["actor/pg_clipfrac"] = metrics["clipfrac_low"] + metrics["clipfrac_high"]
        return loss, out

    policy_loss.__doc__ = f"minirlvr loss {name!r} ({stage.entry.paper}) with verl's policy-loss signature."
    policy_loss.minirlvr_context = ctx                           # the seeded generator, for tests and inspection
    return policy_loss


def _advantage(name: str, advantage_cfg: dict | None, seed: int):
    stage = resolve("advantage", name, advantage_cfg, ENGINE, has_reference=False, reference_hint=_NO_REFERENCE)
    ctx = EngineContext(ENGINE, seed=seed)

    def estimator(token_level_rewards, response_mask, index=None, config=None, **kwargs):
        mask = response_mask.to(token_level_rewards.dtype)
        n = mask.shape[0]
        if index is None:
            raise MissingInput(f"advantage {PREFIX}{name} needs `index` (the uid of each row's prompt): verl "
                               f"passes it when the batch has non_tensor_batch['uid']")
        _, group_ids = np.unique(np.asarray(index, dtype=object).astype(str), return_inverse=True)
        group_ids = torch.as_tensor(group_ids.reshape(-1), dtype=torch.long, device=mask.device)
        ctx.group_size = int(torch.bincount(group_ids).max()) if n else 1
        ctx.max_new_tokens = mask.shape[1]
        batch = engine_batch(ENGINE, {k: "verl's advantage interface does not pass it" for k in
                                      ("old_logp", "old_entropy", "old_logits", "ref_logp", "response_ids")},
                             response_mask=mask, rewards=token_level_rewards.sum(-1), group_ids=group_ids)
        with torch.no_grad():
            adv = call_advantage(stage, batch, ctx).to(token_level_rewards.dtype)
        return adv, adv

    estimator.__doc__ = f"minirlvr advantage {name!r} ({stage.entry.paper}) with verl's estimator signature."
    return estimator


def register_loss(name: str, loss_cfg: dict | None = None, as_name: str | None = None, seed: int = 0) -> str:
    """Register minirlvr loss `name` (with config overrides) in verl's POLICY_LOSS_REGISTRY as
    `minirlvr/<as_name or name>`; returns that name. Re-registering a name replaces it."""
    key = PREFIX + (as_name or name)
    core_algos.register_policy_loss(key)(_policy_loss(name, loss_cfg, seed))
    return key


def register_advantage(name: str, advantage_cfg: dict | None = None, as_name: str | None = None,
                       seed: int = 0) -> str:
    """Register minirlvr advantage `name` in verl's ADV_ESTIMATOR_REGISTRY as `minirlvr/<as_name or name>`."""
    key = PREFIX + (as_name or name)
    core_algos.ADV_ESTIMATOR_REGISTRY[key] = _advantage(name, advantage_cfg, seed)  # (verl's decorator refuses
    return key                                                                         # a re-registration)


def register_all() -> dict[str, list[str]]:
    """Every registered minirlvr loss and advantage that verl can run at its default settings; the others
    (hidden states, a reference, another stage's extras, a prepare step) are listed with the reason."""
    registry.load_all()
    done: dict[str, list[str]] = {"loss": [], "advantage": [], "skipped": []}
    for stage, register in (("loss", register_loss), ("advantage", register_advantage)):
        for name in registry.list_stages()[stage]:
            try:
                done[stage].append(register(name))
            except MissingInput as err:
                done["skipped"].append(f"{stage} {name}: {err}")
    return done


REGISTERED = register_all()
