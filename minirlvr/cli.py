"""Command line: minirlvr train | compare | leaderboard | pretrain | bench | list.

Every user error (unknown name, bad number, missing or corrupt checkpoint)
ends with one line `minirlvr: error: ...` and exit status 2, never a traceback.
"""
from __future__ import annotations

import argparse
import json
import os
import sys


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def _parse_set(items: list[str]) -> dict:
    out = {}
    for item in items or []:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ValueError(f"--set expects stage.key=value (e.g. loss.clip_high=0.28), got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def _train_defaults() -> dict:
    """TrainConfig's field defaults: None for the settings a recipe may fix (an unset flag stays None, so the
    recipe's value or the library default applies, and a flag given on the command line wins)."""
    from dataclasses import fields
    from .trainer import TrainConfig
    return {f.name: f.default for f in fields(TrainConfig)}


def _levels(text: str):
    """--difficulty 2 (one level) or 1,2,3 / (1, 2) (a mixture)."""
    from .registry import _coerce
    try:
        return _coerce(text, int | tuple[int, ...], "difficulty")
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected a level or comma-separated levels ({e})") from None


def _add_train_args(p: argparse.ArgumentParser, steps_default: int | None) -> None:
    from .trainer import TRAIN_DEFAULTS as lib
    d = _train_defaults()  # one source of truth for the defaults: TrainConfig (None: recipe, else TRAIN_DEFAULTS)
    dflt = lambda k: f"default: the recipe's, else {lib[k]}"  # noqa: E731
    p.add_argument("--task", default=d["task"])
    p.add_argument("--steps", type=_positive_int, default=steps_default,
                   help=dflt("steps") if steps_default is None else f"default: {steps_default} for every recipe")
    p.add_argument("--seed", type=int, default=d["seed"])
    p.add_argument("--prompts", type=_positive_int, default=d["prompts_per_step"],
                   help=f"prompts per RL step ({dflt('prompts_per_step')})")
    p.add_argument("--group-size", "-G", type=_positive_int, default=d["group_size"],
                   help=f"samples per prompt ({dflt('group_size')})")
    p.add_argument("--minibatches", type=_positive_int, default=d["minibatches"],
                   help=f"optimizer steps per rollout ({dflt('minibatches')})")
    p.add_argument("--epochs", type=_positive_int, default=d["ppo_epochs"], help=f"PPO epochs per rollout ({dflt('ppo_epochs')})")
    p.add_argument("--lr", type=float, default=d["lr"], help=dflt("lr"))
    p.add_argument("--warmup", type=int, default=d["warmup_steps"], help=f"linear lr warm-up steps ({dflt('warmup_steps')})")
    p.add_argument("--temperature", type=float, default=d["temperature"], help=dflt("temperature"))
    p.add_argument("--max-new-tokens", type=_positive_int, default=d["max_new_tokens"],
                   help="response length limit (default: the recipe's, else the task's)")
    p.add_argument("--difficulty", type=_levels, default=d["difficulty"],
                   help="training level, or comma-separated levels for a mixture (default: the recipe's, else the "
                        "task's); the eval problems follow it")
    p.add_argument("--train-split", choices=("train", "test"), default=d["train_split"],
                   help="split of the training problems; test = test-time RL (default: the recipe's, else train)")
    p.add_argument("--problem-pool", type=_positive_int, default=d["problem_pool"],
                   help="train on a fixed pool of N problems, in shuffled epochs (default: the recipe's, else fresh "
                        "problems every step)")
    p.add_argument("--eval-every", type=int, default=d["eval_every"])
    p.add_argument("--eval-problems", type=_positive_int, default=d["eval_problems"])
    p.add_argument("--eval-k", type=_positive_int, default=d["eval_k"])
    p.add_argument("--eval-difficulty", type=_levels, default=d["eval_difficulty"],
                   help="level(s) of the eval problems (default: the training difficulty)")
    p.add_argument("--eval-max-new-tokens", type=_positive_int, default=d.get("eval_max_new_tokens"),
                   help="evaluation's length limit (default: the training limit)")
    p.add_argument("--threads", type=_positive_int, default=d["threads"],
                   help="torch CPU threads (default 1: measured fastest on a busy 2-core machine, see README)")
    p.add_argument("--device", default=d["device"])
    p.add_argument("--init", default=None, help="starting checkpoint (default: the task's shipped base)")
    p.add_argument("--out", default="runs", help="output folder")
    p.add_argument("--set", action="append", default=[], metavar="STAGE.KEY=VALUE",
                   help="override a stage setting, e.g. --set loss.clip_high=0.28 (repeatable)")
    p.add_argument("--probe", action="append", default=[], metavar="NAME",
                   help="run a registered probe (analysis metrics) after the steps (repeatable; see `minirlvr list`)")
    p.add_argument("--probe-every", type=_positive_int, default=d["probe_every"], help="run the probes every N steps")
    p.add_argument("--diagnostics", action="store_true",
                   help="deprecated: = --probe entropy_change (measured vs predicted entropy change every step)")
    p.add_argument("--reuse", action="store_true",
                   help="load a run folder that already holds a finished run of exactly this configuration")
    p.add_argument("--no-progress", action="store_true")


def _train_config(a):
    from .trainer import TrainConfig
    return TrainConfig(task=a.task, recipe=getattr(a, "recipe", "grpo"), rollout=getattr(a, "rollout", None),
                       reward=getattr(a, "reward", None), advantage=getattr(a, "advantage", None),
                       loss=getattr(a, "loss", None), overrides=_parse_set(a.set), steps=a.steps, seed=a.seed,
                       prompts_per_step=a.prompts, group_size=a.group_size, minibatches=a.minibatches,
                       ppo_epochs=a.epochs, lr=a.lr, warmup_steps=a.warmup, temperature=a.temperature,
                       max_new_tokens=a.max_new_tokens, difficulty=a.difficulty, train_split=a.train_split,
                       problem_pool=a.problem_pool, eval_every=a.eval_every, threads=a.threads,
                       eval_problems=a.eval_problems, eval_k=a.eval_k, eval_difficulty=a.eval_difficulty,
                       eval_max_new_tokens=a.eval_max_new_tokens,
                       device=a.device, init=a.init, out_dir=a.out, name=getattr(a, "name", None),
                       resume=getattr(a, "resume", False), reuse=a.reuse, probes=tuple(a.probe), probe_every=a.probe_every,
                       entropy_diagnostics=a.diagnostics, progress=not a.no_progress)


def cmd_train(a) -> None:
    from .plots import plot_curves
    from .trainer import train
    res = train(_train_config(a))
    hist, run_dir = res["history"], res["run_dir"]
    k = a.eval_k
    plot_curves({a.recipe: [hist]}, keys=("entropy", "reward", "eval/greedy_acc", f"eval/pass@{k}"),
                path=os.path.join(run_dir, "curves.png"), title=f"{a.recipe} on {a.task}, seed {a.seed}")
    evals = [h for h in hist if "eval/greedy_acc" in h]
    first, last = (evals[0], evals[-1]) if evals else (hist[0], hist[-1])
    print(f"run: {run_dir}  (metrics.jsonl, curves.png, policy.pt)")
    steps_with_entropy = [h for h in hist if "entropy" in h]
    if steps_with_entropy:
        print(f"sample entropy : {steps_with_entropy[0]['entropy']:.3f} -> {steps_with_entropy[-1]['entropy']:.3f} nats")
    for key in ("eval/greedy_acc", "eval/pass@1", f"eval/pass@{k}", "eval/len_mean", "eval/cost_of_pass"):
        if key in first:
            print(f"{key[5:]:<15}: {first[key]:.3f} -> {last[key]:.3f}  (step {first['step']} -> {last['step']})")


def cmd_compare(a) -> None:
    from .compare import format_summary, run_compare
    recipes = [r.strip() for r in a.recipes.split(",") if r.strip()]
    out = a.out if a.out != "runs" else os.path.join("runs", "compare_" + "_".join(recipes) + f"_{a.task}")
    res = run_compare(recipes, a.seeds, _train_config(a), out, leash_n=a.leash_n)
    print(format_summary(res["summary"], a.eval_k))
    print(f"figures and summary.csv in {out}")


def cmd_leaderboard(a) -> None:
    from .leaderboard import run_leaderboard
    recipes = None if a.recipes == "all" else [r.strip() for r in a.recipes.split(",") if r.strip()]
    tasks = tuple(t.strip() for t in a.tasks.split(",") if t.strip())
    res = run_leaderboard(recipes, tasks, a.seeds, a.steps, a.workers, a.out, a.eval_problems,
                          progress=not a.no_progress, command="minirlvr leaderboard " + " ".join(sys.argv[2:]))
    for task in tasks:
        top = [r for r in res["rows"] if r["task"] == task and r["rank"] == 1]
        print(f"{task}: rank 1 (tied within the seed spread): " + ", ".join(
            f"{r['recipe']} {r['pass@1_mean']:.3f}" for r in top))
    failed = [r for r in res["rows"] if r["failed"]]
    for r in failed:
        print(f"not run: {r['recipe']} on {r['task']}: {r['failed']}")
    print(f"{len(res['ran'])} jobs started ({res['meta']['failed']} could not run), "
          f"{res['meta']['runs'] - len(res['ran'])} from the cache, "
          f"{res['wall_s'] / 60:.1f} min; leaderboard.md, leaderboard.csv and figures in {a.out}")


def cmd_pretrain(a) -> None:
    from dataclasses import replace
    from . import sft
    sft.base_task(a.task)  # a task or a mixed base (BASE_RECIPES), else one line naming both
    import torch
    cfg = sft.SFTConfig(**{"task": a.task, **sft.BASE_RECIPES.get(a.task, {})}, seed=a.seed)
    if a.steps:
        cfg = replace(cfg, steps=a.steps)
    out = a.out or sft.default_checkpoint(a.task)
    torch.set_num_threads(a.threads)
    _, metrics = sft.pretrain(cfg, out_path=out, device="cpu" if a.device == "auto" else a.device,
                              progress=not a.no_progress)
    print(json.dumps({"checkpoint": out, **metrics}, indent=1))


def cmd_bench(a) -> None:
    import torch
    from .bench import format_rows, run_bench
    from .trainer import _resolve_device
    torch.set_num_threads(a.threads)
    print(format_rows(run_bench(str(_resolve_device(a.device)), trl=not a.no_trl)))


def cmd_list(a) -> None:
    from toy_tasks import TASKS
    from .registry import list_probes, list_recipes, list_stages
    for stage, entries in {**list_stages(), "probe": list_probes()}.items():
        print(f"{stage}:")
        for name, e in entries.items():
            print(f"  {name:<22} {e.paper}")
    print("recipes:")
    for name, r in list_recipes().items():
        train = "".join(f" {k}={v}" for k, v in r.train_cfg.items())
        print(f"  {name:<22} rollout={r.rollout} reward={r.reward} advantage={r.advantage} loss={r.loss}"
              f"{'   train:' + train if train else ''}   [{r.paper}]")
    import importlib
    import pkgutil
    from . import methods
    used = {e.fn.__module__ for entries in (*list_stages().values(), list_probes()) for e in entries.values()}
    analysis = [m.name for m in pkgutil.iter_modules(methods.__path__) if f"minirlvr.methods.{m.name}" not in used]
    if analysis:
        print("evaluation / analysis modules (no stage):")
        for name in analysis:
            doc = (importlib.import_module(f"minirlvr.methods.{name}").__doc__ or "").strip().splitlines()
            print(f"  {name:<22} {doc[0] if doc else ''}")
    print("tasks:")
    print("  " + ", ".join(TASKS))


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad argument in one line (no usage block), exit status 2."""

    def error(self, message: str):
        self.exit(2, f"minirlvr: error: {self.prog.split()[-1]}: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="minirlvr", description="Entropy-related RLVR methods on a tiny transformer.")
    sub = p.add_subparsers(dest="command", parser_class=_Parser)

    t = sub.add_parser("train", help="RL-train a policy from a base checkpoint (the main job)")
    t.add_argument("--recipe", default="grpo")
    for stage in ("rollout", "reward", "advantage", "loss"):
        t.add_argument(f"--{stage}", default=None, help=f"registered {stage} function (overrides the recipe's)")
    t.add_argument("--name", default=None, help="run folder name")
    t.add_argument("--resume", action="store_true", help="continue the run in --out/--name from its checkpoint")
    _add_train_args(t, steps_default=None)
    t.set_defaults(fn=cmd_train)

    c = sub.add_parser("compare", help="run several recipes over several seeds and plot them together")
    c.add_argument("--recipes", required=True, help="comma-separated recipe names")
    c.add_argument("--seeds", type=_positive_int, default=3)
    c.add_argument("--leash-n", type=int, default=32,
                   help="samples per held-out problem for pass@k up to k=n and support metrics vs the base (0: skip)")
    _add_train_args(c, steps_default=200)
    c.set_defaults(fn=cmd_compare)

    lb = sub.add_parser("leaderboard", help="every recipe on the same tasks, seeds and budget, ranked (cached runs)")
    lb.add_argument("--recipes", default="all", help="all (every registered recipe) or comma-separated names")
    lb.add_argument("--tasks", default="addition,countdown", help="comma-separated tasks")
    lb.add_argument("--seeds", type=_positive_int, default=3)
    lb.add_argument("--steps", type=_positive_int, default=None, help="RL steps per run (default: the leaderboard regime's)")
    lb.add_argument("--workers", type=_positive_int, default=2, help="worker processes, one torch thread each")
    lb.add_argument("--eval-problems", type=_positive_int, default=None, help="held-out problems (default: the regime's)")
    lb.add_argument("--out", default=os.path.join("runs", "leaderboard"), help="output folder (also the run cache)")
    lb.add_argument("--no-progress", action="store_true")
    lb.set_defaults(fn=cmd_leaderboard)

    s = sub.add_parser("pretrain", help="supervised pre-training of a base checkpoint")
    s.add_argument("--task", required=True,
                   help="a task, or a mixed-difficulty base of minirlvr/sft.py:BASE_RECIPES (e.g. addition_mixed)")
    s.add_argument("--steps", type=_positive_int, default=None,
                   help="a fixed step count (default: the recipe's stopping rule on held-out greedy accuracy)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--threads", type=_positive_int, default=1, help="torch CPU threads")
    s.add_argument("--out", default=None, help="checkpoint path (default: toy_tasks/checkpoints/<--task>.pt)")
    s.add_argument("--device", default="auto")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(fn=cmd_pretrain)

    b = sub.add_parser("bench", help="measure sampling and training throughput on this machine")
    b.add_argument("--threads", type=_positive_int, default=_train_defaults()["threads"], help="torch CPU threads")
    b.add_argument("--device", default="cpu", help="cpu, cuda[:N] or auto")
    b.add_argument("--no-trl", action="store_true", help="skip the paired comparison with TRL even if it is installed")
    b.set_defaults(fn=cmd_bench)
    lst = sub.add_parser("list", help="every registered stage function, recipe and task")
    lst.set_defaults(fn=cmd_list)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    if not getattr(a, "fn", None):
        parser.print_help()
        return 2
    from .trainer import TrainingDiverged
    try:
        a.fn(a)
    except (ValueError, FileNotFoundError, TrainingDiverged) as e:
        print(f"minirlvr: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("minirlvr: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
