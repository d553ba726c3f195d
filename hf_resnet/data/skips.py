"""Images that could not be decoded: record each (in any DataLoader worker), report them, stop when too many.

Each skip is logged with its path (or index) and reason, and appended as one JSON line to
`output_dir/skipped_images.jsonl` (appends of one short line are atomic, so workers and processes can share the
file and a crash loses nothing). `skipped_images.json` aggregates them per split and per class; the run stops
with the worst files named once the share of a train or validation split's distinct images skipped exceeds
`max_skipped_share` (a test image that fails gets an empty row in its predictions instead: it stops nothing).
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter, defaultdict
from pathlib import Path

from ..constants import TEST_SPLIT
from ..errors import TooManySkippedImages

logger = logging.getLogger(__name__)

JSONL_NAME = "skipped_images.jsonl"
REPORT_NAME = "skipped_images.json"


class SkipRecorder:
    """Picklable: one per split, called from DataLoader workers."""

    def __init__(self, output_dir: str | None, split: str):
        self.path = str(Path(output_dir) / JSONL_NAME) if output_dir else None
        self.split = split

    def record(self, index: int | None, file: str, label: str | None, reason: str) -> None:
        logger.warning("Skipping %s image %s (index %s): %s", self.split, file, index, reason)
        if self.path is None:
            return
        line = json.dumps({"split": self.split, "index": index, "file": file, "label": label, "reason": reason})
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")


def start_afresh(output_dir: str) -> None:
    """A run that does not resume keeps the previous run's list beside it, not mixed into its own."""
    path = Path(output_dir) / JSONL_NAME
    if path.is_file():
        os.replace(path, path.with_suffix(".previous.jsonl"))


def read_skips(output_dir: str) -> list[dict]:
    path = Path(output_dir) / JSONL_NAME
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut short by a crash mid-write
            continue
    return rows


def build_report(output_dir: str, split_sizes: dict[str, int | None]) -> dict:
    """Distinct skipped images per split (a file skipped every epoch counts once), per class and per reason."""
    distinct: dict[str, dict] = defaultdict(dict)
    for row in read_skips(output_dir):
        key = row["file"] if row.get("file") else row.get("index")
        distinct[row["split"]][key] = row
    report = {}
    for split, rows in distinct.items():
        size = split_sizes.get(split)
        report[split] = {
            "skipped": len(rows),
            "size": size,
            "share": (len(rows) / size) if size else None,
            "per_class": dict(Counter(str(r.get("label")) for r in rows.values())),
            "per_reason": dict(Counter(r["reason"].split(":")[0] for r in rows.values())),
            "files": [{"file": r["file"], "index": r.get("index"), "label": r.get("label"), "reason": r["reason"]}
                      for r in rows.values()],
        }
    return report


def write_report(output_dir: str, report: dict) -> None:
    if report:
        Path(output_dir, REPORT_NAME).write_text(json.dumps(report, indent=2), encoding="utf-8")


def skipped_indices(report: dict, split: str) -> dict[int, str]:
    """Example index -> reason, for the skipped images of one split (e.g. to mark them in a predictions file)."""
    return {row["index"]: row["reason"] for row in report.get(split, {}).get("files", [])}


def check_share(report: dict, max_share: float) -> None:
    """Stop when a train or validation split lost more than `max_share` of its images; test splits never stop
    a run (their skipped images are marked in the predictions)."""
    for split, entry in report.items():
        if split == TEST_SPLIT or entry["share"] is None or entry["share"] <= max_share:
            continue
        worst = "\n".join(f"  {f['file']}: {f['reason']}" for f in entry["files"][:10])
        raise TooManySkippedImages(
            f"{entry['skipped']} of {entry['size']} {split} images ({entry['share']:.1%}) could not be decoded, "
            f"over `max_skipped_share` ({max_share:.1%}). First ones:\n{worst}\nFix or remove them (see "
            f"{REPORT_NAME} and `hf-resnet audit`), or raise `max_skipped_share`."
        )


def publish(report: dict, output_dir: str, max_share: float, main_process: bool) -> None:
    """Write the report (main process only), then stop if a train or validation split skipped too much."""
    if main_process:
        write_report(output_dir, report)
    check_share(report, max_share)
