"""Command-line flag helpers every sub-command shares: both spellings of a flag, and the value types.

Only argparse: the sub-commands' parsers (`cli`, `predict_cli`, `demo_cli`, `sweep.command`) import it at start.
"""

from __future__ import annotations

import argparse


def both(*flags: str) -> list[str]:
    """Each flag as given and with `_` and `-` swapped (`--top_k` and `--top-k`): every sub-command accepts both
    spellings, as `hf-resnet train` does."""
    spelled = []
    for flag in flags:
        for name in (flag, "--" + flag[2:].replace("_", "-"), "--" + flag[2:].replace("-", "_")):
            if name not in spelled:
                spelled.append(name)
    return spelled


def pixels(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of pixels (0: no limit)")
    return int(text)


def positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return int(text)


def share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number in (0, 1]")
    return value


def boolean(text: str) -> bool:
    if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
        raise argparse.ArgumentTypeError(f"{text!r} is not true or false")
    return text.lower() in ("true", "1", "yes")


def port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (1-65535)")
    return int(text)


def add_model_flags(parser: argparse.ArgumentParser, token_help: str = "Hub token for a gated or private model"):
    """The flags every sub-command that loads a model takes: --revision, --token, --allow_pickle_weights."""
    parser.add_argument("--revision", default="main", metavar="REV", help="branch, tag or commit of a Hub model")
    parser.add_argument("--token", metavar="TOKEN", help=token_help)
    parser.add_argument(*both("--allow_pickle_weights"), action="store_true", help="also load weights stored only "
                        "as pickle (pytorch_model.bin), which can run code: only for models you trust")
