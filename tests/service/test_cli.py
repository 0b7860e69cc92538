"""`fresco generate` end to end against the real stack: the rich progress bar on stderr (stage, steps,
percentage, time left), the saved result, errors field by field, Ctrl-C canceling the job."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

from PIL import Image

from service.client import Client
from tests.conftest import ROOT, free_port

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# rich draws live only on a terminal; TTY_COMPATIBLE=1 makes it draw into the test's pipe as it would there.
TERMINAL = {**os.environ, "TTY_COMPATIBLE": "1", "COLUMNS": "120"}


def fresco(*argv: str, env: dict | None = None, **kwargs):
    return subprocess.run([sys.executable, "-m", "service.cli", "generate", *argv], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env=env, **kwargs)


def test_generate_shows_stage_steps_and_time_left_then_saves_the_image(stack, tmp_path):
    r = fresco("sdxl", "--prompt", "a house", "--seed", "5", "--param", "width=256", "--param", "height=256",
               "--param", "steps=20", "--url", stack.url, "--out", str(tmp_path), env=TERMINAL)
    assert r.returncode == 0, r.stderr
    err = ANSI.sub("", r.stderr)
    job_id = re.search(r"job (\S+) \(sdxl, model tiny-sdxl, seed 5\)", err).group(1)
    assert re.search(r"base +\S+ +\d+% step \d+/16", err), err  # the stage, the bar, the percentage, the step
    assert re.search(r"refiner +\S+ +\d+% step \d+/4", err), err
    assert re.search(r"ETA \d+:\d\d:\d\d", err) and re.search(r"done +\S+ +100%", err), err
    [path] = tmp_path.glob("*.png")
    assert r.stdout.strip() == str(path) and path.name == f"{job_id}-0.png"
    assert Image.open(path).size == (256, 256)


def test_into_a_pipe_the_bar_is_written_once_in_its_last_state(stack, tmp_path):
    pipe = {**os.environ, "TTY_COMPATIBLE": "0"}
    r = fresco("turbo", "--prompt", "x", "--url", stack.url, "--out", str(tmp_path), env=pipe)
    assert r.returncode == 0, r.stderr
    assert "\x1b[" not in r.stderr and re.search(r"done +\S+ +100% +step 1/1 +ETA 0:00:00", r.stderr), r.stderr


def test_a_validation_error_prints_the_message_and_each_field(stack, tmp_path):
    r = fresco("turbo", "--prompt", "x", "--param", "width=1001", "--param", "steps=9", "--url", stack.url,
               "--out", str(tmp_path))
    assert r.returncode == 1 and not list(tmp_path.iterdir())
    assert "error 422: request is invalid\n" in r.stderr
    assert "  width: must be a multiple of 8\n" in r.stderr and "  steps: must be at most 4\n" in r.stderr


def test_an_unreachable_api_is_one_line_not_a_traceback(tmp_path):
    r = fresco("turbo", "--prompt", "x", "--url", f"http://127.0.0.1:{free_port()}", "--out", str(tmp_path))
    assert r.returncode == 1 and r.stderr.startswith("error: cannot reach http://127.0.0.1:")
    assert "Traceback" not in r.stderr


def test_ctrl_c_cancels_the_job(stack, tmp_path):
    image = tmp_path / "in.png"
    Image.new("RGB", (64, 64)).save(image)
    argv = [sys.executable, "-m", "service.cli", "generate", "svd", "--image", str(image), "--param", "width=256",
            "--param", "height=128", "--param", "num_frames=14", "--param", "steps=100", "--url", stack.url,
            "--out", str(tmp_path)]
    # SIGINT as a terminal's Ctrl-C sends it (the default action, whatever this test runner inherited).
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=TERMINAL,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    first = proc.stderr.readline()
    job_id = re.match(r"job (\S+) \(svd", first).group(1)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert f"canceled job {job_id}" in err and "Traceback" not in err and not out
    with Client(stack.url) as client:
        job = client.wait(job_id, timeout=30)
    assert job.status == "canceled" and job.error.code == "canceled"


def fresco_cli(*argv: str, env: dict | None = None):
    return subprocess.run([sys.executable, "-m", "service.cli", *argv], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env=env)


def test_train_shows_step_and_loss_then_prints_the_adapter_which_adapters_lists_and_deletes(stack, tmp_path):
    from tests.service.client.test_train import dataset, unique

    name = unique("cli")
    r = fresco_cli("train", str(dataset(tmp_path / "set")), "--name", name, "--model", "tiny-sd", "--steps", "4",
                   "--resolution", "256", "--rank", "4", "--param", "checkpoint_every=0", "--validation-prompt",
                   "a red square", "--url", stack.url, "--out", str(tmp_path / "out"), env=TERMINAL)
    assert r.returncode == 0, r.stderr
    err = ANSI.sub("", r.stderr)
    assert re.search(rf"job \S+ \(train {name}, model tiny-sd, 4 steps\)", err), err
    assert re.search(r"training +\S+ +\d+% step \d/4 +loss \d+\.\d{4}", err), err  # the step and the loss, live
    assert re.search(r"done +\S+ +100% step 4/4 +loss \d+\.\d{4}", err), err
    assert f"adapter {name} (lora on tiny-sd, trigger '{name}')\n" in r.stdout
    assert re.search(r"  digest  sha256:[0-9a-f]{64}\n", r.stdout) and re.search(r"  loss    \d+\.\d{4}", r.stdout)
    assert re.search(r"  url     http://\S+/results/adapters/[0-9a-f]{64}\.safetensors\n", r.stdout)
    assert f'use it:  fresco generate txt2img --model tiny-sd --lora {name} --prompt "{name}, ..."' in r.stdout
    saved = tmp_path / "out" / f"{name}.safetensors"
    assert f"saved {saved}" in r.stdout and saved.stat().st_size > 0 and list((tmp_path / "out").glob("*.png"))

    listed = fresco_cli("adapters", "--url", stack.url)
    assert listed.returncode == 0 and re.search(rf"^{name} +lora +tiny-sd +{name} ", listed.stdout, re.M), listed
    deleted = fresco_cli("adapters", "delete", name, "--url", stack.url)
    assert deleted.returncode == 0 and deleted.stdout == f"deleted adapter {name}\n"
    again = fresco_cli("adapters", "--url", stack.url, "delete", name)
    assert again.returncode == 1 and f"error 404: this API key has no adapter named '{name}'" in again.stderr


def test_train_on_a_folder_without_images_says_so(tmp_path):
    (tmp_path / "empty").mkdir()
    r = fresco_cli("train", str(tmp_path / "empty"), "--name", "x", "--url", f"http://127.0.0.1:{free_port()}")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr == (f"fresco train: {tmp_path / 'empty'}: no training images (PNG, JPEG or WebP files, "
                        f"with optional same-name .txt captions)\n")


def test_inpaint_with_a_mask_file_and_expand_then_upscale_the_result(stack, tmp_path):
    """`--mask` and `--expand` make an outpainted inpaint job; `--image` of its result and `--scale` an upscale."""
    Image.new("RGB", (64, 64), (40, 90, 200)).save(tmp_path / "in.png")
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    mask.save(tmp_path / "mask.png")
    out = tmp_path / "out"
    r = fresco("inpaint", "--prompt", "a door", "--image", str(tmp_path / "in.png"),
               "--mask", str(tmp_path / "mask.png"), "--expand", "0,16", "--param", "steps=2",
               "--url", stack.url, "--out", str(out))
    assert r.returncode == 0, r.stderr
    [inpainted] = out.glob("*.png")
    assert Image.open(inpainted).size == (80, 64)  # 16 px added on the right
    r = fresco("upscale", "--image", str(inpainted), "--model", "tiny-esrgan", "--scale", "2", "--url", stack.url,
               "--out", str(out / "up"))
    assert r.returncode == 0, r.stderr
    [upscaled] = (out / "up").glob("*.png")
    assert Image.open(upscaled).size == (160, 128)


def test_malformed_expand_and_hires_flags_are_usage_errors(tmp_path):
    for flag, value in (("--expand", "8,x"), ("--hires", "2:latent:0.5:9"), ("--hires", "big")):
        r = fresco("txt2img", "--prompt", "x", flag, value, "--url", "http://127.0.0.1:9", "--out", str(tmp_path))
        assert r.returncode == 2 and f"{flag} takes" in r.stderr, (flag, value, r.stderr)


def test_a_queued_job_says_where_it_stands_and_priority_is_a_flag():
    from types import SimpleNamespace

    from service.cli import build_parser
    from service.cli.generate import _request_fields, queued_note

    assert queued_note(SimpleNamespace(status="queued", queue_position=3)) == ", queued: 3 jobs ahead"
    assert queued_note(SimpleNamespace(status="queued", queue_position=0)) == ", queued: next"
    assert queued_note(SimpleNamespace(status="running", queue_position=None)) == ""
    args = build_parser().parse_args(["generate", "turbo", "--prompt", "x", "--priority", "low"])
    assert _request_fields(args)["priority"] == "low"
