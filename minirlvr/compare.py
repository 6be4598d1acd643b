"""Run several recipes on the same task and seeds, side by side.

Seeds are the outer loop and recipes the inner one, so a slow machine drifts
evenly over all recipes. Writes into `out_dir`:
  curves.png        entropy, held-out greedy accuracy and pass@k over training
  pass_at_k.png     final pass@k vs k per recipe and for the base policy (k up to leash_n)
  summary.csv       one row per recipe: final metrics as mean and std over seeds
  support.csv       one row per recipe and seed: The Invisible Leash's support metrics
                    (methods/invisible_leash.py) of the trained policy against the base
"""
from __future__ import annotations

import csv
import os
from dataclasses import replace

import numpy as np

from .trainer import TrainConfig, train

SUMMARY_KEYS = ("entropy", "reward", "eval/greedy_acc", "eval/pass@1", "eval/entropy",
                "eval/len_mean", "eval/cost_of_pass", "eval/truncation_rate")


def run_compare(recipes: list[str], seeds: int, base: TrainConfig, out_dir: str, leash_n: int = 32) -> dict:
    """Train every recipe for every seed, then sample leash_n answers per held-out problem from the
    trained and the base policy (0: skip). Returns {"runs": {recipe: [history per seed]},
    "leash": {recipe: [flat support metrics per seed]}, "summary": rows}."""
    if not recipes:
        raise ValueError("compare needs at least one recipe")
    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    from . import registry
    for r in recipes:
        registry.get_recipe(r)  # fail before any training if a name is wrong
    if leash_n < 0:
        raise ValueError(f"leash_n must be >= 0, got {leash_n}")
    os.makedirs(out_dir, exist_ok=True)
    runs: dict[str, list] = {r: [] for r in recipes}
    leash: dict[str, list] = {r: [] for r in recipes}
    measure = _leash_setup(base, leash_n) if leash_n else None
    for seed in range(seeds):
        for recipe in recipes:
            cfg = replace(base, recipe=recipe, seed=base.seed + seed, out_dir=out_dir, name=f"{recipe}_s{base.seed + seed}")
            res = train(cfg)
            runs[recipe].append(res["history"])
            if measure:
                leash[recipe].append(measure(res["policy"]))
    summary = summarize(runs, base.eval_k, leash)
    write_outputs(runs, summary, base.eval_k, out_dir, leash)
    return {"runs": runs, "leash": leash, "summary": summary}


def _leash_setup(base: TrainConfig, n: int):
    """A function policy -> flat support metrics against the base, on the trainer's held-out problems."""
    from toy_tasks import get_task
    from .methods.invisible_leash import report_metrics, support_report
    from .model import load_checkpoint
    from .sft import default_checkpoint
    task = get_task(base.task)
    base_policy = load_checkpoint(base.init or default_checkpoint(base.task))[0]
    difficulty = base.difficulty if base.eval_difficulty is None else base.eval_difficulty  # as the trainer's eval set
    problems = task.sample(base.eval_problems, np.random.default_rng(base.eval_seed), split="test", difficulty=difficulty)
    ks = sorted({k for k in (1, 2, 4, 8, 16, 32, 64, 128, 256) if k <= n} | {n})

    def measure(policy) -> dict:
        device = next(policy.parameters()).device
        rep = support_report(base_policy.to(device), policy, task, problems, n, ks, seed=base.eval_seed,
                             max_new_tokens=base.max_new_tokens)
        return {"ks": ks, **report_metrics(rep)}
    return measure


def summarize(runs: dict[str, list], k: int, leash: dict[str, list] | None = None) -> list[dict]:
    """Final-step metrics, mean and std over seeds, the base (step 0) pass@k, and (if measured)
    support retention / net change and answer entropy at the largest leash budget."""
    rows = []
    keys = SUMMARY_KEYS + (f"eval/pass@{k}",)
    for recipe, hists in runs.items():
        row = {"recipe": recipe, "seeds": len(hists)}
        for key in keys:
            vals = np.array([next((h[key] for h in reversed(hist) if key in h), np.nan) for hist in hists], float)
            seen = vals[~np.isnan(vals)]   # a key some runs never logged (e.g. runs made before it existed)
            with np.errstate(invalid="ignore"):   # cost_of_pass is inf for a run with no success: std is then nan
                row[f"{key}_mean"], row[f"{key}_std"] = ((float(seen.mean()), float(seen.std())) if seen.size
                                                         else (np.nan, np.nan))
        base = [hist[0].get(f"eval/pass@{k}", np.nan) for hist in hists if hist and hist[0]["step"] == 0]
        row[f"base_pass@{k}"] = float(np.nanmean(base)) if base else float("nan")
        for m in (leash or {}).get(recipe, [])[:1]:
            n = m["ks"][-1]
            for key in (f"rl/pass@{n}", f"base/pass@{n}", f"support/srr@{n}", f"support/nscr@{n}",
                        "rl/answer_entropy", "base/answer_entropy"):
                vals = [mm[key] for mm in leash[recipe]]
                row[f"{key}_mean"], row[f"{key}_std"] = float(np.mean(vals)), float(np.std(vals))
        rows.append(row)
    return rows


def seed_stats(hists: list[list[dict]], key: str, last: int | None = None) -> tuple[float, float]:
    """(mean, std) over seeds of one number per run: the mean of the run's last `last` logged values of `key`
    (None: its final logged value; a large `last` averages the whole run). NaN if no run logged `key`."""
    vals = []
    for hist in hists:
        series = [h[key] for h in hist if key in h]
        if series:
            vals.append(series[-1] if last is None else float(np.mean(series[-last:])))
    return (float(np.mean(vals)), float(np.std(vals))) if vals else (float("nan"), 0.0)


def final_pass_at_k(hists: list[list[dict]], k: int, step: int | None = None):
    """(ks, mean, std) of pass@1..k at the last evaluated step (or at `step`, e.g. 0 for the base)."""
    per_seed = []
    for hist in hists:
        evals = [h for h in hist if f"eval/pass@{k}" in h and (step is None or h["step"] == step)]
        if evals:
            per_seed.append([evals[-1][f"eval/pass@{kk}"] for kk in range(1, k + 1)])
    vals = np.array(per_seed)
    return np.arange(1, k + 1), vals.mean(0), vals.std(0)


def leash_pass_at_k(metrics: list[dict], who: str):
    """(ks, mean, std) over seeds of pass@k from the leash samples of `who` ("rl" or "base")."""
    ks = np.array(metrics[0]["ks"])
    vals = np.array([[m[f"{who}/pass@{kk}"] for kk in ks] for m in metrics])
    return ks, vals.mean(0), vals.std(0)


def write_outputs(runs: dict[str, list], summary: list[dict], k: int, out_dir: str,
                  leash: dict[str, list] | None = None) -> None:
    from .plots import plot_curves, plot_frontier, plot_pass_at_k
    import matplotlib.pyplot as plt
    fig = plot_curves(runs, keys=("entropy", "eval/greedy_acc", f"eval/pass@{k}"),
                      path=os.path.join(out_dir, "curves.png"))
    plt.close(fig)
    if leash and all(leash.values()):
        curves = {"base": leash_pass_at_k(next(iter(leash.values())), "base")}
        curves.update({r: leash_pass_at_k(m, "rl") for r, m in leash.items()})
        with open(os.path.join(out_dir, "support.csv"), "w", newline="") as f:
            rows = [{"recipe": r, "seed": i, **{key: v for key, v in m.items() if key != "ks"}}
                    for r, ms in leash.items() for i, m in enumerate(ms)]
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    else:
        curves = {"base": final_pass_at_k(next(iter(runs.values())), k, step=0)}
        curves.update({r: final_pass_at_k(h, k) for r, h in runs.items()})
    fig = plot_pass_at_k(curves, path=os.path.join(out_dir, "pass_at_k.png"))
    plt.close(fig)
    if any("eval/len_mean" in h for hists in runs.values() for hist in hists for h in hist):
        fig = plot_frontier(runs, path=os.path.join(out_dir, "frontier.png"))
        plt.close(fig)
    with open(os.path.join(out_dir, "summary.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(summary[0]))
        w.writeheader()
        w.writerows(summary)


def format_summary(summary: list[dict], k: int) -> str:
    cols = [("entropy", "entropy"), ("eval/greedy_acc", "greedy acc"), ("eval/pass@1", "pass@1"),
            (f"eval/pass@{k}", f"pass@{k}")]
    if all(np.isfinite(row.get("eval/len_mean_mean", np.nan)) for row in summary):  # token efficiency
        cols += [("eval/len_mean", "tokens/attempt"), ("eval/cost_of_pass", "cost-of-pass")]
    n = next((key.split("@")[1].split("_")[0] for key in summary[0] if key.startswith("support/srr@")), None)
    if n:
        cols += [(f"rl/pass@{n}", f"pass@{n}"), (f"support/srr@{n}", f"SRR@{n}"), (f"support/nscr@{n}", f"NSCR@{n}")]
    head = f"{'recipe':<18}" + "".join(f"{name:>18}" for _, name in cols)
    lines = [head, "-" * len(head)]
    for row in summary:
        lines.append(f"{row['recipe']:<18}" + "".join(
            f"{row[f'{key}_mean']:>10.3f} ± {row[f'{key}_std']:<5.3f}" for key, _ in cols))
    return "\n".join(lines)
