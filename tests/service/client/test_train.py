"""Training through `Client` against the real stack (its worker serves `train`; tiny-sd trains 4 steps in
about a second): a dataset folder sent as a zip, a list of images sent in JSON, the adapter listed and
deleted, and bad datasets refused before anything is sent."""

from __future__ import annotations

import io
import uuid
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from service.client import Adapter, AdapterList, ConflictError, NotFoundError, ProgressEvent, ValidationError

# The smallest training that still runs every stage: 4 steps at 256 px, rank 4, no checkpoints.
QUICK = {"steps": 4, "resolution": 256, "rank": 4, "checkpoint_every": 0, "seed": 1}


def square(color=(220, 20, 20), size=96) -> Image.Image:
    img = Image.new("RGB", (size, size), (240, 240, 240))
    ImageDraw.Draw(img).rectangle((20, 20, size - 20, size - 20), fill=color)
    return img


def dataset(folder: Path) -> Path:
    """kohya's layout: a repeats subfolder, same-name .txt captions; one image without a caption, and
    files that are no training data (a note, a dot file) beside them."""
    (folder / "10_red").mkdir(parents=True)
    square().save(folder / "10_red" / "a.png")
    (folder / "10_red" / "a.txt").write_text("a red square\n")
    square((200, 40, 30)).save(folder / "10_red" / "b.jpg")
    square((230, 10, 60)).save(folder / "c.webp")
    (folder / "c.txt").write_text("a pink square")
    (folder / "notes.md").write_text("not an image")
    square().save(folder / ".thumb.png")
    return folder


def unique(prefix: str) -> str:
    """The shared stack has no API keys: every test's adapters share one owner, so names must not clash."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_a_folder_trains_an_adapter_that_is_listed_fetched_and_deleted(fresco, tmp_path):
    name, seen = unique("red"), []
    job = fresco.train("tiny-sd", name, dataset(tmp_path / "set"), captions="a square", wait=True,
                       on_progress=seen.append, validation={"prompt": "a red square"}, **QUICK)
    assert job.succeeded and job.task == "train" and job.model == "tiny-sd"
    assert [(i["caption"], i["image"]["width"]) for i in job.params["images"]] == \
        [("a red square", 96), ("a square", 96), ("a pink square", 96)]  # 10_red/a, 10_red/b, c: name order
    training = [e.progress for e in seen if isinstance(e, ProgressEvent) and e.progress.stage == "training"]
    assert [p.step for p in training if p.loss is not None][-1] == 4 and all(p.total_steps == 4 for p in training)
    assert job.progress.loss > 0 and job.progress.resumed_from is None
    adapter = job.adapter
    assert isinstance(adapter, Adapter) and (adapter.name, adapter.kind, adapter.model, adapter.family,
                                             adapter.trigger) == (name, "lora", "tiny-sd", "sd", name)
    assert adapter.digest.startswith("sha256:") and len(fresco.fetch(adapter.url)) == adapter.size_bytes
    [image] = job.images  # the validation image
    assert image.width == 256

    listed = fresco.adapters()
    assert isinstance(listed, AdapterList) and listed.limit >= 1
    [mine] = [a for a in listed if a.name == name]
    assert (mine.digest, mine.job_id, mine.owner) == (adapter.digest, job.id, "you") and mine.created_at
    with pytest.raises(ConflictError) as taken:
        fresco.train("tiny-sd", name, [square()], **QUICK)
    assert name in taken.value.message
    assert fresco.delete_adapter(name) is None
    assert name not in [a.name for a in fresco.adapters()]
    with pytest.raises(NotFoundError):
        fresco.delete_adapter(name)


def test_a_list_of_images_and_pairs_goes_in_json_with_one_idempotency_key(fresco, tmp_path):
    square().save(tmp_path / "a.png")
    buffer = io.BytesIO()
    square((0, 0, 200)).save(buffer, "JPEG")
    name, key = unique("mixed"), str(uuid.uuid4())
    images = [tmp_path / "a.png", (buffer.getvalue(), "a blue square"), {"image": square(), "caption": "mine"}]
    job = fresco.train("tiny-sd", name, images, captions="a square", idempotency_key=key, **QUICK)
    again = fresco.train("tiny-sd", name, images, captions="a square", idempotency_key=key, **QUICK)
    assert again.id == job.id
    done = fresco.wait(job)
    assert done.succeeded and done.adapter.name == name and done.progress.loss > 0
    assert [i["caption"] for i in done.params["images"]] == ["a square", "a blue square", "mine"]
    fresco.delete_adapter(name)


def test_bad_datasets_are_refused_clearly(fresco, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    with pytest.raises(ValueError, match="empty: no training images"):
        fresco.train("tiny-sd", "x", tmp_path / "empty")
    with pytest.raises(ValueError, match="not a folder of images nor a .zip"):
        fresco.train("tiny-sd", "x", tmp_path / "missing")
    with pytest.raises(ValueError, match="no training images given"):
        fresco.train("tiny-sd", "x", [])
    with pytest.raises(ValueError, match="2 captions for 1 images"):
        fresco.train("tiny-sd", "x", [square()], captions=["a", "b"])
    with pytest.raises(FileNotFoundError, match="nope.png"):
        fresco.train("tiny-sd", "x", [str(tmp_path / "nope.png")])
    with pytest.raises(ValidationError) as invalid:  # the server's word: a name it does not take
        fresco.train("tiny-sd", "Not A Name", [square()], steps=0)
    assert {f["field"] for f in invalid.value.fields} == {"name", "steps"}
