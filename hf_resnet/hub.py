"""The Hugging Face Hub, reached or not: find out in seconds, not after half a minute of retries.

The Hub client retries an unreachable host five times with back-off (about 30 s) before a cached copy is used
or an error is raised. `settle_offline_mode` probes the Hub's host once (a TCP connection, a few seconds at most)
when a run names Hub ids; when nothing answers it switches this process (and its DataLoader workers) to
offline mode, as `HF_HUB_OFFLINE=1` would: cached models and datasets load at once, missing ones fail at once
with our message.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from .constants import BUNDLED_PREFIX

logger = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 3.0
_TRUE = {"1", "on", "yes", "true"}


def is_offline() -> bool:
    return any(os.environ.get(k, "").lower() in _TRUE for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def is_hub_id(name: str | None) -> bool:
    """A name that would be fetched from the Hub: not a local path and not one of our `bundled:` assets."""
    return bool(name) and not name.startswith(BUNDLED_PREFIX) and not Path(name).expanduser().exists() and not (
        name.startswith((".", "/", "~"))
    )


def hub_reachable(timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the Hub's host (HF_ENDPOINT, default huggingface.co) opens within `timeout`."""
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def go_offline() -> None:
    """Offline mode for this process and its children, as HF_HUB_OFFLINE=1 at start-up would have set it."""
    import datasets.config
    import huggingface_hub.constants

    os.environ["HF_HUB_OFFLINE"] = "1"
    huggingface_hub.constants.HF_HUB_OFFLINE = True
    datasets.config.HF_HUB_OFFLINE = datasets.config.HF_DATASETS_OFFLINE = True


def settle_offline_mode(names: list[str | None]) -> bool:
    """Before anything is loaded: when some of `names` are Hub ids and the Hub cannot be reached, work offline
    (with one line saying so). Returns whether the run works offline."""
    if is_offline():
        return True
    if not any(is_hub_id(name) for name in names):
        return False
    if hub_reachable():
        return False
    logger.warning(
        "The Hugging Face Hub (%s) cannot be reached: working offline, from the local cache only. Set "
        "HF_HUB_OFFLINE=1 to skip this %gs check.", os.environ.get("HF_ENDPOINT", "huggingface.co"), PROBE_TIMEOUT_S
    )
    go_offline()
    return True
