"""Preemption: a scheduler's SIGTERM (Kubernetes, spot instances, SLURM) or SIGUSR1 (SLURM's `--signal`) ends the
run at the end of its current optimizer step, with a complete checkpoint, instead of losing every step since the
last save.

`StopOnSignal` (a TrainerCallback) installs the handlers when training starts and restores the previous ones when
it ends; DataLoader workers ignore the signals (`keep_workers_alive`), so a signal to the whole process group, as
SLURM sends it, reaches only the run. A handler only notes the signal: the step in flight finishes, and a second
signal during the save changes nothing (the save is not cut short). Under several processes the processes agree on
the step: each one's flag rides on the sum the trainer already takes every step (`compute_loss`), so every process
stops after the same step, with no collective of its own. Then `control.should_save` writes `checkpoint-N` (the
usual atomic way), `control.should_training_stop` ends `train()`, and `run.main` raises `Preempted`, which the
command line turns into one message and `requeue_exit_code` (143 by default). The same command resumes from the
checkpoint.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import threading

from transformers import TrainerCallback

from ..errors import ConfigError

logger = logging.getLogger(__name__)


class Preempted(Exception):
    """Training stopped on a signal after a complete checkpoint; the rerun resumes from it."""

    def __init__(self, signal_name: str, step: int, checkpoint: str | None, exit_code: int):
        self.signal_name, self.step, self.checkpoint, self.exit_code = signal_name, step, checkpoint, exit_code
        where = f"{checkpoint} is complete" if checkpoint else "no checkpoint could be written"
        super().__init__(f"{signal_name}: training stopped after optimizer step {step}; {where}. Rerun the same "
                         "command to resume from it.")


def parse_stop_signals(text: str | None) -> list[signal.Signals]:
    """`SIGTERM,SIGUSR1` (names, with or without SIG, or numbers) -> signals; `none` -> []."""
    if text is None or str(text).strip().lower() in ("", "none", "no", "false"):
        return []
    found = []
    for word in str(text).replace(" ", "").split(","):
        name = word.upper() if word.upper().startswith("SIG") else f"SIG{word.upper()}"
        try:
            found.append(signal.Signals(int(word)) if word.isdigit() else signal.Signals[name])
        except (KeyError, ValueError):
            raise ConfigError(f"`stop_signals`: {word!r} is not a signal of this system; use names such as "
                              "SIGTERM,SIGUSR1, or `none`.") from None
    if signal.SIGKILL in found or signal.SIGINT in found:
        raise ConfigError("`stop_signals` cannot take SIGKILL (it cannot be caught) or SIGINT (Ctrl-C already stops "
                          "the run and says how to resume).")
    return found


def _worker_init(signals: list[signal.Signals], inner, worker_id: int) -> None:
    """A DataLoader worker ignores the stop signals: torch's own SIGTERM handler would end it (the main process
    then fails with 'DataLoader worker is killed by signal') when a scheduler signals the whole process group."""
    for sig in signals:
        signal.signal(sig, signal.SIG_IGN)
    if inner is not None:
        inner(worker_id)


def keep_workers_alive(loader, signals: list[signal.Signals]):
    """`loader` (before its first iteration) with workers that outlive the stop signals; returns it."""
    base = getattr(loader, "base_dataloader", loader)  # accelerate's DataLoaderShard wraps the torch one
    if signals and getattr(base, "num_workers", 0) > 0:
        base.worker_init_fn = functools.partial(_worker_init, signals, base.worker_init_fn)
    return loader


class StopOnSignal(TrainerCallback):
    """Note the stop signals during `train()`; stop after the step every process has agreed on, saving first."""

    def __init__(self, signals: list[signal.Signals]):
        self.signals = signals
        self.received: str | None = None  # this process's first signal
        self.agreed = False  # some process received one, and every process knows it at this step
        self.stopped_at: int | None = None
        self._previous: dict = {}
        self._pid = os.getpid()

    def _note(self, signum, frame) -> None:
        if self.received is None and os.getpid() == self._pid:  # not a DataLoader worker forked with the handler
            self.received = signal.Signals(signum).name
            logger.warning("%s received: finishing this optimizer step, then saving a checkpoint and stopping.",
                           self.received)

    def on_train_begin(self, args, state, control, **kwargs):
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            self._pid = os.getpid()
            self._previous = {sig: signal.signal(sig, self._note) for sig in self.signals}

    def on_step_end(self, args, state, control, **kwargs):
        if (self.agreed or args.world_size == 1 and self.requested) and self.stopped_at is None:
            self.stopped_at = state.global_step
            control.should_save = True
            control.should_training_stop = True
        return control

    def on_train_end(self, args, state, control, **kwargs):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    @property
    def requested(self) -> bool:
        return self.received is not None
