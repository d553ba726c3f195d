"""`hf-resnet demo`: the page answers as pipeline() does, says why a bad file cannot be read and keeps serving,
answers 20 concurrent requests in order with flat memory, works in a real (headless) browser without a request
leaving the machine, and `--space` writes a Space folder that runs with `python app.py` and that the Hub accepts."""

import ctypes
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import PHOTOS, finetune, make_image_folder, recipe_args
from PIL import Image

gr = pytest.importorskip("gradio", reason="the demo extra is not installed: pip install 'hf-resnet[demo]'")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402
from gradio_client.utils import Status  # noqa: E402

from hf_resnet import cli, demo  # noqa: E402

CLASSES = {"red": (200, 30, 30), "green": (30, 180, 40), "blue": (30, 40, 200), "yellow": (220, 210, 40),
           "cyan": (40, 200, 210), "magenta": (200, 40, 200)}
CHROMIUM = Path("/usr/bin/chromium")
TIME = re.compile(r"^Computation time on (?P<where>.+): (?P<seconds>\d+\.\d{3}) s$", re.MULTILINE)
UPLOAD_LIMIT = "1mb"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """A real run's folder (model, processor, card, results, report/validation/ with two mistakes): a tiny
    ResNet trained for 2 epochs on 6 colour classes, in about 3 s."""
    root = tmp_path_factory.mktemp("demo-run")
    folders = {"train": make_image_folder(root / "train", 8, seed=0, classes=CLASSES),
               "validation": make_image_folder(root / "validation", 4, seed=1, classes=CLASSES)}
    finetune(recipe_args(root / "model", folders, num_train_epochs="2", logging_steps="3"))
    return root / "model"


@pytest.fixture(scope="module")
def server(model):
    """The app, in this process, on a free port of 127.0.0.1, uploads capped at 1 MB."""
    app = demo.build_app(str(model))
    _, url, _ = demo.launch(app, port=free_port(), max_file_size=UPLOAD_LIMIT, prevent_thread_lock=True, quiet=True)
    yield url
    app.close()


@pytest.fixture(scope="module")
def client(server) -> Client:
    return Client(server, verbose=False)


@pytest.fixture(scope="module")
def expected(model):
    from transformers import pipeline

    return pipeline("image-classification", model=str(model), device="cpu")


def ask(client: Client, path, gradcam: bool = False):
    labels, overlay, text = client.predict(handle_file(str(path)), gradcam, api_name="/predict")
    return [(c["label"], c["confidence"]) for c in labels["confidences"]], overlay, text


def test_the_top5_is_pipelines_with_the_time_and_the_machine(client, expected, model):
    files = sorted(PHOTOS.rglob("*.jpg")) + sorted((model.parent / "validation").rglob("*.png"))[::6]
    for file in files:
        top5, overlay, text = ask(client, file)
        reference = expected(str(file), top_k=5)
        assert [label for label, _ in top5] == [r["label"] for r in reference], file
        assert [score for _, score in top5] == pytest.approx([r["score"] for r in reference], abs=1e-4), file
        found = TIME.search(text)
        assert found and found["where"] == demo.device_name(demo.torch.device("cpu")) and overlay is None, text
        assert 0 < float(found["seconds"]) < 5
    cpu = [line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")]
    assert demo.device_name(demo.torch.device("cpu")) == cpu[0].split(":", 1)[1].strip()


def test_the_gradcam_overlay_colours_the_picture_the_model_saw(client):
    _, overlay, text = ask(client, sorted(PHOTOS.rglob("*.jpg"))[0], gradcam=True)
    picture = np.asarray(Image.open(overlay).convert("RGB"))
    assert min(picture.shape[:2]) >= 224 and picture.std() > 10  # enlarged from the 32 px crop, not blank
    assert re.search(r"Grad-CAM of \*\*\w+\*\* on stage\d \(\d+x\d+\)", text), text


def bad_files(folder: Path) -> dict[str, Path]:
    photo = sorted(PHOTOS.rglob("*.jpg"))[0]
    files = {"not an image": folder / "notes.jpg", "truncated": folder / "cut.jpg", "bomb": folder / "bomb.png"}
    files["not an image"].write_text("this is text, not a JPEG")
    files["truncated"].write_bytes(photo.read_bytes()[:4000])
    Image.new("1", (10_000, 10_000)).save(files["bomb"])  # 100 megapixels in a few kB
    return files


def test_a_bad_file_gets_a_readable_message_and_the_next_request_succeeds(client, tmp_path):
    good = sorted(PHOTOS.rglob("*.jpg"))[1]
    reasons = {"not an image": "cannot identify image file", "truncated": "truncated",
               "bomb": "10000x10000 = 100,000,000 pixels is over the 89,478,485-pixel limit"}
    for kind, file in bad_files(tmp_path).items():
        with pytest.raises(AppError) as info:
            ask(client, file)
        message = str(info.value)
        assert message.startswith(f"{file.name} is not an image this model can read: ") and reasons[kind] in message
        assert "/tmp/gradio" not in message  # the user's file name, not the server's temporary path
        assert TIME.search(ask(client, good)[2])  # still serving
    big = tmp_path / "big.png"
    big.write_bytes(os.urandom(2_000_000))
    with pytest.raises(Exception, match="(?i)size|large|413"):  # refused by the upload route, before the model
        ask(client, big)
    assert TIME.search(ask(client, good)[2])


def test_odd_but_valid_images_are_predicted_with_a_note(client, expected, tmp_path):
    rgb = Image.open(sorted(PHOTOS.rglob("*.jpg"))[2]).convert("RGB")
    rgb.convert("CMYK").save(tmp_path / "cmyk.jpg")
    gradient = (np.linspace(0, 65535, 64 * 64).reshape(64, 64)).astype(np.uint16)
    Image.fromarray(gradient).save(tmp_path / "deep.png")  # 16-bit grayscale (mode I;16)
    Image.new("RGB", (1, 1), (200, 30, 30)).save(tmp_path / "dot.png")
    notes = {"cmyk.jpg": "stored as CMYK: converted to RGB", "deep.png": "16-bit: scaled to 8 bits (not clipped)",
             "dot.png": "only 1x1 pixels, enlarged to 32x32 for the model: its answer says little"}
    for name, note in notes.items():
        top5, _, text = ask(client, tmp_path / name)
        assert len(top5) == 5 and f"Note: {note}." in text and TIME.search(text), text
    cmyk = expected(str(tmp_path / "cmyk.jpg"), top_k=5)  # pipeline() converts CMYK as Pillow does, as we do
    assert [label for label, _ in ask(client, tmp_path / "cmyk.jpg")[0]] == [r["label"] for r in cmyk]


def rss_mb() -> float:
    """This process's resident memory, after glibc hands freed blocks back (what is kept, not the allocator's
    cache: torch and Pillow free into per-thread arenas that would otherwise read as growth)."""
    status = Path("/proc/self/status")
    if not status.is_file():
        pytest.skip("the resident memory is read from /proc/self/status (Linux)")
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: measured as it is
        pass
    return int(re.search(r"^VmRSS:\s+(\d+) kB", status.read_text(), re.MULTILINE)[1]) / 1024


def test_20_concurrent_requests_answer_in_order_one_at_a_time_with_flat_memory(client, expected, model, tmp_path,
                                                                                monkeypatch):
    sources = sorted(PHOTOS.rglob("*.jpg")) + sorted((model.parent / "validation").rglob("*.png"))[::3]
    files = [shutil.copyfile(source, tmp_path / f"request_{i:02d}{source.suffix}") for i, source in
             enumerate(sources[:20])]
    calls, gate, original = [], threading.Event(), demo.Predictor.__call__

    def recorded(self, image, show_gradcam):
        start = time.perf_counter()
        if not calls:
            gate.wait(30)  # the first request holds the model until all 20 are queued behind it
        try:
            return original(self, image, show_gradcam)
        finally:
            calls.append((image["orig_name"], start, time.perf_counter()))

    monkeypatch.setattr(demo.Predictor, "__call__", recorded)

    def run_all(hold: bool):
        calls.clear()
        jobs = []
        for file in files:
            jobs.append(client.submit(handle_file(str(file)), False, api_name="/predict"))
            deadline = time.monotonic() + 10
            while jobs[-1].status().code in (Status.STARTING, Status.JOINING_QUEUE) and time.monotonic() < deadline:
                time.sleep(0.005)  # arrived: the next one is sent after it
        gate.set()
        results = [job.result(timeout=60) for job in jobs]
        if hold:
            gate.clear()
        return results

    gate.set()
    run_all(hold=False)  # warm: the first requests allocate Gradio's and torch's buffers
    before = rss_mb()
    gate.clear()
    results = run_all(hold=True)
    after = rss_mb()
    assert [name for name, _, _ in calls] == [file.name for file in files]  # in order of arrival
    assert all(end <= calls[i + 1][1] for i, (_, _, end) in enumerate(calls[:-1]))  # never two at once
    for file, (labels, _, text) in zip(files, results):
        assert labels["label"] == expected(str(file), top_k=1)[0]["label"] and TIME.search(text), file
    print(f"resident memory before and after 20 requests: {before:.0f} MB, {after:.0f} MB")
    assert after - before < 30, f"resident memory grew {after - before:.1f} MB over 20 requests"


def test_the_header_and_examples_come_from_the_model_folder(model):
    import json

    header = demo.header_markdown(str(model), demo.Classifier.load(str(model)).labels, model)
    assert header.startswith("# model\n") and "6 classes: blue, cyan, green, magenta, red, yellow." in header
    accuracy = json.loads((model / "all_results.json").read_text())["eval_accuracy"]
    assert f"Measured on demo-run0 (validation split): Top-1 accuracy {accuracy:.4g} · Top-5 accuracy" in header
    examples = demo.report_examples(model)
    rows = (model / "report" / "validation" / "predictions_validation.csv").read_text().splitlines()[1:]
    wrong = [r.split(",") for r in rows if r.split(",")[2] != r.split(",")[3]]
    assert len(examples) == demo.EXAMPLES and all(Path(file).is_file() for file, _ in examples)
    marked = [(file, note) for file, note in examples if note.startswith("✗")]
    assert [file for file, _ in marked] == [r[1] for r in wrong][: demo.EXAMPLES // 2]
    assert all(f"true {r[2]}, predicted {r[3]} (" in note for r, (_, note) in zip(wrong, marked))


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed at /usr/bin/chromium "
                    "(apt-get install chromium; .ci/run does it)")
def test_a_real_browser_shows_the_top_label_and_the_time_and_nothing_leaves_the_machine(server, expected, tmp_path):
    from playwright.sync_api import sync_playwright

    photo = sorted((PHOTOS / "bees").glob("*.jpg"))[0]
    top = expected(str(photo), top_k=1)[0]["label"]
    requests = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("request", lambda request: requests.append(request.url))
            page.goto(server, wait_until="networkidle")
            assert "6 classes: blue, cyan" in page.inner_text("#model-header")
            page.set_input_files("#image-input input[type=file]", str(photo))
            page.get_by_text("Computation time on").wait_for(timeout=30_000)
            page.locator("#gradcam img").wait_for(timeout=30_000)
            assert page.inner_text("#top-labels [data-testid=label-output-value]").strip() == top
            assert TIME.search(page.inner_text("#timing"))
            shot = Path(os.environ.get("HF_RESNET_DEMO_SCREENSHOT", tmp_path / "demo.png"))
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert Image.open(shot).size[0] == 1280
    outside = [url for url in requests if not re.match(r"(http://127\.0\.0\.1:\d+/|data:|blob:)", url)]
    assert requests and outside == []


def test_the_space_folder_runs_with_python_app_py_and_its_header_is_valid(model, tmp_path, capsys):
    from huggingface_hub import SpaceCard

    space = tmp_path / "space"
    assert cli.main(["demo", str(model), "--space", str(space), "--hub_model_id", "someone/colours"]) == 0
    assert "Wrote the Space for someone/colours" in capsys.readouterr().out
    card = SpaceCard.load(space / "README.md")
    assert card.data.sdk == "gradio" and card.data.sdk_version == gr.__version__ and card.data.app_file == "app.py"
    assert card.data.models == ["someone/colours"]
    assert "torch>=2.4" in (space / "requirements.txt").read_text().splitlines()
    assert len(list((space / "examples").iterdir())) == demo.EXAMPLES
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = subprocess.run([sys.executable, "-c", "import hf_resnet; print(hf_resnet.__file__)"], cwd=space,
                           env=env, capture_output=True, text=True, check=True).stdout
    assert Path(where.strip()).is_relative_to(space)  # the copy in the folder, not the installed package

    port = free_port()
    env.update(HF_RESNET_DEMO_MODEL=str(model), GRADIO_SERVER_PORT=str(port), HF_HUB_OFFLINE="1")
    process = subprocess.Popen([sys.executable, "app.py"], cwd=space, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.2)
        assert process.poll() is None, process.stdout.read()
        labels, _, text = ask(Client(f"http://127.0.0.1:{port}/", verbose=False), sorted(PHOTOS.rglob("*.jpg"))[0])
        assert len(labels) == 5 and TIME.search(text)
    finally:
        process.terminate()
        process.wait(10)


def test_push_creates_the_space_and_uploads_the_folder(model, tmp_path, monkeypatch, capsys):
    import huggingface_hub

    calls = {}

    def create_repo(repo_id, **kwargs):
        calls["create"] = (repo_id, kwargs)
        return huggingface_hub.RepoUrl(f"https://huggingface.co/spaces/me/{repo_id}")

    monkeypatch.setattr(huggingface_hub, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub, "upload_folder", lambda **kwargs: calls.setdefault("upload", kwargs))
    space = tmp_path / "space"
    argv = ["demo", str(model), "--space", str(space), "--hub_model_id", "me/colours", "--push"]
    assert cli.main(argv) == 0
    assert calls["create"] == ("colours-demo", {"repo_type": "space", "space_sdk": "gradio", "private": False,
                                                "exist_ok": True, "token": None})
    upload = calls["upload"]
    assert upload["folder_path"] == str(space) and upload["repo_id"] == "me/colours-demo"
    assert upload["repo_type"] == "space" and (space / "app.py").is_file()
    assert "Pushed: https://huggingface.co/spaces/me/colours-demo" in capsys.readouterr().out


def test_usage_errors_exit_2_with_the_fix(model, tmp_path, monkeypatch, capsys):
    assert cli.main(["demo", str(model), "--space", str(tmp_path / "s")]) == 2  # a local folder has no Hub id
    assert "pass --hub_model_id OWNER/NAME" in capsys.readouterr().err
    assert cli.main(["demo", str(model), "--push"]) == 2
    assert "add --space DIR" in capsys.readouterr().err
    assert cli.main(["demo", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hf-resnet demo: ") and "Traceback" not in err
    from hf_resnet import demo_cli

    real = demo_cli.importlib.util.find_spec
    monkeypatch.setattr(demo_cli.importlib.util, "find_spec", lambda name: None if name == "gradio" else real(name))
    assert cli.main(["demo", str(model)]) == 2
    assert 'pip install "hf-resnet[demo]"' in capsys.readouterr().err


def test_share_says_what_it_exposes(caplog):
    class Page:
        def launch(self, **kwargs):
            return kwargs

    with caplog.at_level("WARNING", logger="hf_resnet"):
        kwargs = demo.launch(Page(), share=True)
    assert kwargs["share"] is True and kwargs["server_name"] == "127.0.0.1" and kwargs["max_file_size"] == "20mb"
    assert "Anyone who has the link can send images to this model" in caplog.text
    assert demo.launch(Page())["share"] is False
