"""TRL adapter: a `GRPOTrainer` whose policy loss (and optionally advantage) is a registered minirlvr stage.

    pip install -e ".[integrations]"          # trl 1.16 + transformers 5.24, CPU torch untouched

    from minirlvr.integrations.trl import MinirlvrGRPOTrainer
    trainer = MinirlvrGRPOTrainer(model=model, reward_funcs=reward, args=GRPOConfig(...), train_dataset=ds,
                                  loss="kl_cov", loss_cfg={"kl_ratio": 0.002})
    trainer.train()

What it overrides, and nothing else:
  * `_compute_loss(model, inputs)`: TRL's own forward (`_get_per_token_logps_and_entropies`, tempered by
    GRPOConfig.temperature as minirlvr's `policy_forward` is) gives per-token log-probs and entropies; the
    minirlvr loss gets
        out.logp, out.entropy                  current policy, with grad
        batch.response_mask                    completion_mask (times tool_mask when TRL has one)
        batch.old_logp                         old_per_token_logps, or logp.detach() when TRL skipped that pass
                                               (on-policy: num_iterations = 1 and steps_per_generation <=
                                               gradient_accumulation_steps), exactly as TRL's own loss does
        batch.old_entropy                      entropy.detach() in that on-policy case (else missing)
        batch.advantages                       A[i, t] = A_i m[i, t] (TRL's [B] advantages broadcast), or the
                                               [B, T] advantages of a minirlvr advantage stage
        batch.ref_logp                         ref_per_token_logps: TRL computes them only when beta != 0
        batch.response_ids, batch.temperature
    and its loss, divided by the gradient-accumulation steps as TRL's "grpo" loss is, is the training loss.
    TRL's loss_type, beta-KL term, entropy bonus and clipping settings are not used: the minirlvr loss and its
    config (`loss_cfg`, e.g. `agg`, `clip_low`, `kl_coef`) say all of that. Set GRPOConfig.beta > 0 only when
    the loss needs reference log-probs (e.g. ppo_clip with kl_coef > 0); its value is then unused.
    Not available to a loss (reading them raises MissingInput, naming the field): full logits, hidden states,
    rewards, group ids (TRL shuffles rows across groups before the loss), texts, problems.
  * With `advantage=...`: `_generate_and_score_completions` keeps TRL's generation and rewards (reward
    functions weighted and summed, as TRL's default "sum_then_normalize") and replaces TRL's advantages by the
    minirlvr advantage over the batch (rewards [B], group_ids = row // num_generations, response_mask,
    old_logp / ref_logp when TRL computed them). One process only: TRL spreads a group over processes. A
    completion no reward function scored (all None) counts as reward 0 here (TRL's own advantage zeroes it).

Metrics go to TRL's log under TRL's names where one exists: entropy, clip_ratio/low_mean, clip_ratio/high_mean
(minirlvr's clipfrac_low / clipfrac_high), clip_ratio/region_mean (their sum, as TRL's), policy_loss
(`pg_loss`); every other metric keeps its minirlvr name (`clipfrac`, which counts dual-clipped tokens too,
`kl` -- aggregated like the loss, where TRL's is a token mean --, `n_selected`, `cov_mean`, ...).

Settings that TRL's loss reads and this one would silently ignore are refused at construction:
top_entropy_quantile < 1, off_policy_mask_threshold, importance_sampling_level="sequence", entropy_coef != 0
(adaptive entropy included), vLLM importance-sampling correction, MoE router aux loss.
"""
from __future__ import annotations

import torch

from ..core import masked_mean

try:
    from trl import GRPOTrainer
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError("minirlvr.integrations.trl needs TRL: pip install -e \".[integrations]\" "
                      "(trl 1.16, transformers 5.24)") from err

from . import EngineContext, MissingInput, call_advantage, call_loss, engine_batch, engine_output, resolve

ENGINE = "TRL's GRPOTrainer"
TRL_METRIC_NAMES = {"clipfrac_low": "clip_ratio/low_mean", "clipfrac_high": "clip_ratio/high_mean",
                    "pg_loss": "policy_loss"}  # + clip_ratio/region_mean = low + high (TRL's: no dual clip)
_NOT_IN_LOSS = {"rewards": "TRL drops rewards before the loss (use advantage=... to act on them)",
                "group_ids": "TRL shuffles rows across groups before the loss",
                "old_logits": "TRL keeps only per-token log-probs", "texts": "", "problems": "",
                "truncated": "", "prompt_ids": "", "prompt_mask": ""}


class MinirlvrGRPOTrainer(GRPOTrainer):
    """GRPOTrainer with a registered minirlvr loss (`loss`, `loss_cfg`) and optionally advantage
    (`advantage`, `advantage_cfg`); `stage_seed` seeds the stages' generator (e.g. Clip-Cov's random pick)."""

    def __init__(self, *args, loss: str = "ppo_clip", loss_cfg: dict | None = None, advantage: str | None = None,
                 advantage_cfg: dict | None = None, stage_seed: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        refused = [(self.top_entropy_quantile < 1.0, "top_entropy_quantile < 1 (use the forking_tokens loss)"),
                   (self.off_policy_mask_threshold is not None, "off_policy_mask_threshold"),
                   (self.importance_sampling_level != "token", "importance_sampling_level='sequence'"),
                   (self._entropy_bonus_enabled, "entropy_coef != 0 (use the loss's own entropy term, e.g. "
                                                 "ppo_clip's entropy_coef)"),
                   (self.use_vllm and self.vllm_importance_sampling_correction, "vLLM importance-sampling "
                                                                              "correction"),
                   (self.aux_loss_enabled, "the MoE router aux loss")]
        bad = [why for on, why in refused if on]
        if bad:
            raise ValueError(f"MinirlvrGRPOTrainer replaces TRL's loss, which these settings act on: "
                             f"{'; '.join(bad)}. Turn them off in GRPOConfig.")
        has_ref = self.beta != 0.0
        hint = "TRL computes them only when GRPOConfig.beta != 0"
        self.minirlvr_loss = resolve("loss", loss, loss_cfg, ENGINE, has_reference=has_ref, reference_hint=hint)
        self.minirlvr_advantage = None
        if advantage is not None:
            if self.multi_objective_aggregation != "sum_then_normalize":
                raise ValueError("advantage=... sums the weighted reward functions into one reward per completion "
                                 "(TRL's 'sum_then_normalize'); set GRPOConfig.multi_objective_aggregation to it")
            if self.accelerator.num_processes > 1:
                raise NotImplementedError("advantage=... runs on one process only (TRL spreads a group's "
                                          "completions over processes); use TRL's advantages or one process")
            self.minirlvr_advantage = resolve("advantage", advantage, advantage_cfg, ENGINE, has_reference=has_ref,
                                              reference_hint=hint)
        self._stage_ctx = EngineContext(ENGINE, seed=stage_seed, group_size=self.num_generations,
                                        max_new_tokens=self.max_completion_length, temperature=self.temperature)

    # ------------------------------------------------------------------ advantages (optional)

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._last_rewards_per_func = rewards_per_func  # [N, n_funcs], gathered over processes, NaN = not scored
        return rewards_per_func

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        if self.minirlvr_advantage is None:
            return output
        mode = "train" if self.model.training else "eval"
        G = self.num_generations if mode == "train" else self.num_generations_eval
        rpf = self._last_rewards_per_func
        rewards = (rpf * self.reward_weights.to(rpf.device).unsqueeze(0)).nansum(dim=1)
        mask = output["completion_mask"] * output["tool_mask"] if "tool_mask" in output else output["completion_mask"]
        n = mask.shape[0]
        missing = dict(_NOT_IN_LOSS, old_logp="TRL skipped the old-log-prob pass (on-policy); it runs it when "
                       "num_iterations > 1 or steps_per_generation > gradient_accumulation_steps")
        missing.pop("rewards"), missing.pop("group_ids")
        fields = dict(response_mask=mask, response_ids=output["completion_ids"], rewards=rewards.to(mask.device),
                      group_ids=torch.arange(n, device=mask.device) // G, temperature=self.temperature)
        for name, key in (("old_logp", "old_per_token_logps"), ("ref_logp", "ref_per_token_logps")):
            if output.get(key) is not None:
                fields[name] = output[key]
        self._stage_ctx.step = self.state.global_step
        adv = call_advantage(self.minirlvr_advantage, engine_batch(ENGINE, missing, **fields), self._stage_ctx)
        output["advantages"] = adv.to(mask.device).float()
        return output

    # ------------------------------------------------------------------ loss

    def _compute_loss(self, model, inputs):
        prompt_ids, prompt_mask = inputs["prompt_ids"], inputs["prompt_mask"]
        completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
        attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
        mask = completion_mask if "tool_mask" not in inputs else completion_mask * inputs["tool_mask"]
        logp, entropy, _ = self._get_per_token_logps_and_entropies(model, input_ids, attention_mask,
                                                                   completion_ids.size(1), compute_entropy=True)
        adv = inputs["advantages"]
        adv = adv.unsqueeze(1) * mask if adv.dim() == 1 else adv * mask   # minirlvr: A[i, t] = A_i m[i, t]
        old_logp = inputs.get("old_per_token_logps")
        on_policy = old_logp is None
        missing = dict(_NOT_IN_LOSS)
        fields = dict(response_mask=mask, response_ids=completion_ids, advantages=adv, temperature=self.temperature,
                      old_logp=logp.detach() if on_policy else old_logp)
        if on_policy:
            fields["old_entropy"] = entropy.detach()
        else:
            missing["old_entropy"] = "TRL computes no old-policy entropies when it runs an old-log-prob pass"
        if inputs.get("ref_per_token_logps") is not None:
            fields["ref_logp"] = inputs["ref_per_token_logps"]
        else:
            missing["ref_logp"] = "TRL computes reference log-probs only when GRPOConfig.beta != 0"
        self._stage_ctx.step = self.state.global_step
        loss, metrics = call_loss(self.minirlvr_loss, engine_output(ENGINE, logp, entropy),
                                  engine_batch(ENGINE, missing, **fields), self._stage_ctx)

        mode = "train" if self.model.training else "eval"
        metrics["entropy"] = float(masked_mean(entropy.detach(), mask))
        if "clipfrac_low" in metrics and "clipfrac_high" in metrics:
            metrics["clip_ratio/region_mean"] = metrics["clipfrac_low"] + metrics["clipfrac_high"]
        for name, value in metrics.items():
            gathered = self.accelerator.gather(torch.tensor(value, device=logp.device, dtype=torch.float32))
            self._metrics[mode][TRL_METRIC_NAMES.get(name, name)].append(gathered.nanmean().item())
        normalizer = self.current_gradient_accumulation_steps if mode == "train" else 1.0
        return loss / normalizer


__all__ = ["MinirlvrGRPOTrainer", "MissingInput", "TRL_METRIC_NAMES"]
