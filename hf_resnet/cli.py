"""`hf-resnet` command line: one sub-command per job; each imports its own module only when run, so `--help`
answers at once.

    hf-resnet train --config smoke/digits_smoke      fine-tune (the same run as recipes/finetune.py)
    hf-resnet audit DATA                             check an image folder before training

Exit codes: 0 done and nothing wrong, 1 the job found problems, 2 bad usage (the message names the fix).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .constants import DEFAULT_MAX_PIXELS


def _json_target(data: str, wanted: str | None) -> Path | None:
    """Where the JSON report goes: --json PATH (its folder must exist), else ./audit.json; never into DATA
    (a re-audit would count the report as a stray file, and a read-only dataset would fail). None: stdout."""
    if wanted == "-":
        return None
    target = Path(wanted) if wanted else Path.cwd() / "audit.json"
    if not target.parent.is_dir():
        raise ValueError(f"the folder of --json {str(target)!r} does not exist; create it or pass another path")
    if Path(data).resolve() in target.resolve().parents:
        raise ValueError(f"{str(target)!r} is inside DATA, and the audit never writes into the data; pass "
                         "--json PATH outside it (or --json - for standard output)")
    return target


def _pixels(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of pixels (0: no limit)")
    return int(text)


def _audit(args: argparse.Namespace) -> int:
    from .reports.audit import AuditError, audit_folder, format_report

    max_pixels = args.max_image_pixels or None
    try:
        target = _json_target(args.data, args.json)  # before the (long) audit: a bad --json fails at once
        report = audit_folder(args.data, max_pixels=max_pixels, progress=True)
    except (AuditError, ValueError) as err:
        print(f"hf-resnet audit: {err}", file=sys.stderr)
        return 2
    text = json.dumps(report, indent=2) + "\n"
    if target is None:  # --json -: the JSON on stdout, the table on stderr
        print(format_report(report), file=sys.stderr)
        sys.stdout.write(text)
        return 0 if report["ok"] else 1
    print(format_report(report))
    try:
        target.write_text(text)
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
    audit.add_argument("--json", metavar="PATH", help="where to write the JSON report (default: ./audit.json; "
                       "`-`: standard output; never inside DATA)")
    audit.add_argument("--max-image-pixels", type=_pixels, default=DEFAULT_MAX_PIXELS, metavar="N",
                       help=f"refuse images over N pixels as training does (default {DEFAULT_MAX_PIXELS:,}; 0: none)")
    audit.set_defaults(run=_audit)
    return parser


def train(argv: list[str] | None = None) -> int:
    """`hf-resnet train ARGS` (and `recipes/finetune.py ARGS`): a user's error ends with its message on one line
    and exit code 2, not a traceback. `--help` answers before the training code is imported."""
    from .errors import HfResnetError
    from .parser import parse_args

    try:
        arguments = parse_args(argv)
        from .run import main as run

        run(*arguments)
    except HfResnetError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        _interrupted(arguments[-1].output_dir if "arguments" in locals() else None)
        raise SystemExit(130) from None
    return 0


def _interrupted(output_dir: str | None) -> None:
    """Ctrl-C: say what is kept and how to go on, instead of a traceback."""
    from .checkpoints import last_complete_checkpoint

    found = last_complete_checkpoint(output_dir, set_aside=False) if output_dir else None
    keep = f"{found} is complete: rerun the same command to resume from it." if found else (
        "No complete checkpoint was saved yet: rerun the same command to start again."
    )
    print(f"\ninterrupted. {keep}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train"]:  # the recipe parser owns every flag after `train`
        return train(argv[1:])
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
