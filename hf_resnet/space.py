"""`hf-resnet demo MODEL --space DIR`: a Hugging Face Space folder that runs the same demo against the model's
Hub id, and `--push` to create or update that Space.

The folder holds:

    app.py             builds and launches `hf_resnet.demo` for the model (HF_RESNET_DEMO_MODEL overrides it,
                       e.g. a local folder: `HF_RESNET_DEMO_MODEL=outputs/run python app.py`)
    requirements.txt   the package's own dependencies (Gradio itself comes from the Space's sdk_version)
    README.md          the Space's YAML header (sdk gradio, sdk_version, app_file, models), made by huggingface_hub
    hf_resnet/         this package, copied: the Space runs the code that trained and evaluated the model
    examples/          the gallery's images, when the model has some (named <true>-as-<predicted> for a report's)

No Gradio, torch or network here: writing is plain files; pushing imports huggingface_hub when asked.
"""

from __future__ import annotations

import re
import shutil
from importlib import metadata
from pathlib import Path

from .errors import ConfigError

PACKAGE = Path(__file__).resolve().parent
APP = '''"""The hf-resnet demo of {model_id}, as a Hugging Face Space (written by `hf-resnet demo --space`).

Here: `pip install -r requirements.txt gradio=={gradio_version}`, then `python app.py` (http://127.0.0.1:7860);
`HF_RESNET_DEMO_MODEL=path/to/model python app.py` serves another model, e.g. a local folder. On a Space the
platform sets GRADIO_SERVER_NAME and GRADIO_SERVER_PORT.
"""

import os
from pathlib import Path

from hf_resnet.demo import build_app, launch

MODEL = os.environ.get("HF_RESNET_DEMO_MODEL", {model_id!r})
EXAMPLES = Path(__file__).resolve().with_name("examples")

if __name__ == "__main__":
    app = build_app(MODEL, examples=EXAMPLES if EXAMPLES.is_dir() else None)
    launch(app, host=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
           port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
'''
BODY = """
# {title}

A web demo of [{model_id}](https://huggingface.co/{model_id}), an image classifier fine-tuned with hf-resnet:
upload, paste or photograph an image and read its five most likely classes, the computation time, and the
Grad-CAM of the top class. Written by `hf-resnet demo {model_id} --space DIR`.
"""


def requirements() -> list[str]:
    """The installed package's own dependencies (no extras): what `hf_resnet.demo` needs beside Gradio."""
    from packaging.requirements import Requirement

    try:
        wanted = metadata.requires("hf-resnet") or []
    except metadata.PackageNotFoundError as err:
        raise ConfigError("hf-resnet is not installed, so its requirements are unknown: pip install -e .") from err
    return [entry for entry in wanted if Requirement(entry).marker is None]


def _example_name(index: int, file: str, note: str) -> str:
    """`03-blue-as-green.png` for a report's mistake, `01-blue.png` for a right answer, else the file's name."""
    found = re.search(r"true (.+?), predicted (.+?) \(", note) or re.search(r"^✓ \S+: (.+?) \(", note)
    stem = "-as-".join(found.groups()) if found else Path(file).stem
    return f"{index:02d}-{re.sub(r'[^A-Za-z0-9_.-]+', '_', stem)}{Path(file).suffix.lower()}"


def write_space(folder: str | Path, model_id: str, examples: list[tuple[str, str]] = (),
                title: str | None = None) -> Path:
    """Write the Space folder for the Hub model `model_id`; `examples`: (file, note) pairs to copy in."""
    import gradio
    from huggingface_hub import SpaceCard, SpaceCardData

    if not re.fullmatch(r"[\w.-]+/[\w.-]+", model_id):
        raise ConfigError(f"{model_id!r} is not a Hub model id (OWNER/NAME): the Space loads the model from the "
                          "Hub; pass --hub_model_id OWNER/NAME (push the model first: --push_to_hub true)")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    title = title or model_id.split("/")[-1]
    (folder / "app.py").write_text(APP.format(model_id=model_id, gradio_version=gradio.__version__))
    (folder / "requirements.txt").write_text(
        "# hf-resnet's dependencies; Gradio comes from the README's sdk_version\n" + "\n".join(requirements()) + "\n")
    data = SpaceCardData(title=title[:60], sdk="gradio", sdk_version=gradio.__version__, app_file="app.py",
                         models=[model_id], tags=["image-classification", "hf-resnet"], pinned=False,
                         short_description=f"Image classifier demo of {model_id}"[:60])
    SpaceCard(f"---\n{data.to_yaml()}\n---\n{BODY.format(title=title, model_id=model_id)}").save(folder / "README.md")
    shutil.rmtree(folder / "hf_resnet", ignore_errors=True)
    shutil.copytree(PACKAGE, folder / "hf_resnet", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.rmtree(folder / "examples", ignore_errors=True)
    if examples:
        (folder / "examples").mkdir()
        for index, (file, note) in enumerate(examples, 1):
            shutil.copyfile(file, folder / "examples" / _example_name(index, file, note))
    return folder


def push_space(folder: str | Path, space_id: str, token: str | None = None, private: bool = False) -> str:
    """Create the Space `space_id` (OWNER/NAME, or NAME in the logged-in user's namespace) if needed and upload
    `folder` to it, with `token` or the one `hf auth login` saved; returns the Space's URL."""
    from huggingface_hub import create_repo, upload_folder

    url = create_repo(space_id, repo_type="space", space_sdk="gradio", private=private, exist_ok=True, token=token)
    upload_folder(folder_path=str(folder), repo_id=url.repo_id, repo_type="space", token=token,
                  commit_message="hf-resnet demo --space", ignore_patterns=["__pycache__/*", "*.pyc"])
    return str(url)
