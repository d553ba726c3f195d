"""Which checkpoint a rerun resumes from: the newest *complete* one.

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
from pathlib import Path

logger = logging.getLogger(__name__)

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


def is_complete(folder: str | Path, needs_optimizer: bool = True) -> bool:
    """Weights, (optimizer and scheduler,) and a readable trainer_state.json: what `resume_from_checkpoint` needs."""
    folder = Path(folder)
    try:
        json.loads((folder / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return False
    if not any((folder / name).is_file() and (folder / name).stat().st_size > 0 for name in WEIGHT_FILES):
        return False
    if needs_optimizer:
        return all((folder / name).is_file() and (folder / name).stat().st_size > 0 for name in ("optimizer.pt", "scheduler.pt"))
    return True


def last_complete_checkpoint(output_dir: str | Path, needs_optimizer: bool = True, set_aside: bool = True) -> str | None:
    """The newest complete `checkpoint-N` in output_dir; newer incomplete ones are renamed out of the way."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return None
    found = sorted(
        ((int(m.group(1)), p) for p in output_dir.iterdir() if p.is_dir() and (m := CHECKPOINT_RE.match(p.name))),
        reverse=True,
    )
    for step, folder in found:
        if is_complete(folder, needs_optimizer):
            return str(folder)
        if set_aside:
            target = output_dir / f"incomplete-{folder.name}"
            suffix = 1
            while target.exists():
                target = output_dir / f"incomplete-{folder.name}.{suffix}"
                suffix += 1
            os.replace(folder, target)
            logger.warning("%s was not completely written (a crash mid-save?); set aside as %s", folder, target.name)
    return None
