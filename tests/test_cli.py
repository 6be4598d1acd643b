"""The command line: clear one-line errors with a non-zero exit, list, compare outputs."""
import os

import pytest

from minirlvr.cli import main


@pytest.mark.parametrize("argv, message", [
    (["train", "--task", "subtraction"], "unknown task 'subtraction'; known tasks"),
    (["train", "--recipe", "nope"], "unknown recipe 'nope'; known recipes"),
    (["train", "--loss", "nope"], "unknown loss function 'nope'; known"),
    (["train", "--init", "/nonexistent.pt"], "does not exist"),
    (["train", "--set", "loss.nope=1"], "unknown setting"),
    (["train", "--set", "oops"], "stage.key=value"),
    (["train", "--group-size", "1"], "group_size must be >= 2"),
    (["train", "--probe", "nope"], "unknown probe function 'nope'; known: "),
    (["train", "--difficulty", "1,9"], "difficulty (1, 9) is not valid for task 'addition'; valid difficulties"),
    (["train", "--diagnostics", "--probe-every", "2"], "entropy_diagnostics (deprecated)"),
    (["compare", "--recipes", "grpo,nope"], "unknown recipe 'nope'"),
    (["pretrain", "--task", "nope"], "unknown task"),
])
def test_errors_are_one_line(argv, message, capsys, tmp_path):
    code = main(argv + (["--out", str(tmp_path)] if argv[0] != "pretrain" else []) + ["--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("minirlvr: error:") and message in err and "Traceback" not in err
    assert len(err.splitlines()) == 1


@pytest.mark.parametrize("argv, message", [(["train", "--steps", "0"], "expected a positive integer, got 0"),
                                           (["train", "--steps", "x"], "expected a positive integer, got 'x'"),
                                           (["compare"], "--recipes"), (["train", "--bogus"], "unrecognized"),
                                           (["train", "--difficulty", "1,x"], "expected a level or comma-separated"),
                                           (["train", "--train-split", "val"], "invalid choice"),
                                           (["train", "--problem-pool", "0"], "expected a positive integer")])
def test_argument_errors_are_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1
    assert err.startswith("minirlvr: error:") and message in err


def test_corrupt_checkpoint(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00garbage")
    assert main(["train", "--init", str(bad), "--out", str(tmp_path), "--no-progress"]) == 2
    assert "could not be read" in capsys.readouterr().err


def test_list_shows_every_stage_and_recipe(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("ppo_clip", "grpo", "dr_grpo", "rloo", "reinforce_pp", "dynamic", "overlong", "dapo", "addition",
                 "clip_cov", "kl_cov", "forking_tokens", "invisible_leash"):
        assert name in out


def test_train_and_compare_write_their_outputs(tmp_path, tiny_ckpt, capsys):
    common = ["--init", tiny_ckpt, "--steps", "2", "--prompts", "2", "-G", "2", "--eval-every", "1",
              "--eval-problems", "2", "--eval-k", "2", "--no-progress"]
    assert main(["train", "--out", str(tmp_path / "t"), *common]) == 0
    run = tmp_path / "t" / "grpo_addition_s0"
    assert {"metrics.jsonl", "curves.png", "policy.pt", "config.json"} <= set(os.listdir(run))
    assert main(["compare", "--recipes", "grpo,dr_grpo", "--seeds", "2", "--out", str(tmp_path / "c"), *common]) == 0
    assert {"curves.png", "pass_at_k.png", "summary.csv", "frontier.png"} <= set(os.listdir(tmp_path / "c"))
    out = capsys.readouterr().out
    assert "grpo" in out and "dr_grpo" in out
    assert "len_mean" in out and "tokens/attempt" in out and "cost-of-pass" in out  # efficiency columns
    with open(tmp_path / "c" / "summary.csv") as f:
        header = f.readline()
    assert all(k in header for k in ("eval/len_mean_mean", "eval/cost_of_pass_mean", "eval/truncation_rate_mean"))


def test_unset_flags_leave_the_recipe_settings_and_explicit_flags_win(tmp_path, tiny_ckpt, capsys):
    import json
    from minirlvr import registry
    registry.register_recipe(registry.Recipe("cli_test_recipe", train_cfg={"minibatches": 2, "prompts_per_step": 3}))
    common = ["--recipe", "cli_test_recipe", "--init", tiny_ckpt, "--steps", "1", "-G", "2", "--eval-every", "0",
              "--no-progress", "--probe", "entropy_change", "--difficulty", "1,2"]
    assert main(["train", "--out", str(tmp_path / "a"), *common]) == 0
    assert main(["train", "--out", str(tmp_path / "b"), "--minibatches", "1", *common]) == 0
    saved = [json.load(open(tmp_path / d / "cli_test_recipe_addition_s0" / "config.json")) for d in "ab"]
    assert [s["train"]["minibatches"] for s in saved] == [2, 1]
    assert [s["train_sources"]["minibatches"] for s in saved] == ["recipe 'cli_test_recipe'", "explicit"]
    assert all(s["train"]["prompts_per_step"] == 3 and s["train"]["lr"] == 1e-4 for s in saved)
    assert all(s["train"]["difficulty"] == [1, 2] and s["train"]["probes"] == ["entropy_change"] for s in saved)
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "probe:" in out and "entropy_change" in out
    assert "cli_test_recipe" in out and "train: minibatches=2 prompts_per_step=3" in out
