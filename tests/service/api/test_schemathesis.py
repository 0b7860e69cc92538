"""schemathesis against the app's own OpenAPI schema, over real HTTP to a real API process: no server
error, and every status code, content type and body the API answers with is documented.

(Driven through Hypothesis directly: schemathesis' pytest fixture integration does not run on pytest 9.)"""

from __future__ import annotations

import hypothesis
import pytest
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import positive_data_acceptance

from tests.conftest import Stack

EXAMPLES = 30
# Not applied: "schema-valid data must be accepted". The contract is stricter than JSON Schema can say
# (JSON Schema counts 1.0 as an integer, the contract does not; an image must decode; width × height
# has a cap), so such requests rightly get a 422 — which the schema documents.
EXCLUDED = [positive_data_acceptance]
# Routes that answer when their jobs end (OpenAI Images, AUTOMATIC1111's txt2img and img2img): with no
# worker, a valid example gets a 503 (no live worker serves its model).
WAIT_FOR_JOBS = ("/v1/images/", "/sdapi/v1/txt2img", "/sdapi/v1/img2img")


@pytest.fixture(scope="module")
def api_url(module_server, tmp_path_factory):
    # No worker: a valid request to the routes that answer when the job ends (WAIT_FOR_JOBS) gets a 503 at
    # once; were a worker's heartbeat still live, a 504 after FRESCO_COMPAT_WAIT_S, kept to one second.
    # Its own Redis: on a shared one another stack's worker would run its jobs, into another data directory.
    with Stack(module_server.url, tmp_path_factory.mktemp("schemathesis"), workers=0,
               env={"FRESCO_COMPAT_WAIT_S": "1"}) as stack:
        yield stack.url


def operations(url):
    schema = schemathesis.openapi.from_url(url + "/openapi.json")
    return [result.ok() for result in schema.get_all_operations()]


def test_every_operation_conforms_to_the_schema(api_url):
    ops = operations(api_url)
    assert {f"{o.method.upper()} {o.path}" for o in ops} >= {
        "POST /generate", "GET /jobs/{job_id}", "DELETE /jobs/{job_id}", "GET /jobs/{job_id}/events",
        "GET /results/{job_id}/{name}", "GET /models", "GET /healthz", "GET /readyz", "GET /metrics"}
    failures = []
    for op in ops:
        @hypothesis.settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                             suppress_health_check=list(hypothesis.HealthCheck))
        @hypothesis.given(case=op.as_strategy())
        def run(case):
            if op.path == "/readyz":  # 503 is its answer while a task has no worker: a signal, not an error
                response = case.call_and_validate(base_url=api_url, timeout=30,
                                                  excluded_checks=EXCLUDED + [not_a_server_error])
                assert response.status_code in (200, 503)
            elif op.path.startswith(WAIT_FOR_JOBS):  # answers when the job ends: with no worker, 503 (above)
                response = case.call_and_validate(base_url=api_url, timeout=30,
                                                  excluded_checks=EXCLUDED + [not_a_server_error])
                assert response.status_code < 500 or response.status_code in (503, 504)
            else:
                case.call_and_validate(base_url=api_url, timeout=30, excluded_checks=EXCLUDED)

        try:
            run()
        except Exception as exc:  # collect all operations' failures, then report them together
            failures.append(f"{op.method.upper()} {op.path}: {exc}")
    assert not failures, "\n\n".join(failures)
