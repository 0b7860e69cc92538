"""Who imports what: the API process starts without torch, diffusers or transformers; a worker process
runs jobs without FastAPI, Starlette or uvicorn; the webhook dispatcher (`fresco webhooks`) without
FastAPI or anything of service/api/; no module of Fresco's is part of an import circle; only the
benches' own tests import `bench/`."""

from __future__ import annotations

import ast
import subprocess
import sys

from tests.conftest import ROOT

PACKAGES = ("service", "workers")


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_api_never_imports_torch_or_diffusers():
    code = ("import sys; import service.api.app, service.cli; from service.api.app import create_app; create_app(); "
            "bad = [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules]; print(bad); "
            "sys.exit(1 if bad else 0)")
    r = run_python(code)
    assert r.returncode == 0, r.stdout + r.stderr


def test_the_client_needs_httpx_and_nothing_of_the_server():
    """service/client/ runs in its users' programs: no torch, no FastAPI, no Redis, no PIL (it encodes a PIL
    image it is given, with the PIL its caller loaded), and none of the server's own modules."""
    heavy = ("torch", "diffusers", "transformers", "fastapi", "starlette", "pydantic", "redis", "rq", "PIL")
    code = (f"import sys; import service.client; bad = [m for m in {heavy!r} if m in sys.modules]; "
            "bad += [m for m in sys.modules if m.startswith('service.') and not m.startswith('service.client')]; "
            "print(bad); sys.exit(1 if bad else 0)")
    r = run_python(code)
    assert r.returncode == 0, r.stdout + r.stderr
    for name, targets in import_graph().items():
        if name.startswith("service.client"):
            assert all(t.startswith("service.client") for t in targets), (name, targets)


def test_a_worker_runs_a_job_without_fastapi_or_uvicorn():
    """The worker's modules, its RQ entry point, and a real job run through them, in a fresh process."""
    code = """
import sys, tempfile
from pathlib import Path
import workers.worker
from service.catalog import tiny_catalog
from service.redis import EmbeddedRedis, sync_client
from tests.workers.harness import job, make_runner, pop_and_run, submit, turbo
data = Path(tempfile.mkdtemp())
server = EmbeddedRedis(data / "redis")
runner = make_runner(server.url, data, "imports-test", tiny_catalog())
redis = sync_client(server.url)
job_id = submit(redis, "turbo", "tiny-turbo", turbo(1))
pop_and_run(runner, redis, "turbo", "tiny-turbo")
status = job(redis, job_id)["status"]
server.shutdown()
bad = [m for m in ("fastapi", "starlette", "uvicorn") if m in sys.modules]
print(status, bad)
sys.exit(0 if status == "succeeded" and not bad and "torch" in sys.modules else 1)
"""
    r = run_python(code)
    assert r.returncode == 0, r.stdout + r.stderr


def _is_api(module: str) -> bool:
    return module == "service.api" or module.startswith("service.api.")


def test_webhooks_never_import_the_api():
    """service/webhooks/ builds JobViews with service/jobs/view.py and signs result URLs with
    service/signed_urls.py: no module of it imports service/api/, directly or through another."""
    graph = import_graph()
    webhooks = [n for n in graph if n == "service.webhooks" or n.startswith("service.webhooks.")]
    assert "service.webhooks.dispatcher" in webhooks and "service.webhooks.standalone" in webhooks
    for name in webhooks:
        assert not any(_is_api(t) for t in graph[name]), (name, sorted(graph[name]))
    seen: dict[str, str | None] = {n: None for n in webhooks}  # module -> the module that imports it
    todo = list(webhooks)
    while todo:
        node = todo.pop()
        for nxt in graph[node]:
            if nxt not in seen:
                seen[nxt] = node
                todo.append(nxt)
    for name in seen:
        if _is_api(name):
            path = [name]
            while seen[path[-1]] is not None:
                path.append(seen[path[-1]])
            raise AssertionError("service.webhooks reaches service.api: " + " -> ".join(reversed(path)))


def test_the_webhook_dispatcher_runs_without_fastapi():
    """The standalone dispatcher's modules, in a fresh process, and a dispatcher rendering a delivery
    with signed result URLs (API keys on): no FastAPI, Starlette, uvicorn or service.api loaded."""
    code = """
import sys
import service.webhooks.standalone, service.webhooks.dispatcher
from prometheus_client import CollectorRegistry
from service.settings import Settings
from service.webhooks.dispatcher import Dispatcher
from service.webhooks.metrics import WebhookMetrics
from service.webhooks.outbox import Delivery
from service.webhooks.signing import new_secret
settings = Settings(webhook_secret=new_secret(), api_keys={"alice": "0" * 64}, public_url="https://fresco.example")
dispatcher = Dispatcher(None, settings, WebhookMetrics(CollectorRegistry()))
snapshot = {"id": "j1", "task": "turbo", "model": "m", "status": "succeeded", "created_at": "1700000000.0",
            "result": '{"images": [{"name": "0.png", "width": 8, "height": 8}]}'}
body = dispatcher.render(Delivery(id="msg_1", job="j1", event="completed", url="https://hook.example/x",
                                  created_at=1700000001.0, seq=1, attempts=0, body=None, snapshot=snapshot))
assert "https://fresco.example/results/j1/0.png?expires=" in body and "signature=" in body, body
bad = [m for m in sys.modules if m in ("fastapi", "starlette", "uvicorn") or m.startswith(("fastapi.",
       "starlette.", "uvicorn.")) or m == "service.api" or m.startswith("service.api.")]
print(bad)
sys.exit(1 if bad else 0)
"""
    r = run_python(code)
    assert r.returncode == 0, r.stdout + r.stderr


def _modules() -> dict[str, ast.Module]:
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = ast.parse(path.read_text(), str(path))
    return out


def import_graph() -> dict[str, set[str]]:
    """Every import of one of Fresco's modules by another, at module level or inside a function
    (a function-level import that closes a circle is still a circle)."""
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, tree in modules.items():
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                           for a in node.names]
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_circle():
    graph = import_graph()
    assert len(graph) > 40 and "service.jobs.protocol" in graph["service.api.submit"]  # the graph is real
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_cycle_finder_finds_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_api_and_the_workers_keep_to_their_side():
    """service/ never imports workers/ (but the CLI package, service/cli/, the composition root); workers/
    never imports the HTTP API (service/api/)."""
    graph = import_graph()
    for name, targets in graph.items():
        if name.startswith("service.") and not (name == "service.cli" or name.startswith("service.cli.")):
            assert not any(t.startswith("workers") for t in targets), name
        if name.startswith("workers"):
            assert not any(t.startswith("service.api") for t in targets), name


def test_only_the_bench_tests_import_bench():
    for path in (ROOT / "tests").rglob("*.py"):
        if path.parent.name == "bench":
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n == "bench" or n.startswith("bench.") for n in names), path
