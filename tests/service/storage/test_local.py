"""service/storage/local.py LocalStorage on a real directory: round trips, refused keys, atomic writes."""

from __future__ import annotations

import os
import uuid

import pytest

from service.storage import LocalStorage
from service.storage.names import content_type_for, valid_key

JOB = "3f2b8c1e-9a4d-4e6f-8b2a-1c0d9e8f7a6b"


@pytest.fixture
def store(tmp_path) -> LocalStorage:
    return LocalStorage(tmp_path / "results")


def files_under(path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def test_put_get_round_trip(store):
    data = bytes(range(256)) * 10
    store.put(JOB, "0.png", data)
    assert store.get(JOB, "0.png") == data
    path = store.local_path(JOB, "0.png")
    assert path == store.root / JOB / "0.png" and path.read_bytes() == data
    assert files_under(store.root) == [JOB, f"{JOB}/0.png"]  # no temporary file left over


def test_put_replaces_and_accepts_bytes_like(store):
    store.put(JOB, "video.mp4", b"first")
    store.put(JOB, "video.mp4", memoryview(b"second"))
    store.put(JOB, "input.webp", bytearray(b"third"))
    assert store.get(JOB, "video.mp4") == b"second"
    assert store.get(JOB, "input.webp") == b"third"
    assert files_under(store.root / JOB) == ["input.webp", "video.mp4"]


def test_missing_file(store):
    assert store.local_path(JOB, "0.png") is None
    with pytest.raises(FileNotFoundError):
        store.get(JOB, "0.png")
    store.put(JOB, "0.png", b"x")
    assert store.local_path(JOB, "1.png") is None


BAD_NAMES = ["..", "../0.png", "a/../../b", "sub/0.png", "/etc/passwd", "/tmp/x.png", ".hidden", "a..b.png", "",
             "0.png/", "a\\..\\b", "x" * 101, "with space.png", "nul\x00.png", "é.png"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_names_refused(store, name):
    with pytest.raises(KeyError):
        store.put(JOB, name, b"x")
    assert store.local_path(JOB, name) is None
    with pytest.raises(KeyError):
        store.get(JOB, name)
    assert not valid_key(JOB, name)
    assert files_under(store.root) == []  # not even the job folder was made


BAD_IDS = ["not-a-uuid", "..", "../" + JOB, JOB + "/..", "/" + JOB, JOB.upper(), JOB.replace("-", ""),
           "{" + JOB + "}", "", "3f2b8c1e-9a4d-4e6f-8b2a-1c0d9e8f7a6"]


@pytest.mark.parametrize("job_id", BAD_IDS)
def test_non_uuid_job_ids_refused(store, job_id):
    with pytest.raises(KeyError):
        store.put(job_id, "0.png", b"x")
    assert store.local_path(job_id, "0.png") is None
    with pytest.raises(KeyError):
        store.get(job_id, "0.png")
    assert files_under(store.root.parent) == ["results"]  # nothing written anywhere near


@pytest.mark.parametrize("job_id,name", [(JOB, "0.png\n"), (JOB + "\n", "0.png"), (JOB, "0.png\r")])
def test_trailing_newline_refused(store, job_id, name):
    """`$` would also match before a trailing newline: the whole key must match."""
    assert not valid_key(job_id, name)
    with pytest.raises(KeyError):
        store.put(job_id, name, b"x")
    assert store.local_path(job_id, name) is None
    assert files_under(store.root) == []


def test_a_valid_key_reads_an_existing_file_through_local_path(store):
    job = str(uuid.uuid4())
    store.put(job, "0.webp", b"RIFF")
    assert store.local_path(job, "0.webp").read_bytes() == b"RIFF"
    assert content_type_for("0.webp") == "image/webp"
    assert content_type_for("video.MP4") == "video/mp4"
    assert content_type_for("noext") == "application/octet-stream"


def test_failed_rename_leaves_no_file_and_no_temp_file(store, monkeypatch):
    def refuse(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OSError, match="No space"):
        store.put(JOB, "0.png", b"x" * 1000)
    assert files_under(store.root / JOB) == []
    assert store.local_path(JOB, "0.png") is None


def test_failed_write_leaves_no_temp_file(store):
    with pytest.raises(TypeError):
        store.put(JOB, "0.png", 12345)  # not bytes-like: the write itself fails
    assert files_under(store.root / JOB) == []


def test_failed_overwrite_keeps_the_old_file_whole(store, monkeypatch):
    store.put(JOB, "0.png", b"old contents")

    def refuse(src, dst):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OSError):
        store.put(JOB, "0.png", b"new")
    assert store.get(JOB, "0.png") == b"old contents"
    assert files_under(store.root / JOB) == ["0.png"]


def test_interrupted_write_leaves_no_temp_file(store, monkeypatch):
    """A KeyboardInterrupt (or a job timeout) mid-write: not an Exception, still cleaned up."""
    real_fdopen = os.fdopen

    class Interrupted:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            self.f.write(data[: len(data) // 2])
            self.f.flush()
            raise KeyboardInterrupt

    monkeypatch.setattr(os, "fdopen", lambda fd, mode: Interrupted(real_fdopen(fd, mode)))
    with pytest.raises(KeyboardInterrupt):
        store.put(JOB, "0.png", b"x" * 1000)
    assert files_under(store.root / JOB) == []


def test_delete_job_removes_the_folder(store):
    other = str(uuid.uuid4())
    store.put(JOB, "0.png", b"a")
    store.put(JOB, "1.png", b"b")
    store.put(JOB, "input.png", b"c")
    store.put(other, "0.png", b"kept")
    store.delete_job(JOB)
    assert not (store.root / JOB).exists()
    assert store.local_path(JOB, "0.png") is None
    assert store.get(other, "0.png") == b"kept"
    store.delete_job(JOB)  # again: nothing there, no error
    store.delete_job(str(uuid.uuid4()))  # never existed


def test_delete_job_removes_a_stray_temp_file_too(store):
    store.put(JOB, "0.png", b"a")
    (store.root / JOB / ".tmp-abc-0.png").write_bytes(b"half")  # a crashed writer's leftover
    store.delete_job(JOB)
    assert not (store.root / JOB).exists()


@pytest.mark.parametrize("job_id", ["..", ".", "", "../results", "not-a-uuid"])
def test_delete_job_with_a_bad_id_touches_nothing(store, job_id):
    store.put(JOB, "0.png", b"a")
    sibling = store.root.parent / "keep.txt"
    sibling.write_text("keep")
    store.delete_job(job_id)
    assert store.get(JOB, "0.png") == b"a"
    assert sibling.read_text() == "keep"
    assert store.root.is_dir()


def test_root_is_created(tmp_path):
    root = tmp_path / "a" / "b" / "results"
    LocalStorage(root)
    assert root.is_dir()
