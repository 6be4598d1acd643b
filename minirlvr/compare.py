"""Run several recipes on the same task and seeds, side by side.

Seeds are the outer loop and recipes the inner one, so a slow machine drifts
evenly over all recipes. Writes into `out_dir`:
  curves.png        entropy, held-out greedy accuracy and pass@k over training
  pass_at_k.png     final pass@k vs k per recipe (+ the base policy)
  summary.csv       one row per recipe: final metrics as mean and std over seeds
"""
from __future__ import annotations

import csv
import os
from dataclasses import replace

import numpy as np

from .trainer import TrainConfig, train

SUMMARY_KEYS = ("entropy", "reward", "eval/greedy_acc", "eval/pass@1", "eval/entropy")


def run_compare(recipes: list[str], seeds: int, base: TrainConfig, out_dir: str) -> dict:
    """Train every recipe for every seed; returns {"runs": {recipe: [history per seed]}, "summary": rows}."""
    if not recipes:
        raise ValueError("compare needs at least one recipe")
    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    from . import registry
    for r in recipes:
        registry.get_recipe(r)  # fail before any training if a name is wrong
    os.makedirs(out_dir, exist_ok=True)
    runs: dict[str, list] = {r: [] for r in recipes}
    for seed in range(seeds):
        for recipe in recipes:
            cfg = replace(base, recipe=recipe, seed=base.seed + seed, out_dir=out_dir, name=f"{recipe}_s{base.seed + seed}")
            runs[recipe].append(train(cfg)["history"])
    summary = summarize(runs, base.eval_k)
    write_outputs(runs, summary, base.eval_k, out_dir)
    return {"runs": runs, "summary": summary}


def summarize(runs: dict[str, list], k: int) -> list[dict]:
    """Final-step metrics, mean and std over seeds, plus the base (step 0) pass@k."""
    rows = []
    keys = SUMMARY_KEYS + (f"eval/pass@{k}",)
    for recipe, hists in runs.items():
        row = {"recipe": recipe, "seeds": len(hists)}
        for key in keys:
            vals = [next((h[key] for h in reversed(hist) if key in h), np.nan) for hist in hists]
            row[f"{key}_mean"], row[f"{key}_std"] = float(np.nanmean(vals)), float(np.nanstd(vals))
        base = [hist[0].get(f"eval/pass@{k}", np.nan) for hist in hists if hist and hist[0]["step"] == 0]
        row[f"base_pass@{k}"] = float(np.nanmean(base)) if base else float("nan")
        rows.append(row)
    return rows


def final_pass_at_k(hists: list[list[dict]], k: int, step: int | None = None):
    """(ks, mean, std) of pass@1..k at the last evaluated step (or at `step`, e.g. 0 for the base)."""
    per_seed = []
    for hist in hists:
        evals = [h for h in hist if f"eval/pass@{k}" in h and (step is None or h["step"] == step)]
        if evals:
            per_seed.append([evals[-1][f"eval/pass@{kk}"] for kk in range(1, k + 1)])
    vals = np.array(per_seed)
    return np.arange(1, k + 1), vals.mean(0), vals.std(0)


def write_outputs(runs: dict[str, list], summary: list[dict], k: int, out_dir: str) -> None:
    from .plots import plot_curves, plot_pass_at_k
    import matplotlib.pyplot as plt
    fig = plot_curves(runs, keys=("entropy", "eval/greedy_acc", f"eval/pass@{k}"),
                      path=os.path.join(out_dir, "curves.png"))
    plt.close(fig)
    curves = {"base": final_pass_at_k(next(iter(runs.values())), k, step=0)}
    curves.update({r: final_pass_at_k(h, k) for r, h in runs.items()})
    fig = plot_pass_at_k(curves, path=os.path.join(out_dir, "pass_at_k.png"))
    plt.close(fig)
    with open(os.path.join(out_dir, "summary.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(summary[0]))
        w.writeheader()
        w.writerows(summary)


def format_summary(summary: list[dict], k: int) -> str:
    cols = [("entropy", "entropy"), ("eval/greedy_acc", "greedy acc"), ("eval/pass@1", "pass@1"),
            (f"eval/pass@{k}", f"pass@{k}")]
    head = f"{'recipe':<18}" + "".join(f"{name:>18}" for _, name in cols)
    lines = [head, "-" * len(head)]
    for row in summary:
        lines.append(f"{row['recipe']:<18}" + "".join(
            f"{row[f'{key}_mean']:>10.3f} ± {row[f'{key}_std']:<5.3f}" for key, _ in cols))
    return "\n".join(lines)
