"""The `hf-resnet` command: its sub-commands, and a non-editable install that trains from a shipped recipe."""

import os
import subprocess
import sys
import zipfile

import pytest
from conftest import REPO

from hf_resnet.cli import build_parser


def test_commands_are_listed():
    help_text = build_parser().format_help()
    assert "train" in help_text and "audit" in help_text


@pytest.mark.slow
def test_an_installed_wheel_trains_from_a_shipped_recipe(tmp_path):
    """Build the wheel, install it outside the repository (no editable link), and run `hf-resnet train` with a
    recipe name: the recipes and the card template travel inside the package."""
    wheels, site, out = tmp_path / "wheels", tmp_path / "site", tmp_path / "out"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(REPO)],
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
