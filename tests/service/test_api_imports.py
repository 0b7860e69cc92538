"""The API process must start without torch, diffusers or transformers."""

import subprocess
import sys


def test_api_never_imports_torch_or_diffusers():
    code = ("import sys; import service.app, service.cli; from service.app import create_app; create_app(); "
            "bad = [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules]; print(bad); "
            "sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
