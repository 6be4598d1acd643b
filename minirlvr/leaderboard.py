"""`minirlvr leaderboard`: every registered recipe, head to head, on the same tasks, seeds, budget and problems.

Each (recipe, task, seed) is one `train` run in the leaderboard regime (REGIME: the same prompts per step,
group size, step count and held-out evaluation for every recipe; a recipe keeps its own trainer settings,
e.g. PPO epochs or a length budget, because they are part of the method). Every run is evaluated at the
task's full length budget on the same held-out problems (eval_seed); the base policy is evaluated once per
task on them. Runs are on the CPU, in worker processes with one torch thread each (2-core machines:
processes at 2 threads slow each other down many times over), and each finished run is cached in its folder
under a key of (recipe, its resolved settings, task, seed, code version, torch version): an interrupted leaderboard resumes,
and adding a recipe runs only the new one. The code version hashes the base checkpoints and every source file
a run's numbers can depend on (NOT_IN_CODE_VERSION lists the rest), so a change there reruns everything and
nothing stale is ever reported.

Ranking (per task): by held-out pass@1 at the end. With m_r, s_r the mean and std over seeds,
    rank(r) = 1 + #{q : m_q - m_r > sqrt(s_q^2 + s_r^2)},
the number of recipes that beat r by more than the seed spread of the difference. Recipes that no one beats
that way share rank 1: a difference inside the spread is a tie, never a win. Within a rank rows are listed by
pass@8. The column `vs grpo` applies the same rule to GRPO alone (+ better, - worse, = tie).

Outputs in `out_dir`: leaderboard.csv (one row per recipe x task, every number as mean and std, the paper
and the recipe's settings), leaderboard.md (the ranked tables), accuracy_vs_entropy.png (pass@1 vs entropy
retained per task, with error bars) and pass_at_k.png (pass@k vs k: the top recipes against GRPO and the base).
"""
from __future__ import annotations

import csv
import datetime
import glob
import hashlib
import json
import os
import re
import subprocess
import time
from dataclasses import asdict, dataclass

import numpy as np

from . import registry
from .trainer import TrainConfig, TrainingDiverged

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASKS = ("addition", "countdown")
# Chosen on GRPO alone before any other recipe ran (README "Leaderboard"): at 40 steps of 8 prompts x 8 GRPO
# cuts held-out entropy 38% on countdown (pass@16 falls, pass@1 rises) and 13% on addition (pass@1 +0.14),
# and a full leaderboard (every recipe, 2 tasks x 3 seeds) fits in an hour on 2 cores.
REGIME = dict(steps=40, prompts_per_step=8, group_size=8, eval_k=16, eval_problems=128)
PASS_KEYS = ("pass@1", "pass@8")   # + pass@{eval_k}
NUMBERS = ("pass@1", "pass@8", "pass@K", "greedy_acc", "best_greedy_acc", "entropy", "retained",
           "sample_entropy", "tokens_per_correct", "clipfrac", "wall_s")


@dataclass(frozen=True)
class Job:
    task: str
    recipe: str   # "" = evaluate the base policy of `task`
    seed: int


# Files that cannot change a run's numbers: the leaderboard's run settings are part of the cache key and its
# summaries are recomputed from each run's metrics.jsonl on every call, so editing them keeps the cache.
NOT_IN_CODE_VERSION = ("minirlvr/leaderboard.py", "minirlvr/cli.py", "minirlvr/plots.py", "minirlvr/compare.py",
                       "minirlvr/bench.py", "minirlvr/integrations/")


def code_version() -> str:
    """A hash of everything else a run's numbers depend on besides its settings: the library's and the tasks'
    source (NOT_IN_CODE_VERSION aside) and the base checkpoints."""
    h = hashlib.sha256()
    files = sorted(glob.glob(os.path.join(REPO, "minirlvr", "**", "*.py"), recursive=True)
                   + glob.glob(os.path.join(REPO, "toy_tasks", "**", "*.py"), recursive=True)
                   + glob.glob(os.path.join(REPO, "toy_tasks", "checkpoints", "*.pt")))
    for path in files:
        rel = os.path.relpath(path, REPO).replace(os.sep, "/")
        if rel.startswith(NOT_IN_CODE_VERSION):
            continue
        h.update(rel.encode())
        with open(path, "rb") as f:
            h.update(f.read())
    return h.hexdigest()[:12]


def run_config(job: Job, regime: dict, out_dir: str) -> TrainConfig:
    """The TrainConfig of one leaderboard run: the regime's budget; evaluation halfway and at the end, at the
    task's default level and full length budget (so every recipe, and the base, sees the same problems)."""
    from toy_tasks import get_task
    task, steps = get_task(job.task), regime["steps"]
    return TrainConfig(task=job.task, recipe=job.recipe or "grpo", seed=job.seed, steps=steps,
                       prompts_per_step=regime["prompts_per_step"], group_size=regime["group_size"],
                       eval_every=max(1, steps // 2), eval_k=regime["eval_k"], eval_problems=regime["eval_problems"],
                       eval_difficulty=task.default_difficulty, eval_max_new_tokens=task.max_new_tokens,
                       eval_at_start=False, device="cpu", threads=1, progress=False,
                       out_dir=os.path.join(out_dir, "runs", job.task), name=f"{job.recipe or 'base'}_s{job.seed}")


def _key(job: Job, regime: dict, version: str) -> dict:
    cfg = asdict(run_config(job, regime, ""))
    settings = {k: v for k, v in cfg.items() if k not in ("out_dir", "name", "progress")}
    if job.recipe:
        settings["recipe_def"] = asdict(registry.get_recipe(job.recipe))
    import torch   # another torch may round differently: its runs are not reused
    return json.loads(json.dumps({"job": asdict(job), "settings": settings, "code": version,
                                  "torch": torch.__version__}, default=str))


def _result_path(job: Job, out_dir: str) -> str:
    return os.path.join(out_dir, "runs", job.task, f"{job.recipe or 'base'}_s{job.seed}", "leaderboard_result.json")


def cached(job: Job, regime: dict, out_dir: str, version: str) -> dict | None:
    path = _result_path(job, out_dir)
    try:
        with open(path) as f:
            res = json.load(f)
    except (OSError, ValueError):
        return None
    return res if res.get("key") == _key(job, regime, version) else None


def run_job(job: Job, regime: dict, out_dir: str, version: str) -> dict:
    """Train (or, for the base, evaluate) one job and cache its result. Runs in a worker process."""
    import torch
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    cfg = run_config(job, regime, out_dir)
    res: dict = {"key": _key(job, regime, version)}
    try:
        if job.recipe:
            from .trainer import train
            train(cfg)    # its metrics.jsonl is the result
            res["status"] = "ok"
        else:
            res.update(status="ok", eval=_base_eval(cfg))
    except TrainingDiverged as e:    # deterministic: a result like any other, cached
        res.update(status="diverged", error=str(e))
    except Exception as e:           # a recipe the leaderboard cannot run (e.g. it needs a setting): not cached
        return {**res, "status": "error", "error": f"{type(e).__name__}: {e}", "wall_s": time.perf_counter() - t0}
    res["wall_s"] = time.perf_counter() - t0
    os.makedirs(os.path.dirname(_result_path(job, out_dir)), exist_ok=True)
    with open(_result_path(job, out_dir), "w") as f:
        json.dump(res, f, indent=1)
    return res


def numbers(job: Job, res: dict, out_dir: str, k: int) -> dict:
    """The numbers of one finished job, from its metrics.jsonl (a run) or its stored evaluation (the base)."""
    if not job.recipe:
        return {**_eval_numbers(res["eval"], k), "best_greedy_acc": res["eval"]["greedy_acc"]}
    with open(os.path.join(os.path.dirname(_result_path(job, out_dir)), "metrics.jsonl")) as f:
        return _run_numbers([json.loads(line) for line in f], k)


def _eval_numbers(ev: dict, k: int) -> dict:
    return {"pass_curve": [ev[f"pass@{kk}"] for kk in range(1, k + 1)], "greedy_acc": ev["greedy_acc"],
            "entropy": ev["entropy"], "tokens_per_correct": ev["cost_of_pass"]}


def _run_numbers(history: list[dict], k: int) -> dict:
    evals = [h for h in history if "eval/greedy_acc" in h]
    out = _eval_numbers({key[5:]: v for key, v in evals[-1].items() if key.startswith("eval/")}, k)
    steps = [h for h in history if "entropy" in h]
    clip = [h["clipfrac"] for h in steps if "clipfrac" in h]
    return {**out, "best_greedy_acc": max(h["eval/greedy_acc"] for h in evals),
            "sample_entropy": float(np.mean([h["entropy"] for h in steps[-5:]])),
            "sample_entropy_start": steps[0]["entropy"], "clipfrac": float(np.mean(clip)) if clip else float("nan")}


def _base_eval(cfg: TrainConfig) -> dict:
    from toy_tasks import get_task
    from .metrics import evaluate_policy
    from .model import load_checkpoint
    from .sft import default_checkpoint
    task = get_task(cfg.task)
    policy = load_checkpoint(default_checkpoint(cfg.task), "cpu")[0]
    problems = task.sample(cfg.eval_problems, np.random.default_rng(cfg.eval_seed), split="test",
                           difficulty=cfg.eval_difficulty)   # the trainer's eval problems (same seed, same level)
    return evaluate_policy(policy, task, problems, cfg.eval_k, cfg.eval_max_new_tokens, cfg.eval_seed)


def run_leaderboard(recipes: list[str] | None = None, tasks: tuple[str, ...] = TASKS, seeds: int = 3,
                    steps: int | None = None, workers: int = 2, out_dir: str = "runs/leaderboard",
                    eval_problems: int | None = None, progress: bool = True, command: str = "") -> dict:
    """Run (or load from the cache) every job, then write the outputs. recipes None: every registered recipe.
    Returns {"rows": aggregated rows, "results": {Job: result}, "ran": jobs run now, "wall_s": seconds}."""
    from toy_tasks import get_task
    names = sorted(registry.list_recipes()) if recipes is None else list(dict.fromkeys(recipes))
    if not names:
        raise ValueError("the leaderboard needs at least one recipe")
    for r in names:
        registry.get_recipe(r)   # an unknown name fails before any run, listing the known ones
    if not tasks:
        raise ValueError("the leaderboard needs at least one task")
    for t in tasks:
        get_task(t)
    for what, v in (("seeds", seeds), ("workers", workers), ("steps", steps if steps is not None else 1),
                    ("eval_problems", eval_problems if eval_problems is not None else 1)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{what} must be a positive integer, got {v!r}")
    regime = {**REGIME, **({"steps": steps} if steps else {}), **({"eval_problems": eval_problems} if eval_problems else {})}
    version = code_version()
    jobs = [Job(t, "", 0) for t in tasks] + [Job(t, r, s) for s in range(seeds) for t in tasks for r in names]
    results = {j: res for j in jobs if (res := cached(j, regime, out_dir, version)) is not None}
    todo = [j for j in jobs if j not in results]
    t0 = time.perf_counter()
    for job, res in _execute(todo, regime, out_dir, version, workers, progress):
        results[job] = res
    wall = time.perf_counter() - t0
    k = regime["eval_k"]
    results = {j: {**res, **numbers(j, res, out_dir, k)} if res["status"] == "ok" else res for j, res in results.items()}
    rows = aggregate(results, names, tasks, regime)
    meta = {"date": datetime.date.today().isoformat(), "commit": _git_commit(), "code": version, "regime": regime,
            "seeds": seeds, "workers": workers, "wall_s": wall, "ran": len(todo), "runs": len(jobs),
            "failed": sum(results[j]["status"] == "error" for j in todo),
            "command": command, "run_s": sum(r.get("wall_s", 0.0) for r in results.values())}
    write_outputs(rows, results, meta, out_dir)
    return {"rows": rows, "results": results, "ran": todo, "wall_s": wall, "meta": meta}


def _execute(todo: list[Job], regime: dict, out_dir: str, version: str, workers: int, progress: bool):
    """Yield (job, result) as jobs finish: in this process for one worker, else in `workers` spawned ones."""
    from tqdm import tqdm
    bar = tqdm(total=len(todo), desc="leaderboard runs", disable=not progress or not todo, smoothing=0.05)
    try:
        if workers == 1:
            for job in todo:
                yield job, run_job(job, regime, out_dir, version)
                bar.update()
            return
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed
        pool = ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"))
        try:
            futures = {pool.submit(run_job, job, regime, out_dir, version): job for job in todo}
            for fut in as_completed(futures):
                yield futures[fut], fut.result()
                bar.update()
        finally:   # on an interrupt, drop the queued jobs instead of running them all (finished ones are cached)
            pool.shutdown(wait=True, cancel_futures=True)
    finally:
        bar.close()


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             timeout=10)
        dirty = subprocess.run(["git", "-C", REPO, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("+uncommitted changes" if dirty else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def tie_ranks(means: np.ndarray, stds: np.ndarray) -> np.ndarray:
    """rank_i = 1 + #{j : m_j - m_i > sqrt(s_i^2 + s_j^2)} (module doc). NaN means rank last."""
    m = np.where(np.isnan(means), -np.inf, means)
    s = np.nan_to_num(stds)
    with np.errstate(invalid="ignore"):
        beats = (m[None, :] - m[:, None]) > np.sqrt(s[:, None] ** 2 + s[None, :] ** 2)
    return 1 + beats.sum(1)


def aggregate(results: dict, names: list[str], tasks, regime: dict) -> list[dict]:
    """One row per (task, recipe): mean and std over seeds of NUMBERS, ranks and the comparison with GRPO."""
    k = regime["eval_k"]
    rows = []
    for task in tasks:
        base = results.get(Job(task, "", 0), {})
        base_entropy = base.get("entropy", np.nan)
        if base.get("status") == "ok":   # the base's sample entropy: the first rollout of every run of the task
            starts = [v["sample_entropy_start"] for j, v in results.items()
                      if j.task == task and j.recipe and v["status"] == "ok"]
            base = {**base, "sample_entropy": float(np.mean(starts)) if starts else np.nan}
        rows.append(_row(task, "base", [base] if base.get("status") == "ok" else [], [], base_entropy, k))
        for r in names:
            res = [v for j, v in results.items() if j.task == task and j.recipe == r]
            rows.append(_row(task, r, [v for v in res if v["status"] == "ok"],
                             [v for v in res if v["status"] != "ok"], base_entropy, k))
    for task in tasks:   # recipes whose runs gave the very same numbers (a mechanism inert on this task)
        prints = {r: json.dumps(sorted((j.seed, v["pass_curve"], v["entropy"], v["greedy_acc"])
                                       for j, v in results.items() if j.task == task and j.recipe == r
                                       and v["status"] == "ok")) for r in names}
        for row in rows:
            if row["task"] == task and row["recipe"] != "base" and row["seeds"]:
                row["identical_to"] = ", ".join(q for q in names if q != row["recipe"]
                                                and prints[q] == prints[row["recipe"]])
    for task in tasks:
        ranked = [row for row in rows if row["task"] == task and row["recipe"] != "base" and row["seeds"]]
        ranks = tie_ranks(np.array([row["pass@1_mean"] for row in ranked]), np.array([row["pass@1_std"] for row in ranked]))
        grpo = next((row for row in ranked if row["recipe"] == "grpo"), None)
        for row, rank in zip(ranked, ranks):
            row["rank"] = int(rank)
            if grpo is not None and row is not grpo:
                d, spread = row["pass@1_mean"] - grpo["pass@1_mean"], np.hypot(row["pass@1_std"], grpo["pass@1_std"])
                row["vs_grpo"] = "+" if d > spread else "-" if -d > spread else "="
    order = lambda row: (tasks.index(row["task"]), row["recipe"] != "base",
                         row["rank"] if row["rank"] != "" else 10**6,  # noqa: E731
                         -np.nan_to_num(row.get("pass@8_mean", np.nan), nan=-1.0))
    return sorted(rows, key=order)


def _row(task: str, recipe: str, ok: list[dict], failed: list[dict], base_entropy: float, k: int) -> dict:
    row = {"task": task, "recipe": recipe, "seeds": len(ok), "rank": "", "vs_grpo": "", "identical_to": "",
           "failed": "; ".join(sorted({f["error"] for f in failed}))}
    for key in NUMBERS:
        if key == "retained":
            vals = [r["entropy"] / base_entropy for r in ok]
        elif key.startswith("pass@"):
            idx = {"pass@1": 0, "pass@8": min(8, k) - 1, "pass@K": k - 1}[key]
            vals = [r["pass_curve"][idx] for r in ok]
        else:
            vals = [r.get(key, np.nan) for r in ok]
        vals = np.array(vals, float)
        with np.errstate(invalid="ignore"):   # inf tokens_per_correct (no success) or a missing key: inf / nan
            row[f"{key}_mean"] = float(vals.mean()) if vals.size else float("nan")
            row[f"{key}_std"] = float(vals.std()) if vals.size else float("nan")
    row["pass_curve_mean"] = np.mean([r["pass_curve"] for r in ok], 0).tolist() if ok else []
    row["pass_curve_std"] = np.std([r["pass_curve"] for r in ok], 0).tolist() if ok else []
    if recipe != "base":
        rec = registry.get_recipe(recipe)
        row["paper"] = rec.paper
        row["settings"] = json.dumps({s: getattr(rec, s) for s in registry.STAGES} | {
            f"{s}_cfg": getattr(rec, f"{s}_cfg") for s in registry.STAGES if getattr(rec, f"{s}_cfg")}
            | ({"train_cfg": rec.train_cfg} if rec.train_cfg else {}), default=str)
    return row


# ---------------------------------------------------------------- outputs

def links(recipe: str) -> tuple[str, str]:
    """(module path, notebook path or "") of a recipe, relative to the repository root: the paper's module is
    the methods/ file of one of its stages (else the baselines); its notebook is the first tutorial that
    imports that module or names the recipe."""
    rec = registry.get_recipe(recipe)
    mods = [registry.get_stage(s, getattr(rec, s)).fn.__module__ for s in registry.STAGES]
    mod = next((m for m in mods if m.startswith("minirlvr.methods.")), "minirlvr.baselines")
    slug = mod.rsplit(".", 1)[1]
    for path in sorted(glob.glob(os.path.join(REPO, "tutorials", "[0-9][0-9]_*.py"))):
        with open(path) as f:
            text = f.read()
        if re.search(rf"methods[. ](import )?{slug}\b", text) or f'"{recipe}"' in text or f"'{recipe}'" in text:
            return mod.replace(".", "/") + ".py", os.path.relpath(path, REPO)[:-3] + ".ipynb"
    return mod.replace(".", "/") + ".py", ""


def _fmt(row: dict, key: str, digits: int = 3) -> str:
    m, s = row.get(f"{key}_mean", np.nan), row.get(f"{key}_std", np.nan)
    if not np.isfinite(m):
        return "inf" if m == np.inf else "–"
    return f"{m:.{digits}f}" if row["seeds"] < 2 or not np.isfinite(s) else f"{m:.{digits}f} ± {s:.{digits}f}"


def markdown(rows: list[dict], meta: dict, link_root: str = "", settings: bool = True) -> str:
    """The ranked tables, one per task, with links relative to `link_root` (the repository root as seen from
    where the text will live); `settings`: then every recipe's stages, configs and paper."""
    r = meta["regime"]
    k = r["eval_k"]
    lines = [f"Run on {meta['date']} at commit `{meta['commit']}` (code version `{meta['code']}`): "
             f"`{meta['command'] or 'minirlvr leaderboard'}`. This call started {meta['ran']} of the {meta['runs']} "
             f"jobs ({meta.get('failed', 0)} of them could not run; the rest came from the cache) in "
             f"{meta['wall_s'] / 60:.1f} min with {meta['workers']} worker process(es) at one torch thread each; all "
             f"{meta['runs']} jobs took {meta['run_s'] / 60:.1f} min of worker time.",
             "",
             f"Regime: {r['steps']} RL steps of {r['prompts_per_step']} prompts x {r['group_size']} samples from the "
             f"task's base checkpoint, seeds 0-{meta['seeds'] - 1}; each recipe keeps its own trainer settings "
             f"(epochs, minibatches, length budget). Held-out evaluation on the same {r['eval_problems']} problems "
             f"for every run, at the task's full length budget: greedy accuracy, and pass@1..{k} from {k} samples "
             f"at T = 1. Numbers are mean ± std over seeds.",
             "",
             "Rank: by pass@1; a recipe's rank is 1 + the number of recipes whose pass@1 is higher by more than "
             "sqrt(s1² + s2²) (the seed spread of the difference), so equal ranks are ties; within a rank, rows "
             "are listed by pass@8. `vs GRPO`: the same rule against GRPO alone (+ better, - worse, = tie). "
             "`a ≡ b`: recipe a's runs gave exactly the numbers of b's (what tells them apart did nothing on this task). "
             "Retained = held-out token entropy / the base's. Tokens/correct = tokens per attempt / success rate.",
             ""]
    head = (f"| rank | recipe | paper | vs GRPO | pass@1 | pass@8 | pass@{k} | greedy (end) | greedy (best) | "
            "held-out entropy | retained | sample entropy | tokens/correct | clip frac | s/run |")
    for task in dict.fromkeys(row["task"] for row in rows):
        lines += [f"### {task}", "", head, "|" + "|".join(["---"] * (head.count("|") - 1)) + "|"]
        failed = []
        for row in (x for x in rows if x["task"] == task):
            if row["recipe"] != "base" and not row["seeds"]:
                failed.append(row)
                continue
            if row["recipe"] == "base":
                name, paper = "**base** (no RL)", ""
            else:
                mod, nb = links(row["recipe"])
                name = f"[{row['recipe']}]({link_root}{mod})" + (f" ([notebook]({link_root}{nb}))" if nb else "")
                name += f" ≡ {row['identical_to']}" if row["identical_to"] else ""
                ids = re.findall(r"arXiv (\d{4}\.\d{4,5})", row["paper"])
                paper = ", ".join(f"[{i}](https://arxiv.org/abs/{i})" for i in ids[:1])
            lines.append(f"| {row['rank']} | {name} | {paper} | {row['vs_grpo']} | " + " | ".join(
                _fmt(row, key, 1 if key == "tokens_per_correct" else 0 if key == "wall_s" else 3)
                for key in ("pass@1", "pass@8", "pass@K", "greedy_acc", "best_greedy_acc", "entropy", "retained",
                            "sample_entropy", "tokens_per_correct", "clipfrac", "wall_s")) + " |")
        if failed:
            lines += ["", "No finished run: " + "; ".join(f"`{row['recipe']}` ({row['failed']})" for row in failed)]
        lines.append("")
    if settings:
        lines += ["### Recipe settings", ""] + [
            f"- `{row['recipe']}`: {', '.join(f'{key}={json.dumps(v)}' for key, v in json.loads(row['settings']).items())}"
            f" — {row['paper']}" for row in sorted(rows, key=lambda row: row["recipe"])
            if row["recipe"] != "base" and row["task"] == rows[0]["task"]]
    return "\n".join(lines)


def write_outputs(rows: list[dict], results: dict, meta: dict, out_dir: str) -> None:
    os.makedirs(out_dir, exist_ok=True)
    k = meta["regime"]["eval_k"]
    named = lambda c: c.replace("pass@K", f"pass@{k}")  # noqa: E731  (K = eval_k)
    cols = ["task", "rank", "recipe", "vs_grpo", "seeds"] + [f"{key}_{s}" for key in NUMBERS for s in ("mean", "std")]
    with open(os.path.join(out_dir, "leaderboard.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[named(c) for c in cols] + ["identical_to", "paper", "settings", "failed"],
                           extrasaction="ignore")
        w.writeheader()
        w.writerows({named(c): v for c, v in row.items()} for row in rows)
    link_root = os.path.relpath(REPO, os.path.abspath(out_dir)) + "/"
    with open(os.path.join(out_dir, "leaderboard.md"), "w") as f:
        f.write("# minirlvr leaderboard\n\n" + markdown(rows, meta, link_root))
    with open(os.path.join(out_dir, "leaderboard.json"), "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1, default=float)
    plot_entropy_accuracy(rows, os.path.join(out_dir, "accuracy_vs_entropy.png"))
    plot_top_pass_at_k(rows, k, os.path.join(out_dir, "pass_at_k.png"))


def _per_task_figure(rows: list[dict], size: tuple[float, float], draw, path: str | None):
    """One panel per task: draw(ax, task, ranked rows with results, the base row or None); saved to `path`."""
    import matplotlib.pyplot as plt
    tasks = list(dict.fromkeys(row["task"] for row in rows))
    fig, axes = plt.subplots(1, len(tasks), figsize=(size[0] * len(tasks), size[1]), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        ranked = [r for r in rows if r["task"] == task and r["recipe"] != "base" and r["seeds"]]
        base = next((r for r in rows if r["task"] == task and r["recipe"] == "base" and r["seeds"]), None)
        draw(ax, task, ranked, base)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    if path:
        fig.savefig(path, dpi=110)
        plt.close(fig)
    return fig


def plot_entropy_accuracy(rows: list[dict], path: str | None = None, label_top: int = 6):
    """Per task: held-out pass@1 against entropy retained (mean ± std over seeds), GRPO and the top recipes
    labelled, the base at (1, its pass@1)."""
    def draw(ax, task, ranked, base):
        for i, r in enumerate(ranked):
            special = r["recipe"] == "grpo" or i < label_top
            ax.errorbar(r["retained_mean"], r["pass@1_mean"], xerr=r["retained_std"], yerr=r["pass@1_std"],
                        fmt="o", ms=5 if special else 3, color="C3" if r["recipe"] == "grpo" else "C0",
                        alpha=0.9 if special else 0.35, elinewidth=0.8)
            if special:
                ax.annotate(r["recipe"], (r["retained_mean"], r["pass@1_mean"]), fontsize=7,
                            xytext=(3, 3), textcoords="offset points")
        if base:
            ax.scatter([1.0], [base["pass@1_mean"]], marker="x", s=60, color="k", label="base (no RL)", zorder=3)
            ax.legend(fontsize=8, loc="lower right")
        ax.set_xlabel("held-out token entropy retained (trained / base)")
        ax.set_ylabel("held-out pass@1 (T=1)")
        ax.set_title(f"{task}: accuracy vs retained entropy ({len(ranked)} recipes)")
    return _per_task_figure(rows, (6, 4.6), draw, path)


def plot_top_pass_at_k(rows: list[dict], k: int, path: str | None = None, top: int = 5):
    """Per task: pass@k vs k for the `top` ranked recipes, GRPO and the base."""
    ks = np.arange(1, k + 1)

    def draw(ax, task, ranked, base):
        show = ranked[:top] + [r for r in ranked[top:] if r["recipe"] == "grpo"] + ([base] if base else [])
        others = iter(f"C{i}" for i in (0, 1, 2, 4, 5, 6, 8, 9))   # C3 (red) is GRPO's
        for r in show:
            style = dict(color="k", linestyle="--") if r["recipe"] == "base" else \
                dict(color="C3", linewidth=2.2) if r["recipe"] == "grpo" else dict(color=next(others))
            mean, std = np.array(r["pass_curve_mean"]), np.array(r["pass_curve_std"])
            line, = ax.plot(ks, mean, marker="o", ms=2.5, label=f"{r['recipe']} (rank {r['rank']})"
                            if r["rank"] != "" else r["recipe"], **style)
            ax.fill_between(ks, mean - std, mean + std, color=line.get_color(), alpha=0.15)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("k (samples per problem)")
        ax.set_ylabel("held-out pass@k (T=1)")
        ax.set_title(f"{task}: top {top} recipes, GRPO and the base")
        ax.legend(fontsize=7)
    return _per_task_figure(rows, (5.4, 4.0), draw, path)
