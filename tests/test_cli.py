"""The `hf-resnet` command: its sub-commands, and a non-editable install that trains from a shipped recipe."""

import argparse
import os
import re
import shutil
import subprocess
import sys
import zipfile

import pytest
from conftest import REPO, recipe_args

from hf_resnet.cli import build_parser, main


def test_commands_are_listed():
    help_text = build_parser().format_help()
    for command in ("train", "evaluate", "predict", "audit"):
        assert command in help_text


def test_every_option_of_every_command_is_explained():
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    for name, command in commands.items():
        if name == "train":  # `hf-resnet train --help` is the recipe parser's, field by field
            continue
        assert command.description, name
        for action in command._actions:
            assert action.help and len(action.help) > 10, (name, action.dest)


def test_help_answers_without_importing_torch():
    code = "import sys; from hf_resnet import cli; cli.build_parser().format_help(); print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.stdout.strip() == "False", result.stderr


def test_evaluate_runs_the_recipe_without_training(monkeypatch):
    import hf_resnet.cli

    seen = []
    monkeypatch.setattr(hf_resnet.cli, "train", lambda argv: seen.append(argv) or 0)
    assert main(["evaluate", "outputs/digits-smoke/", "--validation_dir", "val", "--report_to", "none"]) == 0
    argv = seen[0]
    pairs = dict(zip(argv[::2], argv[1::2]))
    assert pairs["--model_name_or_path"] == "outputs/digits-smoke/" and pairs["--do_train"] == "false"
    assert pairs["--validation_dir"] == "val" and pairs["--output_dir"] == "eval-digits-smoke"
    assert pairs["--report_to"] == "none"  # any other field of `hf-resnet train` passes through
    main(["evaluate", "you/repo", "--dataset_name", "x/y", "--output_dir", "mine"])
    assert dict(zip(seen[1][::2], seen[1][1::2]))["--output_dir"] == "mine"


@pytest.mark.slow
def test_an_installed_wheel_trains_from_a_shipped_recipe(tmp_path):
    """Build the wheel, install it outside the repository (no editable link), and run `hf-resnet train` with a
    recipe name: the recipes and the card template travel inside the package."""
    wheels, site, out, source = tmp_path / "wheels", tmp_path / "site", tmp_path / "out", tmp_path / "source"
    # built from a copy: a build in the repository would leave build/ there, whose stale files a later wheel takes
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".venv", ".git", "build", "*.egg-info",
                                                                  "__pycache__", "outputs", ".pytest_cache"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(source)],
                   check=True, capture_output=True, timeout=300)
    wheel = next(wheels.glob("hf_resnet-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for name in ("hf_resnet/recipes/smoke/digits_smoke.yaml", "hf_resnet/templates/model_card.md",
                 "hf_resnet/assets/resnet-smoke/config.json"):
        assert name in names, name
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, timeout=300)

    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"}
    where = subprocess.run([sys.executable, "-c", "import hf_resnet; print(hf_resnet.__file__)"], env=env,
                           cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(site)), where  # the installed copy, not the repository
    result = subprocess.run(
        [str(site / "bin" / "hf-resnet"), "train", "--config", "smoke/digits_smoke", "--output_dir", str(out),
         "--max_steps", "2", "--save_strategy", "no", "--eval_strategy", "no", "--dataloader_num_workers", "0"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    for name in ("model.safetensors", "config.json", "preprocessor_config.json", "README.md", "all_results.json"):
        assert (out / name).is_file(), name


# Misconfiguration: every bad name, path or value ends with exit 2 and a message, never a traceback -------------


@pytest.fixture
def base_args(tmp_path, colour_folders):
    return recipe_args(tmp_path / "out", colour_folders, num_train_epochs="1")


def bad_yaml(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("learning_rate: [0.1\n")
    return str(path)


BAD_VALUES = [
    (["--config_name", "bundled:resnet-50"], "is not shipped with the package; a model config shipped"),
    (["--config_name", "bundled:resnet-50-processor"], "is an image processor, not a model config"),
    (["--image_processor_name", "bundled:digits"], "is a dataset, not an image processor"),
    (["--dataset_name", "bundled:imagenet"], "is not shipped with the package; a dataset shipped"),
    (["--model_name_or_path", "{tmp}/empty"], "is a folder but holds no readable model config"),
    (["--model_name_or_path", "someone/not-on-this-machine", "--config_name", "null"], "Ways on:"),
    (["--train_dir", "{tmp}/nowhere"], "`train_dir` '.*nowhere' is not a folder"),
    (["--learning_rate", "abc"], "--learning_rate.*invalid float value: 'abc'"),
    (["--eval_strategy", "sometimes"], "sometimes"),
    (["--do_train", "maybe"], "--do_train"),
    (["--max_steps", "null"], "`--max_steps` cannot be null"),
    (["--learning_rat", "0.1"], "Did you mean --learning_rate"),
    (["--tuning", "bogus"], "`tuning` must be one of"),
    (["--random_resized_crop_scale", "0.5", "2"], "random_resized_crop_scale"),
    (["--fp16", "true"], "fp16: false"),
    (["--per_device_train_batch_size", "1000"], "fewer than one batch"),
    (["--output_dir", "{tmp}/a-file/out"], "is not writable"),
    (["--config", "{tmp}/missing.yaml"], "neither a YAML file nor a shipped recipe"),
    (["--config", "{bad_yaml}"], "is not valid YAML"),
]


@pytest.mark.parametrize("extra, message", BAD_VALUES, ids=[" ".join(e) for e, _ in BAD_VALUES])
def test_bad_values_exit_2_with_a_message_and_no_traceback(tmp_path, base_args, capsys, extra, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "a-file").write_text("x")
    extra = [e.format(tmp=tmp_path, bad_yaml=bad_yaml(tmp_path)) for e in extra]
    with pytest.raises(SystemExit) as exit_info:
        main(["train", *base_args, *extra])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert err.startswith("error: ") and "Traceback" not in err, err
    assert re.search(message, err), err
    assert len(err.strip().splitlines()) == 1 or "Ways on:" in err  # the Hub error lists its ways on, one a line


def test_help_is_a_short_summary_that_starts_with_usage(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    assert out.startswith("usage: hf-resnet train --config RECIPE") and "examples:" in out
    assert "--config RECIPE" in out and "smoke/digits_smoke" in out and "--train_dir" in out
    assert "--learning_rate" in out and "--adam_beta1" not in out and "--help-all" in out
    assert len(out.splitlines()) < 200
    with pytest.raises(SystemExit):
        main(["train", "--help-all"])
    assert "--adam_beta1" in capsys.readouterr().out


def test_help_answers_without_importing_the_training_code():
    code = "import sys; from hf_resnet.cli import main\ntry: main(['train', '--help'])\nexcept SystemExit: pass\n" \
           "print('hf_resnet.run' in sys.modules, 'datasets' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "False False"


def test_a_jpeg_decoder_the_environment_asks_for_that_does_not_load_is_an_error_not_a_traceback(monkeypatch, capsys):
    env = {**os.environ, "HF_RESNET_JPEG_DECODER": "nvjpeg", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-m", "hf_resnet.cli", "train", "--config", "smoke/digits_smoke"],
                            capture_output=True, text=True, cwd=REPO, timeout=120, env=env)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stderr.startswith("error: HF_RESNET_JPEG_DECODER='nvjpeg'") and "unset it" in result.stderr

    from hf_resnet.data import images

    monkeypatch.setattr(images, "_CHOICE_PROBLEM", "HF_RESNET_JPEG_DECODER='x': not a JPEG decoder")
    with pytest.raises(SystemExit) as exit_info:  # every command checks it, not only train
        main(["predict", "some-model", "an-image.jpg"])
    assert exit_info.value.code == 2 and capsys.readouterr().err.startswith("error: HF_RESNET_JPEG_DECODER='x'")


def test_every_sub_command_takes_both_spellings_of_every_flag():
    """`--max_image_pixels` and `--max-image-pixels` alike, in every sub-command (as `hf-resnet train` takes them)."""
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    missing = []
    for name, sub in commands.choices.items():
        flags = {flag for action in sub._actions for flag in action.option_strings if flag.startswith("--")}
        for flag in flags:
            swapped = "--" + (flag[2:].replace("_", "-") if "_" in flag else flag[2:].replace("-", "_"))
            if swapped not in flags:
                missing.append(f"{name} {flag}")
    assert missing == []


def test_a_mistyped_model_folder_is_said_so_not_sent_to_the_hub(tmp_path, monkeypatch, capsys):
    from conftest import PHOTOS

    (tmp_path / "runs" / "hymenoptera").mkdir(parents=True)
    (tmp_path / "runs" / "hymenoptero").mkdir()
    monkeypatch.chdir(tmp_path)
    photo = str(next((PHOTOS / "ants").glob("*.jpg")))
    assert main(["predict", "runs/hymenopter", photo]) == 2
    err = capsys.readouterr().err
    assert "No model folder 'runs/hymenopter'" in err and "'runs/hymenoptera'" in err and "hf download" not in err
