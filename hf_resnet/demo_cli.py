"""`hf-resnet demo`'s arguments and command. Only argparse at import, so `hf-resnet --help` stays fast: Gradio,
torch and the model load when the command runs (`demo.py` is the page, `space.py` the Space folder)."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

from .constants import DEFAULT_MAX_PIXELS
from .flags import add_model_flags, boolean, both, pixels, port

DESCRIPTION = """\
Serve MODEL as a web page (Gradio): upload, paste or photograph an image and read its top-5 classes with their
probabilities, the computation time and the machine, and the Grad-CAM of the top class. The header shows the
model card's name, classes and headline metrics; the examples come from --examples DIR, else from the model
folder's evaluation report (mistakes marked). One prediction runs at a time; others wait in order.

Binds to 127.0.0.1 unless --host says otherwise; --share true opens a public gradio.live link (off by default).
With --space DIR, writes a Hugging Face Space (app.py, requirements.txt, README.md) for the model's Hub id instead
of serving, and --push uploads it. Needs the demo extra: pip install "hf-resnet[demo]". Examples:

  hf-resnet demo outputs/digits-smoke                      http://127.0.0.1:7860
  hf-resnet demo outputs/digits-smoke --examples my/photos --port 8000
  hf-resnet demo outputs/run --space space/ --hub_model_id me/run --push
"""


def add_command(commands) -> argparse.ArgumentParser:
    """`hf-resnet demo` in the command line's sub-commands (`cli.build_parser`)."""
    return add_arguments(commands.add_parser(
        "demo", help="serve a model as a web page (Gradio): top-5, time, Grad-CAM; or write a Hugging Face Space",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter))


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("model", metavar="MODEL", help="local model folder or Hub id (from the cache when "
                        "HF_HUB_OFFLINE=1), e.g. outputs/digits-smoke")
    parser.add_argument("--port", type=port, default=7860, help="port to serve on (default 7860)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine "
                        "only; 0.0.0.0 serves every network it is on)")
    parser.add_argument("--examples", metavar="DIR", help="images for the examples gallery (default: from the "
                        "model's evaluation report, report/<split>/predictions_<split>.csv)")
    parser.add_argument("--share", type=boolean, default=False, metavar="true|false",
                        help="also open a public https://*.gradio.live link (default false)")
    parser.add_argument(*both("--max_file_size"), default="20mb", metavar="SIZE", help="largest upload (default 20mb)")
    parser.add_argument(*both("--max-image-pixels"), dest="max_image_pixels", type=pixels,
                        default=DEFAULT_MAX_PIXELS, metavar="N",
                        help=f"refuse images over N pixels (default {DEFAULT_MAX_PIXELS:,}; 0: none)")
    parser.add_argument("--device", metavar="DEVICE", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    parser.add_argument("--space", metavar="DIR", help="write a Hugging Face Space folder for the model instead of "
                        "serving")
    parser.add_argument(*both("--hub_model_id"), metavar="OWNER/NAME", help="the model's Hub id the Space loads "
                        "(default: MODEL, when it is a Hub id)")
    parser.add_argument("--push", action="store_true", help="with --space: create or update the Space on the Hub, "
                        "with the token you are logged in with (or --token)")
    parser.add_argument(*both("--space_id"), metavar="[OWNER/]NAME", help="the Space to push to (default: "
                        "<model name>-demo in your namespace)")
    parser.add_argument("--private", action="store_true", help="create the Space private")
    add_model_flags(parser, token_help="Hub token for a gated or private model, or the push")
    parser.set_defaults(run=run)
    return parser


def _space(args: argparse.Namespace) -> int:
    from .demo import folder_examples, model_folder, report_examples
    from .hub import is_hub_id
    from .space import push_space, write_space

    model_id = args.hub_model_id or (args.model if is_hub_id(args.model) else "")
    examples = folder_examples(args.examples) if args.examples else report_examples(
        model_folder(args.model, args.revision, args.token))
    folder = write_space(args.space, model_id, examples)
    print(f"Wrote the Space for {model_id} to {folder} ({len(examples)} example(s)); try it with "
          f"HF_RESNET_DEMO_MODEL={args.model} python {folder / 'app.py'}")
    if args.push:
        space_id = args.space_id or f"{model_id.split('/')[-1]}-demo"
        print(f"Pushed: {push_space(folder, space_id, token=args.token, private=args.private)}")
    return 0


def run(args: argparse.Namespace) -> int:
    if importlib.util.find_spec("gradio") is None:
        print('hf-resnet demo: needs Gradio, which is not installed: pip install "hf-resnet[demo]"', file=sys.stderr)
        return 2
    if args.push and not args.space:
        print("hf-resnet demo: --push uploads the Space folder: add --space DIR", file=sys.stderr)
        return 2
    if args.examples and not Path(args.examples).is_dir():
        print(f"hf-resnet demo: --examples {args.examples!r} is not a folder; pass a folder of images",
              file=sys.stderr)
        return 2
    import transformers

    from .errors import HfResnetError
    from .hub import settle_offline_mode

    transformers.utils.logging.set_verbosity_error()
    settle_offline_mode([args.model])
    try:
        if args.space:
            return _space(args)
        from .demo import build_app, launch

        app = build_app(args.model, examples=args.examples, device=args.device, revision=args.revision,
                        token=args.token, allow_pickle_weights=args.allow_pickle_weights,
                        max_pixels=args.max_image_pixels or None)
    except (HfResnetError, RuntimeError) as err:
        print(f"hf-resnet demo: {err}", file=sys.stderr)
        return 2
    try:
        launch(app, host=args.host, port=args.port, share=args.share, max_file_size=args.max_file_size)
    except OSError as err:  # the port is taken, the address is not this machine's
        print(f"hf-resnet demo: cannot serve on {args.host}:{args.port} ({err}); pass another --port or --host",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        app.close()
    return 0
