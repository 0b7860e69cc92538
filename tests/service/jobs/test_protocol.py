"""service/jobs/protocol.py: each transition script on a real Redis (its own server, so no reaper of
another test's stack touches these jobs), called through its one typed function. What each leaves in
the job record, the status indexes, RQ's keys and the event channel."""

from __future__ import annotations

import json
import re
import uuid

import pytest
from rq.job import Job
from rq.serializers import JSONSerializer

from service.jobs import keys, protocol
from service.jobs.protocol import CancelOutcome, Idempotency
from service.jobs.states import JobStatus

TASK, MODEL = "turbo", "m1"


@pytest.fixture
def redis(module_redis):
    return module_redis


def new(redis, params: dict | None = None, *, retries: int = 0, owner: str | None = None, model: str = MODEL) -> str:
    job_id = str(uuid.uuid4())
    assert protocol.submit(job_id, TASK, model, params or {"prompt": "p", "seed": 1}, owner=owner, retries=retries,
                           timeout_s=60, cap=0).run(redis)
    return job_id


def record(redis, job_id: str) -> dict:
    return protocol.decode_hash(redis.hgetall(keys.job(job_id)))


def indexed(redis, status: JobStatus) -> list[str]:
    return [i.decode() for i in redis.zrange(keys.status_index(TASK, status), 0, -1)]


def start(redis, job_id: str, worker: str = "w1") -> bool:
    return protocol.start(job_id, TASK, worker=worker, progress={"stage": "denoise", "step": 0}, at=100.0).run(redis)


class Events:
    """The messages published on one job's channel."""

    def __init__(self, redis, job_id: str):
        self.pubsub = redis.pubsub()
        self.pubsub.subscribe(keys.events(job_id))
        assert self.pubsub.get_message(timeout=2)["type"] == "subscribe"  # subscribed before anything is published

    def all(self) -> list[dict]:
        out = []
        while (m := self.pubsub.get_message(timeout=0.2)) is not None:
            out.append(json.loads(m["data"]))
        return out


def test_submit_writes_the_record_the_index_and_an_rq_job_an_rq_worker_reads(redis):
    job_id = new(redis, {"prompt": "a fox", "seed": 7}, owner="alice", retries=1)
    h = record(redis, job_id)
    assert (h["task"], h["model"], h["status"], h["owner"], h["retries_left"]) == (TASK, MODEL, "queued", "alice", "1")
    assert json.loads(h["params"]) == {"prompt": "a fox", "seed": 7}
    assert json.loads(h["progress"])["stage"] == "queued" and h["warnings"] == "[]"
    assert set(h) <= keys.JOB_FIELDS
    assert indexed(redis, JobStatus.QUEUED) == [job_id]
    assert redis.lrange(keys.rq_queue(TASK, MODEL), 0, -1) == [job_id.encode()]
    assert keys.rq_queue(TASK, MODEL).encode() in redis.smembers(keys.RQ_QUEUES)
    job = Job.fetch(job_id, connection=redis, serializer=JSONSerializer)
    assert job.func_name == keys.RQ_ENTRY_POINT and job.args == [{"id": job_id, "task": TASK, "model": MODEL}]
    assert job.origin == keys.queue_name(TASK, MODEL) and job.timeout == 60 and job.result_ttl == 0


def test_submit_without_keys_stores_no_owner(redis):
    assert record(redis, new(redis))["owner"] == ""


def test_submit_at_the_cap_writes_nothing(redis):
    first = new(redis)
    job_id = str(uuid.uuid4())
    call = protocol.submit(job_id, TASK, "other-model", {}, owner=None, retries=0, timeout_s=60, cap=1)
    assert call.run(redis) is protocol.Enqueued.FULL  # the cap counts the task's queued jobs over all its models
    assert not redis.exists(keys.job(job_id)) and not redis.exists(keys.rq_job(job_id))
    assert indexed(redis, JobStatus.QUEUED) == [first] and redis.llen(keys.rq_queue(TASK, "other-model")) == 0


def test_submit_sets_the_idempotency_key_in_the_same_step(redis):
    job_id = str(uuid.uuid4())
    idem = Idempotency(keys.idempotency("abc"), "digest:", 120)
    assert protocol.submit(job_id, TASK, MODEL, {}, owner=None, retries=0, timeout_s=60, cap=0,
                           idempotency=idem).run(redis)
    assert redis.get(idem.key) == f"digest:{job_id}".encode() and 110 < redis.ttl(idem.key) <= 120


def test_submit_under_a_claim_that_is_no_longer_this_requests_writes_nothing(redis):
    """The claim expired and another copy of the request claimed the key, or enqueued under it: the late
    request must not make a second job."""
    idem = Idempotency(keys.idempotency("abc"), "digest:", 120, claim="digest:pending:mine")
    for held in (b"digest:pending:theirs", b"digest:some-job-id"):
        redis.set(idem.key, held)
        job_id = str(uuid.uuid4())
        call = protocol.submit(job_id, TASK, MODEL, {}, owner=None, retries=0, timeout_s=60, cap=0, idempotency=idem)
        assert call.run(redis) is protocol.Enqueued.CLAIM_LOST
        assert not redis.exists(keys.job(job_id)) and not redis.exists(keys.rq_job(job_id))
        assert redis.get(idem.key) == held and indexed(redis, JobStatus.QUEUED) == []
    redis.delete(idem.key)  # its claim expired and nobody took the key: the late request still enqueues
    assert protocol.submit(job_id, TASK, MODEL, {}, owner=None, retries=0, timeout_s=60, cap=0,
                           idempotency=idem).run(redis)
    assert redis.get(idem.key) == f"digest:{job_id}".encode()


def test_view_reports_the_queue_position_within_the_queue(redis):
    a, b, c = new(redis, model="m3"), new(redis, model="m3"), new(redis, model="m4")  # one order per task and model
    assert protocol.view(b).run(redis)["_queue_position"] == "1"
    assert protocol.view(a).run(redis)["_queue_position"] == "0"
    assert protocol.view(c).run(redis)["_queue_position"] == "0"
    start(redis, a)
    assert protocol.view(a).run(redis)["_queue_position"] == "-1"
    assert protocol.view(str(uuid.uuid4())).run(redis) is None


def test_start_moves_queued_to_running_once(redis):
    job_id = new(redis)
    events = Events(redis, job_id)
    assert start(redis, job_id, "w1") is True
    assert start(redis, job_id, "w2") is False  # a second copy of the id on a list: skipped
    h = record(redis, job_id)
    assert (h["status"], h["worker"], h["started_at"]) == ("running", "w1", "100.0")
    assert indexed(redis, JobStatus.RUNNING) == [job_id] and indexed(redis, JobStatus.QUEUED) == []
    assert events.all() == [{"type": "progress", "status": "running", "progress": {"stage": "denoise", "step": 0}}]


def test_report_stores_publishes_and_reads_the_cancel_flag(redis):
    job_id = new(redis)
    assert protocol.report(job_id, {"step": 1}).run(redis).stop is True  # not running (yet): stop
    start(redis, job_id)
    events = Events(redis, job_id)
    assert protocol.report(job_id, {"step": 2}).run(redis) == protocol.Reported(stop=False, watched=False)
    assert json.loads(record(redis, job_id)["progress"]) == {"step": 2}
    assert events.all() == [{"type": "progress", "status": "running", "progress": {"step": 2}}]
    assert protocol.cancel(job_id, TASK, MODEL, ttl=60).run(redis) is CancelOutcome.FLAGGED
    assert protocol.report(job_id, {"step": 3}).run(redis).stop is True


def test_several_reports_in_one_round_trip(redis):
    ids = [new(redis) for _ in range(3)]
    for job_id in ids:
        start(redis, job_id)
    protocol.cancel(ids[1], TASK, MODEL, ttl=60).run(redis)
    replies = protocol.run_all(redis, [protocol.report(i, {"step": 1}) for i in ids])
    assert [r.stop for r in replies] == [False, True, False]


def test_a_watched_job_says_so_and_its_preview_is_kept_apart_and_published(redis):
    job_id = new(redis)
    start(redis, job_id)
    events = Events(redis, job_id)
    redis.set(keys.watched(job_id), "1", px=5000)  # what the API's watcher writes (protocol.watch)
    reply = protocol.report(job_id, {"step": 1}, preview="data:image/webp;base64,UklG").run(redis)
    assert reply == protocol.Reported(stop=False, watched=True)
    assert redis.get(keys.preview(job_id)) == b"data:image/webp;base64,UklG"
    assert 0 < redis.ttl(keys.preview(job_id)) <= protocol.PREVIEW_TTL_S
    assert "preview" not in record(redis, job_id)  # not in the record: no webhook snapshot carries it
    assert events.all() == [{"type": "progress", "status": "running", "progress": {"step": 1},
                             "preview": "data:image/webp;base64,UklG"}]
    redis.delete(keys.watched(job_id))
    assert protocol.report(job_id, {"step": 2}).run(redis).watched is False
    assert protocol.load_input(redis, job_id)[2] is False


def test_cancel_a_queued_job_takes_it_off_its_queue(redis):
    job_id = new(redis)
    events = Events(redis, job_id)
    assert protocol.cancel(job_id, TASK, MODEL, ttl=600).run(redis) is CancelOutcome.CANCELED
    h = record(redis, job_id)
    assert h["status"] == "canceled" and json.loads(h["error"])["code"] == "canceled"
    assert json.loads(h["progress"]) == {"stage": "done", "step": 0, "total_steps": 0, "fraction": 1.0}
    assert redis.llen(keys.rq_queue(TASK, MODEL)) == 0 and not redis.exists(keys.rq_job(job_id))
    assert indexed(redis, JobStatus.CANCELED) == [job_id] and indexed(redis, JobStatus.QUEUED) == []
    assert 590 < redis.ttl(keys.job(job_id)) <= 600
    assert events.all() == [{"type": "done", "status": "canceled"}]
    assert protocol.cancel(job_id, TASK, MODEL, ttl=600).run(redis) is CancelOutcome.ENDED
    assert protocol.cancel(str(uuid.uuid4()), TASK, MODEL, ttl=600).run(redis) is CancelOutcome.MISSING


def test_end_writes_the_outcome_and_expires_the_record(redis):
    job_id = new(redis)
    assert protocol.end(job_id, TASK, JobStatus.SUCCEEDED, ttl=60, progress={"stage": "done"}).run(redis) is False
    start(redis, job_id)
    events = Events(redis, job_id)
    result = {"images": [{"name": "0.png"}]}
    assert protocol.end(job_id, TASK, JobStatus.SUCCEEDED, ttl=60, progress={"stage": "done"}, at=200.0,
                        result=result, warnings=["w"]).run(redis) is True
    h = record(redis, job_id)
    assert (h["status"], h["finished_at"]) == ("succeeded", "200.0")
    assert json.loads(h["result"]) == result and json.loads(h["warnings"]) == ["w"]
    assert indexed(redis, JobStatus.SUCCEEDED) == [job_id] and indexed(redis, JobStatus.RUNNING) == []
    assert 0 < redis.ttl(keys.job(job_id)) <= 60
    assert events.all() == [{"type": "done", "status": "succeeded"}]
    assert protocol.end(job_id, TASK, JobStatus.FAILED, ttl=60, progress={}).run(redis) is False  # once


def test_reap_requeues_with_a_retry_left_then_fails(redis):
    job_id = new(redis, retries=1)
    redis.lpop(keys.rq_queue(TASK, MODEL))  # RQ popped it
    start(redis, job_id, "gone")
    assert protocol.reap(job_id, TASK, MODEL, worker="other", ttl=60, at=300.0).run(redis) is None
    assert protocol.reap(job_id, TASK, MODEL, worker="gone", ttl=60, at=300.0).run(redis) is JobStatus.QUEUED
    h = record(redis, job_id)
    assert (h["status"], h["retries_left"]) == ("queued", "0") and "worker" not in h and "started_at" not in h
    assert redis.lrange(keys.rq_queue(TASK, MODEL), 0, -1) == [job_id.encode()]
    assert indexed(redis, JobStatus.QUEUED) == [job_id] and indexed(redis, JobStatus.RUNNING) == []
    start(redis, job_id, "gone-too")
    assert protocol.reap(job_id, TASK, MODEL, worker="gone-too", ttl=60, at=301.0).run(redis) is JobStatus.FAILED
    h = record(redis, job_id)
    assert h["status"] == "failed" and json.loads(h["error"])["code"] == "worker_lost"
    assert indexed(redis, JobStatus.FAILED) == [job_id]


def test_reap_does_not_retry_a_job_whose_cancel_was_asked(redis):
    job_id = new(redis, retries=1)
    start(redis, job_id, "gone")
    protocol.cancel(job_id, TASK, MODEL, ttl=60).run(redis)
    assert protocol.reap(job_id, TASK, MODEL, worker="gone", ttl=60, at=300.0).run(redis) is JobStatus.FAILED


def test_fail_stuck_fails_a_running_job_with_timeout(redis):
    job_id = new(redis)
    start(redis, job_id)
    assert protocol.fail_stuck(job_id, TASK, message="stuck", ttl=60, at=400.0).run(redis) is True
    h = record(redis, job_id)
    assert h["status"] == "failed" and json.loads(h["error"]) == {"code": "timeout", "message": "stuck"}
    assert protocol.fail_stuck(job_id, TASK, message="stuck", ttl=60, at=400.0).run(redis) is False


def test_restore_puts_back_a_queued_job_that_is_on_no_list(redis):
    job_id = new(redis)
    assert protocol.restore(job_id, TASK, MODEL).run(redis) is False  # on its list: nothing to do
    redis.lpop(keys.rq_queue(TASK, MODEL))  # popped by a worker that died before starting it
    assert protocol.restore(job_id, TASK, MODEL).run(redis) is True
    assert redis.lrange(keys.rq_queue(TASK, MODEL), 0, -1) == [job_id.encode()]
    redis.lpop(keys.rq_queue(TASK, MODEL))
    redis.delete(keys.rq_job(job_id))  # no RQ job to run: not restored
    assert protocol.restore(job_id, TASK, MODEL).run(redis) is False


def test_claim_takes_only_queued_jobs_still_on_the_list(redis):
    ids = [new(redis) for _ in range(3)]
    protocol.cancel(ids[1], TASK, MODEL, ttl=60).run(redis)
    claimed = protocol.claim(TASK, MODEL, ids, worker="w1", progress={"step": 0}, at=500.0).run(redis)
    assert [(c.id, c.params) for c in claimed] == [(ids[0], {"prompt": "p", "seed": 1}),
                                                   (ids[2], {"prompt": "p", "seed": 1})]
    assert sorted(indexed(redis, JobStatus.RUNNING)) == sorted([ids[0], ids[2]])
    assert redis.hget(keys.rq_job(ids[0]), "worker_name") == b"w1"


def test_peek_lists_queued_jobs_with_their_params(redis):
    ids = [new(redis, {"n": i}) for i in range(3)]
    start(redis, ids[0])  # running, its id still on the list (as a stale copy would be)
    assert protocol.peek(redis, TASK, MODEL, 10) == [(ids[1], {"n": 1}), (ids[2], {"n": 2})]
    assert protocol.peek(redis, TASK, MODEL, 1) == []  # only the head of the list is looked at
    assert protocol.peek(redis, TASK, "empty", 10) == []


def test_full_lora_urls_are_kept_apart_and_given_to_the_worker_only(redis):
    """`adapter_urls` (service/lora_urls.py): the record's params show a LoRA URL without its query;
    each read a worker starts a job with (load_input, peek, claim) has it back."""
    full = "https://h.example/a.safetensors?token=s3cret"
    shown = {"prompt": "p", "loras": [{"name": "n", "scale": 1.0}, {"url": "https://h.example/a.safetensors",
                                                                      "scale": 1.0}]}
    run = {**shown, "loras": [shown["loras"][0], {"url": full, "scale": 1.0}]}
    ids = []
    for _ in range(2):
        ids.append(str(uuid.uuid4()))
        assert protocol.submit(ids[-1], TASK, "lora-urls", shown, owner=None, retries=0, timeout_s=60, cap=0,
                               adapter_urls={"1": full}).run(redis)
    assert "s3cret" not in record(redis, ids[0])["params"]
    assert protocol.load_input(redis, ids[0])[0] == run
    assert protocol.peek(redis, TASK, "lora-urls", 10) == [(ids[0], run), (ids[1], run)]
    claimed = protocol.claim(TASK, "lora-urls", ids, worker="w1", progress={}, at=500.0).run(redis)
    assert [c.params for c in claimed] == [run, run]
    plain = new(redis, model="lora-urls-plain")  # no adapter_urls: the params as they are
    assert protocol.load_input(redis, plain)[0] == {"prompt": "p", "seed": 1}
    assert [c.params for c in protocol.claim(TASK, "lora-urls-plain", [plain], worker="w1", progress={},
                                             at=500.0).run(redis)] == [{"prompt": "p", "seed": 1}]


def test_scripts_load_again_after_a_script_flush(redis):
    job_id = new(redis)
    redis.script_flush()
    assert protocol.view(job_id).run(redis)["status"] == "queued"
    redis.script_flush()
    replies = protocol.run_all(redis, [protocol.report(job_id, {}), protocol.report(job_id, {})])
    assert [r.stop for r in replies] == [True, True]


def test_rate_limit_allows_a_burst_then_says_how_long_to_wait(redis):
    owner = f"key-{uuid.uuid4().hex}"
    at = 1_000_000.0
    # 60 a minute: one a second, bursts up to 60.
    assert [protocol.rate_limit(owner, 60, at=at).run(redis) for _ in range(60)] == [None] * 60
    assert protocol.rate_limit(owner, 60, at=at).run(redis) == 1.0
    assert protocol.rate_limit(owner, 60, at=at + 0.25).run(redis) == 0.75
    assert protocol.rate_limit(owner, 60, at=at + 1).run(redis) is None  # one more a second later
    assert protocol.rate_limit(owner, 60, at=at + 1).run(redis) == 1.0
    assert protocol.rate_limit(f"other-{owner}", 60, at=at).run(redis) is None  # each key its own
    assert 0 < redis.pttl(keys.rate(owner)) <= 60_000 + 59_000 + 1000  # kept only while it matters


# ---------------------------------------------------------------- the scripts name no key and no status

LUA_STRING = re.compile(r"'([^']*)'")
REDIS_COMMANDS = {"HGET", "HSET", "HGETALL", "HMGET", "HDEL", "HINCRBY", "ZADD", "ZREM", "ZCARD", "ZRANK",
                  "ZRANGEBYSCORE", "ZREMRANGEBYSCORE", "EXPIRE", "PUBLISH", "RPUSH", "LREM", "LPOS", "SADD", "SET",
                  "DEL", "EXISTS", "GET", "HLEN", "ZRANGE", "ZSCORE", "HEXISTS", "LTRIM"}
SCRIPT_WORDS = {
    "EX", "PX", "-inf", "LIMIT",  # command arguments
    "ok", "full", "owner_full", "claim_lost",  # submit's replies (protocol.py decodes them all)
    "canceled", "running", "ended", "requeued", "failed",
    "_queue_position",  # view.lua's extra field
    "1", "0", "",  # the cancel flag's value; no retries left; the "no event" marker
    "worker_name",  # RQ's job hash field (with 'status')
    "taken", "limit", "digests",  # the adapter registry's replies, and its records' field of file digests
}


def assert_spells_no_key(path, allowed: set[str], *, needs_keys: bool = True) -> None:
    """A string in a script is a Redis command, a field it may name (`allowed`), or one of a few words
    each script documents; never a key (those come as KEYS) and never a status (those come as ARGV)."""
    text = path.read_text()
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("--"))
    for word in LUA_STRING.findall(code):
        assert word in REDIS_COMMANDS | allowed | SCRIPT_WORDS, f"{path.name}: '{word}'"
        assert not word.startswith(("fresco", "rq:")), f"{path.name} spells a key: '{word}'"
    assert ".." not in code  # no key (or anything) built by concatenation
    assert ("KEYS[" in code) is needs_keys, path.name  # a lib snippet gets its keys from its caller


def test_lua_scripts_spell_no_key_and_only_known_fields():
    scripts = sorted(protocol.SCRIPTS.glob("*.lua"))
    assert len(scripts) == 12
    for path in scripts:
        assert_spells_no_key(path, keys.JOB_FIELDS)
    # The webhook outbox and fair share, run inside the transitions: job fields and the delivery's.
    libs = sorted(protocol.SCRIPTS.glob("lib/*.lua"))
    assert [p.name for p in libs] == ["fair.lua", "webhook_outbox.lua"]
    for lib in libs:
        assert_spells_no_key(lib, keys.JOB_FIELDS | keys.DELIVERY_FIELDS, needs_keys=False)


def test_replies_named_in_scripts_are_the_ones_protocol_decodes():
    assert {o.value for o in CancelOutcome} - {"missing"} == {"canceled", "running", "ended"}
    reap = (protocol.SCRIPTS / "reap.lua").read_text()
    assert "return 'requeued'" in reap and "return 'failed'" in reap
