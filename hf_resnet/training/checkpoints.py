"""Which checkpoint a rerun resumes from: the newest *complete* one; and files that others can read.

The Trainer writes `checkpoint-N/` file by file (weights, optimizer, scheduler, RNG states, and
`trainer_state.json` last) and only then deletes older checkpoints, so a crash mid-save leaves a newer, partial
folder beside the previous complete one. `get_last_checkpoint` would pick the partial one and the resume would
fail; here it is set aside (renamed `incomplete-checkpoint-N`, nothing deleted) and the complete one is used.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path

from ..errors import ConfigError, DiskFullError

logger = logging.getLogger(__name__)

PRIVATE_MODE = 0o600  # what tempfile.mkstemp (and so safetensors' atomic write) gives a file, whatever the umask


def usual_mode() -> int:
    """The mode a newly created file gets under this process's umask (0o644 under the usual 022)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def fix_file_modes(folder: str | Path) -> int:
    """Give files under `folder` written private (0600) by a library the mode the umask asks for, so another
    user, a web server or a container with another uid can read the weights. Returns how many were changed."""
    wanted, changed = usual_mode(), 0
    if wanted == PRIVATE_MODE or not Path(folder).is_dir():
        return 0
    for path in Path(folder).rglob("*"):
        if path.is_file() and not path.is_symlink() and path.stat().st_mode & 0o777 == PRIVATE_MODE:
            path.chmod(wanted)
            changed += 1
    return changed

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


def _non_empty(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 0


def is_complete(folder: str | Path, needs_optimizer: bool = True) -> bool:
    """Weights, (optimizer and scheduler,) and a readable trainer_state.json: what `resume_from_checkpoint` needs."""
    folder = Path(folder)
    try:
        json.loads((folder / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return False
    if not any(_non_empty(folder / name) for name in WEIGHT_FILES):
        return False
    if needs_optimizer:
        return all(_non_empty(folder / name) for name in ("optimizer.pt", "scheduler.pt"))
    return True


def last_complete_checkpoint(
    output_dir: str | Path, needs_optimizer: bool = True, set_aside: bool = True
) -> str | None:
    """The newest complete `checkpoint-N` in output_dir; newer incomplete ones are renamed out of the way."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return None
    found = sorted(
        ((int(m.group(1)), p) for p in output_dir.iterdir() if p.is_dir() and (m := CHECKPOINT_RE.match(p.name))),
        reverse=True,
    )
    for _, folder in found:
        if is_complete(folder, needs_optimizer):
            return str(folder)
        if needs_optimizer and is_complete(folder, needs_optimizer=False):
            raise ConfigError(
                f"{folder} holds weights and trainer state but no optimizer (saved with `save_only_model: true`?). "
                "Pass `save_only_model: true` to resume from the weights alone, or `resume_from_checkpoint: false`."
            )
        if set_aside:
            target = output_dir / f"incomplete-{folder.name}"
            suffix = 1
            while target.exists():
                target = output_dir / f"incomplete-{folder.name}.{suffix}"
                suffix += 1
            os.replace(folder, target)
            logger.warning("%s was not completely written (a crash mid-save?); set aside as %s", folder, target.name)
    return None


NO_RESUME = ("false", "no", "none", "")
FINISHED_MARKER = "train_results.json"  # written by the recipe once training, saving and state are done


def resume_checkpoint(training_args, labels: list[str] | None = None) -> str | None:
    """What `trainer.train(resume_from_checkpoint=...)` gets.

    `resume_from_checkpoint`: unset or `true` -> the newest complete checkpoint in output_dir (a rerun continues a
    killed run); a path -> that one; `false` -> start afresh. A finished run is not silently re-run.
    """
    value = training_args.resume_from_checkpoint
    if isinstance(value, bool):  # YAML's `resume_from_checkpoint: false`
        value = str(value)
    if not training_args.do_train or (isinstance(value, str) and value.strip().lower() in NO_RESUME):
        return None
    explicit = value is not None and value.strip().lower() not in ("true", "auto")
    if explicit:
        if not is_complete(value, needs_optimizer=not training_args.save_only_model):
            raise ConfigError(f"`resume_from_checkpoint` {value!r} is not a complete checkpoint folder; point it at "
                              "a checkpoint-N folder, or set it to false to start afresh.")
        found = value
    else:
        found = last_complete_checkpoint(
            training_args.output_dir, needs_optimizer=not training_args.save_only_model,
            set_aside=training_args.process_index == 0,  # one process renames; the others only read
        )
    if found is not None and labels is not None:
        check_labels(found, labels)
    finished = Path(training_args.output_dir) / FINISHED_MARKER
    if not explicit and finished.is_file():
        raise ConfigError(
            f"{training_args.output_dir} already holds a finished run ({FINISHED_MARKER}). Use a new `output_dir`; "
            "`--resume_from_checkpoint false` to train again from scratch over it; or `--resume_from_checkpoint "
            "<output_dir>/checkpoint-N` to continue from a checkpoint (e.g. with more epochs)."
        )
    return found


def check_labels(checkpoint: str, labels: list[str]) -> None:
    """Refuse to resume a checkpoint whose head predicts other classes than the data now has."""
    try:
        config = json.loads((Path(checkpoint) / "config.json").read_text())
    except (OSError, ValueError):
        return
    saved = config.get("id2label") or {}
    saved_names = [saved.get(str(i)) for i in range(len(saved))]
    if saved_names and saved_names != list(labels):
        raise ConfigError(
            f"{checkpoint} was trained on classes {saved_names[:10]}{'...' if len(saved_names) > 10 else ''}, but the "
            f"data now has {labels[:10]}{'...' if len(labels) > 10 else ''}. Use a new `output_dir`, or "
            "`--resume_from_checkpoint false` to start afresh."
        )


# Writing a checkpoint: on disk before it counts as complete; a full disk said in one line ------------------------


def sync_folder(folder: str | Path) -> None:
    """fsync every file under `folder` and the folder itself: what was written is on disk, not only in the page
    cache, before the checkpoint is marked complete (its trainer_state.json)."""
    for path in sorted(Path(folder).rglob("*")):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def folder_bytes(folder: str | Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def disk_full(output_dir: str | Path, folder: str | Path, err: OSError) -> DiskFullError:
    """The one-line error for a checkpoint that did not fit, with the space it needs (the last complete
    checkpoint's size, else what was written before the disk filled)."""
    previous = last_complete_checkpoint(output_dir, needs_optimizer=False, set_aside=False)
    needed = folder_bytes(previous) if previous else folder_bytes(folder) if Path(folder).is_dir() else 0
    free = shutil.disk_usage(output_dir).free
    kept = f"{previous} is complete and a rerun resumes from it" if previous else "no earlier checkpoint exists"
    return DiskFullError(f"The disk filled while writing {folder} ({err.strerror}): a checkpoint needs about "
                         f"{needed / 2**20:,.0f} MB and {free / 2**20:,.0f} MB are free under {output_dir}. Free "
                         f"some space (or lower `save_total_limit`) and rerun the same command; {kept}.")
