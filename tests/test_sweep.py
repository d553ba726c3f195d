"""`hf-resnet sweep`: the space is checked before any trial, a sweep's outputs, resuming after kill -9, two sweeps
sharing one study, and a pruned trial under two gloo processes. The trials are the smoke recipe cut to a few
seconds each (2 epochs of 320 digits, 128 validation images)."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO

from hf_resnet.sweep.command import main as sweep

FAST = ["--config", "smoke/digits_smoke", "--num_train_epochs", "2", "--max_train_samples", "320",
        "--max_eval_samples", "128", "--dataloader_num_workers", "0", "--logging_steps", "5"]
SPACE = "smoke/digits_sweep"


def sweep_args(output_dir: Path, n_trials: int = 6, *extra: str) -> list[str]:
    return [*FAST, "--space", SPACE, "--n_trials", str(n_trials), "--output_dir", str(output_dir), *extra]


def trials(output_dir: Path) -> list[dict]:
    with open(output_dir / "trials.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def finished(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r["state"] in ("COMPLETE", "PRUNED")]


def params_of(row: dict) -> tuple:
    return tuple(row[name] for name in ("learning_rate", "per_device_train_batch_size", "head_dropout",
                                        "random_resized_crop_scale"))


def best_row(rows: list[dict]) -> dict:
    return max((r for r in rows if r["state"] == "COMPLETE"), key=lambda r: (float(r["objective"]), -int(r["number"])))


def sweep_command(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "hf_resnet.cli", "sweep", *args]


def child_env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def test_help_answers_without_importing_torch_or_optuna():
    code = ("import sys\nfrom hf_resnet.cli import main\ntry: main(['sweep', '--help'])\nexcept SystemExit: pass\n"
            "print('torch' in sys.modules, 'optuna' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=child_env(), timeout=60)
    assert "--n_trials N" in result.stdout and result.stdout.strip().splitlines()[-1] == "False False"


# -- the space, checked before any trial ---------------------------------------------------------------------------

@pytest.mark.parametrize("entry, message", [
    ("learning_rat: {type: float, low: 0.001, high: 0.01}", r"'learning_rat' is no field .* 'learning_rate'"),
    ("learning_rate: {type: float, low: 0.01, high: 0.001}", "needs `low` below `high`"),
    ("learning_rate: {type: float, low: 0, high: 0.01, log: true}", "a log range needs `low` above 0"),
    ("per_device_train_batch_size: {type: float, low: 16, high: 64}", "takes int values"),
    ("horizontal_flip: {type: categorical, choices: [0.0, 1.5]}", r"`horizontal_flip: 1.5` cannot be run: .*between"),
    ("optim: {type: categorical, choices: [sgd, adamw_tourch]}", "`optim: adamw_tourch` cannot be run"),
    ("output_dir: {type: categorical, choices: [a, b]}", "cannot be searched"),
    ("learning_rate: {type: uniform, low: 0.001, high: 0.01}", "needs a mapping with `type:`"),
])
def test_a_bad_space_is_one_line_and_exit_2_before_any_trial(tmp_path, capsys, entry, message):
    import re

    space = tmp_path / "space.yaml"
    space.write_text(entry + "\n")
    out = tmp_path / "sweep"
    with pytest.raises(SystemExit) as stop:
        sweep([*FAST, "--space", str(space), "--n_trials", "2", "--output_dir", str(out)])
    assert stop.value.code == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and re.search(message, error), error
    assert not out.exists()  # no study, no trial


def test_a_field_given_and_searched_and_a_missing_space_are_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        sweep([*sweep_args(tmp_path / "a", 2), "--learning_rate", "0.01"])
    assert stop.value.code == 2 and "given on the command line and searched" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        sweep([*FAST, "--space", "smoke/nope", "--n_trials", "2", "--output_dir", str(tmp_path / "b")])
    assert stop.value.code == 2 and "smoke/digits_sweep" in capsys.readouterr().err  # the shipped spaces are named


def test_without_optuna_the_command_names_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna raises ImportError
    with pytest.raises(SystemExit) as stop:
        sweep(sweep_args(tmp_path, 2))
    assert stop.value.code == 2 and 'pip install "hf-resnet[sweep]"' in capsys.readouterr().err


def test_the_shipped_spaces_load_against_their_recipes(tmp_path):
    from hf_resnet.parser import parse_args
    from hf_resnet.sweep.space import load_space

    report = load_space("resnet50/report_sweep", ["--config", "resnet50/imagefolder_full", "--train_dir",
                                                  str(tmp_path), "--output_dir", str(tmp_path)], parse_args)
    assert [p.name for p in report.params] == ["learning_rate", "per_device_train_batch_size", "weight_decay",
                                               "optim", "sgd_momentum"]
    assert (report.params[0].low, report.params[0].high, report.params[0].log) == (1e-3, 1e-2, True)
    smoke = load_space(SPACE, [*FAST, "--output_dir", str(tmp_path)], parse_args)
    assert smoke.argv({"random_resized_crop_scale": [0.7, 1.0], "head_dropout": None}) == [
        "--random_resized_crop_scale", "0.7", "1.0", "--head_dropout", "null"]


# -- a sweep of 6 trials -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def six_trials(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sweep") / "digits"
    assert sweep(sweep_args(out, 6)) == 0
    return out


def test_six_trials_their_table_and_objectives(six_trials):
    rows = trials(six_trials)
    assert len(rows) == 6 and len(finished(rows)) == 6
    assert len({params_of(r) for r in rows}) == 6
    for row in rows:
        folder = six_trials / f"trial-{int(row['number']):03d}"
        state = json.loads((folder / "trainer_state.json").read_text())
        during = [e["eval_accuracy"] for e in state["log_history"] if "eval_accuracy" in e]
        assert float(row["objective"]) == pytest.approx(max(during))  # the best evaluation, not the last
        assert int(row["evaluations"]) == len(during) and float(row["seconds"]) > 0
        assert not list(folder.glob("checkpoint-*"))  # removed when the trial ended
        assert 1e-3 <= float(row["learning_rate"]) <= 1e-2 and row["per_device_train_batch_size"] in ("32", "64")
        assert int(row["evaluations"]) == 2 if row["state"] == "COMPLETE" else int(row["evaluations"]) == 1
    for plot in ("optimization_history.png", "param_importances.png", "parallel_coordinate.png"):
        assert (six_trials / plot).stat().st_size > 1000


def test_best_is_the_best_trial_and_pipeline_reproduces_its_metric(six_trials):
    from transformers import pipeline

    rows = trials(six_trials)
    best = best_row(rows)
    results = json.loads((six_trials / "best" / "all_results.json").read_text())
    assert results["eval_accuracy"] == pytest.approx(float(best["objective"]))  # the kept model is the best epoch's
    predictions = list(csv.DictReader(open(six_trials / "best" / "report" / "validation" /
                                           "predictions_validation.csv")))
    assert len(predictions) == 128
    classifier = pipeline("image-classification", model=str(six_trials / "best"), device="cpu")
    answers = classifier([p["file"] for p in predictions], top_k=1, batch_size=64)
    right = sum(a[0]["label"] == p["true_label"] for a, p in zip(answers, predictions))
    assert right / 128 == pytest.approx(float(best["objective"]))
    card = (six_trials / "best" / "README.md").read_text()
    assert "won a hyperparameter sweep" in card and f"trial {best['number']} of 6" in card
    assert card.count("| COMPLETE |") + card.count("| PRUNED |") + card.count("**COMPLETE**") == 6
    assert str((six_trials / "best").resolve()) in card  # its quick start loads best/, not the trial's folder


# -- kill -9 and rerun ----------------------------------------------------------------------------------------------

def test_a_sweep_killed_in_trial_3_and_rerun_ends_as_one_never_killed(tmp_path, six_trials):
    """On Optuna's journal file (the never-killed sweep is on SQLite: the storage does not change the trials)."""
    out = tmp_path / "killed"
    args = sweep_args(out, 6, "--storage", str(tmp_path / "study.log"))
    child = subprocess.Popen(sweep_command(args), env=child_env(), cwd=tmp_path,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list((out / "trial-002").glob("checkpoint-*")) and time.time() < deadline and child.poll() is None:
        time.sleep(0.1)
    child.send_signal(signal.SIGKILL)  # during trial 3: its first epoch is saved, its second is not
    child.wait()
    assert len(finished(trials(out))) == 2  # trials 0 and 1 were told

    assert sweep(args) == 0
    rows = trials(out)
    done = finished(rows)
    assert len(done) == 6 and len({params_of(r) for r in done}) == 6  # none run twice
    failed = [r for r in rows if r["state"] == "FAIL"]
    assert [r["number"] for r in failed] == ["2"] and not list((out / "trial-002").glob("checkpoint-*"))
    retried = next(r for r in rows if r["retry_of"] not in ("", None))
    assert retried["retry_of"] == "2" and params_of(retried) == params_of(failed[0])
    never_killed = trials(six_trials)
    assert sorted(map(params_of, done)) == sorted(map(params_of, finished(never_killed)))
    assert params_of(best_row(rows)) == params_of(best_row(never_killed))
    assert float(best_row(rows)["objective"]) == float(best_row(never_killed)["objective"])
    from safetensors.torch import load_file

    mine, theirs = load_file(out / "best" / "model.safetensors"), load_file(six_trials / "best" / "model.safetensors")
    assert all((mine[k] == theirs[k]).all() for k in theirs)


# -- two sweeps on one storage --------------------------------------------------------------------------------------

def test_two_sweeps_on_one_storage_share_the_trials(tmp_path, capsys):
    """One sweep in a child process, the same command here once the child's first trial runs: the 4 trials of
    DIR/study.db are shared, each run once, by the two."""
    out = tmp_path / "shared"
    args = sweep_args(out, 4)
    child = subprocess.Popen(sweep_command(args), env=child_env(), cwd=tmp_path, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while not (out / "trial-000").exists() and time.time() < deadline and child.poll() is None:
        time.sleep(0.1)
    capsys.readouterr()
    assert sweep(args) == 0
    here = sum(line.startswith("trial ") for line in capsys.readouterr().out.splitlines())
    there = sum(line.startswith("trial ") for line in child.communicate(timeout=300)[0].splitlines())
    assert child.returncode == 0
    import optuna

    from hf_resnet.sweep.study import open_storage

    study = optuna.load_study(study_name="hf-resnet", storage=open_storage(None, out))
    runs = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    asked = [t for t in study.trials if not t.user_attrs.get("surplus")]  # (two asking at once: one is not run)
    assert len(asked) == len(runs) == 4  # none failed, none run twice, none beyond the 4
    assert len({json.dumps(t.params, sort_keys=True) for t in runs}) == 4  # no values drawn twice
    assert len({t.user_attrs["pid"] for t in runs}) == 2 and here >= 1 and there >= 1 and here + there == 4
    assert len(finished(trials(out))) == 4 and (out / "best" / "model.safetensors").is_file()


# -- a pruned trial under two gloo processes -------------------------------------------------------------------------

def test_a_pruned_trial_stops_both_gloo_processes_and_the_sweep_goes_on(tmp_path):
    """3 finished trials that scored 1.0 at every evaluation are in the study first, so the median pruner prunes
    every new trial at its first evaluation; under `accelerate launch` with 2 gloo processes, both stop there (a
    process that trained on would hang the other at its next collective), and the second trial still runs."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    out = tmp_path / "ddp"
    out.mkdir()
    study = optuna.create_study(storage=f"sqlite:///{out / 'study.db'}", study_name="hf-resnet", direction="maximize")
    distributions = {"learning_rate": FloatDistribution(1e-3, 1e-2, log=True),
                     "per_device_train_batch_size": CategoricalDistribution([32, 64]),
                     "head_dropout": FloatDistribution(0.0, 0.3),
                     "random_resized_crop_scale": CategoricalDistribution(["[0.7, 1.0]", "[0.9, 1.0]"])}
    for lr in (0.002, 0.004, 0.008):
        study.add_trial(optuna.trial.create_trial(
            params={"learning_rate": lr, "per_device_train_batch_size": 32, "head_dropout": 0.1,
                    "random_resized_crop_scale": "[0.7, 1.0]"},
            distributions=distributions, value=1.0, intermediate_values={1: 1.0, 2: 1.0}))
    command = [sys.executable, "-m", "accelerate.commands.launch",
               "--config_file", str(REPO / "recipes" / "accelerate" / "cpu_2proc.yaml"),
               "-m", "hf_resnet.cli", "sweep", *sweep_args(out, 5)]
    result = subprocess.run(command, env=child_env(), cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = [r for r in trials(out) if int(r["number"]) >= 3]
    assert [r["state"] for r in rows] == ["PRUNED", "PRUNED"] and [r["evaluations"] for r in rows] == ["1", "1"]
    for row in rows:
        state = json.loads((out / f"trial-{int(row['number']):03d}" / "trainer_state.json").read_text())
        assert state["epoch"] == 1.0 and state["global_step"] == state["max_steps"] // 2  # stopped after epoch 1
        assert (out / f"trial-{int(row['number']):03d}" / "model.safetensors").is_file()
        assert "| processes | 2 |" in (out / f"trial-{int(row['number']):03d}" / "README.md").read_text()  # DDP
    assert result.stdout.count("trial 3 PRUNED") == 1 and result.stdout.count("trial 4 PRUNED") == 1  # main only
    assert "No best/ here" in result.stdout + result.stderr  # the best trials (the 3 above) have no folder here
