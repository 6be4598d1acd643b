"""The standard figures: training curves (mean and spread over seeds) and pass@k vs k."""
from __future__ import annotations

import numpy as np

import matplotlib.pyplot as plt

LABELS = {
    "entropy": "mean token entropy of samples (nats)",
    "reward": "mean training reward",
    "accuracy": "training accuracy",
    "eval/greedy_acc": "held-out greedy accuracy",
    "eval/pass@1": "held-out pass@1 (T=1)",
    "eval/entropy": "token entropy on held-out problems (nats)",
    "entropy_p90": "90th percentile of sample token entropy",
    "completion_length": "response length (tokens)",
    "clipfrac": "clip fraction",
}


def axis_label(key: str) -> str:
    if key in LABELS:
        return LABELS[key]
    if key.startswith("eval/pass@"):
        return f"held-out {key[5:]} (T=1)"
    if key.startswith("eval/"):
        return f"held-out {key[5:]}"
    return key


def curve(histories: list[list[dict]], key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Steps, mean and std across runs of `key` (steps where every run logged it)."""
    per_run = [{h["step"]: h[key] for h in hist if key in h} for hist in histories]
    steps = sorted(set.intersection(*(set(r) for r in per_run))) if per_run else []
    vals = np.array([[r[s] for s in steps] for r in per_run], dtype=float)
    if vals.size == 0:
        return np.array([]), np.array([]), np.array([])
    return np.array(steps), vals.mean(0), vals.std(0)


def plot_curves(runs: dict[str, list[list[dict]]], keys=("entropy", "eval/greedy_acc", "eval/pass@8"),
                path: str | None = None, title: str = ""):
    """One panel per metric, one line per label (mean over seeds, band = +-1 std)."""
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.4), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for i, (label, hists) in enumerate(runs.items()):
            steps, mean, std = curve(hists, key)
            if len(steps) == 0:   # a recipe that does not log this key; its colour stays its own in every panel
                continue
            ax.plot(steps, mean, color=f"C{i % 10}", label=f"{label} (n={len(hists)})")
            ax.fill_between(steps, mean - std, mean + std, color=f"C{i % 10}", alpha=0.2)
        ax.set_xlabel("RL step")
        ax.set_ylabel(axis_label(key))
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    if path:
        fig.savefig(path, dpi=110)
    return fig


def plot_pass_at_k(curves: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]], path: str | None = None,
                   title: str = "pass@k on held-out problems"):
    """curves: label -> (k values, mean pass@k, std across seeds). Log-scaled k axis."""
    fig, ax = plt.subplots(figsize=(4.8, 3.6))
    for label, (ks, mean, std) in curves.items():
        style = dict(color="k", linestyle="--") if label == "base" else {}
        line, = ax.plot(ks, mean, marker="o", ms=3, label=label, **style)
        ax.fill_between(ks, mean - std, mean + std, color=line.get_color(), alpha=0.2)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("k (samples per problem)")
    ax.set_ylabel("pass@k")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    if path:
        fig.savefig(path, dpi=110)
    return fig


def plot_frontier(runs: dict[str, list[list[dict]]], x: str = "eval/len_mean", y: str = "eval/pass@1",
                  path: str | None = None, title: str = "length vs accuracy (final evaluation)"):
    """The (length, accuracy) frontier: one small dot per run at its final evaluation, a large marker with
    +-1 std error bars per recipe (mean over seeds), and the base (step-0 evaluation) as a black cross."""
    fig, ax = plt.subplots(figsize=(5.2, 3.8))
    base = []
    for i, (label, hists) in enumerate(runs.items()):
        pts = []
        for hist in hists:
            evals = [h for h in hist if x in h and y in h]
            if evals:
                pts.append((evals[-1][x], evals[-1][y]))
                if evals[0]["step"] == 0:
                    base.append((evals[0][x], evals[0][y]))
        if not pts:
            continue
        pts = np.array(pts)
        ax.scatter(pts[:, 0], pts[:, 1], s=10, color=f"C{i % 10}", alpha=0.5)
        ax.errorbar(pts[:, 0].mean(), pts[:, 1].mean(), xerr=pts[:, 0].std(), yerr=pts[:, 1].std(), fmt="o",
                    ms=7, color=f"C{i % 10}", label=f"{label} (n={len(pts)})")
    if base:
        b = np.array(base).mean(0)
        ax.scatter([b[0]], [b[1]], marker="x", s=60, color="k", label="base")
    ax.set_xlabel(axis_label(x) if x != "eval/len_mean" else "held-out tokens per attempt (T=1)")
    ax.set_ylabel(axis_label(y))
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    if path:
        fig.savefig(path, dpi=110)
    return fig
