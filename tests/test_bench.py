"""`minirlvr bench` runs and reports every figure that has a target with a verdict (never asserting a speed)."""
import re

import pytest

from minirlvr import bench


def test_bench_reports_every_target_with_a_verdict(monkeypatch):
    line = "median over 3 pairs: minirlvr/TRL sec-per-step 0.76 (TRL 1.32x slower); threads 1"
    monkeypatch.setattr(bench, "trl_comparison", lambda threads: line)   # the real pair takes minutes
    rows = bench.run_bench("cpu", trl=True)
    targets = [r for r in rows if r[2]]
    assert [r[0] for r in targets] == ["cache speed-up (per token)", "decode step, 64 rows, cached",
                                       "  update FLOP/s (256 x 32)", "GRPO step 64 x 8 with one busy process",
                                       "paired vs TRL GRPOTrainer, CPU (benchmarks/grpo_vs_trl.py)"]
    for name, value, verdict in targets:
        assert re.match(r"target .+: (met|MISSED \(.+\))$", verdict), (name, verdict)
    assert rows[-1][1] == line and "MISSED" in rows[-1][2]   # 0.76 > 0.5
    assert "attention over the cache" in targets[1][2] or targets[1][2].endswith("met")  # the profiled breakdown
    assert "target" in bench.format_rows(rows)


def test_trl_row(monkeypatch):
    monkeypatch.setattr(bench, "trl_comparison", lambda threads: None)
    assert bench.trl_row(1)[1].startswith("TRL not installed") and bench.trl_row(1)[2] == ""
    monkeypatch.setattr(bench, "trl_comparison", lambda threads: "median over 3 pairs: minirlvr/TRL sec-per-step 0.45")
    assert bench.trl_row(1)[2] == "target minirlvr/TRL <= 0.5: met"
    # a floor above 0.5 is the reason given for a miss
    monkeypatch.setattr(bench, "trl_comparison",
                        lambda threads: "minirlvr/TRL sec-per-step 0.76 (TRL 1.32x slower); FLOP floor 0.54 of TRL's step")
    assert "0.5 cannot be reached with this work, and a 64 x 8 update alone reaches 60%" in bench.trl_row(1, 0.6)[2]
    monkeypatch.setattr(bench, "trl_comparison", lambda threads: "minirlvr/TRL sec-per-step 0.76; FLOP floor 0.40 of TRL's step")
    assert "0.5 needs the whole step at >= 80% of peak" in bench.trl_row(1)[2]


def test_timing_waits_for_the_gpu(monkeypatch):
    """On a GPU the clock must wait for queued kernels (checked without one: the sync is counted)."""
    calls = []
    monkeypatch.setattr(bench.torch.cuda, "synchronize", lambda: calls.append(1))
    bench._timeit(lambda: None, repeat=2, device="cuda")
    assert len(calls) == 4   # before and after each timed call
    bench._timeit(lambda: None, repeat=2, device="cpu")
    assert len(calls) == 4


def _trl_script():
    import importlib.util
    import pathlib
    path = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "grpo_vs_trl.py"
    spec = importlib.util.spec_from_file_location("grpo_vs_trl", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_trl_script_flop_floor_counts_the_step(monkeypatch):
    """The floor = matmul FLOPs of rollout + update at the peak, counted here from the modules themselves."""
    import numpy as np
    import torch
    from minirlvr.model import GPT, GPTConfig
    from minirlvr.tokenizer import encode
    from toy_tasks import get_task
    script = _trl_script()
    monkeypatch.setattr(bench, "matmul_peak", lambda *a, **k: 1.0)   # 1 GFLOP/s: the floor is GFLOPs
    threads = torch.get_num_threads()
    floor = script.flop_floor(6.0, threads)
    model = GPT(GPTConfig())
    weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear)) + model.tok_emb.weight.numel()
    problems = get_task("addition").sample(1000, np.random.default_rng(1), split="train")
    prompt = np.mean([len(encode(p.prompt, bos=True)) for p in problems])
    ctx = (prompt + 6.0) / 2
    per_token = 2 * weights + 4 * model.cfg.n_layers * ctx * model.cfg.d_model  # forward: weights + attention
    rollout_tokens, update_tokens = 8 * prompt + 64 * 5.0, 64 * (prompt + 6.0)
    assert floor * 1e9 == pytest.approx(per_token * (rollout_tokens + 3 * update_tokens), rel=1e-9)


def test_trl_script_minirlvr_side_runs():
    """The script's minirlvr side (what CI can run without TRL) still matches the trainer's API."""
    out = _trl_script().run_minirlvr(steps=2, threads=1)
    assert len(out["times"]) == 2 and 1 <= out["completion_length"] <= 8
