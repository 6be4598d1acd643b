"""A GRPO step of minirlvr against TRL's GRPOTrainer on the same work, paired and interleaved.

    pip install "trl==1.16.0" "transformers==5.24.0"      # optional; nothing is downloaded at run time
    python benchmarks/grpo_vs_trl.py [--pairs 3] [--steps 30] [--threads 1]

Same work for both: a freshly initialised GPT of minirlvr's default size (d=128, 4 layers, 4 heads,
the toy character vocabulary; GPT-2 architecture in TRL, built from a config in code), 8 addition
prompts x 8 samples per step at temperature 1, at most 8 new tokens, 0/1 verifier reward, group-
normalised advantages, token-mean PPO-clip (eps 0.2), no KL term and no reference model, one optimizer
step per rollout, AdamW lr 1e-5. Each side runs in its own process (so neither inherits the other's
threads or caches), A B A B ..., and reports its median seconds per RL step after the first 5 steps
(warm-up). The ratio is computed pair by pair. Wall time of model construction and process start is
not counted.

The last line also gives a floor: the matmul FLOPs of minirlvr's step (the rollout's forwards over the
prompts once per group and the sampled tokens, then forward + backward over prompt + response; the mean
lengths of the run) at 100% of the fp32 matmul peak measured here, as a fraction of TRL's median step.
Nothing doing this work on this machine, at that peak, takes less; TRL does the same forward/backward.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

PROMPTS, GROUP, NEW_TOKENS, LR, WARMUP = 8, 8, 8, 1e-5, 5


def run_minirlvr(steps: int, threads: int) -> dict:
    import torch
    from minirlvr.model import GPT, GPTConfig, save_checkpoint
    from minirlvr.trainer import TrainConfig, train
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = os.path.join(tmp, "init.pt")
        save_checkpoint(ckpt, GPT(GPTConfig()))
        hist = train(TrainConfig(task="addition", init=ckpt, steps=steps, prompts_per_step=PROMPTS, group_size=GROUP,
                                 minibatches=1, max_new_tokens=NEW_TOKENS, lr=LR, eval_every=0, log_ref_kl=False,
                                 overrides={"loss.agg": "token-mean"}, out_dir=tmp, progress=False, threads=threads,
                                 save_every=10 ** 6))["history"]
    return {"times": [h["time_step"] for h in hist],
            "completion_length": statistics.mean(h["completion_length"] for h in hist)}


def run_trl(steps: int, threads: int) -> dict:
    import numpy as np
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer
    from minirlvr.integrations.hf import toy_gpt2, toy_tokenizer
    from toy_tasks import get_task
    torch.set_num_threads(threads)
    task = get_task("addition")
    tokenizer = toy_tokenizer()
    model = toy_gpt2(seed=0, n_embd=128, n_layer=4, n_head=4, n_positions=96)
    problems = task.sample(PROMPTS * steps, np.random.default_rng(0), split="train")
    answers = {p.prompt: p for p in problems}
    data = Dataset.from_list([{"prompt": p.prompt} for p in problems])

    def reward(prompts, completions, **kw):
        return [task.reward(answers[p], c) for p, c in zip(prompts, completions)]

    times: list[float] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter() - self.t0)

    with tempfile.TemporaryDirectory() as tmp:
        cfg = GRPOConfig(output_dir=tmp, per_device_train_batch_size=PROMPTS * GROUP, num_generations=GROUP,
                         max_completion_length=NEW_TOKENS, temperature=1.0, learning_rate=LR, beta=0.0,
                         loss_type="dapo", epsilon=0.2, num_iterations=1, steps_per_generation=1, max_steps=steps,
                         lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
                         logging_steps=10 ** 6, save_strategy="no", report_to=[], use_cpu=True, bf16=False,
                         disable_dropout=True, gradient_checkpointing=False, seed=0, dataloader_num_workers=0, shuffle_dataset=False)
        GRPOTrainer(model=model, reward_funcs=reward, args=cfg, train_dataset=data, processing_class=tokenizer,
                    callbacks=[Clock()]).train()
    return {"times": times}


def flop_floor(completion_length: float, threads: int) -> float:
    """Seconds of minirlvr's step if every matmul FLOP ran at the measured fp32 peak (see the docstring)."""
    import numpy as np
    import torch
    from minirlvr.bench import forward_flops, matmul_peak
    from minirlvr.model import GPT, GPTConfig
    from minirlvr.tokenizer import encode
    from toy_tasks import get_task
    torch.set_num_threads(threads)
    problems = get_task("addition").sample(1000, np.random.default_rng(1), split="train")
    prompt = statistics.mean(len(encode(p.prompt, bos=True)) for p in problems)  # BOS + prompt
    model, rows, ctx = GPT(GPTConfig()), PROMPTS * GROUP, (prompt + completion_length) / 2  # causal: mean context
    rollout = forward_flops(model, PROMPTS * prompt + rows * (completion_length - 1), ctx)
    update = 3 * forward_flops(model, rows * (prompt + completion_length), ctx)  # forward + backward = 3 forwards
    return (rollout + update) / (matmul_peak() * 1e9)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=3)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--side", choices=["minirlvr", "trl"], help=argparse.SUPPRESS)  # one side, in a child process
    a = p.parse_args()
    if a.side:
        times = (run_minirlvr if a.side == "minirlvr" else run_trl)(a.steps, a.threads)
        print(json.dumps(times))
        return
    rows, lengths = [], []
    for pair in range(a.pairs):
        med = {}
        for side in ("minirlvr", "trl"):
            out = subprocess.run([sys.executable, __file__, "--side", side, "--steps", str(a.steps),
                                  "--threads", str(a.threads)], capture_output=True, text=True,
                                 env={**os.environ, "OMP_NUM_THREADS": str(a.threads)})
            if out.returncode:
                sys.exit(f"{side} failed:\n{out.stderr[-3000:]}")
            res = json.loads(out.stdout.strip().splitlines()[-1])
            med[side] = statistics.median(res["times"][WARMUP:])
            lengths += [res["completion_length"]] if side == "minirlvr" else []
        rows.append((med["minirlvr"], med["trl"]))
        print(f"pair {pair + 1}: minirlvr {med['minirlvr']:.4f} s/step, TRL {med['trl']:.4f} s/step, "
              f"minirlvr/TRL {med['minirlvr'] / med['trl']:.2f}", flush=True)
    ratios = [m / t for m, t in rows]
    trl_step = statistics.median(t for _, t in rows)
    floor = flop_floor(statistics.mean(lengths), a.threads) / trl_step
    print(f"median over {a.pairs} pairs: minirlvr/TRL sec-per-step {statistics.median(ratios):.2f} "
          f"(TRL {1 / statistics.median(ratios):.2f}x slower); threads {a.threads}; "
          f"FLOP floor {floor:.2f} of TRL's step")


if __name__ == "__main__":
    main()
