"""Lp-Reg: Low-probability Tokens Sustain Exploration in Reinforcement Learning with Verifiable Reward
-- 2025, arXiv 2510.03222. Official code: CarlanLark/Lp-Reg-dev (verl fork: core_algos.py
`compute_policy_loss_lp_reg`, `kl_penalty`; dp_actor.py `apply_min_p` and the "lp_reg" branch of
`update_policy`; fsdp_workers.py `compute_minp_log_prob`; recipe/lp_reg/Qwen3_14b_lp_reg_onpolicy_64gpu.sh).

Stage changed: loss (a regulariser on a few selected tokens) + its once-per-rollout `prepare` (the proxy
log-probs). Rollout (plain), reward and advantage (GRPO) are unchanged; on-policy (one minibatch per rollout).
Also a probe "proxy_mass" (noise / spark probability mass of pi_old), usable with any recipe.

Idea: valuable low-probability tokens ("reasoning sparks": wait, however, ...) are pushed down by the
negative-advantage updates until exploration dies; an entropy bonus would also inflate irrelevant noise
tokens. Lp-Reg min-p filters the old policy (drops the noise, renormalises, so surviving low-probability
tokens gain mass) and pulls the lowest-probability tokens of negative samples toward that proxy.

Symbols (position j of a response; o_j its sampled token; T sampling temperature; z untempered logits)
  pi_old    = softmax(z / T) at sampling time (batch.old_logits = z / T)
  K_j       = {v : softmax(z)_v >= kappa max_u softmax(z)_u}   relative min-p kept set (argmax always in K;
              kappa = 0 keeps all, kappa = 1 only the argmax, ties included)
  pi_proxy  = pi_old / Z_j on K_j, 0 elsewhere, Z_j = sum_{u in K_j} pi_old(u); computed as
              log_softmax(where(v in K, z/T, -1e4/T)): filtered logits are -1e4 (never -inf)
  q_j       = log pi_proxy(o_j)   (prepare, no grad; ~ -1e4 if o_j was filtered)
  l_j       = log pi_theta(o_j) (current, with grad);  r_j = exp(l_j - l^old_j);  A_j GRPO advantage
  N-        = {valid j : A_j < 0};  k = max(1, int(rho |N-|))  (k = 0 if rho = 0 or N- is empty)
  S         = of the k tokens of N- with the smallest detached l_j, those with l_j < q_j (detached);
              nothing unless k >= min_selected (official code: k > 1, i.e. min_selected = 2)
  k3(l, q)  = clamp(e^{q-l} - (q-l) - 1, -10, 10)   verl "low_var_kl" = core.kl_estimate(l, q, "k3", clamp=10)
  L_j       = -A_j r_j + beta k3(l_j, q_j)                                 j in S (UNCLIPPED ratio)
              max(-A_j r_j, -A_j clip(r_j, 1 - eps_l, 1 + eps_h))         otherwise; eps_l = 1, eps_h = 9
  loss      = token-mean(L)   (+ PPOClipConfig's optional KL / entropy terms, off)
d k3/d l = 1 - e^{q-l} < 0 on S (q > l): descent raises pi_theta(o_j) toward pi_proxy(o_j); it is 0 where the
clamp binds. With eps_l = 1 and no dual clip a token with A < 0 is never clipped (max(-A r, -A min(r, 10))
= -A r), so beta = 0 (or rho = 0) gives the PPO loss exactly.

Card vs paper/official code: the card matches the code on every formula above (proxy from the OLD policy,
minp_old_log_prob=True, once per rollout; kappa 0.02, rho 1%, beta = ppo_kl_coef 1, eps 1 / 9, token-mean,
positive branch off). Details: (1) the official filter thresholds softmax(z) BEFORE dividing by T, so K uses
the untempered probabilities; so does ours (identical at T = 1). (2) The script passes clip_ratio_c = 10, but
the lp_reg loss has no dual clip (default None here). (3) The card says beta = 0 matches PPO "unless r > 10":
for A < 0 it matches for every r. (4) The official recomputes pi_old with a no-grad forward before the
update; we use the sampler's batch.old_logits (same weights; a forward of ctx.policy if absent).
Deliberate differences: -1e4 is placed relative to the row max (softmax is shift invariant, so the values
are identical in float for any real logits, and the proxy stays right if |z| ~ 1e4); the official selects per
micro-batch (~30k tokens), we per loss call; ties in l go to the earlier token (row-major); kl_estimate
clamps q - l to [-20, 20] before exp (same value 10 and zero gradient beyond the clamp, where the official
exp can overflow to inf and give a NaN gradient). Not implemented: the positive-advantage branch (rho+ = 0 in
every script), the "fixed" absolute threshold, minp_soft, a reference-policy or current-policy proxy.

RECIPES (fixed before any comparison ran): PLAN WP2 counted ~70 negative tokens per loss call (at 4
minibatches), where rho = 1% gives k = 1 and the code's "apply only if k > 1" would switch Lp-Reg off, and asked
for a toy-scaled rho. On-policy, however, one loss call holds the whole rollout (~200-260 negative tokens at
16 x 8), so the paper's rho = 1% gives k = 2 and the code's rule lets it act. So `lp_reg` = the official
settings (rho 0.01, min_selected 2: ~1% of the negative tokens, as in the paper), and `lp_reg_rho05` = the
toy-scaled variant the issue asked for (rho 0.05, min_selected 1: k ~ 10-13). rho = 0 means off under either.
In the trainer l (training forward) and q (sampler logits) differ by float noise, so even at kappa = 0 a token
may be "selected" with q - l ~ 1e-7 (k3 ~ 1e-14): harmless.
Comparison baselines: `grpo_onpolicy` (GRPO advantages, token-mean as Lp-Reg, one minibatch: the single update
is at ratio 1, so the clip range plays no role) and `entropy_bonus_onpolicy` (+ entropy_coef 0.005, the centre
of the card's 0.001-0.01, chosen a priori). `lp_reg` with loss.beta=0 is the exact regulariser-free control.
Pitfalls: -inf filtered logits give NaN in k3; with eps = 0.2 the unclipped
selected tokens would matter; the proxy is pi_old while S compares the CURRENT l with q.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import torch

from ..baselines import PPOClipConfig, ppo_terms, reference_if_kl
from ..core import aggregate, clamped_log_ratio, kl_estimate, logprobs_from_logits, masked_mean
from ..registry import Recipe, check_range, get_recipe, register, register_recipe
from ..rollout import policy_forward

PAPER = "Lp-Reg: Low-probability Tokens Sustain Exploration in RLVR, 2025, arXiv 2510.03222"
FILTERED_LOGIT = -1e4   # apply_min_p's value for filtered logits (untempered; -1e4 / T after tempering)
K3_CLAMP = 10.0         # kl_penalty clamps low_var_kl to [-10, 10]
EXTRA = "lpreg_proxy_logp"


def min_p_keep(old_logits: torch.Tensor, kappa: float, temperature: float = 1.0) -> torch.Tensor:
    """Bool [..., V]: v in K, i.e. softmax(z)_v >= kappa * max softmax(z), with z = old_logits * T untempered."""
    p = torch.softmax(old_logits * temperature, dim=-1)
    return p >= kappa * p.amax(-1, keepdim=True)


def proxy_logits(old_logits: torch.Tensor, kappa: float, temperature: float = 1.0):
    """(tempered proxy logits [..., V], kept set [..., V]): kept logits shifted by the row max, others -1e4 / T."""
    keep = min_p_keep(old_logits, kappa, temperature)
    shifted = old_logits - old_logits.amax(-1, keepdim=True)
    return torch.where(keep, shifted, torch.full_like(shifted, FILTERED_LOGIT / temperature)), keep


def proxy_logprobs(old_logits: torch.Tensor, tokens: torch.Tensor, kappa: float, temperature: float = 1.0):
    """q = log pi_proxy(token) [B, T] from the tempered old logits [B, T, V] (no grad)."""
    with torch.no_grad():
        return logprobs_from_logits(proxy_logits(old_logits, kappa, temperature)[0], tokens)


def proxy_mass_stats(old_logits: torch.Tensor, mask: torch.Tensor, kappa: float, temperature: float = 1.0,
                     spark_max: float = 0.1) -> dict[str, float]:
    """Means over valid positions of: noise_mass = pi_old mass outside K (what the filter drops), spark_mass =
    mass of kept tokens with pi_old <= spark_max (prob in [kappa max, spark_max]), kept_size = |K|."""
    with torch.no_grad():
        p = torch.softmax(old_logits.double(), dim=-1)
        keep = min_p_keep(old_logits.double(), kappa, temperature)
        noise = torch.where(keep, 0.0, p).sum(-1)
        spark = torch.where(keep & (p <= spark_max), p, 0.0).sum(-1)
        return {"noise_mass": float(masked_mean(noise, mask)), "spark_mass": float(masked_mean(spark, mask)),
                "kept_size": float(masked_mean(keep.sum(-1).double(), mask))}


def select_tokens(logp: torch.Tensor, q: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, rho: float,
                  min_selected: int = 2) -> tuple[torch.Tensor, int, int]:
    """(S bool [B, T], k, |N-|): the k lowest-l negative-advantage valid tokens (detached l, stable order),
    kept iff l < q; empty unless k >= min_selected. k = max(1, int(rho |N-|)), 0 if rho = 0 or N- is empty."""
    l, q = logp.detach().flatten(), q.detach().flatten()
    neg = (mask.bool() & (advantages < 0)).flatten().nonzero().squeeze(1)
    n = neg.numel()
    k = 0 if rho == 0 or n == 0 else max(1, int(n * rho))   # int(): the official floor of the float product
    sel = torch.zeros(l.numel(), dtype=torch.bool, device=l.device)
    if k >= max(1, min_selected):
        cand = neg[torch.sort(l[neg], stable=True).indices[:k]]
        sel[cand[l[cand] < q[cand]]] = True
    return sel.view(mask.shape), k, n


@dataclass
class LpRegConfig(PPOClipConfig):
    """Official defaults (Qwen3-14B on-policy script); the `lp_reg` recipe sets the toy rho / min_selected."""
    clip_low: float = 1.0             # eps_l: ratio floor 0 (clip_ratio_low=1.0)
    clip_high: float = 9.0            # eps_h: ratio ceiling 10 (clip_ratio_high=9.0)
    clip_ratio_c: float | None = None  # the lp_reg loss has no dual clip
    agg: Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"] = "token-mean"
    kappa: float = 0.02               # min-p threshold relative to the max prob (minp_p_threshold)
    rho: float = 0.01                 # fraction of negative tokens considered (logp_neg_k_percent)
    beta: float = 1.0                 # weight of k3 (ppo_kl_coef)
    min_selected: int = 2             # apply only if k >= this (official k > 1; 1: the toy deviation)

    def __post_init__(self):
        super().__post_init__()
        check_range(self, "kappa", lo=0.0, hi=1.0)
        check_range(self, "rho", lo=0.0, hi=1.0)
        check_range(self, "beta", lo=0.0)
        check_range(self, "min_selected", lo=1)


def lp_reg_prepare(batch, cfg: LpRegConfig, ctx) -> None:
    """q = log pi_proxy(o) from the rollout's logits, once per rollout, into batch.extras[EXTRA]."""
    logits = batch.old_logits
    if logits is None:          # before the first update the current policy is pi_old
        with torch.no_grad():
            logits = policy_forward(ctx.policy, batch).logits
    z, keep = proxy_logits(logits, cfg.kappa, batch.temperature)
    q = logprobs_from_logits(z, batch.response_ids)
    batch.extras[EXTRA] = q
    m = batch.response_mask
    kept = keep.gather(-1, batch.response_ids.long().unsqueeze(-1)).squeeze(-1)
    ctx.log(**{"lpreg/frac_sampled_filtered": float(masked_mean((~kept).double(), m)),  # o_j outside K_j
               "lpreg/log_inv_Z": float(masked_mean(q - batch.old_logp, m.bool() & kept))})  # -log Z on kept o_j


@register("loss", "lp_reg", config=LpRegConfig, paper=PAPER, needs=reference_if_kl, prepare=lp_reg_prepare)
def lp_reg_loss(out, batch, cfg: LpRegConfig, ctx):
    """PPO loss, with -A r + beta k3(l, q) on the selected tokens S (module docstring)."""
    q = batch.extras.get(EXTRA)
    if q is None:   # called without prepare: the same values, from the same rollout logits
        if batch.old_logits is None:
            raise ValueError("lp_reg needs batch.old_logits or its prepare step (the proxy log-probs)")
        q = proxy_logprobs(batch.old_logits, batch.response_ids, cfg.kappa, batch.temperature)
    q = q.to(out.logp)
    m, adv = batch.response_mask, batch.advantages
    sel, k, n_neg = select_tokens(out.logp, q, adv, m, cfg.rho, cfg.min_selected)
    w = sel.to(out.logp.dtype)
    loss, metrics = ppo_terms(out, batch, cfg, token_weight=1 - w)   # PPO (+ KL / entropy) off S
    zero = torch.zeros((), dtype=out.logp.dtype, device=out.logp.device)
    pg_sel = aggregate(torch.where(sel, -adv * clamped_log_ratio(out.logp, batch.old_logp).exp(), zero),
                       m, cfg.agg, cfg.max_len)
    k3 = kl_estimate(out.logp, q, "k3", clamp=K3_CLAMP)
    reg = aggregate(torch.where(sel, k3, zero), m, cfg.agg, cfg.max_len)
    n_sel = int(sel.sum())
    metrics.update({"pg_loss": metrics["pg_loss"] + float(pg_sel.detach()), "lpreg/k3_loss": float(reg.detach()),
                    "lpreg/k": float(k), "lpreg/n_neg": float(n_neg), "lpreg/n_reg": float(n_sel),
                    "lpreg/frac_reg": n_sel / max(1, int(m.sum())),
                    "lpreg/gap_reg": float(masked_mean((q - out.logp).detach(), sel))})   # mean q - l on S
    return loss + pg_sel + cfg.beta * reg, metrics


@dataclass
class ProxyMassConfig:
    kappa: float = 0.02       # the min-p threshold defining noise (use the lp_reg run's kappa)
    spark_max: float = 0.1    # sparks: kept tokens with pi_old <= spark_max (card: [kappa max, 0.1])

    def __post_init__(self):
        check_range(self, "kappa", lo=0.0, hi=1.0)
        check_range(self, "spark_max", lo=0.0, hi=1.0)


@register("probe", "proxy_mass", config=ProxyMassConfig, paper=PAPER)
def proxy_mass_probe(policy, batch, cfg: ProxyMassConfig, ctx) -> dict[str, float]:
    """proxy_mass_stats of the rollout policy (batch.old_logits; else the current policy, after the update)."""
    logits = batch.old_logits
    if logits is None:
        with torch.no_grad():
            logits = policy_forward(policy, batch).logits
    stats = proxy_mass_stats(logits, batch.response_mask, cfg.kappa, batch.temperature, cfg.spark_max)
    return {f"proxy/{k}": v for k, v in stats.items()}


ON_POLICY = {"minibatches": 1}
# The paper's rho = 1% with the code's "only if k > 1" rule: on-policy a loss call is the whole rollout
# (~200-260 negative tokens at 16 x 8), so k = 2 and the rule lets it act -- the premise (k = 1)
# counted a 4-minibatch loss call. `lp_reg_rho05` is the toy-scaled variant the issue asked for (rho 5%,
# k >= 1). Both were fixed before any comparison ran.
_LOSS = {"clip_low": 1.0, "clip_high": 9.0, "agg": "token-mean", "kappa": 0.02, "beta": 1.0}
register_recipe(Recipe("lp_reg", paper=PAPER + " (rho 0.01, k > 1 as the code; on-policy)", advantage="grpo",
                       loss="lp_reg", train_cfg=ON_POLICY, loss_cfg={**_LOSS, "rho": 0.01, "min_selected": 2}))
register_recipe(Recipe("lp_reg_rho05", paper=PAPER + " (toy-scaled rho 0.05, k >= 1; on-policy)", advantage="grpo",
                       loss="lp_reg", train_cfg=ON_POLICY, loss_cfg={**_LOSS, "rho": 0.05, "min_selected": 1}))
# The comparison baselines: GRPO advantages and Lp-Reg's token-mean aggregation, one minibatch (on-policy,
# ratio = 1 in the single update, so the clip range plays no role); the bonus 0.005 is the middle of the
# card's 0.001-0.01, chosen before any run.
_GRPO = get_recipe("grpo")
register_recipe(replace(_GRPO, name="grpo_onpolicy", train_cfg=ON_POLICY, loss_cfg={"agg": "token-mean"},
                        paper=_GRPO.paper + " (token-mean, one minibatch; Lp-Reg baseline)"))
register_recipe(replace(_GRPO, name="entropy_bonus_onpolicy", train_cfg=ON_POLICY,
                        paper=_GRPO.paper + " + entropy bonus 0.005 (token-mean, one minibatch; Lp-Reg baseline)",
                        loss_cfg={"agg": "token-mean", "entropy_coef": 0.005}))
