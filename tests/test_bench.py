"""`minirlvr bench` runs and reports every figure that has a target with a verdict (never asserting a speed)."""
import re

from minirlvr import bench


def test_bench_reports_every_target_with_a_verdict(monkeypatch):
    line = "median over 3 pairs: minirlvr/TRL sec-per-step 0.76 (TRL 1.32x slower); threads 1"
    monkeypatch.setattr(bench, "trl_comparison", lambda threads: line)   # the real pair takes minutes
    rows = bench.run_bench("cpu", trl=True)
    targets = [r for r in rows if r[2]]
    assert [r[0] for r in targets] == ["cache speed-up (per token)", "decode step, 64 rows, cached",
                                       "  update FLOP/s (256 x 32)", "GRPO step 64 x 8 with one busy process",
                                       "paired vs TRL GRPOTrainer (benchmarks/grpo_vs_trl.py)"]
    for name, value, verdict in targets:
        assert re.match(r"target .+: (met|MISSED \(.+\))$", verdict), (name, verdict)
    assert rows[-1][1] == line and "MISSED" in rows[-1][2]   # 0.76 > 0.5
    assert "target" in bench.format_rows(rows)


def test_trl_row(monkeypatch):
    monkeypatch.setattr(bench, "trl_comparison", lambda threads: None)
    assert bench.trl_row(1)[1].startswith("TRL not installed") and bench.trl_row(1)[2] == ""
    monkeypatch.setattr(bench, "trl_comparison", lambda threads: "median over 3 pairs: minirlvr/TRL sec-per-step 0.45")
    assert bench.trl_row(1)[2] == "target minirlvr/TRL <= 0.5: met"
