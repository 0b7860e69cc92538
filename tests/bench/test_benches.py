"""Every bench runs, at tiny scale and on the CPU, and reports what it promises (the figures themselves
are for BENCHMARKS.md: benches are run by hand, these only keep them working). The overhead bench is
run in tests/bench/test_deployment.py; batching and resident models have their own tests in tests/workers."""

from __future__ import annotations

import json
import shutil

from bench import gpu, throughput


def test_throughput_bench():
    client = "wrk" if shutil.which("wrk") else "asyncio"  # wrk when installed, as the bench itself picks
    rows = throughput.run(processes=[1], concurrency=[4], duration=0.5, clients=[client], status_jobs=20)
    assert [r["kind"] for r in rows] == ["enqueue", "status"]
    for r in rows:
        assert r["requests"] > 0 and r["rate"] > 0 and r["errors"] == 0 and r["non2xx"] == 0
        assert 0 < r["p50_ms"] <= r["p99_ms"]


def test_api_cpu_bench_against_a_checkout():
    """bench/api_cpu.py, with this checkout as the other tree too: both measured, a ratio near 1."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    r = subprocess.run([sys.executable, "bench/api_cpu.py", "--against", str(ROOT), "--turns", "1", "--requests", "40",
                        "--json"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    for tree in ("this", "against"):
        assert set(summary[tree]) == {"GET /jobs/{id}", "POST /generate"}
        assert all(50 < us < 50_000 for values in summary[tree].values() for us in values)
    assert "ratio this/against" in r.stdout


def test_asyncio_load_generator():
    """The built-in load generator, on a throwaway server answering like the API."""
    import asyncio
    import threading

    async def serve(ready: threading.Event, port: list):
        async def handle(reader, writer):
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    break
                length = next((int(x[15:]) for x in head.split(b"\r\n") if x.lower().startswith(b"content-length:")), 0)
                if length:
                    await reader.readexactly(length)
                status = b"202 Accepted" if head.startswith(b"POST") else b"404 Not Found"
                writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Length: 2\r\n\r\n{}")
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port.append(server.sockets[0].getsockname()[1])
        ready.set()
        await asyncio.sleep(3)
        server.close()

    ready, port = threading.Event(), []
    thread = threading.Thread(target=lambda: asyncio.run(serve(ready, port)), daemon=True)
    thread.start()
    ready.wait(5)
    ok = throughput.asyncio_load(port[0], 3, 0.3, "enqueue", [])
    assert ok["requests"] > 10 and ok["errors"] == 0 and ok["non2xx"] == 0
    missing = throughput.asyncio_load(port[0], 2, 0.2, "status", ["x"])
    assert missing["non2xx"] == missing["requests"] > 0  # every answer counted, 4xx as non2xx


def test_gpu_bench_tiny(tmp_path):
    out = tmp_path / "rows.json"
    # Every section but sd3's, which runs flux's code on another model (the suite's time is short).
    sections = [s for s in gpu.SECTIONS if s not in ("train", "sd3")]
    assert gpu.main(["--tiny", "--compile-backend", "eager", "--repeats", "1", "--out", str(out),
                     "--only", *sections]) == 0
    rows = json.loads(out.read_text())
    assert [r["workload"] for r in rows] == ["sdxl", "turbo", "svd", "memory", "memory", "memory", *["flux"] * 4,
                                             "inpaint", "upscale"]
    for r in rows[:3]:
        assert r["plain_s"] > 0 and r["fresco_s"] > 0 and r["speedup"] > 0
    # The memory modes section: each mode timed, no peak on the CPU, the same latents as the default mode.
    memory = rows[3:6]
    assert [r["mode"] for r in memory] == ["default", "balanced", "minimal"]
    for r in memory:
        assert r["latency_s"] > 0 and r["latency_ratio"] > 0 and r["peak_bytes"] is None
        assert r["latents_max_abs_diff"] == 0.0
    # The SD 3.5 / FLUX.1 sections: unquantized and int8 run on the CPU through the txt2img task (int8 with
    # its Linear layers quantized); fp8 and nf4 need CUDA, so they are rows marked skipped, saying why.
    for kind, model in (("flux", "tiny-flux-schnell"),):
        section = [r for r in rows if r["workload"] == kind]
        assert [r["quantize"] for r in section] == ["none", "int8", "fp8", "nf4"]
        none, int8, fp8, nf4 = section
        assert none["model"] == int8["model"] == model and none["size"] == "64x64"
        assert none["latency_s"] > 0 and none["quantized_layers"] == 0 and none["peak_bytes"] is None
        assert int8["latency_s"] > 0 and int8["quantized_layers"] > 0 and int8["latency_ratio"] > 0
        assert "compute capability 8.9" in fp8["skipped"] and "bitsandbytes" in nf4["skipped"]
    # The edit section: SDXL inpainting, plain diffusers against the inpaint task; an ESRGAN tiled and whole.
    inpaint, upscale = rows[-2:]
    assert inpaint["model"] == "sdxl" and inpaint["size"] == "128x128" and inpaint["strength"] == 1.0
    assert inpaint["plain_s"] > 0 and inpaint["fresco_s"] > 0 and inpaint["speedup"] > 0
    assert inpaint["plain_peak_bytes"] is None and inpaint["fresco_peak_bytes"] is None  # the CPU: no peak to read
    assert (upscale["architecture"], upscale["scale"], upscale["size"], upscale["output"]) == ("ESRGAN", 2, "96x96",
                                                                                              "192x192")
    assert upscale["tiles"] == 4 and upscale["work"] > 1 and upscale["whole_mp_s"] > 0 and upscale["tiled_mp_s"] > 0
    assert 0 < upscale["max_diff"] <= 16 and upscale["peak_ratio"] is None  # only the seams differ, faintly


def test_gpu_bench_builds_a_real_esrgan_sized_upscaler(tmp_path):
    """The edit section's full-size upscaler: RealESRGAN_x4plus's RRDBNet (16.7 M parameters) with random
    weights, written as a .safetensors file and loaded by workers.upscalers as spandrel detects it."""
    import argparse

    import torch

    upscaler = gpu.bench_upscaler(argparse.Namespace(tiny=False), torch.device("cpu"), tmp_path)
    assert (upscaler.architecture, upscaler.scale, upscaler.dtype) == ("ESRGAN", 4, torch.float32)
    assert sum(p.numel() for p in upscaler.descriptor.model.parameters()) == 16_697_987
    assert upscaler.tiles(1024, 1024, 512) == 9  # 3 x 3 tiles of 512 px over 1024 px with 32 px of overlap


def test_gpu_bench_saves_a_turbo_for_the_end_to_end_benches(tmp_path):
    from service.catalog import load_catalog

    assert gpu.main(["--tiny", "--compile-backend", "eager", "--save-turbo", str(tmp_path)]) == 0
    spec = load_catalog(tmp_path / "models.yaml").spec("bench-turbo")
    assert spec.kind == "turbo" and spec.fuse_qkv and spec.channels_last and spec.compile
    assert (tmp_path / "turbo" / "model_index.json").is_file() and spec.source == str(tmp_path / "turbo")


def test_lora_hotswap_bench_tiny():
    """bench/lora_hotswap.py on the tiny profile with the eager backend: every figure, no recompilation
    (its timed calls run under fail_on_recompile, so one would raise)."""
    from bench import lora_hotswap

    row = lora_hotswap.run(lora_hotswap.argparse.Namespace(
        tiny=True, rank=8, slots=2, loras=3, repeats=1, dtype="float32", compile_backend="eager", compile_mode=None,
        no_compile=False, device="cpu"))
    assert row["compile"] and row["recompiles"] == 0
    assert row["none_s"] > 0 and row["resident_s"] > 0 and 0 < row["switch_s"] < 30


def test_duty_bench_tiny():
    """bench/duty.py: a backlog with the finishing stage on, through the S3 server with slow uploads (off
    is the in-process runner of tests/workers)."""
    from bench import duty

    lines = []
    figures = duty.run("turbo", jobs=6, rounds=1, storages=["s3"], put_delay_ms=50, size=256, steps=1, warmup=1,
                       modes=(2,), out=lines.append)
    (on,) = figures["phases"]["s3-on"]
    assert 0 < on["duty"] <= 1.02 and on["jobs_per_s"] > 0 and on["store_s"] >= 0.05
    assert any("| s3 | on |" in line for line in lines)


def test_fairness_bench_fair_phase():
    """bench/fairness.py's fair-share phase at a small scale: every job succeeds, and the light keys' jobs
    wait about a job, not behind the flood (its first come, first served phase is the unit tests' FIFO case)."""
    import subprocess
    import sys

    from bench.fairness import jain, max_min_shares
    from tests.conftest import ROOT

    assert jain([1, 1, 1]) == 1 and jain([1, 0, 0, 0]) == 0.25
    assert max_min_shares({"flood": 100, "a": 2, "b": 30}, 30) == {"a": 2.0, "flood": 14.0, "b": 14.0}
    r = subprocess.run([sys.executable, "bench/fairness.py", "--only", "fair", "--flood", "12", "--light", "2",
                        "--step-delay", "0.1"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    phase = json.loads(r.stdout.strip().splitlines()[-1])
    assert all(row["succeeded"] == row["jobs"] for row in phase["keys"].values())
    assert max(phase["keys"][k]["wait_p95_jobs"] for k in ("k1", "k2", "k3")) < 6
