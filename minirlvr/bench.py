"""`minirlvr bench`: measured throughput of sampling, training passes and whole GRPO steps.

Each row that has a target prints it and whether it was met, with the measured reason for a miss.
`benchmarks/grpo_vs_trl.py` (run here when TRL is installed) pairs a GRPO step against TRL's.

Model FLOPs count the matrix multiplies only (the standard 2N per token forward,
6N forward+backward, N = weights used in matmuls incl. the tied output layer,
plus attention scores/values 2 * 2 * n_layers * T_ctx * d per token forward).
The fp32 matmul peak is measured in the same run, so the fraction is this
machine's, now. Timings drift +-20% between runs: compare rows of one run only.
"""
from __future__ import annotations

import re
import time

import numpy as np
import torch

from .model import GPT, GPTConfig
from .rollout import RolloutBatch, policy_forward, sample
from .core import ppo_clip_per_token, aggregate


class _P:  # a minimal problem for synthetic prompts
    def __init__(self, prompt):
        self.prompt = prompt


def _timeit(fn, repeat: int = 3, device: str = "cpu") -> float:
    """Median seconds of fn() after one warm-up call. On a GPU the clock waits for the queued kernels."""
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def matmul_peak(n: int = 1024, repeat: int = 10, device: str = "cpu") -> float:
    """fp32 GFLOP/s of an n x n matmul (2 n^3 flops) on `device`, the median of `repeat` runs like every other
    timing here (the machine's speed drifts by tens of percent between runs: compare rows of one run)."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    return 2 * n ** 3 / _timeit(lambda: a @ b, repeat, device) / 1e9


def matmul_params(model: GPT) -> int:
    cfg = model.cfg
    per_layer = 3 * cfg.d_model ** 2 + cfg.d_model ** 2 + 8 * cfg.d_model ** 2
    return cfg.n_layers * per_layer + cfg.vocab_size * cfg.d_model


def forward_flops(model: GPT, n_tokens: int, ctx_len: int) -> float:
    return n_tokens * (2 * matmul_params(model) + 4 * model.cfg.n_layers * ctx_len * model.cfg.d_model)


def recompute_sample(model, problems, max_new_tokens: int):
    """Reference sampler without the cache: a full forward over the whole prefix per token."""
    from .tokenizer import encode, pad_left
    ids, mask = pad_left([encode(p.prompt, bos=True) for p in problems])
    device = next(model.parameters()).device
    ids, mask = ids.to(device), mask.to(device)
    with torch.no_grad():
        for _ in range(max_new_tokens):
            logits = model(ids, mask)[:, -1]
            tok = torch.multinomial(logits.softmax(-1), 1)
            ids, mask = torch.cat([ids, tok], 1), torch.cat([mask, torch.ones_like(tok)], 1)
    return ids


def synthetic_batch(model, n: int, length: int, gen) -> RolloutBatch:
    """A rollout of exactly n x length response tokens (every position counted as generated)."""
    problems = [_P("12+34=") for _ in range(n)]
    b = sample(model, problems, 1, length, generator=gen)
    if b.response_ids.shape[1] < length:  # everything ended early: pad so the shape is exact
        pad = length - b.response_ids.shape[1]
        f = torch.nn.functional.pad
        b.response_ids, b.old_logp = f(b.response_ids, (0, pad), value=3), f(b.old_logp, (0, pad))
    b.response_mask = torch.ones_like(b.response_ids)
    b.advantages = torch.randn(n, 1, device=b.response_ids.device).expand(n, length).contiguous()
    return b


def update_step(model, opt, batch: RolloutBatch):
    out = policy_forward(model, batch)
    loss_mat, _, _ = ppo_clip_per_token(out.logp, batch.old_logp, batch.advantages)
    loss = aggregate(loss_mat, batch.response_mask, "token-mean")
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()


def busy_slowdown(model, opt, gen, n: int = 64, length: int = 8, device: str = "cpu") -> tuple[float, float]:
    """Seconds of one GRPO step (rollout + update) alone, and with one competing busy process."""
    import subprocess
    import sys
    batch = synthetic_batch(model, n, length, gen)
    step = lambda: (synthetic_batch(model, n, length, gen), update_step(model, opt, batch))  # noqa: E731
    quiet = _timeit(step, 3, device)
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        busy = _timeit(step, 3, device)
    finally:
        hog.kill()
        hog.wait()
    return quiet, busy


def trl_comparison(threads: int) -> str | None:
    """The paired minirlvr-vs-TRL run of benchmarks/grpo_vs_trl.py, if TRL and the script are here."""
    import importlib.util
    import os
    import subprocess
    import sys
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "grpo_vs_trl.py")
    if importlib.util.find_spec("trl") is None or not os.path.isfile(script):
        return None
    out = subprocess.run([sys.executable, script, "--pairs", "3", "--steps", "30", "--threads", str(threads)],
                         capture_output=True, text=True)
    lines = out.stdout.strip().splitlines()
    return lines[-1] if out.returncode == 0 and lines else f"failed: {out.stderr.strip().splitlines()[-1:]}"


def run_bench(device: str = "cpu", trl: bool = True) -> list[tuple[str, str, str]]:
    """Rows of (figure, measured value, target and verdict). Targets are the project's (README)."""
    torch.manual_seed(0)
    gen = torch.Generator(device=device).manual_seed(0)
    model = GPT(GPTConfig()).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)
    rows = [("model", f"{model.num_params() / 1e6:.2f}M params, {torch.get_num_threads()} threads, {device}", "")]
    peak = matmul_peak(device=device)
    rows.append(("fp32 matmul peak (1024^3)", f"{peak:.1f} GFLOP/s", ""))

    # sampling: 64 prompts x 64 new tokens, cached vs recomputed (EOS ignored by the reference)
    probs = [_P("12+34=")] * 64
    new = 64
    t_cache = _timeit(lambda: sample(model, probs, 1, new, generator=gen), 2, device)
    out = sample(model, probs, 1, new, generator=gen)
    n_cache, n_steps = out.response_mask.sum().item(), out.response_ids.shape[1]
    t_full = _timeit(lambda: recompute_sample(model, probs, new), 1, device)
    speedup = (n_cache / t_cache) / (64 * new / t_full)
    rows.append((f"rollout, KV cache (64 x <= {new} tokens)", f"{n_cache / t_cache:,.0f} tokens/s", ""))
    rows.append((f"rollout, full recompute (64 x {new} tokens)", f"{64 * new / t_full:,.0f} tokens/s", ""))
    rows.append(("cache speed-up (per token)", f"{speedup:.1f}x",
                 _verdict(speedup >= 5, ">= 5x", "each cached decode step costs several times its FLOPs: next row")))
    # one decoding step of 64 rows (the sampler computes every row until the last one ends): its matmul FLOPs
    # at the measured peak, and where its time goes
    ctx = out.prompt_ids.shape[1] + n_steps / 2
    t_dec = t_cache / n_steps
    t_flop = forward_flops(model, 64, int(ctx)) / (peak * 1e9)
    why = "GPU: see torch.profiler" if torch.device(device).type == "cuda" else decode_profile(model, probs, new, gen)
    rows.append(("decode step, 64 rows, cached", f"{1e3 * t_dec:.2f} ms = {t_dec / t_flop:.1f}x its FLOP time "
                 f"({1e3 * t_flop:.2f} ms)", _verdict(t_dec <= 3 * t_flop, "<= 3x FLOP time", why)))

    efficiency = {}  # rows -> the update's fraction of the matmul peak
    for n, length in ((64, 8), (256, 32)):
        batch = synthetic_batch(model, n, length, gen)
        ctx_len = batch.prompt_ids.shape[1] + length
        tokens = n * ctx_len  # the forward runs over prompt + response
        t_upd = _timeit(lambda: update_step(model, opt, batch), 3, device)
        upd_flops = 3 * forward_flops(model, tokens, ctx_len)
        t_roll = _timeit(lambda: synthetic_batch(model, n, length, gen), 2, device)
        frac = upd_flops / t_upd / 1e9 / peak
        efficiency[n] = frac
        rows.append((f"train fwd+bwd+AdamW, {n} x {length}", f"{n * length / t_upd:,.0f} response tokens/s", ""))
        rows.append((f"  update FLOP/s ({n} x {length})", f"{upd_flops / t_upd / 1e9:.1f} GFLOP/s = {100 * frac:.0f}% of peak",
                     _verdict(frac >= 0.6, ">= 60% of peak", "the matmuls are small (d = 128); "
                              "attention, GELU and LayerNorm are outside the matmul count")
                     if n == 256 else ""))
        rows.append((f"GRPO step (rollout + update), {n} x {length}",
                     f"{t_roll + t_upd:.3f} s (rollout {t_roll:.3f} s, update {t_upd:.3f} s)", ""))

    quiet, busy = busy_slowdown(model, opt, gen, device=device)
    rows.append(("GRPO step 64 x 8 with one busy process", f"{busy:.3f} s vs {quiet:.3f} s alone = {busy / quiet:.2f}x",
                 _verdict(busy <= 1.5 * quiet, "<= 1.5x", "more threads than free cores: use --threads 1")))
    if trl:
        rows.append(trl_row(torch.get_num_threads(), efficiency[64]))
    return rows


def decode_profile(model, problems, new: int, gen) -> str:
    """Where the CPU time of a cached sampling call goes (torch.profiler, self time of each op)."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        sample(model, problems, 1, new, generator=gen)
    share = {"attention": 0.0, "linear": 0.0, "other": 0.0}
    for e in prof.key_averages():
        kind = ("attention" if "scaled_dot_product" in e.key else
                "linear" if e.key in ("aten::addmm", "aten::mm", "aten::bmm") else "other")
        share[kind] += e.self_cpu_time_total
    total = sum(share.values()) or 1.0
    return (f"torch.profiler, share of op time: attention over the cache {share['attention'] / total:.0%} (torch's "
            f"CPU kernel runs two tiny GEMMs per row and head), linear layers {share['linear'] / total:.0%}, "
            f"other ops (LayerNorm, GELU, cache writes, sampling) {share['other'] / total:.0%}; README, Throughput")


def trl_row(threads: int, update_efficiency: float | None = None) -> tuple[str, str, str]:
    """The bench row of the paired comparison with TRL, with its verdict. `update_efficiency`: the fraction of
    the matmul peak that a 64 x 8 update reached in this run (the TRL pair's work is 8 prompts x 8)."""
    res = trl_comparison(threads)
    ratio = re.search(r"sec-per-step ([0-9.]+)", res or "")
    floor = re.search(r"FLOP floor ([0-9.]+)", res or "")
    why = "the update is most of the step and its matmuls run near the measured peak (README, Throughput)"
    if floor:
        f = float(floor.group(1))
        why = (f"the matmul FLOPs of minirlvr's step (rollout + update) take {f:.2f} of TRL's step at 100% of the "
               f"measured peak: " + ("0.5 cannot be reached with this work" if f > 0.5 else
                                     f"0.5 needs the whole step at >= {f / 0.5:.0%} of peak") +
               (f", and a 64 x 8 update alone reaches {update_efficiency:.0%}" if update_efficiency else "") +
               "; TRL does the same forward/backward (README, Throughput)")
    return ("paired vs TRL GRPOTrainer, CPU (benchmarks/grpo_vs_trl.py)",
            res or "TRL not installed (pip install trl==1.16.0 transformers==5.24.0)",
            _verdict(float(ratio.group(1)) <= 0.5, "minirlvr/TRL <= 0.5", why) if ratio else "")


def _verdict(ok: bool, target: str, why: str = "") -> str:
    return f"target {target}: " + ("met" if ok else "MISSED" + (f" ({why})" if why else ""))


def format_rows(rows) -> str:
    w = max(len(r[0]) for r in rows)
    return "\n".join(f"{r[0]:<{w}}  {r[1]}" + (f"   [{r[2]}]" if len(r) > 2 and r[2] else "") for r in rows)
