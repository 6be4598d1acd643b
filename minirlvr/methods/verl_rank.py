"""Beyond the Exploration-Exploitation Trade-off: A Hidden State Approach for LLM Reasoning in RLVR
(VERL: Velocity-Exploiting Rank-Learning) -- Huang et al., 2025, arXiv 2509.23808. No official code
(the name is unrelated to the verl framework); sources: abstract, project page, third-party summaries.

Stage changed: advantage (GRPO + an additive, detached bonus from hidden-state statistics:
"effective_rank_shaping"), plus a probe "effective_rank" that logs the statistics for any recipe.

Symbols: response i has n_i valid tokens; Z_i [n_i, d] = its hidden states, row t = the state from which
token t was sampled (policy_forward's hidden[.., P-1+t]), by default the final layer after ln_f (HF's
last hidden state), else the raw residual stream after block `layer`. No centring over tokens
(ER is not invariant to it: tested). Under torch.no_grad: every statistic is a constant.
  ER        sigma_1..sigma_K = singular values of Z (K = min(n, d)), p_j = sigma_j / sum_k sigma_k,
            ER(Z) = exp(-sum_j p_j ln p_j)  (0 ln 0 := 0; Roy & Vetterli 2007). 1 <= ER <= rank(Z) <= min(n, d);
            ER(0) := 0 (rank 0; also an empty mask). Exact; invariant to scale, orthogonal maps, row order.
  ER_norm   ER / min(n, d) in [0, 1]: the toy has n <= 30 < d = 128, so ER is capped by the length.
  prefixes  t_k = min(k s, n), k = 1..K, K = ceil(n / s) (stride s; t_K = n);  E_k = ER(Z_{1:t_k})
  ERV       v_k = E_k - E_{k-1};  V_2 = v_2,  V_k = eta v_k + (1 - eta) V_{k-1} (k >= 3);  ERV = V_K (0 if K < 2)
  ERA       a_k = V_k - V_{k-1};  Acc_3 = a_3, Acc_k = eta a_k + (1 - eta) Acc_{k-1} (k >= 4); ERA = Acc_K (0 if K < 3)
            eta = 1: ERV = E_K - E_{K-1}, ERA = E_K - 2 E_{K-1} + E_{K-2}; a linear E_k gives ERV = slope,
            ERA = 0 exactly, for every eta (tested).
  Shaping   (RECONSTRUCTION, "effective-rank-style"; the paper's formula was not available)
            zc_g(x)_i = clip(z_i, -c, c) - mean_{j in g} clip(z_j, -c, c),  z_i = (x_i - mean_g x) / (std_g x + eps)
            b_i   = w_exp zc_g(ER_norm_i or ER_i) + w_vel zc_g(ERV_i)
            w_exp = sigmoid(-k ERAbar),  w_vel = 1 - w_exp   (ERAbar = batch mean ERA: decelerating rank growth
                    -> more weight on the exploration channel)
            A'_i  = A_i^GRPO + lambda b_i, broadcast over the response's tokens.
            sum_{i in g} b_i = 0, so the group-sum of A is unchanged; lambda = 0 is GRPO exactly (tested).
            An all-equal-reward group (A = 0) now gets advantages +-lambda b_i: GRPO ignores it, this does not.
Cost: the advantage stage runs ONE extra no-grad forward of ctx.policy (the rollout policy: no update
has happened yet) with output_hidden=True, then sum_i ceil(n_i / s) small SVDs (batched over rows).

Card vs paper/official code (no code; the card is our only source for ERV/ERA/shaping):
(1) ER is the card's (verified) formula. (2) ERV/ERA are the card's reconstruction ("rolling matrix + EMA
over differences"; one summary calls ERV an "average first-order" change); the card leaves V_0 open and
expects a transient -- we initialise each EMA at its first value, so there is none. (3) The card's
shaping clips the z-scores, which breaks its own zero-group-sum claim when a clip binds (|z| can reach
(G-1)/sqrt(G), 2.47 at G = 8 < c = 3, so it binds only from G = 11); we re-centre after clipping.
(4) The card's option "bonus only where A_i > 0" is not implemented: it breaks the zero group-sum.
(5) The ER channel is length-normalised by default (length_norm=True; the paper uses raw ER on
responses far longer than ours); ERV is a per-stride rate and is not normalised.
Our own settings, fixed before any run: s = 1, eta = 0.2 (an EMA window of ~9 tokens), c = 3, k = 100:
ERAbar is ~ -0.005..-0.012 on the shipped addition / addition_scratchpad bases' rollouts (3-step smoke
runs, no result read), so k = 1 would pin w_exp at 0.50 +- 0.003; k = 100 makes k |ERAbar| ~ 1.
Toy facts (same smoke runs): addition responses are ~3.6 tokens (ER ~ 3.4, ER_norm ~ 0.96: nearly
degenerate); addition_scratchpad ~20 tokens (ER ~ 13.6). Raw ER tracks length (corr 0.88-0.96), and
ER_norm tracks ERV (corr 0.2-0.99): neither channel choice gives two independent signals here.
ctx.state is not used: nothing is carried across training steps.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..baselines import broadcast
from ..core import group_advantages, group_mean_std, pearson
from ..registry import Recipe, check_range, register, register_recipe
from ..rollout import policy_forward

PAPER = ("Beyond the Exploration-Exploitation Trade-off: A Hidden State Approach for LLM Reasoning in RLVR "
         "(VERL), 2025, arXiv 2509.23808")


def effective_rank(H: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """ER of each matrix: H [B, T, d] (or [T, d]), mask [B, T] (or [T]) of rows to use -> [B] (or []) float64.
    Masked rows are zeroed, which leaves the nonzero singular values of the kept rows unchanged."""
    Z = H.detach().double()
    if mask is not None:
        Z = Z * mask.to(Z.device, torch.float64).unsqueeze(-1)
    s = torch.linalg.svdvals(Z)                                   # [B, min(T, d)]
    total = s.sum(-1, keepdim=True)
    p = s / total.clamp_min(torch.finfo(s.dtype).tiny)
    er = torch.exp(-torch.special.xlogy(p, p).sum(-1))
    return torch.where(total.squeeze(-1) > 0, er, torch.zeros_like(er))   # ER(0) := 0


def length_normalised(er: torch.Tensor, lengths: torch.Tensor, d: int) -> torch.Tensor:
    """ER / min(n, d) in [0, 1] (0 for n = 0)."""
    cap = lengths.to(er).clamp(max=d)
    return torch.where(cap > 0, er / cap.clamp_min(1), torch.zeros_like(er))


def prefix_effective_ranks(H: torch.Tensor, mask: torch.Tensor, stride: int = 1):
    """(E [B, Kmax] float64, valid [B, Kmax] bool): E[:, k-1] = ER of the first min(k s, n_i) valid rows;
    valid for k <= ceil(n_i / s). The last valid entry of a row is the ER of the whole response."""
    m = mask.bool()
    n = m.sum(1)
    pos = m.long().cumsum(1)                                      # 1-based index of each valid row
    K = max(1, math.ceil(int(n.max()) / stride)) if n.numel() else 1
    E = []
    for k in range(1, K + 1):
        keep = m & (pos <= torch.clamp(n, max=k * stride)[:, None])
        width = int(keep.any(0).nonzero().max()) + 1 if keep.any() else 1   # later columns are all masked
        E.append(effective_rank(H[:, :width], keep[:, :width]))
    E = torch.stack(E, dim=1)
    valid = torch.arange(1, K + 1, device=n.device)[None] <= torch.div(n + stride - 1, stride, rounding_mode="floor")[:, None]
    return E, valid


def rank_dynamics(E: torch.Tensor, valid: torch.Tensor, eta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(ERV [B], ERA [B]) from the prefix ERs E [B, K] (valid: a prefix of each row), module doc equations."""
    V, Acc = torch.zeros_like(E[:, 0]), torch.zeros_like(E[:, 0])
    for k in range(1, E.shape[1]):                                # 0-based k = the card's k+1
        v = E[:, k] - E[:, k - 1]
        V_new = v if k == 1 else eta * v + (1 - eta) * V
        if k >= 2:
            a = V_new - V
            Acc = torch.where(valid[:, k], a if k == 2 else eta * a + (1 - eta) * Acc, Acc)
        V = torch.where(valid[:, k], V_new, V)
    return V, Acc


@dataclass
class EffectiveRankConfig:
    """The statistics' settings (the probe's config; the shaping stage adds its own)."""
    layer: int | None = None   # None: final hidden state after ln_f; l in 1..n_layers: residual after block l
    stride: int = 1            # s: prefix checkpoints every s tokens
    eta: float = 0.2           # EMA rate of ERV / ERA (1 = plain differences)

    def __post_init__(self):
        check_range(self, "layer", lo=1)   # the upper bound n_layers is checked against the model
        check_range(self, "stride", lo=1)
        check_range(self, "eta", lo=0.0, hi=1.0, lo_open=True)


def response_hidden(policy, batch, layer: int | None = None) -> torch.Tensor:
    """[B, T, d] hidden states of the response rows; one no-grad forward in eval mode."""
    L = policy.cfg.n_layers
    if layer is not None and not 1 <= layer <= L:
        raise ValueError(f"EffectiveRankConfig.layer must be None or in [1, {L}] (the model's n_layers), got {layer}")
    was_training = policy.training
    policy.eval()
    with torch.no_grad():
        hidden = policy_forward(policy, batch, output_hidden=True).hidden
        h = policy.ln_f(hidden[-1]) if layer is None else hidden[layer - 1]
    policy.train(was_training)
    return h


def rank_statistics(policy, batch, cfg: EffectiveRankConfig) -> dict[str, torch.Tensor]:
    """Per response [B] (float64, on the CPU): er, er_norm, erv, era, length."""
    # many small SVDs: on the CPU (a GPU runs them as one cuSOLVER call per matrix; not measured here)
    H = response_hidden(policy, batch, cfg.layer).double().cpu()
    E, valid = prefix_effective_ranks(H, batch.response_mask.cpu(), cfg.stride)
    erv, era = rank_dynamics(E, valid, cfg.eta)
    n = batch.response_mask.sum(1).cpu()
    er = E.gather(1, (valid.sum(1, keepdim=True) - 1).clamp_min(0)).squeeze(1)   # the full response
    er = torch.where(n > 0, er, torch.zeros_like(er))
    return {"er": er, "er_norm": length_normalised(er, n, H.shape[-1]), "erv": erv, "era": era, "length": n.double()}


# ------------------------------------------------------------------ advantage shaping (reconstruction)

def centred_zscore(x: torch.Tensor, group_ids: torch.Tensor, clip: float, eps: float) -> torch.Tensor:
    """zc_g(x): within-group z-score, clipped to [-clip, clip], re-centred so every group sums to 0."""
    mean, std = group_mean_std(x, group_ids)
    z = ((x - mean) / (std + eps)).clamp(-clip, clip)
    return z - group_mean_std(z, group_ids)[0]


def shaping_bonus(er, erv, era, group_ids, gain: float, clip: float, eps: float) -> tuple[torch.Tensor, float]:
    """(b [B], w_exp): b = w_exp zc(er) + (1 - w_exp) zc(erv), w_exp = sigmoid(-gain * mean(era))."""
    w_exp = 1.0 / (1.0 + math.exp(min(700.0, gain * float(era.double().mean())))) if era.numel() else 0.5
    b = w_exp * centred_zscore(er, group_ids, clip, eps) + (1.0 - w_exp) * centred_zscore(erv, group_ids, clip, eps)
    return b, w_exp


@dataclass
class EffectiveRankShapingConfig(EffectiveRankConfig):
    eps: float = 1e-6          # GRPO's std eps, also that of the bonus z-scores
    coef: float = 0.05         # lambda; 0 gives GRPO exactly
    gain: float = 100.0        # k of the controller w_exp = sigmoid(-k ERAbar) (scale: module doc)
    clip: float = 3.0          # c: z-scores clipped to [-c, c] (then re-centred)
    length_norm: bool = True   # exploration channel on ER / min(n, d) (True) or raw ER (False)

    def __post_init__(self):
        super().__post_init__()
        check_range(self, "eps", lo=0.0, lo_open=True)
        check_range(self, "coef", lo=0.0)
        check_range(self, "gain", lo=0.0)
        check_range(self, "clip", lo=0.0, lo_open=True)


@register("advantage", "effective_rank_shaping", config=EffectiveRankShapingConfig, paper=f"{PAPER} (VERL-style)",
          needs={"groups"})
def effective_rank_shaping(batch, cfg: EffectiveRankShapingConfig, ctx) -> torch.Tensor:
    gids = batch.group_ids.cpu()
    A = group_advantages(batch.rewards.float().cpu(), gids, "std", cfg.eps)
    st = rank_statistics(ctx.policy, batch, cfg)
    b, w_exp = shaping_bonus(st["er_norm"] if cfg.length_norm else st["er"], st["erv"], st["era"], gids,
                             cfg.gain, cfg.clip, cfg.eps)
    ctx.log(**{"verl_rank/er": float(st["er"].mean()), "verl_rank/er_norm": float(st["er_norm"].mean()),
               "verl_rank/erv": float(st["erv"].mean()), "verl_rank/era": float(st["era"].mean()),
               "verl_rank/w_exp": w_exp, "verl_rank/bonus_abs": float(b.abs().mean()),
               "verl_rank/corr_er_erv": pearson(st["er"], st["erv"])})
    return broadcast(A + cfg.coef * b.to(A.dtype), batch)


@register("probe", "effective_rank", config=EffectiveRankConfig, paper=PAPER)
def effective_rank_probe(policy, batch, cfg: EffectiveRankConfig, ctx) -> dict[str, float]:
    """ER / ERV / ERA of the step's rollout responses under the policy after the step's updates (one no-grad
    forward): means and stds, corr(ER, ERV) across responses, ER vs length, ER vs reward."""
    st = rank_statistics(policy, batch, cfg)
    out = {}
    for k in ("er", "er_norm", "erv", "era"):
        out[f"verl_rank/{k}_mean"] = float(st[k].mean())
        out[f"verl_rank/{k}_std"] = float(st[k].std()) if st[k].numel() > 1 else 0.0
    out["verl_rank/length_mean"] = float(st["length"].mean())
    for a, b in (("er", "erv"), ("er_norm", "erv"), ("er", "length"), ("er_norm", "length"), ("erv", "length")):
        out[f"verl_rank/corr_{a}_{b}"] = pearson(st[a], st[b])
    if batch.rewards is not None:
        r = batch.rewards.cpu()
        out["verl_rank/corr_er_reward"] = pearson(st["er"], r)
        out["verl_rank/corr_er_norm_reward"] = pearson(st["er_norm"], r)
    return out


# lambda in {0.05, 0.1} (PLAN); lambda = 0 is the `grpo` recipe: the same loss and the library's training
# regime, only the advantage differs.
_GRPO_LOSS = {"agg": "seq-mean-token-mean"}   # = the grpo recipe's loss_cfg
_SHAPING = "VERL-style effective-rank shaping (our reconstruction)"
register_recipe(Recipe("effective_rank_shaping", paper=f"{PAPER}; {_SHAPING}, lambda 0.05",
                       advantage="effective_rank_shaping", loss="ppo_clip", advantage_cfg={"coef": 0.05},
                       loss_cfg=dict(_GRPO_LOSS)))
register_recipe(Recipe("effective_rank_shaping_l01", paper=f"{PAPER}; {_SHAPING}, lambda 0.1",
                       advantage="effective_rank_shaping", loss="ppo_clip", advantage_cfg={"coef": 0.1},
                       loss_cfg=dict(_GRPO_LOSS)))
