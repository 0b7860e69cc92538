"""The HTTP contract as this checkout answers it, to compare with another checkout's before a change lands:
the OpenAPI document, `GET /models`, and the status and body of some fifty bad requests (validation of
every task, LoRAs, ControlNets, webhooks, bodies that are no JSON, unknown jobs, the compatible APIs'
errors and lists), through the ASGI app in one process, on an embedded Redis, with no worker.

    .venv/bin/python bench/contract.py                      # this checkout's, as JSON
    .venv/bin/python bench/contract.py --against /tmp/orig  # and another's: identical, or what differs

Ids, timestamps and drawn seeds are left out. A refactoring that must not change the contract (issue 19)
shows "identical".
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VOLATILE = {"id", "created_at", "seed", "queue_position", "request_id"}  # in answers, differ from run to run


def png(w: int = 64, h: int = 64) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (w, h)).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def bad_bodies() -> dict[str, dict]:
    """POST /generate bodies that break a rule, by name: the schema's and the catalogue's."""
    url_lora = {"url": "https://x/y.safetensors"}
    return {
        "empty": {}, "no task": {"prompt": "x"}, "unknown task": {"task": "nope"},
        "sdxl width": {"task": "sdxl", "prompt": "x", "width": 1001},
        "sdxl many": {"task": "sdxl", "prompt": "", "width": "1024", "steps": 0, "guidance_scale": 99, "extra": 1},
        "sdxl refiner switch": {"task": "sdxl", "model": "tiny-sdxl", "prompt": "x", "refiner_switch": 1.0},
        "sdxl images": {"task": "sdxl", "prompt": "x", "width": 2048, "height": 2048, "num_images": 9},
        "turbo": {"task": "turbo", "prompt": "x", "guidance_scale": 1.0, "steps": 5},
        "img2img no image": {"task": "img2img", "prompt": "x"},
        "img2img bad image": {"task": "img2img", "prompt": "x", "image": "notbase64!!"},
        "img2img on turbo": {"task": "img2img", "model": "tiny-turbo", "prompt": "x", "image": png(),
                             "scheduler": "euler", "guidance_scale": 3},
        "img2img strength": {"task": "img2img", "prompt": "x", "image": png(), "steps": 1, "strength": 0.5},
        "img2img small": {"task": "img2img", "prompt": "x", "image": png(32, 32)},
        "img2img on svd": {"task": "img2img", "prompt": "x", "image": png(), "model": "tiny-svd"},
        "img2img pixels": {"task": "img2img", "prompt": "x", "image": png(4000, 4000), "model": "tiny-sd"},
        "svd width": {"task": "svd", "image": png(), "num_frames": 99, "min_guidance_scale": 5,
                      "max_guidance_scale": 1, "width": 100},
        "svd rules": {"task": "svd", "image": png(), "num_frames": 99, "min_guidance_scale": 5,
                      "max_guidance_scale": 1, "width": 4096, "height": 4096},
        "svd control": {"task": "svd", "image": png(), "control": []},
        "txt2img on svd": {"task": "txt2img", "model": "tiny-svd", "prompt": "x"},
        "txt2img unknown model": {"task": "txt2img", "model": "nope", "prompt": "x"},
        "loras scale": {"task": "turbo", "prompt": "x", "loras": [{"name": "nope"}, {"name": "tiny-cat"}, url_lora,
                                                                   {}, {"name": "tiny-style", "scale": 3}]},
        "loras": {"task": "turbo", "prompt": "x", "loras": [{"name": "nope"}, {"name": "tiny-cat"}, url_lora, {},
                                                             {"name": "tiny-style", "scale": 1}]},
        "loras twice": {"task": "sdxl", "prompt": "x", "loras": [{"name": "tiny-style"}, {"name": "tiny-style"},
                                                                  {"name": "tiny-style", **url_lora}]},
        "lora of another family": {"task": "txt2img", "model": "tiny-sd", "prompt": "x",
                                   "loras": [{"name": "tiny-style"}]},
        "control": {"task": "txt2img", "model": "tiny-sd", "prompt": "x",
                    "control": [{"model": "tiny-canny", "image": png(), "start": 0.5, "end": 0.4},
                                {"model": "nope", "image": "bad"}]},
        "three controls": {"task": "sdxl", "prompt": "x", "control": [{"model": "tiny-canny", "image": png()}] * 3},
        "webhook": {"task": "turbo", "prompt": "x", "webhook": "http://127.0.0.1/x",
                    "webhook_events_filter": ["completed", "completed"]},
        "webhook filter alone": {"task": "turbo", "prompt": "x", "webhook_events_filter": ["start"]},
        "NUL": {"task": "turbo", "prompt": "a\u0000b"},
        "sdxl at the pixel limit": {"task": "sdxl", "prompt": "x", "width": 2048, "height": 2048, "refiner": True,
                                    "model": "tiny-sdxl", "seed": 1},
        "txt2img at the pixel limit": {"task": "txt2img", "prompt": "x", "width": 2048, "height": 2048,
                                       "model": "tiny-sdxl", "guidance_scale": 1, "seed": 1},
    }


def strip(o):
    if isinstance(o, dict):
        return {k: strip(v) for k, v in o.items() if k not in VOLATILE}
    if isinstance(o, list):
        return [strip(v) for v in o]
    return o


def answer(r) -> list:
    return [r.status_code, r.json() if r.headers.get("content-type", "").startswith("application/json") else r.text]


def dump() -> dict:
    sys.path.insert(0, os.getcwd())  # the checkout this runs in (--against runs it in the other one)
    from fastapi.testclient import TestClient

    from service.api.app import create_app
    from service.redis import EmbeddedRedis
    from service.settings import Settings

    data = Path(tempfile.mkdtemp())
    server = EmbeddedRedis(data / "redis")
    s = Settings(redis_url=server.url, data_dir=data, max_pixels=2048 * 2048)
    out: dict = {}
    try:
        with TestClient(create_app(s)) as c:
            out["openapi"] = c.get("/openapi.json").json()
            out["models"] = c.get("/models").json()
            answers = {name: answer(c.post("/generate", json=body)) for name, body in bad_bodies().items()}
            for name, raw in (("not JSON", b"{"), ("not UTF-8", b"\xff\xfe"), ("an array", b"[]"),
                              ("too large", b"x" * (s.max_body_bytes + 10))):
                answers[name] = answer(c.post("/generate", content=raw, headers={"Content-Type": "application/json"}))
            for path in ("/jobs/nope", "/jobs/00000000-0000-4000-8000-000000000000", "/results/x/y.png",
                         "/sdapi/v1/sd-models", "/sdapi/v1/samplers", "/sdapi/v1/loras", "/v1/models"):
                answers[f"GET {path}"] = answer(c.get(path))
            answers["DELETE unknown"] = answer(c.delete("/jobs/00000000-0000-4000-8000-000000000000"))
            answers["OpenAI"] = answer(c.post("/v1/images/generations",
                                              json={"prompt": "x", "size": "13x13", "model": "nope"}))
            answers["AUTOMATIC1111"] = answer(c.post("/sdapi/v1/txt2img", json={"prompt": "x", "width": 13}))
            out["errors"] = strip(answers)  # (the schema's own `seed` field stays in the documents)
    finally:
        server.shutdown()
    return out


def differences(a, b, path: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            if k not in a or k not in b:
                out.append(f"{path}/{k}: only in {'this' if k in a else 'against'}")
            else:
                out += differences(a[k], b[k], f"{path}/{k}")
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{path}[{i}]")]
    return [] if a == b else [f"{path}: {json.dumps(a)[:200]} != {json.dumps(b)[:200]}"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--against", type=Path, help="another checkout of Fresco to compare with")
    args = parser.parse_args(argv)
    if not args.against:
        print(json.dumps(dump(), indent=1, sort_keys=True, ensure_ascii=False))
        return 0
    dumps = {}
    for name, tree in (("this", ROOT), ("against", args.against.resolve())):
        out = subprocess.run([sys.executable, str(Path(__file__).resolve())], cwd=tree, capture_output=True, text=True,
                             check=True)
        dumps[name] = json.loads(out.stdout)
    found = differences(dumps["this"], dumps["against"])
    for section in ("openapi", "models", "errors"):
        same = not any(d.startswith(f"/{section}") for d in found)
        print(f"{section:8s} {'identical' if same else 'differs'}")
    print(f"{len(dumps['this']['errors'])} requests' answers compared")
    for d in found[:50]:
        print("  " + d)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
