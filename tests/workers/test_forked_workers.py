"""tests/forkserver.py, the stacks' fork server: a forked `fresco` process gets the environment,
directory, log and session it was asked for, runs the real command, and is signalled, killed and waited
for as a Popen is, its exit status the one the kernel reported."""

from __future__ import annotations

import os
import signal
import subprocess

import pytest

from tests.stack import ROOT, fork_server, free_port, wait_until_ok


@pytest.fixture(scope="module")
def server():
    s = fork_server()
    if s is None:
        pytest.fail("the fork server did not start (see the warning): every stack now pays a worker's imports")
    return s


def test_a_forked_command_runs_with_its_environment_directory_and_log(server, tmp_path):
    log = tmp_path / "hash.log"
    env = {"PATH": os.environ["PATH"], "FRESCO_DATA_DIR": str(tmp_path)}
    proc = server.spawn(["hash-key", "ops"], env, cwd=tmp_path, log=log, session=True)
    assert proc.wait(30) == 0 and proc.returncode == 0 and proc.poll() == 0
    out = log.read_text()
    assert "FRESCO_API_KEYS entry: ops:" in out


def test_a_forked_process_is_signalled_waited_for_and_its_kill_reported(server, tmp_path):
    env = {**os.environ, "FRESCO_PORT": str(free_port()), "FRESCO_REDIS_URL": "redis://127.0.0.1:1",
           "FRESCO_DATA_DIR": str(tmp_path)}
    proc = server.spawn(["api"], env, cwd=ROOT, log=tmp_path / "api.log", session=True)
    with pytest.raises(subprocess.TimeoutExpired):
        proc.wait(0.5)
    assert proc.poll() is None
    assert os.getsid(proc.pid) == proc.pid  # a session of its own: a stack kills its process group
    with open(f"/proc/{proc.pid}/stat") as f:  # forked by the server (its imports done), not a new interpreter
        assert int(f.read().rsplit(")", 1)[1].split()[1]) == server.proc.pid
    url = f"http://127.0.0.1:{env['FRESCO_PORT']}/healthz"  # its settings are the environment it was given
    assert wait_until_ok(url, [proc], 30) == "ok"
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(10) == -signal.SIGKILL
    proc.send_signal(signal.SIGTERM)  # ended: a no-op, as Popen's
