"""The client's I/O-free core: the retry rule, the Server-Sent Events decoder, long-poll slices, URLs."""

from __future__ import annotations

import httpx

from service.client import Client, ConflictError, RateLimitError, UnavailableError, ValidationError
from service.client.core import Call, Deadline, RetryPolicy, SSEDecoder, connection_error, wait_seconds

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
