"""How the suite spreads over pytest-xdist processes (`make test`: `-n 3 --dist loadgroup`): in groups, each
run from start to end by one process.

- The chaos soak (tests/bench/test_soak.py) alone: the longest test, handed out first so that it runs while
  the others do, not after them.
- The fault tests that share a module's stack (tests/faults/test_faults.py `fstack`), one after another:
  each kills its worker or stops its Redis, and the next starts where it left off. Every other fault test
  (its own Redis and stack, or its own `fresco up`: nothing shared) is a group of its own, so that the
  fault tests, most of them waiting on timeouts and restarts, run beside each other.
- The modules that share a session- or package-scoped stack (tests/conftest.py `stack`, the e2e keyed
  stack, the deploy tests' S3 stack): it starts once.
- A bench test that shares no module-scoped fixture: alone (each starts what it measures, and most take
  tens of seconds: a module of them in one process would be the last to end).
- Every other module: its module-scoped stack starts once.

Groups are handed out longest first (the soak, the faults, the shared stacks, then e2e, deploy, bench,
workers, service), so that the quick unit tests fill the end and no process is left alone with a long group.

pytest-xdist's own `loadgroup` sends each test's `xdist_group` to the scheduler by rewriting the test's
node id, which pytest 9's node ids no longer allow. So each test process writes the groups it computed
(every process computes the same) to a file the controlling process's scheduler reads once collection is
complete.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest

SHARED_STACKS = ("keyed_stack", "s3_stack", "stack")  # session- or package-scoped stack fixtures, in precedence
SOAK = ("bench", "test_soak.py")  # the soak's module, under tests/: a group of its own
FIRST = ("soak", "faults", "shared", "e2e", "deploy", "bench", "workers", "service")  # the order groups go out
WORKER_INPUT = "fresco_xdist_groups"
ALONE = ("faults", "bench")  # where a test sharing no module-scoped fixture is a group of its own


def shared_stack(item) -> str | None:
    """The shared stack (a fixture of SHARED_STACKS of a scope wider than a module) a test uses, if any."""
    defs = item._fixtureinfo.name2fixturedefs
    for name in SHARED_STACKS:
        if any(d.scope in ("session", "package") for d in defs.get(name, ())):
            return name
    return None


def group_of(item, parts: tuple[str, ...]) -> str:
    """`parts`: the test file's path under tests/."""
    if tuple(parts[:2]) == SOAK:
        return "soak"
    if parts[0] in ALONE and not any(d.scope == "module" for defs in item._fixtureinfo.name2fixturedefs.values()
                                     for d in defs):
        return f"{parts[0]}:{item.nodeid}"
    if parts[0] == "faults":
        return "/".join(parts)
    shared = shared_stack(item)
    return f"shared:{shared}" if shared else "/".join(parts)


def rank(group: str) -> int:
    head = group.split(":")[0].split("/")[0]
    return FIRST.index(head) if head in FIRST else len(FIRST)


def arrange(config, items: list, parts_of) -> None:
    """In a test process under xdist: order `items` by their groups' rank (stable) and write the groups
    where the scheduler reads them."""
    path = getattr(config, "workerinput", {}).get(WORKER_INPUT)
    if not path:
        return
    groups = {item.nodeid: group_of(item, parts_of(item)) for item in items}
    items.sort(key=lambda item: rank(groups[item.nodeid]))
    tmp = Path(f"{path}.{os.getpid()}")
    tmp.write_text(json.dumps(groups))
    os.replace(tmp, path)


def pytest_configure(config) -> None:
    if hasattr(config, "workerinput"):
        # Several test processes on a small machine: one torch thread each (and each process they start),
        # as the stacks' workers run (FRESCO_TORCH_THREADS=1). Two threads each would be more threads than
        # cores, each OpenMP region waiting for a thread another process holds.
        os.environ.setdefault("OMP_NUM_THREADS", "1")
    elif config.getoption("dist", "no") == "loadgroup":
        config.fresco_groups = Path(tempfile.mkdtemp(prefix="fresco-xdist-")) / "groups.json"


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's hooks: there only when it is installed
def pytest_configure_node(node) -> None:
    node.workerinput[WORKER_INPUT] = str(node.config.fresco_groups)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    if getattr(config, "fresco_groups", None) is None:
        return None
    from xdist.scheduler import LoadScopeScheduling

    class GroupScheduling(LoadScopeScheduling):
        """xdist's scope scheduling, a scope being a group: handed out in collection order."""

        def __init__(self, config, log=None):
            super().__init__(config, log)
            config.option.loadscopereorder = False  # the test processes ordered the collection already
            self.groups: dict[str, str] | None = None

        def _split_scope(self, nodeid: str) -> str:
            if self.groups is None:
                self.groups = json.loads(config.fresco_groups.read_text())
            return self.groups.get(nodeid) or nodeid.split("::", 1)[0]

    return GroupScheduling(config, log)
