"""workers/tuning.py, in fresh processes (it acts on process-wide state): tuning happens when called,
never on import, and leaves an operator's own settings alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import ROOT

TUNE = """
import json, os, sys
import workers, workers.worker            # importing changes nothing
before = os.environ.get("GOMP_SPINCOUNT")
from workers import tuning
print(json.dumps({"before": before, "applied": tuning.tune_process(), "after": os.environ.get("GOMP_SPINCOUNT")}))
"""


def run_tune(code: str, **env) -> dict:
    environment = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120,
                       env={**environment, **env})
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_tuning_is_explicit_and_too_late_once_torch_is_loaded():
    # workers.worker imports torch: the OpenMP setting can no longer reach libgomp, so it is not claimed
    late = run_tune(TUNE)
    assert late["before"] is None and late["applied"]["openmp_spin"] is False and late["after"] is None
    assert late["applied"]["malloc"] is True
    early = run_tune("import json, os\nfrom workers import tuning\n"
                     "print(json.dumps({'applied': tuning.tune_process(), 'after': os.environ.get('GOMP_SPINCOUNT')}))")
    assert early == {"applied": {"malloc": True, "openmp_spin": True}, "after": "50000"}


def test_tuning_leaves_an_operators_settings_alone():
    code = ("import json, os\nfrom workers import tuning\n"
            "print(json.dumps({'applied': tuning.tune_process(), 'after': os.environ.get('GOMP_SPINCOUNT')}))")
    assert run_tune(code, MALLOC_ARENA_MAX="4", OMP_WAIT_POLICY="passive") == \
        {"applied": {"malloc": False, "openmp_spin": False}, "after": None}
    assert run_tune(code, GLIBC_TUNABLES="glibc.malloc.arena_max=4")["applied"]["malloc"] is False
    assert run_tune(code, GOMP_SPINCOUNT="1000")["applied"]["openmp_spin"] is False
