"""`minirlvr leaderboard`: the tie rule, the run cache, the outputs, and the fast mode end to end."""
import csv
import json
import os

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from minirlvr import leaderboard as lb
from minirlvr.cli import main

FAST = dict(seeds=1, steps=2, eval_problems=8, progress=False)


# ---------------------------------------------------------------- the tie rule

stats = st.lists(st.tuples(st.floats(0, 1), st.floats(0, 0.3)), min_size=1, max_size=12)


@given(stats)
def test_ranks_are_bounded_and_the_best_mean_ranks_first(rows):
    means, stds = map(np.array, zip(*rows))
    ranks = lb.tie_ranks(means, stds)
    assert ranks.min() == 1 and ranks.max() <= len(rows)
    assert ranks[np.argmax(means)] == 1


@given(stats, st.floats(1.0, 5.0))
def test_more_seed_spread_never_separates_recipes_more(rows, grow):
    """Noisier seeds can only merge ranks (every rank is non-increasing in the spread)."""
    means, stds = map(np.array, zip(*rows))
    assert (lb.tie_ranks(means, stds * grow) <= lb.tie_ranks(means, stds)).all()


@given(stats, st.floats(-0.5, 0.5))
def test_ranks_are_invariant_to_a_common_shift(rows, shift):
    means, stds = map(np.array, zip(*rows))
    np.testing.assert_array_equal(lb.tie_ranks(means + shift, stds), lb.tie_ranks(means, stds))


def test_rank_is_one_plus_the_recipes_that_clearly_beat_it():
    means, stds = np.array([0.80, 0.78, 0.60, 0.59]), np.array([0.03, 0.03, 0.0, 0.0])
    # 0.80 vs 0.78: 0.02 < sqrt(2) * 0.03 -> tied; 0.60 vs 0.59 with no spread -> separated
    np.testing.assert_array_equal(lb.tie_ranks(means, stds), [1, 1, 3, 4])
    np.testing.assert_array_equal(lb.tie_ranks(means, np.full(4, 1.0)), [1, 1, 1, 1])   # all noise: all tied
    np.testing.assert_array_equal(lb.tie_ranks(np.array([0.5, np.nan]), np.zeros(2)), [1, 2])  # no number: last


# ---------------------------------------------------------------- end to end (fast mode)

def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_fast_mode_writes_every_output_and_reuses_its_runs(tmp_path, capsys):
    out = str(tmp_path / "lb")
    code = main(["leaderboard", "--recipes", "grpo,clip_cov", "--seeds", "1", "--steps", "2", "--eval-problems", "8",
                 "--workers", "1", "--out", out, "--no-progress"])
    assert code == 0
    assert "rank 1" in capsys.readouterr().out
    for name in ("leaderboard.csv", "leaderboard.md", "leaderboard.json", "accuracy_vs_entropy.png", "pass_at_k.png"):
        assert os.path.getsize(os.path.join(out, name)) > 0
    rows = _rows(os.path.join(out, "leaderboard.csv"))
    assert [(r["task"], r["recipe"]) for r in rows if r["recipe"] == "base"] == [("addition", "base"), ("countdown", "base")]
    assert {(r["task"], r["recipe"]) for r in rows} == {(t, r) for t in lb.TASKS for r in ("base", "grpo", "clip_cov")}
    for r in rows:
        assert 0 <= float(r["pass@1_mean"]) <= float(r["pass@8_mean"]) <= float(r["pass@16_mean"]) <= 1
        if r["recipe"] != "base":
            assert r["rank"] in ("1", "2") and r["seeds"] == "1"
            assert json.loads(r["settings"])["loss"] in ("ppo_clip", "clip_cov")
    base = {r["task"]: r for r in rows if r["recipe"] == "base"}
    assert all(float(base[t]["retained_mean"]) == 1.0 for t in lb.TASKS)
    md = open(os.path.join(out, "leaderboard.md")).read()
    assert "### addition" in md and "### countdown" in md
    assert "minirlvr/methods/entropy_mechanism.py" in md and "2505.22617" in md
    assert "- `clip_cov`: rollout=\"plain\"" in md and '"clip_ratio": 0.02' in md   # every recipe's settings

    # the same call again: every run comes from the cache, the numbers are the same
    again = lb.run_leaderboard(["grpo", "clip_cov"], out_dir=out, workers=1, **FAST)
    assert again["ran"] == []
    assert _rows(os.path.join(out, "leaderboard.csv")) == rows
    # one more recipe: only its runs (one per task)
    more = lb.run_leaderboard(["grpo", "clip_cov", "gspo"], tasks=("addition",), out_dir=out, workers=1, **FAST)
    assert more["ran"] == [lb.Job("addition", "gspo", 0)]


def test_a_new_code_version_or_other_settings_rerun(tmp_path, monkeypatch):
    out = str(tmp_path)
    first = lb.run_leaderboard(["grpo"], tasks=("addition",), out_dir=out, workers=1, **FAST)
    assert len(first["ran"]) == 2   # the base and the run
    monkeypatch.setattr(lb, "code_version", lambda: "changed")
    assert len(lb.run_leaderboard(["grpo"], tasks=("addition",), out_dir=out, workers=1, **FAST)["ran"]) == 2
    assert len(lb.run_leaderboard(["grpo"], tasks=("addition",), out_dir=out, workers=1,
                                  **{**FAST, "steps": 3})["ran"]) == 2   # a changed setting
    # a damaged cache entry is rerun, not trusted
    path = os.path.join(out, "runs", "addition", "grpo_s0", "leaderboard_result.json")
    with open(path, "w") as f:
        f.write("{not json")
    assert lb.run_leaderboard(["grpo"], tasks=("addition",), out_dir=out, workers=1,
                              **{**FAST, "steps": 3})["ran"] == [lb.Job("addition", "grpo", 0)]


def test_parallel_workers_give_the_same_numbers(tmp_path):
    """One torch thread per run in every case: the worker count changes nothing but the wall time."""
    one = lb.run_leaderboard(["grpo", "gspo"], tasks=("addition",), out_dir=str(tmp_path / "a"), workers=1, **FAST)
    two = lb.run_leaderboard(["grpo", "gspo"], tasks=("addition",), out_dir=str(tmp_path / "b"), workers=2, **FAST)
    for job, res in one["results"].items():
        assert two["results"][job]["pass_curve"] == res["pass_curve"]
        assert two["results"][job]["entropy"] == res["entropy"]


def test_identical_runs_are_marked(tmp_path):
    """Lp-Reg at the official rho 0.01 selects no token on addition (tutorial 10): its runs are those of its
    on-policy GRPO baseline bit for bit, and the table says so; GSPO's are not."""
    res = lb.run_leaderboard(["grpo_onpolicy", "lp_reg", "gspo"], tasks=("addition",), out_dir=str(tmp_path),
                             workers=1, **FAST)
    marks = {r["recipe"]: r["identical_to"] for r in res["rows"] if r["recipe"] != "base"}
    assert marks == {"grpo_onpolicy": "lp_reg", "lp_reg": "grpo_onpolicy", "gspo": ""}
    assert "≡ grpo_onpolicy" in open(tmp_path / "leaderboard.md").read()


def test_code_version_ignores_what_cannot_change_a_run():
    assert all(p.startswith("minirlvr/") for p in lb.NOT_IN_CODE_VERSION)
    assert "minirlvr/trainer.py" not in lb.NOT_IN_CODE_VERSION and lb.code_version() == lb.code_version()


def test_a_recipe_that_cannot_run_is_reported_not_cached(tmp_path):
    """implicit_prm_prime needs a trained PRM checkpoint (reward.prm_path): listed as not run, nothing cached."""
    res = lb.run_leaderboard(["grpo", "implicit_prm_prime"], tasks=("addition",), out_dir=str(tmp_path), workers=1, **FAST)
    row = next(r for r in res["rows"] if r["recipe"] == "implicit_prm_prime")
    assert row["seeds"] == 0 and "prm_path" in row["failed"] and row["rank"] == ""
    assert "No finished run: `implicit_prm_prime`" in open(tmp_path / "leaderboard.md").read()
    again = lb.run_leaderboard(["grpo", "implicit_prm_prime"], tasks=("addition",), out_dir=str(tmp_path), workers=1, **FAST)
    assert again["ran"] == [lb.Job("addition", "implicit_prm_prime", 0)]


@pytest.mark.parametrize("kwargs, message", [
    (dict(recipes=["grpo", "nope"]), "unknown recipe 'nope'; known recipes"),
    (dict(recipes=[]), "at least one recipe"),
    (dict(tasks=("subtraction",)), "unknown task 'subtraction'"),
    (dict(tasks=()), "at least one task"),
    (dict(seeds=0), "seeds must be a positive integer"),
    (dict(workers=0), "workers must be a positive integer"),
    (dict(steps=0), "steps must be a positive integer"),
])
def test_bad_input_is_refused_before_any_run(kwargs, message, tmp_path):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        lb.run_leaderboard(**{"recipes": ["grpo"], "out_dir": str(tmp_path), **kwargs})
    assert not os.path.exists(tmp_path / "runs")


@pytest.mark.parametrize("argv, message", [(["--recipes", "grpo,nope"], "unknown recipe 'nope'"),
                                           (["--tasks", "nope"], "unknown task 'nope'")])
def test_cli_errors_are_one_line(argv, message, capsys, tmp_path):
    assert main(["leaderboard", *argv, "--out", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("minirlvr: error:") and message in err and len(err.splitlines()) == 1
