"""`hf-resnet` command line: one sub-command per job; each imports its own module only when run, so `--help`
answers at once.

    hf-resnet train --config smoke/digits_smoke      fine-tune (the same run as recipes/finetune.py)
    hf-resnet evaluate MODEL --validation_dir DIR    the full report for a model, without training
    hf-resnet predict MODEL IMAGE_OR_FOLDER...       top-k labels, probabilities and time per image
    hf-resnet export MODEL --onnx [--int8]           ONNX (and int8) for ONNX Runtime, checked against PyTorch
    hf-resnet demo MODEL [--space DIR]               a web page for the model (Gradio), or a Hugging Face Space
    hf-resnet audit DATA                             check an image folder before training
    hf-resnet sweep --space S --n_trials N ...       hyperparameter search with Optuna (sweep/command.py)
    hf-resnet lr-find --config RECIPE                learning-rate range test: lr_find.png, a suggested rate

Exit codes: 0 done and nothing wrong, 1 the job found problems (e.g. unreadable images), 2 bad usage (the
message names the fix).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .constants import DEFAULT_MAX_PIXELS
from .demo_cli import add_command as add_demo_command  # argparse only: Gradio loads when the demo runs
from .flags import add_model_flags, both, pixels, positive
from .lr_find_cli import add_command as add_lr_find_command
from .predict_cli import add_command as add_predict_command


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


def _audit(args: argparse.Namespace) -> int:
    from .data.audit import AuditError, audit_folder, format_report

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


# evaluate -----------------------------------------------------------------------------------------------------------

EVALUATE_OPTIONS = (  # (flag, metavar, help): the fields people set; any other `hf-resnet train` field is accepted
    ("--dataset_name", "NAME", "Hub dataset id (e.g. ILSVRC/imagenet-1k) whose validation split is scored"),
    ("--dataset_config_name", "NAME", "configuration of the Hub dataset"),
    ("--validation_dir", "DIR", "image folder to score, one sub-folder per class (instead of --dataset_name)"),
    ("--test_dir", "DIR", "a second folder to score (class sub-folders) or predict (flat) as the test split"),
    ("--class_map", "MAP", "each folder's class of the model, by row, synset id or name: '{cat: 281}' or a file"),
    ("--streaming", "true|false", "read the dataset as a stream: nothing downloaded up front (default false)"),
    ("--output_dir", "DIR", "where the report goes (default: ./eval-<model folder or repo name>)"),
    ("--per_device_eval_batch_size", "N", "images per forward pass and device (default 8)"),
    ("--max_eval_samples", "N", "score only the first N images"),
    ("--tta", "MODE", "test-time augmentation, scored beside the plain figures (eval_tta_*): flip, five_crop, "
     "augment (--tta_passes N training augmentations, fastai's blend)"),
    ("--tta_passes", "N", "augmented passes of --tta augment (default 4)"),
    ("--eval_image_size", "N", "evaluate at this input size instead of the processor's crop (e.g. 288)"),
    ("--eval_crop_pct", "X", "with it: crop / resized short side (1.0: the whole resized image)"),
    ("--dataloader_num_workers", "N", "decoding processes (default: cores - 1, at most 16, with a GPU; 2 on a CPU)"),
    ("--token", "TOKEN", "Hub token for gated models or datasets"),
    ("--push_to_hub", "true|false", "upload report/ and the results JSON to --hub_model_id (default false)"),
    ("--hub_model_id", "OWNER/NAME", "the Hub repo the report goes to"),
    ("--hub_private_repo", "true|false", "create that repo private"),
    ("--config", "RECIPE", "a YAML recipe (path or shipped name) for any other field"),
)


def _evaluate_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("model", metavar="MODEL", help="local model folder or Hub id (from the cache when "
                        "HF_HUB_OFFLINE=1), e.g. outputs/digits-smoke or microsoft/resnet-50")
    for flag, metavar, text in EVALUATE_OPTIONS:
        parser.add_argument(*both(flag), dest=flag.lstrip("-"), metavar=metavar, help=text)
    return parser


def _evaluate_parser() -> argparse.ArgumentParser:
    return _evaluate_arguments(argparse.ArgumentParser(
        prog="hf-resnet evaluate", formatter_class=argparse.RawDescriptionHelpFormatter,
        description=EVALUATE_DESCRIPTION))


EVALUATE_DESCRIPTION = """\
Score MODEL on a labeled split without training and write the full report into --output_dir: eval_results.json,
report/<split>/ with eval_report.json (metrics, per-class precision/recall/F1, most-confused pairs, calibration),
confusion_matrix.csv/.png, predictions_<split>.csv, predictions_grid.png, gradcam.png, reliability_diagram.png and
top_losses.csv/.png (the images of highest loss, with their files: mislabelled ones show up there).

The model's head is kept: each of the dataset's classes is matched to one of its classes by name, by synset id
(ImageNet's n01440764/ folders; Kaggle's flat ILSVRC/Data/CLS-LOC/val is labelled by its LOC_val_solution.csv), or
by --class_map. Data with some of the model's classes is scored among those (all_classes_* metrics: among all).
Any other field of `hf-resnet train` is accepted too (e.g. --image_column_name img). Examples:

  hf-resnet evaluate outputs/digits-smoke --validation_dir data/val
  hf-resnet evaluate microsoft/resnet-50 --validation_dir imagenet/ILSVRC/Data/CLS-LOC/val
  hf-resnet evaluate microsoft/resnet-50 --dataset_name ILSVRC/imagenet-1k --streaming true \\
      --per_device_eval_batch_size 256 --dataloader_num_workers 8
"""


def _evaluate(argv: list[str]) -> int:
    known, rest = _evaluate_parser().parse_known_args(argv)
    forwarded = ["--model_name_or_path", known.model, "--do_train", "false", "--do_eval", "true"]
    for flag, _, _ in EVALUATE_OPTIONS:
        value = getattr(known, flag.lstrip("-"))
        if value is not None:
            forwarded += [flag, value]
    if known.output_dir is None:
        name = Path(known.model.rstrip("/")).name or "model"
        forwarded += ["--output_dir", f"eval-{name}"]
    return train(forwarded + rest)


# export -------------------------------------------------------------------------------------------------------------

EXPORT_DESCRIPTION = """\
Write MODEL as ONNX for ONNX Runtime into --output: model.onnx (input pixel_values, float32 (batch, 3, H, W)
preprocessed as the image processor does; output logits; any batch size), config.json, preprocessor_config.json
and export_report.json. The ONNX model's logits are compared with PyTorch's on images (those of --calibration or
--eval-dir, else random pictures) and must agree within --atol (1e-4), or the export fails.

--int8 adds model_int8.onnx: static int8 quantisation (QDQ) calibrated on --calibration DIR (any images like the
ones the model will see, searched recursively) or on --eval-dir. With --eval-dir (one sub-folder per class, named
as the model's labels) the top-1 of fp32 and int8 and the share of images whose top-1 changed are printed.
Needs the export extra: pip install "hf-resnet[export]". Examples:

  hf-resnet export outputs/digits-smoke --onnx
  hf-resnet export outputs/resnet50-run --onnx --int8 --calibration data/train --eval-dir data/val --output onnx/
"""


def _export(args: argparse.Namespace) -> int:
    import transformers

    from .errors import HfResnetError
    from .hub import settle_offline_mode

    if not args.onnx:
        print("hf-resnet export: name the format: --onnx (the only one so far), e.g. hf-resnet export MODEL --onnx",
              file=sys.stderr)
        return 2
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    output = args.output or f"{Path(args.model.rstrip('/')).name or 'model'}-onnx"
    settle_offline_mode([args.model])
    try:
        from .export import export_model

        export_model(args.model, output, int8=args.int8, calibration=args.calibration, eval_dir=args.eval_dir,
                     calibration_images=args.calibration_images, atol=args.atol, revision=args.revision,
                     token=args.token, allow_pickle_weights=args.allow_pickle_weights)
    except (HfResnetError, RuntimeError) as err:
        print(f"hf-resnet export: {err}", file=sys.stderr)
        return 2
    return 0


def _export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL", help="local model folder or Hub id (from the cache when "
                        "HF_HUB_OFFLINE=1), e.g. outputs/digits-smoke")
    parser.add_argument("--onnx", action="store_true", help="export to ONNX (required: the format written)")
    parser.add_argument("--int8", action="store_true", help="also write model_int8.onnx, statically quantised; "
                        "needs --calibration or --eval-dir")
    parser.add_argument("--output", metavar="DIR", help="folder to write (default: ./<model folder name>-onnx)")
    parser.add_argument("--calibration", metavar="DIR", help="images to calibrate int8 on (searched recursively)")
    parser.add_argument(*both("--calibration-images"), dest="calibration_images", type=positive,
                        default=128, metavar="N", help="images calibrated on, spread over the folder (default 128)")
    parser.add_argument(*both("--eval-dir"), dest="eval_dir", metavar="DIR", help="labelled folder (class "
                        "sub-folders): top-1 of fp32 and int8 and the share of changed top-1 are printed")
    parser.add_argument("--atol", type=float, default=1e-4, metavar="X",
                        help="largest |logit difference| to PyTorch allowed for the fp32 model (default 1e-4)")
    add_model_flags(parser)
    parser.set_defaults(run=_export)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-resnet", description="Fine-tune and check HF ResNet image classifiers.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("train", add_help=False, help="fine-tune with a YAML recipe: hf-resnet train --config "
                        "smoke/digits_smoke (`hf-resnet train --help` lists every field)")
    _evaluate_arguments(commands.add_parser(
        "evaluate", help="write the full evaluation report for a model, without training",
        description=EVALUATE_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter))
    add_predict_command(commands)
    add_demo_command(commands)
    add_lr_find_command(commands)
    _export_arguments(commands.add_parser(
        "export", help="ONNX (--onnx) and int8 (--int8) models for ONNX Runtime, checked against PyTorch",
        description=EXPORT_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter))
    audit = commands.add_parser("audit", help="check an image-folder dataset before training", description=(
        "Check DATA (train/, val/|validation/|valid/, test/ with one sub-folder per class, or one class-folder tree) "
        "for undecodable files, duplicates, leaks, missing or tiny classes, modes and sizes. Exit 0: no problems, "
        "1: problems, 2: bad usage."))
    audit.add_argument("data", metavar="DATA", help="the dataset folder")
    audit.add_argument("--json", metavar="PATH", help="where to write the JSON report (default: ./audit.json; "
                       "`-`: standard output; never inside DATA)")
    audit.add_argument(*both("--max-image-pixels"), type=pixels, default=DEFAULT_MAX_PIXELS, metavar="N",
                       help=f"refuse images over N pixels as training does (default {DEFAULT_MAX_PIXELS:,}; 0: none)")
    audit.set_defaults(run=_audit)
    from .sweep.command import DESCRIPTION, add_arguments  # argparse only: --help stays fast

    add_arguments(commands.add_parser("sweep", help="search hyperparameters with Optuna over any train field",
                                      description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter))
    return parser


def train(argv: list[str] | None = None) -> int:
    """`hf-resnet train ARGS` (and `recipes/finetune.py ARGS`): a user's error ends with its message on one line
    and exit code 2, not a traceback. `--help` answers before the training code is imported."""
    from .errors import HfResnetError
    from .parser import parse_args
    from .training.distributed import end_process_group
    from .training.preemption import Preempted

    try:
        arguments = parse_args(argv)  # `--help` answers here, before anything heavy is imported
        _check_environment()
        from .run import main as run

        run(*arguments)
        end_process_group()
    except HfResnetError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except Preempted as stop:
        print(f"\n{stop}", file=sys.stderr)
        end_process_group()
        raise SystemExit(stop.exit_code) from None
    except KeyboardInterrupt:
        _interrupted(arguments[-1].output_dir if "arguments" in locals() else None)
        raise SystemExit(130) from None
    return 0


def _check_environment() -> None:
    """A setting from the environment that cannot be followed: its message and exit code 2, before any work."""
    from .data.images import decoder_choice_problem

    if problem := decoder_choice_problem():
        print(f"error: {problem}", file=sys.stderr)
        raise SystemExit(2)


def _interrupted(output_dir: str | None) -> None:
    """Ctrl-C: say what is kept and how to go on, instead of a traceback."""
    from .training.checkpoints import last_complete_checkpoint

    found = last_complete_checkpoint(output_dir, set_aside=False) if output_dir else None
    keep = f"{found} is complete: rerun the same command to resume from it." if found else (
        "No complete checkpoint was saved yet: rerun the same command to start again."
    )
    print(f"\ninterrupted. {keep}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train"]:  # the recipe parser owns every flag after `train`
        return train(argv[1:])
    if argv[:1] == ["sweep"]:  # its own options, then any `train` field, for every trial
        from .sweep.command import main as sweep
        return sweep(argv[1:])
    if argv[:1] == ["lr-find"]:  # its own flags, then any `train` field
        from .lr_find_cli import main as lr_find
        return lr_find(argv[1:])
    if argv[:1] == ["evaluate"]:  # its own flags, then any `train` field, for the recipe parser
        return _evaluate(argv[1:])
    args = build_parser().parse_args(argv)
    _check_environment()
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
