"""A model pulled from the Hub: laid out in a Hugging Face cache folder exactly as the Hub client leaves it
(refs/main + snapshots/<revision>/ linking into blobs/), it resolves offline as `you/repo` for fine-tuning,
`hf-resnet evaluate` and `pipeline()`."""

import hashlib
import json
import os
import subprocess
import sys

import pytest
from conftest import REPO, save_checkpoint

SCRIPT = r"""
import json, sys
from transformers import pipeline
from hf_resnet import cli
from hf_resnet.parser import parse_args
from hf_resnet.run import main

train, validation, image, out = sys.argv[1:5]
quiet = ["--dataloader_num_workers", "0", "--report_to", "none"]
code = cli.main(["evaluate", "you/repo", "--validation_dir", validation, "--output_dir", out + "/eval", *quiet])
tuned = main(*parse_args(["--model_name_or_path", "you/repo", "--train_dir", train, "--validation_dir", validation,
                          "--output_dir", out + "/tuned", "--max_steps", "2", "--per_device_train_batch_size", "8",
                          "--save_strategy", "no", "--eval_strategy", "no", *quiet]))
served = pipeline("image-classification", model="you/repo", device="cpu")(image, top_k=1)
print("RESULT " + json.dumps({"evaluate": code, "tuned_samples": tuned["eval_samples"], "served": served[0]["label"]}))
"""


def lay_out_in_cache(source, cache, repo_id: str, revision: str = "0123456789abcdef0123456789abcdef01234567"):
    """hub/models--you--repo/{refs/main, blobs/<hash>, snapshots/<revision>/<file> -> ../../blobs/<hash>}."""
    root = cache / f"models--{repo_id.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(revision)
    (root / "blobs").mkdir()
    (root / "snapshots" / revision).mkdir(parents=True)
    for file in sorted(source.iterdir()):
        data = file.read_bytes()
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (root / "snapshots" / revision / file.name).symlink_to(os.path.relpath(blob, blob.parent.parent / "snapshots"
                                                                               / revision))
    return root


@pytest.mark.slow
def test_you_repo_resolves_from_the_cache_offline(tmp_path, colour_folders):
    source = save_checkpoint(tmp_path / "source", ["blue", "green", "red"])
    (source / "README.md").write_text("---\nlicense: apache-2.0\n---\n# you/repo\n")
    home = tmp_path / "hf-home"
    lay_out_in_cache(source, home / "hub", "you/repo")
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE")}
    env.update(HF_HOME=str(home), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    image = sorted((colour_folders["validation"] / "red").iterdir())[0]
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(colour_folders["train"]), str(colour_folders["validation"]), str(image),
         str(tmp_path / "out")],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith("RESULT "))
    found = json.loads(line.removeprefix("RESULT "))
    assert found["evaluate"] == 0 and found["tuned_samples"] == 24 and found["served"] in {"blue", "green", "red"}
    report = json.loads((tmp_path / "out" / "eval" / "report" / "validation" / "eval_report.json").read_text())
    assert report["scored"] == 24
    card = (tmp_path / "out" / "tuned" / "README.md").read_text()
    assert "base_model: you/repo" in card  # a Hub id: linked in the card's metadata
    assert "license: apache-2.0" in card and "inherited from you/repo's card" in card  # read from the cache
