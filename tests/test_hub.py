"""Whether the Hub answers is found out in seconds, and a run without it works from the cache."""

import time

import datasets.config
import huggingface_hub.constants
import pytest

from hf_resnet import hub


@pytest.fixture
def online_mode(monkeypatch):
    """Pretend HF_HUB_OFFLINE was never set (the tests set it); every change is undone afterwards."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", False)


def test_an_unreachable_endpoint_is_found_out_fast(monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens
    start = time.monotonic()
    assert hub.hub_reachable() is False
    assert time.monotonic() - start < hub.PROBE_TIMEOUT_S + 1


def test_no_hub_means_offline_mode_for_the_whole_process(online_mode, monkeypatch, caplog):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    with caplog.at_level("WARNING", logger="hf_resnet"):
        assert hub.settle_offline_mode(["microsoft/resnet-50", None]) is True
    assert huggingface_hub.constants.HF_HUB_OFFLINE is True and datasets.config.HF_HUB_OFFLINE is True
    assert "cannot be reached: working offline" in caplog.text and "HF_HUB_OFFLINE=1" in caplog.text


def test_local_and_bundled_names_never_probe(online_mode, monkeypatch, tmp_path):
    monkeypatch.setattr(hub, "hub_reachable", lambda *a: pytest.fail("probed the Hub for local names"))
    assert hub.settle_offline_mode([str(tmp_path), "bundled:resnet-smoke", "bundled:digits", None]) is False
    assert huggingface_hub.constants.HF_HUB_OFFLINE is False
