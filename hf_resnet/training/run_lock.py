"""One run per output_dir at a time: `output_dir/_hf-resnet.lock`, created atomically by the main process.

Two trainings into one folder would each overwrite the other's checkpoints and model, the last writer winning
without a word. The lock holds the host, pid, start time and command of the run that owns the folder; a second
run stops in one line naming it. The lock goes when the run ends (also on an error, at interpreter exit). A
lock left by a process that is gone (kill -9, a crash) on this host is taken over with a warning; one from
another host is never taken, since whether that run still lives cannot be known from here. The same process
may take its own lock again (a sweep's trials, a rerun in one Python session).
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path

from ..errors import ConfigError

logger = logging.getLogger(__name__)

LOCK_NAME = "_hf-resnet.lock"  # "_*": never uploaded by the Trainer's push


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # half-written by a process that died at once: treated as stale below


def _command() -> str:
    """This process's command line, any token's value left out (the lock is a file in output_dir)."""
    words, hide = [], False
    for word in sys.argv:
        words.append("***" if hide else word)
        hide = word.startswith("--") and "token" in word and "=" not in word
    return " ".join(w.split("=", 1)[0] + "=***" if w.startswith("--") and "token" in w and "=" in w else w
                    for w in words)[:500]


class RunLock:
    """`acquire()` once the run knows its output_dir; `release()` at its end (atexit does it otherwise)."""

    def __init__(self, output_dir: str | Path):
        self.path = Path(output_dir) / LOCK_NAME
        self.record = {"host": socket.gethostname(), "pid": os.getpid(),
                       "started": time.strftime("%Y-%m-%d %H:%M:%S"), "command": _command()}
        self.held, self.created = False, False

    def acquire(self) -> RunLock:
        self.created = not self.path.parent.exists()  # a run that fails at once leaves no empty folder behind
        for _ in range(3):  # a stale lock removed, then a race with another run taking it: try again
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._take_over_or_refuse(_read(self.path))
                continue
            except OSError as err:
                raise ConfigError(f"`output_dir` {str(self.path.parent)!r} is not writable ({err.strerror or err}); "
                                  "choose another folder or fix its permissions.") from err
            with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
                json.dump(self.record, handle)
                handle.flush()
                os.fsync(handle.fileno())
            self.held = True
            atexit.register(self.release)
            return self
        raise ConfigError(f"Could not take the lock {self.path}: other runs keep taking it; use another output_dir.")

    def _take_over_or_refuse(self, other: dict) -> None:
        here = other.get("host") == self.record["host"]
        pid = other.get("pid")
        if here and pid == os.getpid():
            self.path.unlink(missing_ok=True)  # this very process: an earlier run in it
            return
        if not other or (here and isinstance(pid, int) and not _alive(pid)):
            logger.warning("Taking over %s from a run that is gone (pid %s on %s, started %s).", self.path,
                           pid, other.get("host"), other.get("started"))
            self.path.unlink(missing_ok=True)
            return
        raise ConfigError(
            f"{self.path.parent} is in use by another run (pid {pid} on {other.get('host')}, since "
            f"{other.get('started')}: {other.get('command', '?')[:120]}); wait for it to end, choose another "
            f"`output_dir`, or, if that run is gone, delete {self.path}."
        )

    def release(self) -> None:
        if self.held and _read(self.path).get("pid") == os.getpid():
            self.path.unlink(missing_ok=True)
            if self.created and not any(self.path.parent.iterdir()):
                self.path.parent.rmdir()
        self.held = False


def lock_output_dir(training_args) -> RunLock | None:
    """The main process locks output_dir; the others (and runs that write nothing) take no lock."""
    if training_args.process_index != 0:
        return None
    return RunLock(training_args.output_dir).acquire()
