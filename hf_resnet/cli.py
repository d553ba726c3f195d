"""`hf-resnet` command line: one sub-command per job; each imports its own module only when run, so `--help`
answers at once.

    hf-resnet train --config smoke/digits_smoke      fine-tune (the same run as recipes/finetune.py)
    hf-resnet audit DATA                             check an image folder before training

Exit codes: 0 done and nothing wrong, 1 the job found problems, 2 bad usage (the message names the fix).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .constants import DEFAULT_MAX_PIXELS


def _writable(folder: Path) -> bool:
    """os.access says yes to root everywhere: a folder with no write bit at all counts as read-only too."""
    return os.access(folder, os.W_OK) and bool(folder.stat().st_mode & 0o222)


def _write_json(report: dict, data: str, wanted: str | None) -> Path:
    """To --json, else DATA/audit.json, else (DATA not writable) ./audit.json."""
    if wanted:
        target = Path(wanted)
    elif _writable(Path(data)):
        target = Path(data) / "audit.json"
    else:
        target = Path.cwd() / "audit.json"
        print(f"{data} is not writable: writing the JSON report to {target}", file=sys.stderr)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(report, indent=2) + "\n")
    return target


def _pixels(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of pixels (0: no limit)")
    return int(text)


def _audit(args: argparse.Namespace) -> int:
    from .reports.audit import AuditError, audit_folder, format_report

    max_pixels = args.max_image_pixels or None
    try:
        report = audit_folder(args.data, max_pixels=max_pixels, progress=True)
    except AuditError as err:
        print(f"hf-resnet audit: {err}", file=sys.stderr)
        return 2
    print(format_report(report))
    try:
        target = _write_json(report, args.data, args.json)
    except OSError as err:
        print(f"hf-resnet audit: cannot write the JSON report ({err}); pass --json WRITABLE_PATH.", file=sys.stderr)
        return 2
    print(f"JSON report: {target}")
    return 0 if report["ok"] else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-resnet", description="Fine-tune and check HF ResNet image classifiers.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("train", add_help=False, help="fine-tune with a YAML recipe: hf-resnet train --config "
                        "smoke/digits_smoke (`hf-resnet train --help` lists every field)")
    audit = commands.add_parser("audit", help="check an image-folder dataset before training", description=(
        "Check DATA (train/, val/|validation/|valid/, test/ with one sub-folder per class, or one class-folder tree) "
        "for undecodable files, duplicates, leaks, missing or tiny classes, modes and sizes. Exit 0: no problems, "
        "1: problems, 2: bad usage."))
    audit.add_argument("data", metavar="DATA", help="the dataset folder")
    audit.add_argument("--json", metavar="PATH", help="where to write the JSON report (default: DATA/audit.json)")
    audit.add_argument("--max-image-pixels", type=_pixels, default=DEFAULT_MAX_PIXELS, metavar="N",
                       help=f"refuse images over N pixels as training does (default {DEFAULT_MAX_PIXELS:,}; 0: none)")
    audit.set_defaults(run=_audit)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train"]:  # the recipe parser owns every flag after `train`
        from .run import cli

        cli(argv[1:])
        return 0
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
