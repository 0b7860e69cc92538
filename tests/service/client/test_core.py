"""The client's I/O-free core: the retry rule, the Server-Sent Events decoder, long-poll slices, URLs, a
training request's body."""

from __future__ import annotations

import email.parser
import io
import json
import zipfile

import httpx

from service.client import Client, ConflictError, RateLimitError, UnavailableError, ValidationError
from service.client.core import Call, Deadline, RetryPolicy, SSEDecoder, connection_error, train_call, wait_seconds
from service.client.types import Job

POST = Call("POST", "/generate")
REQUEST = httpx.Request("GET", "http://127.0.0.1:1/jobs/x")


def test_429_and_503_wait_their_retry_after_capped_with_a_little_jitter():
    policy = RetryPolicy(max_retries=3, max_wait=5.0)
    for _ in range(50):
        assert 2.0 <= policy.delay(0, UnavailableError("full", status=503, retry_after=2), POST) <= 2.2
        assert 5.0 <= policy.delay(1, RateLimitError("slow", status=429, retry_after=60), POST) <= 5.5
    assert policy.delay(3, UnavailableError("full", status=503, retry_after=1), POST) is None  # retries spent


def test_an_idempotency_key_still_in_flight_is_asked_again_after_its_retry_after():
    policy = RetryPolicy(max_retries=3)
    assert 1.0 <= policy.delay(0, ConflictError("in flight", status=409, retry_after=1), POST) <= 1.1


def test_failed_connections_back_off_and_other_errors_are_final():
    policy = RetryPolicy(max_retries=3, backoff=0.5)
    refused = connection_error(httpx.ConnectError("refused"), REQUEST)
    for attempt, base in enumerate([0.5, 1.0, 2.0]):
        assert base <= policy.delay(attempt, refused, POST) <= base * 1.1
    for error in (ValidationError("bad", status=422), ConflictError("the job has already ended", status=409)):
        assert policy.delay(0, error, POST) is None
    probe = Call("GET", "/readyz", retry_transport=False, retry_statuses=False)
    assert policy.delay(0, refused, probe) is None and policy.delay(0, UnavailableError("x", status=503), probe) is None
    assert policy.delay(0, connection_error(httpx.UnsupportedProtocol("ftp"), REQUEST), POST) is None


def test_the_sse_decoder_joins_data_and_skips_keep_alives():
    decoder = SSEDecoder()
    lines = [": keep-alive", "", "event: progress", 'data: {"status":', 'data: "running"}', "", "data:plain", ""]
    assert [m for m in map(decoder.feed, lines) if m] == [("progress", {"status": "running"}), ("message", "plain")]


def test_long_polls_are_whole_seconds_of_at_most_sixty():
    assert [wait_seconds(w) for w in (None, 0, 0.2, 1, 59.5, 600)] == [0, 0, 1, 1, 60, 60]
    assert Deadline(None).next_slice() == 60 and Deadline(0).next_slice() is None
    assert 0 < Deadline(5).next_slice() <= 5


def test_urls_keep_the_base_path_and_absolute_urls_stay():
    fresco = Client("http://gateway.example/fresco/", api_key="k")
    assert fresco._url("/jobs/1") == "http://gateway.example/fresco/jobs/1"
    assert fresco._url("https://cdn.example/x.png") == "https://cdn.example/x.png"


def _form(call: Call) -> dict:
    """A multipart body's parts by name (bytes)."""
    head = f"Content-Type: {call.headers['Content-Type']}\r\n\r\n".encode()
    message = email.parser.BytesParser().parsebytes(head + call.content)
    return {part.get_param("name", header="content-disposition"): part.get_payload(decode=True)
            for part in message.get_payload()}


def test_a_dataset_folder_is_sent_as_a_zip_with_its_captions_and_the_fields_as_the_api_reads_them(tmp_path):
    (tmp_path / "10_cat").mkdir()
    for name in ("10_cat/a.png", "10_cat/b.JPG", "c.webp", ".hidden.png"):
        (tmp_path / name).write_bytes(b"image " + name.encode())
    (tmp_path / "10_cat" / "a.txt").write_text("\ufeffa cat\n", encoding="utf-8")  # a BOM and a newline: gone
    (tmp_path / "c.caption").write_text("kohya's other extension")
    (tmp_path / "notes.md").write_text("skipped")
    call = train_call("tiny-sd", "cat", tmp_path, {"steps": 4, "trigger": "42", "validation": {"every": 2},
                                                   "buckets": False, "alpha": None}, captions="a pet")
    assert (call.method, call.path, call.json) == ("POST", "/train", None) and call.headers["Idempotency-Key"]
    form = _form(call)
    fields = {k: v.decode() for k, v in form.items() if k != "dataset"}
    assert fields == {"model": "tiny-sd", "name": "cat", "steps": "4", "trigger": "42",  # text fields stay text
                      "validation": json.dumps({"every": 2}), "buckets": "false"}  # the rest JSON; None: left out
    archive = zipfile.ZipFile(io.BytesIO(form["dataset"]))
    assert {n: archive.read(n) for n in archive.namelist()} == {
        "10_cat/a.png": b"image 10_cat/a.png", "10_cat/a.txt": b"a cat", "10_cat/b.JPG": b"image 10_cat/b.JPG",
        "10_cat/b.txt": b"a pet", "c.webp": b"image c.webp", "c.txt": b"kohya's other extension"}
    by_name = train_call("m", "n", tmp_path, {}, captions={"b.JPG": "the second", "c": "the third"})
    archive = zipfile.ZipFile(io.BytesIO(_form(by_name)["dataset"]))
    assert [archive.read(n) for n in ("10_cat/a.txt", "10_cat/b.txt", "c.txt")] == [b"a cat", b"the second",
                                                                                   b"the third"]


def test_a_list_of_images_is_sent_in_json():
    call = train_call(None, "n", [b"\x89PNG\r\n\x1a\nx", (b"GIF89a", "a gif"), "https://example.com/a.png"],
                      {"steps": 4, "seed": None}, idempotency_key="k")
    assert call.content is None and call.headers == {"Idempotency-Key": "k"}
    assert call.json == {"name": "n", "steps": 4, "images": [
        {"image": "data:image/png;base64,iVBORw0KGgp4"},
        {"image": "data:image/gif;base64,R0lGODlh", "caption": "a gif"}, {"image": "https://example.com/a.png"}]}


def test_a_training_jobs_progress_and_adapter_are_typed():
    job = Job.from_dict({"id": "j", "task": "train", "model": "m", "status": "succeeded",
                         "progress": {"stage": "done", "step": 4, "total_steps": 4, "fraction": 1.0, "loss": 0.25,
                                      "resumed_from": 2},
                         "result": {"adapter": {"name": "cat", "kind": "lora", "model": "m", "family": "sd",
                                                "trigger": "cat", "digest": "sha256:x", "size_bytes": 10,
                                                "url": "http://h/results/adapters/x.safetensors"}, "images": []}})
    assert (job.progress.loss, job.progress.resumed_from) == (0.25, 2)
    assert (job.adapter.name, job.adapter.size_bytes, job.adapter.token) == ("cat", 10, None)
    plain = Job.from_dict({"id": "j", "task": "turbo", "model": "m", "status": "queued"})
    assert plain.adapter is None and plain.progress.loss is None and plain.progress.resumed_from is None
