"""One rule decides which files are images, for training and the audit alike."""

from conftest import make_image_folder
from PIL import Image

from hf_resnet.configs import DataArguments
from hf_resnet.data import load_image_data
from hf_resnet.folders import list_images
from hf_resnet.reports.audit import audit_folder


def test_training_and_audit_count_the_same_files(tmp_path):
    train = make_image_folder(tmp_path / "train", 3, seed=0)
    for extra in ("red/.hidden.png", "red/._resource_fork.png", ".git/x.png", "__MACOSX/red/y.png",
                  "blue/UPPER.JPG", "blue/also.JPEG"):
        (train / extra).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (30, 40, 200)).save(train / extra, format="PNG" if extra.endswith("png") else "JPEG")
    (train / "green" / "notes.txt").write_text("not an image")

    listed = list_images(train)
    assert len(listed) == 9 + 2  # 3 per class, plus the two upper-case JPEGs; hidden and special ones left out
    data = load_image_data(DataArguments(train_dir=str(train), validation_dir=str(train)))
    assert data.sizes["validation"] == len(data.validation) == len(listed)  # what datasets reads, file for file
    report = audit_folder(train)
    assert report["splits"]["train"]["image_files"] == len(listed)
    assert report["splits"]["train"]["hidden_files"] == 4
    assert report["splits"]["train"]["non_image_files"] == 1
    assert set(report["splits"]["train"]["classes"]) == {"red", "green", "blue"}
