"""Not a pytest file: a tool to show that a change leaves default runs bit-identical.

Runs short trainings (Python API and CLI, several recipes, the deprecated diagnostics flag, KL to the
reference, a resumed run, a compare) and writes every metrics record with the time* keys dropped, plus
compare's CSVs, to OUT/ALL.txt. Run it on two trees and compare the files byte for byte:

    git worktree add /tmp/wt-base <base-commit>
    (cd /tmp && PYTHONPATH=/tmp/wt-base  OMP_NUM_THREADS=1 python <this file> /tmp/id_base)
    (cd /tmp && PYTHONPATH=/work/my-tree OMP_NUM_THREADS=1 python <this file> /tmp/id_new)
    cmp /tmp/id_base/ALL.txt /tmp/id_new/ALL.txt

About 2-3 minutes on 2 busy CPU cores (uses the shipped addition base).
"""
import json
import os
import shutil
import sys

from minirlvr.cli import main
from minirlvr.trainer import TrainConfig, train

RUNS = [dict(recipe=r) for r in ("grpo", "dapo", "reinforce_pp", "clip_cov", "kl_cov", "forking_tokens")]
RUNS += [dict(recipe="grpo", entropy_diagnostics=True), dict(recipe="grpo", overrides={"loss.kl_coef": 0.1}),
         dict(recipe="dr_grpo"), dict(recipe="rloo"), dict(recipe="kl_cov", log_ref_kl=False),
         dict(recipe="reinforce_pp", overrides={"advantage.kl_coef": 0.05}, log_ref_kl=False),
         dict(recipe="forking_tokens_random20", minibatches=2, ppo_epochs=2, lr=3e-4, warmup_steps=2)]
CLI = [("cli_grpo", ["train", "--steps", "3", "--eval-every", "3", "--eval-problems", "16", "--name", "cli_grpo"]),
       ("cli_diag", ["train", "--recipe", "kl_cov", "--steps", "2", "--eval-every", "0", "--diagnostics", "--name", "x"]),
       ("cli_cmp", ["compare", "--recipes", "grpo,dapo", "--seeds", "1", "--steps", "2", "--eval-every", "2",
                    "--eval-problems", "8", "--leash-n", "4"])]


def records(path, tag):
    with open(path) as f:
        return [json.dumps({"run": tag, **{k: v for k, v in json.loads(line).items() if not k.startswith("time")}})
                for line in f]


def main_(out):
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    lines = []
    short = dict(steps=4, eval_every=2, eval_problems=16, progress=False, out_dir=out)
    for i, kw in enumerate(RUNS):
        res = train(TrainConfig(name=f"run{i}", **short, **kw))
        lines += records(os.path.join(res["run_dir"], "metrics.jsonl"), i)
        print(i, kw, flush=True)
    train(TrainConfig(**{**short, "steps": 2}, name="resumed", recipe="dapo", save_every=1))
    res = train(TrainConfig(**short, name="resumed", recipe="dapo", resume=True))
    lines += records(os.path.join(res["run_dir"], "metrics.jsonl"), "resumed")
    for name, argv in CLI:
        assert main(argv + ["--out", os.path.join(out, name), "--no-progress"]) == 0
        for root, _, files in sorted(os.walk(os.path.join(out, name))):
            for f in sorted(files):
                if f == "metrics.jsonl":
                    lines += records(os.path.join(root, f), name)
                elif f.endswith(".csv"):
                    lines.append(f"{name}/{f}:" + open(os.path.join(root, f)).read())
    with open(os.path.join(out, "ALL.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main_(sys.argv[1])
