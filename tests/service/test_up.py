"""`fresco up`'s supervision (service/cli/up.py): its restart policy, what it says while it waits, and, with a
real `fresco up`, a configuration error that stops it (one line, exit 78) and readiness with a worker
that serves a task with another model than its default."""

from __future__ import annotations

import os
import sys
import time

import httpx
import pytest

from service.cli.up import Child, RestartPolicy, exit_words, waiting_for
from service.config_errors import EX_CONFIG, ConfigError, one_line
from tests.faults.fresco_up import FrescoUp
from tests.stack import tiny_models_file

POLICY = RestartPolicy()


def test_a_configuration_error_is_never_restarted():
    verdict = POLICY.after_exit(EX_CONFIG, ran_s=120, quick_failures=0)
    assert verdict.delay is None and "configuration error" in verdict.why


def test_quick_failures_back_off_exponentially_capped_then_give_up():
    policy = RestartPolicy(first_s=0.5, backoff_s=1, cap_s=3, quick_s=30, give_up_after=6)
    delays, failures = [], 0
    while True:
        verdict = policy.after_exit(1, ran_s=0.2, quick_failures=failures)
        if verdict.delay is None:
            break
        delays.append(verdict.delay)
        failures = verdict.quick_failures
    assert delays == [0.5, 1, 2, 3, 3]
    assert "exited with code 1 6 times in a row" in verdict.why


def test_a_child_killed_from_outside_is_backed_off_but_never_given_up_on():
    failures, delays = 0, []
    for _ in range(10):  # killed with kill -9 every few seconds, as the chaos soak does
        verdict = POLICY.after_exit(-9, ran_s=5, quick_failures=failures)
        assert verdict.delay is not None
        delays.append(verdict.delay)
        failures = verdict.quick_failures
    assert delays[0] == POLICY.first_s and delays[-1] == POLICY.cap_s


def test_a_child_that_ran_a_while_starts_again_soon_and_its_count_starts_over():
    assert POLICY.after_exit(-9, ran_s=600, quick_failures=4) == POLICY.after_exit(-9, ran_s=600, quick_failures=0)
    assert POLICY.after_exit(-9, ran_s=600, quick_failures=4).delay == POLICY.first_s


def test_exit_words():
    assert exit_words(-9) == "was killed by SIGKILL" and exit_words(3) == "exited with code 3"


def test_a_child_exiting_with_ex_config_is_given_up_on_at_once():
    said = []
    child = Child("worker-0", [sys.executable, "-c", f"raise SystemExit({EX_CONFIG})"], dict(os.environ))
    child.start()
    child.proc.wait(30)
    why = child.check(said.append)
    assert why.startswith("worker-0 stopped on a configuration error") and said == [] and child.restarts == 0


def test_a_child_dying_at_once_is_restarted_with_growing_pauses_then_given_up_on():
    said = []
    policy = RestartPolicy(first_s=0.0, backoff_s=0.2, give_up_after=3)
    child = Child("api", [sys.executable, "-c", "raise SystemExit(1)"], dict(os.environ), policy)
    child.start()
    deadline = time.monotonic() + 30
    while (why := child.check(said.append)) is None:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert said == ["api exited with code 1; restarting it in 0.0s", "api exited with code 1; restarting it in 0.2s"]
    assert child.restarts == 2 and why.startswith("api exited with code 1 3 times in a row")


def test_what_fresco_up_says_it_waits_for():
    base = "http://127.0.0.1:8000"
    assert waiting_for(base, None) == f"the API to answer on {base}"
    assert waiting_for(base, {"redis": False, "missing_tasks": []}) == "Redis to answer"
    line = waiting_for(base, {"redis": True, "workers": 1, "missing_tasks": ["turbo", "svd"],
                              "unserved_defaults": [{"task": "turbo", "model": "tiny-turbo"},
                                                    {"task": "svd", "model": "tiny-svd"}]})
    assert "none serves turbo (tiny-turbo), svd (tiny-svd)" in line and "1 worker(s) up" in line


def test_a_pydantic_error_is_one_line():
    from service.catalog.models_file import Catalog

    with pytest.raises(ValueError) as caught:
        Catalog.model_validate({"models": {"x": {"kind": "nope", "source": "tiny"}}})
    line = one_line(caught.value)
    assert "\n" not in line and line.startswith("models.x.kind: Input should be")
    assert str(ConfigError.of(FileNotFoundError(2, "No such file", "/no/models.yaml"))) == \
        "no such file: /no/models.yaml"


def test_fresco_up_gives_up_on_a_configuration_error_in_one_line(tmp_path):
    """A model whose weights are pickles only, without `trust_pickle`: the worker says so in one line and exits
    78; `fresco up` does not restart it, stops the API and exits 78, in seconds."""
    (tmp_path / "pickled" / "unet").mkdir(parents=True)
    (tmp_path / "pickled" / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"\0")
    models = tmp_path / "models.yaml"
    models.write_text("models:\n  pickled: {kind: sd, source: ./pickled}\n")
    started = time.monotonic()
    up = FrescoUp(tmp_path / "data", models_file=models)
    try:
        code = up.proc.wait(90)
    finally:
        up.stop()
    took = time.monotonic() - started
    out = up.output
    assert code == EX_CONFIG, out
    assert "Traceback" not in out and "restarting" not in out, out
    errors = [line for line in out.splitlines() if "configuration error:" in line and "fresco.worker" in line]
    assert len(errors) == 1 and "trust_pickle: true" in errors[0], out
    assert "fresco: giving up: worker-0 stopped on a configuration error (exit 78)" in out
    print(f"fresco up with a pickled model: exit 78 in {took:.1f}s")


def test_a_worker_serving_tasks_with_a_model_not_their_default_makes_the_service_ready(tmp_path):
    """FRESCO_WORKER_MODELS names tiny-pai only; each of its tasks' default is tiny-sd. Ready: every task is
    served; /readyz and fresco up name the unserved defaults; a job naming tiny-pai runs."""
    models = tiny_models_file(tmp_path / "models.yaml", ("tiny-sd", "tiny-pai"))
    up = FrescoUp(tmp_path / "data", models_file=models, env={"FRESCO_WORKER_MODELS": "tiny-pai"})
    try:
        up.wait_line(r"ready in", 120)
        ready = httpx.get(up.url + "/readyz", timeout=5)
        assert ready.status_code == 200, ready.text
        body = ready.json()
        assert body["missing_tasks"] == [] and {"task": "txt2img", "model": "tiny-sd"} in body["unserved_defaults"]
        assert all(d["model"] == "tiny-sd" for d in body["unserved_defaults"])  # lanczos, upscale's, is served
        line = up.wait_line(r"note: no worker serves the default model of (.*)", 5).group(1)
        assert "txt2img (tiny-sd)" in line and "img2img (tiny-sd)" in line
        job = httpx.post(up.url + "/generate", json={"task": "txt2img", "prompt": "x", "model": "tiny-pai",
                                                     "width": 256, "height": 256, "steps": 2},
                         headers={"Prefer": "wait=60"}, timeout=70)
        assert job.json().get("status") == "succeeded", job.text
    finally:
        code = up.stop()
    assert code == 0, up.output
