"""RiskPO: Risk-based Policy Optimization via Verifiable Reward for LLM Post-Training -- 2025, arXiv 2510.00911.
Official code: RTkenny/RiskPO (verl fork), read at commit 65ec40c: core_algos.py
`compute_grpo_bundle_rvar_outcome_advantage_quantile_tracking`; ray_trainer.py (bundle ids, quantile tracking);
scripts/run_qwen2.5_1.5b_{MVaR_math, MVaR_dapomath, risky_MVaR_math}.sh.

Stage changed: advantage only (bundling prompts is part of it; the loss is the recipe's PPO-clip).

Idea: GRPO maximises the MEAN reward. RiskPO maximises a risk measure of the reward distribution, the Mixed
Value-at-Risk: a range-VaR over the quantile band [alpha, beta] plus omega times the lower-tail CVaR_alpha.
Its score-function gradient sees only the bottom and middle of the distribution: failures weigh more, the
already-solved top tail gets no push (the paper's argument against entropy collapse). 0/1 rewards have a
degenerate distribution, so B prompts are "bundled" and scored jointly.

Symbols (bundle b = B consecutive prompts q of the batch, each with n responses and rewards r_{q,j})
  S_j     = sum_{q in b} r_{q,j}       paper j = the j-th response of every prompt of b (j = 1..n); the
            pairing is arbitrary, and the n samples of a prompt are i.i.d., so row order is a random pairing
  qa, qb  = Quantile(S, alpha), Quantile(S, beta)   over the n papers, torch.quantile (linear interpolation)
  sigma_S = std(S) (unbiased; 1 if n = 1);   (x)^+ = max(x, 0);   eps = 1e-6;   kappa = 1 if natural_baseline
  aR_j = [ (S_j - qa)^+ - (S_j - qb)^+ - kappa (qb - qa) ] / (beta - alpha + eps)        range-VaR part
       = [ min(S_j, qb) - min(S_j, qa) - kappa (qb - qa) ] / (beta - alpha + eps)   (the form computed: exact
         signs and exact flatness in floating point)
  aC_j = -(qa - S_j)^+ / (alpha + eps)                                                   lower-tail CVaR part
  measure "mvar":         a_j = (omega aC_j + aR_j) / (omega + 1)        (use_mixing_risk_measure, w_mix = omega)
          "rvar":         a_j = aR_j
          "risk_seeking": a_j = (u (S_j - qb)^+ / (1 - beta + eps) + aR_j) / (u + 1)   (ablation, u = upper_weight)
  norm_by_std:            a_j <- a_j / (sigma_S + eps)
Credit of paper j to its B responses (broadcast to every token of the response):
  uniform  A_{q,j} = a_j;   std  A_{q,j} = a_j / (sigma_q + eps), sigma_q = std_j r_{q,j} (unbiased), 1 if <= 1e-3
  score    A_{q,j} = a_j (0.5 if r_{q,j} > 0 else 1.5)
  sum-mean d_{q,j} = r_{q,j} - mean_j r_{q,j}, D_j = sum_q d_{q,j}: A_{q,j} = a_j d_{q,j} / D_j if |D_j| > 1e-6
           else a_j / B           (then sum_q A_{q,j} = a_j)
Objective behind it: RVaR = 1/(beta - alpha) int_alpha^beta VaR_u(S) du, CVaR = 1/alpha int_0^alpha VaR_u du;
grad RVaR = E[((S - qa)^+ - (S - qb)^+) grad log p] / (beta - alpha), grad CVaR = -E[(qa - S)^+ grad log p] / alpha;
kappa (qb - qa) is a constant baseline. Consequences (tested): with the natural baseline every a_j <= 0
(mvar / rvar); a is non-decreasing in S and flat (0 with the natural baseline) for S >= qb; all-equal papers give
a = 0; a is invariant to S -> S + c, and to S -> k S after the /sigma_S. B = 1, alpha = 0, beta = 1, omega = 0,
no std-norm, uniform credit: qa = min, qb = max, a = (r - max_g r) / (1 + eps): REINFORCE with a max baseline
(r - min without the natural baseline); same expected gradient as Dr.GRPO's r - mean, another variance.

Card vs paper/official code: the card matches the code on every formula above (the paper itself was not read
here). The code's `use_q_track_mode` ('track' in the scripts) would replace qa, qb by SGD-tracked quantiles,
but the trainer writes them to the batch's meta_info only AFTER compute_advantage, on a fresh batch each step,
so the advantage always uses the per-bundle empirical quantiles (and `use_mean_as_baseline` sees 0). We follow
the code: the tracking is logging only here (riskpo/q_track_*: SGD, lr_q = 0.1, q += lr_q (level - frac(S < q)),
initialised at the first batch's pooled quantiles, kept in ctx.state["riskpo"]). Defaults: the paper's main
setting alpha 0.2, beta 0.8, omega 1.5, credit std, natural baseline, std-norm (the MATH script has beta 0.9;
the DAPO one credit sum-mean without the natural baseline). Deviations: (1) bundle_size 4, not the code's 5, so
the library's 16 prompts split evenly; (2) the number of prompts must be a multiple of bundle_size (ValueError
naming both; the paper is silent, the code would score a short last bundle); (3) every prompt must have the same
number of responses (the code uses the minimum and gives extra responses A = 0); (4) the tracked quantile sits
exactly at alpha and beta (the code tracks the 0.05-grid point nearest to them); (5) float64 throughout.
Recipes use the `grpo` recipe's loss (seq-mean-token-mean, clip 0.2, no dual clip) so that `riskpo*` vs `grpo`
differ in the advantage only; the code's loss is verl's token-mean with dual clip c = 3 and lr 1e-6.
Pitfalls: with the natural baseline every advantage is <= 0 (the policy is only pushed down, by design); the
paper scores of 0/1 rewards take only B + 1 values, so qa, qb often coincide with many papers (ties).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from ..baselines import broadcast
from ..registry import Recipe, check_range, register, register_recipe

PAPER = "RiskPO: Risk-based Policy Optimization via Verifiable Reward for LLM Post-Training, 2025, arXiv 2510.00911"
MEASURES = ("mvar", "rvar", "risk_seeking")
CREDITS = ("std", "uniform", "score", "sum-mean")


@dataclass
class RiskpoConfig:
    bundle_size: int = 4                 # B prompts per bundle (code: 5); prompts_per_step must be a multiple
    alpha: float = 0.2                   # lower quantile level (code quantile_down)
    beta: float = 0.8                    # upper quantile level (code quantile_up), alpha <= beta
    omega: float = 1.5                   # CVaR weight of the mixed measure (code w_mix)
    measure: Literal["mvar", "rvar", "risk_seeking"] = "mvar"
    upper_weight: float = 1.5            # u of the risk-seeking ablation
    natural_baseline: bool = True        # kappa = 1: subtract (qb - qa) in aR (code natural_baseline_adv)
    norm_by_std: bool = True             # a / (sigma_S + eps) (code norm_adv_by_std_in_grpo)
    credit: Literal["std", "uniform", "score", "sum-mean"] = "std"
    eps: float = 1e-6
    lr_q: float = 0.1                    # SGD step of the (logging-only) quantile tracking

    def __post_init__(self):
        check_range(self, "bundle_size", lo=1)
        check_range(self, "alpha", lo=0.0, hi=1.0)
        check_range(self, "beta", lo=0.0, hi=1.0)
        if self.alpha > self.beta:
            raise ValueError(f"RiskpoConfig.alpha must be <= RiskpoConfig.beta, "
                             f"got alpha={self.alpha!r} > beta={self.beta!r}")
        check_range(self, "omega", lo=0.0)
        check_range(self, "upper_weight", lo=0.0)
        check_range(self, "eps", lo=0.0, lo_open=True)
        check_range(self, "lr_q", lo=0.0)
        for name, ok in (("measure", MEASURES), ("credit", CREDITS)):
            if getattr(self, name) not in ok:
                raise ValueError(f"RiskpoConfig.{name} must be one of {ok}, got {getattr(self, name)!r}")


def bundle_rows(group_ids: torch.Tensor, bundle_size: int) -> torch.Tensor:
    """Row indices [n_bundles, B, n]: bundle k holds the k-th B groups (sorted group ids = batch order), and
    [k, q, j] is the j-th row (in row order) of prompt q. One-line ValueError if the groups differ in size or
    their number is not a multiple of bundle_size."""
    _, inv = torch.unique(group_ids.cpu(), return_inverse=True)
    counts = torch.bincount(inv)
    if int(counts.min()) != int(counts.max()):
        raise ValueError(f"riskpo: every prompt needs the same number of responses, got {sorted(set(counts.tolist()))}")
    n_prompts, n = counts.numel(), int(counts[0])
    if n_prompts % bundle_size:
        raise ValueError(f"riskpo: the batch has {n_prompts} prompts, not a multiple of advantage.bundle_size="
                         f"{bundle_size}; set prompts_per_step (--prompts) to a multiple of {bundle_size} "
                         f"(the paper does not say what happens to leftover prompts)")
    order = torch.sort(inv, stable=True).indices           # rows group by group, row order inside a group
    return order.view(n_prompts // bundle_size, bundle_size, n)


def bundle_quantiles(S: torch.Tensor, alpha: float, beta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(qa, qb, sigma_S), each [..., 1], over the last dim of the paper scores S [..., n] (sigma_S = 1 if n = 1)."""
    qa = torch.quantile(S, alpha, dim=-1, keepdim=True, interpolation="linear")
    qb = torch.quantile(S, beta, dim=-1, keepdim=True, interpolation="linear")
    sigma = S.std(dim=-1, keepdim=True) if S.shape[-1] > 1 else torch.ones_like(qa)
    return qa, qb, sigma


def paper_advantage(S: torch.Tensor, qa: torch.Tensor, qb: torch.Tensor, sigma: torch.Tensor,
                    cfg: RiskpoConfig) -> torch.Tensor:
    """a_j [..., n] of the module docstring from the scores S [..., n] and the bundle's qa, qb, sigma_S."""
    kappa = 1.0 if cfg.natural_baseline else 0.0
    a_r = (torch.minimum(S, qb) - torch.minimum(S, qa) - kappa * (qb - qa)) / (cfg.beta - cfg.alpha + cfg.eps)
    if cfg.measure == "mvar":
        a_c = -(qa - S).clamp(min=0) / (cfg.alpha + cfg.eps)
        a = (cfg.omega * a_c + a_r) / (cfg.omega + 1)
    elif cfg.measure == "risk_seeking":
        upper = (S - qb).clamp(min=0) / (1 - cfg.beta + cfg.eps)
        a = (cfg.upper_weight * upper + a_r) / (cfg.upper_weight + 1)
    else:
        a = a_r
    return a / (sigma + cfg.eps) if cfg.norm_by_std else a


def credit_assign(a: torch.Tensor, R: torch.Tensor, mode: str, eps: float = 1e-6) -> torch.Tensor:
    """A [k, B, n]: paper advantages a [k, n] shared among the B responses of each paper (rewards R [k, B, n])."""
    a = a[:, None, :]
    if mode == "uniform":
        return a.expand_as(R).clone()
    if mode == "std":
        sigma_q = R.std(dim=-1, keepdim=True) if R.shape[-1] > 1 else torch.zeros_like(R[..., :1])
        sigma_q = torch.where(sigma_q > 1e-3, sigma_q, torch.ones_like(sigma_q))
        return a / (sigma_q + eps)
    if mode == "score":
        return a * torch.where(R > 0, 0.5, 1.5).to(R.dtype)
    if mode == "sum-mean":
        d = R - R.mean(dim=-1, keepdim=True)
        D = d.sum(dim=1, keepdim=True)
        big = D.abs() > 1e-6
        return torch.where(big, a * d / torch.where(big, D, torch.ones_like(D)), a / R.shape[1])
    raise ValueError(f"unknown RiskPO credit mode {mode!r}; known: {', '.join(CREDITS)}")


def riskpo_terms(rewards: torch.Tensor, group_ids: torch.Tensor, cfg: RiskpoConfig) -> dict[str, torch.Tensor]:
    """Everything for one rollout, float64 on CPU, no grad: adv [N] per row, and per bundle rows [k, B, n],
    S / a [k, n], qa / qb / sigma [k, 1]."""
    rows = bundle_rows(group_ids, cfg.bundle_size)
    R = rewards.detach().cpu().double()[rows]                       # [k, B, n]
    S = R.sum(dim=1)                                                # paper scores [k, n]
    qa, qb, sigma = bundle_quantiles(S, cfg.alpha, cfg.beta)
    a = paper_advantage(S, qa, qb, sigma, cfg)
    adv = torch.zeros(rewards.numel(), dtype=torch.float64)
    adv[rows.reshape(-1)] = credit_assign(a, R, cfg.credit, cfg.eps).reshape(-1)
    return dict(adv=adv, rows=rows, S=S, a=a, qa=qa, qb=qb, sigma=sigma)


def track_quantiles(state: dict, S: torch.Tensor, levels: tuple[float, float], lr: float) -> list[float]:
    """The code's quantile tracking (logging only): first call q = pooled empirical quantiles of S, then
    q += lr (level - mean 1[S < q]). Keeps q in state["q_track"]; returns it."""
    flat = S.reshape(-1)
    if "q_track" not in state:
        state["q_track"] = [float(torch.quantile(flat, lv)) for lv in levels]
    else:
        below = [float((flat < q).double().mean()) for q in state["q_track"]]
        state["q_track"] = [q + lr * (lv - b) for q, lv, b in zip(state["q_track"], levels, below)]
    return state["q_track"]


@register("advantage", "riskpo", config=RiskpoConfig, paper=PAPER, needs={"groups"})
def riskpo_advantage(batch, cfg: RiskpoConfig, ctx) -> torch.Tensor:
    """RiskPO advantage broadcast to tokens [B, T]; logs riskpo/* statistics of the bundles."""
    t = riskpo_terms(batch.rewards, batch.group_ids, cfg)
    S, qa, qb = t["S"], t["qa"], t["qb"]
    q_track = track_quantiles(ctx.state.setdefault("riskpo", {}), S, (cfg.alpha, cfg.beta), cfg.lr_q)
    ctx.log(**{"riskpo/frac_nonzero_adv": float((t["adv"] != 0).double().mean()),
               "riskpo/adv_mean": float(t["adv"].mean()), "riskpo/paper_score_mean": float(S.mean()),
               "riskpo/qa_mean": float(qa.mean()), "riskpo/qb_mean": float(qb.mean()),
               "riskpo/frac_papers_below_qa": float((S < qa).double().mean()),     # where the CVaR part acts
               "riskpo/frac_papers_at_or_above_qb": float((S >= qb).double().mean()),  # the flat, no-push region
               "riskpo/frac_flat_bundles": float((qa == qb).double().mean()),     # qa = qb: aR = 0
               "riskpo/q_track_alpha": q_track[0], "riskpo/q_track_beta": q_track[1]})
    return broadcast(t["adv"].to(batch.rewards.dtype), batch)


_LOSS = {"agg": "seq-mean-token-mean"}   # the `grpo` recipe's loss: only the advantage differs
_MVAR = {"bundle_size": 4, "alpha": 0.2, "beta": 0.8, "omega": 1.5, "measure": "mvar", "credit": "std",
         "natural_baseline": True, "norm_by_std": True}
register_recipe(Recipe("riskpo", paper=PAPER + " (MVaR alpha 0.2, beta 0.8, omega 1.5, credit std, B 4; vs grpo)",
                       advantage="riskpo", advantage_cfg=dict(_MVAR), loss_cfg=dict(_LOSS)))
register_recipe(Recipe("riskpo_b1", paper=PAPER + " (B 1, alpha 0, beta 1, omega 0: REINFORCE with a max baseline)",
                       advantage="riskpo", advantage_cfg={**_MVAR, "bundle_size": 1, "alpha": 0.0, "beta": 1.0,
                                                          "omega": 0.0, "credit": "uniform", "norm_by_std": False},
                       loss_cfg=dict(_LOSS)))
register_recipe(Recipe("riskpo_risky", paper=PAPER + " (risk-seeking upper tail, u 1.5: a negative control)",
                       advantage="riskpo", advantage_cfg={**_MVAR, "measure": "risk_seeking", "upper_weight": 1.5},
                       loss_cfg=dict(_LOSS)))
