"""`minirlvr bench`: measured throughput of sampling, training passes and whole GRPO steps.

Model FLOPs count the matrix multiplies only (the standard 2N per token forward,
6N forward+backward, N = weights used in matmuls incl. the tied output layer,
plus attention scores/values 2 * 2 * n_layers * T_ctx * d per token forward).
The fp32 matmul peak is measured in the same run, so the fraction is this
machine's, now. Timings drift +-20% between runs: compare rows of one run only.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from .model import GPT, GPTConfig
from .rollout import RolloutBatch, policy_forward, sample
from .core import ppo_clip_per_token, aggregate


class _P:  # a minimal problem for synthetic prompts
    def __init__(self, prompt):
        self.prompt = prompt


def _timeit(fn, repeat: int = 3) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def matmul_peak(n: int = 1024, repeat: int = 5) -> float:
    """fp32 GFLOP/s of an n x n matmul (2 n^3 flops)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n ** 3 / _timeit(lambda: a @ b, repeat) / 1e9


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
    b.advantages = torch.randn(n, 1).expand(n, length).contiguous()
    return b


def update_step(model, opt, batch: RolloutBatch):
    out = policy_forward(model, batch)
    loss_mat, _, _ = ppo_clip_per_token(out.logp, batch.old_logp, batch.advantages)
    loss = aggregate(loss_mat, batch.response_mask, "token-mean")
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()


def run_bench(device: str = "cpu") -> list[tuple[str, str]]:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    model = GPT(GPTConfig()).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    rows = [("model", f"{model.num_params() / 1e6:.2f}M params, {torch.get_num_threads()} threads, {device}")]
    peak = matmul_peak()
    rows.append(("fp32 matmul peak (1024^3)", f"{peak:.1f} GFLOP/s"))

    # sampling: 64 prompts x 64 new tokens, cached vs recomputed (EOS ignored by the reference)
    probs = [_P("12+34=")] * 64
    new = 64
    t_cache = _timeit(lambda: sample(model, probs, 1, new, generator=gen), 2)
    n_cache = sample(model, probs, 1, new, generator=gen).response_mask.sum().item()
    t_full = _timeit(lambda: recompute_sample(model, probs, new), 1)
    rows.append((f"rollout, KV cache (64 x <= {new} tokens)", f"{n_cache / t_cache:,.0f} tokens/s"))
    rows.append((f"rollout, full recompute (64 x {new} tokens)", f"{64 * new / t_full:,.0f} tokens/s"))
    rows.append(("cache speed-up (per token)", f"{(n_cache / t_cache) / (64 * new / t_full):.1f}x"))

    for n, length in ((64, 8), (256, 32)):
        batch = synthetic_batch(model, n, length, gen)
        ctx_len = batch.prompt_ids.shape[1] + length
        tokens = n * ctx_len  # the forward runs over prompt + response
        t_upd = _timeit(lambda: update_step(model, opt, batch), 3)
        upd_flops = 3 * forward_flops(model, tokens, ctx_len)
        t_roll = _timeit(lambda: synthetic_batch(model, n, length, gen), 2)
        rows.append((f"train fwd+bwd+AdamW, {n} x {length}", f"{n * length / t_upd:,.0f} response tokens/s"))
        rows.append((f"  update FLOP/s ({n} x {length})", f"{upd_flops / t_upd / 1e9:.1f} GFLOP/s = "
                                                           f"{100 * upd_flops / t_upd / 1e9 / peak:.0f}% of peak"))
        rows.append((f"GRPO step (rollout + update), {n} x {length}",
                     f"{t_roll + t_upd:.3f} s (rollout {t_roll:.3f} s, update {t_upd:.3f} s); "
                     f"{(forward_flops(model, tokens, ctx_len) + upd_flops) / (t_roll + t_upd) / 1e9:.1f} GFLOP/s"))
    return rows


def format_rows(rows) -> str:
    w = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{w}}  {v}" for k, v in rows)
