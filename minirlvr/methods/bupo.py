"""BuPO: Bottom-up Policy Optimization -- Your Language Model Policy Secretly Contains Internal Policies
-- 2025, arXiv 2512.19673. Official code: Trae1ounG/BuPO (a verl fork; read: dp_actor.py
`_forward_micro_batch_layer_k`, `compute_log_prob` and `update_policy` with their
`global_steps <= iterative_steps` branches; run_code/BuPO_qwen3.sh; the internal head
`mid_layer_logits[k] = lm_head(hidden_states[k + 1])` of its custom modeling_qwen3.py, known to us
only through a third-party walkthrough: that file is not in the searchable snapshot).

Stage changed: loss (for the first K_iter RL steps the PPO ratio is taken on an internal layer's
policy, then the ordinary full-policy loss) + its once-per-step `prepare` (the layer-k old log-probs);
plus a probe "layer_entropy" (logit-lens entropy of every layer) usable with any recipe.
Rollout (always from the FULL policy), reward and advantage (GRPO) are plain.

Idea: the residual stream after block l, pushed through the unembedding, is itself a samplable
distribution, an "internal layer policy". BuPO first runs RL on the policy of a lower layer k (only the
embedding and blocks 1..k receive gradient), then switches to RL on the full policy.

Symbols (L = n_layers, blocks numbered 1..L; T = sampling temperature; W_U = tok_emb.weight [V, d],
tied with the input embedding; N = the final LayerNorm ln_f):
  h^0 = tok_emb(x) + pos_emb;  h^l = Block_l(h^{l-1})   (out.hidden[l - 1], the residual stream)
  pi(.)    = softmax(W_U N(h^L) / T)                        the full policy (the model's logits)
  pi^k(.)  = softmax(W_U h^k / T)        for k < L          NO final norm (official: lm_head(hidden_states[k+1]))
           = softmax(W_U N(h^L) / T)     for k = L          HF's last hidden state is already normed, so pi^L = pi
  s = ctx.step + 1 (1-indexed RL step, verl's global_steps)
  s <= K_iter:  logp = log pi^k(y_t), old_logp = log pi^k_old(y_t)   (prepare: one no-grad forward of the
                policy before the first optimizer step of the step; stored as batch.extras["bupo_old_logp"])
  s >  K_iter:  logp = log pi(y_t),   old_logp = log pi_old(y_t)      (the rollout's, exactly ppo_clip)
  rho_t = exp(logp - old_logp);  loss = agg(clipPG(rho_t, A)) (+ optional KL / entropy terms, off)
  clipPG = baselines.ppo_terms: max(-A rho, -A clip(rho, 1-eps_lo, 1+eps_hi)), dual clip c for A < 0;
  A = GRPO advantages, token-mean aggregation (BuPO_qwen3.sh).
Consequences (tested): under the layer-k loss (k < L) every parameter of blocks > k and of ln_f gets no
gradient at all; K_iter = 0 is ppo_clip exactly; rho = 1 before the first update only because old_logp
comes from the same layer-k head (the rollout's old_logp is from pi, not pi^k).

Card vs paper/official code: the card matches the code on every formula above; we number layers 1..L
(the brief's k in [1, n_layers]): official k = 5 (0-indexed, paper "layer 6" of Qwen3-4B's 36) is our
layer = 6. Details: (1) the official entropy metric and entropy bonus in the layer-k phase use the FULL
policy's logits; we keep out.entropy as it is (the full policy), and a KL term, if enabled, compares the
layer-k logp with the full reference logp, as the code does (both off by default). (2) The official
internal head exists only for one layer per run; `final_norm="all"` (ln_f at every layer) is the card's
optional ablation, not the paper's choice; with it ln_f gets gradient too. (3) Not used: lr 1e-6,
128 prompts, mini-batch 32, grad clip 1.0: the recipe keeps the library's shared regime.
Pitfalls: with no final norm the raw residual's logit scale differs from the output's (log it with the
probe first; in a 4-layer toy model early heads may be near-uniform); tied embeddings mean the layer-k
loss moves the input embedding (and hence every layer's input) as well as the head.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import torch

from ..baselines import PPOClipConfig, ppo_terms, reference_if_kl
from ..core import entropy_from_logits, logprobs_from_logits, masked_mean
from ..registry import Recipe, check_range, register, register_recipe
from ..rollout import policy_forward

PAPER = "Bottom-up Policy Optimization (BuPO), 2025, arXiv 2512.19673"
EXTRA = "bupo_old_logp"


def layer_logits(model, hidden: list, layer: int, final_norm: str = "last") -> torch.Tensor:
    """W_U h^layer [.., V] (untempered) from the per-layer hidden states (hidden[l - 1] = output of block l).
    final_norm "last": ln_f only at layer = L (the official head); "all": ln_f at every layer (ablation)."""
    L = len(hidden)
    if not 1 <= layer <= L:
        raise ValueError(f"BupoConfig.layer must be in [1, {L}] (the model's n_layers), got {layer}")
    h = hidden[layer - 1]
    if final_norm == "all" or layer == L:
        h = model.ln_f(h)
    return h.float() @ model.tok_emb.weight.float().t()


def internal_phase(step: int, cfg) -> bool:
    """True for the first K_iter RL steps (ctx.step is 0-indexed; verl's global_steps <= K_iter)."""
    return step < cfg.iterative_steps


@dataclass
class BupoConfig(PPOClipConfig):
    """run_code/BuPO_qwen3.sh; layer is the toy's (the official 6 of 36 does not exist in a 4-layer model)."""
    clip_low: float = 0.2             # clip_ratio_low
    clip_high: float = 0.2            # clip_ratio_high
    clip_ratio_c: float | None = 10.0  # dual clip
    agg: Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum",
                 "seq-mean-token-sum-norm"] = "token-mean"   # loss_agg_mode
    layer: int = 2                    # k, 1-indexed (official: 6 of 36 for Qwen3-4B, 27 of 32 for Llama)
    iterative_steps: int = 30         # K_iter (official 30 of 300 total steps); 0 = ppo_clip exactly
    final_norm: Literal["last", "all"] = "last"   # "last": official head; "all": ln_f at every layer

    def __post_init__(self):
        super().__post_init__()
        check_range(self, "layer", lo=1)   # the upper bound n_layers is checked against the model (prepare)
        check_range(self, "iterative_steps", lo=0)
        if self.final_norm not in ("last", "all"):
            raise ValueError(f"BupoConfig.final_norm must be 'last' or 'all', got {self.final_norm!r}")


def bupo_needs(cfg: BupoConfig) -> set[str]:
    return ({"hidden"} if cfg.iterative_steps else set()) | reference_if_kl(cfg)


def bupo_prepare(batch, cfg: BupoConfig, ctx) -> None:
    """In the internal phase: old_logp of the layer-k head on the full batch, before any update."""
    n = ctx.policy.cfg.n_layers
    if not 1 <= cfg.layer <= n:
        raise ValueError(f"BupoConfig.layer must be in [1, {n}] (the model's n_layers), got {cfg.layer}")
    if not internal_phase(ctx.step, cfg):
        batch.extras.pop(EXTRA, None)
        ctx.log(**{"bupo/internal": 0.0})
        return
    with torch.no_grad():
        out = policy_forward(ctx.policy, batch, output_hidden=True)
        z = layer_logits(ctx.policy, out.hidden, cfg.layer, cfg.final_norm) / batch.temperature
        old = logprobs_from_logits(z, batch.response_ids)
    batch.extras[EXTRA] = old
    m = batch.response_mask
    ctx.log(**{"bupo/internal": 1.0, "bupo/layer_entropy_old": float(masked_mean(entropy_from_logits(z), m)),
               "bupo/layer_logp_old": float(masked_mean(old, m)),                 # log pi^k_old(y)
               "bupo/full_minus_layer_logp": float(masked_mean(batch.old_logp - old, m))})


@register("loss", "bupo", config=BupoConfig, paper=PAPER, needs=bupo_needs, prepare=bupo_prepare)
def bupo_loss(out, batch, cfg: BupoConfig, ctx):
    if not internal_phase(ctx.step, cfg):
        return ppo_terms(out, batch, cfg)                # the full policy: ppo_clip exactly
    if EXTRA not in batch.extras:
        raise ValueError("loss 'bupo' in its internal phase needs the layer-k old_logp: bupo_prepare must run first")
    if out.hidden is None:
        raise ValueError("loss 'bupo' in its internal phase needs out.hidden (policy_forward(..., output_hidden=True))")
    z = layer_logits(ctx.policy, out.hidden, cfg.layer, cfg.final_norm) / batch.temperature
    out_k = replace(out, logp=logprobs_from_logits(z, batch.response_ids))   # entropy stays the full policy's
    loss, metrics = ppo_terms(out_k, replace(batch, old_logp=batch.extras[EXTRA]), cfg)
    metrics["bupo/layer_entropy"] = float(masked_mean(entropy_from_logits(z.detach()), batch.response_mask))
    return loss, metrics


def layer_entropies(policy, batch) -> dict[str, float]:
    """Mean (over response tokens) logit-lens entropy of every layer, two heads: the official one
    (raw h^l, ln_f only at l = L) as bupo/H_l{l}, and ln_f at every layer as bupo/H_l{l}_ln; plus the
    std of the raw head's logits (its scale) as bupo/logit_std_l{l}. One no-grad forward."""
    with torch.no_grad():
        out = policy_forward(policy, batch, output_hidden=True)
        m, res = batch.response_mask, {}
        for l in range(1, len(out.hidden) + 1):
            for tag, norm in (("", "last"), ("_ln", "all")):
                z = layer_logits(policy, out.hidden, l, norm) / batch.temperature
                res[f"bupo/H_l{l}{tag}"] = float(masked_mean(entropy_from_logits(z), m))
            res[f"bupo/logit_std_l{l}"] = float(masked_mean(layer_logits(policy, out.hidden, l).std(-1), m))
    return res


@register("probe", "layer_entropy", paper=PAPER)
def layer_entropy_probe(policy, batch, cfg, ctx) -> dict[str, float]:
    """layer_entropies on the step's rollout batch (after the step's updates), for any recipe."""
    return layer_entropies(policy, batch)


# Toy scale, fixed before any run: layer 2 of 4 (the card's 0-indexed {1, 2} -> 1-indexed {2, 3}; the
# lower one, as the paper picks a low layer), K_iter = 30 of the shared 300 steps: the official value and
# the official 10% share of training (the PLAN's 20 and 50 bracket it). The baseline is the same PPO loss
# with no internal phase (= bupo with iterative_steps = 0).
_PPO = {"agg": "token-mean", "clip_low": 0.2, "clip_high": 0.2, "clip_ratio_c": 10.0}
register_recipe(Recipe("bupo", paper=f"{PAPER}; toy layer 2 of 4, K_iter 30", advantage="grpo", loss="bupo",
                       loss_cfg={**_PPO, "layer": 2, "iterative_steps": 30}))
register_recipe(Recipe("bupo_baseline", paper=f"{PAPER} (its GRPO baseline: the same PPO loss, no internal phase)",
                       advantage="grpo", loss="ppo_clip", loss_cfg=dict(_PPO)))
