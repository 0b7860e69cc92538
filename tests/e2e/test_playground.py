"""The playground (GET /) in a real browser: Playwright driving Debian's chromium against a real stack
(API, worker, Redis) on the tiny profile, slowed by FRESCO_STEP_DELAY_S so progress and live previews
can be watched; its Train tab trains a LoRA on tiny-sdxl (the worker's model) in seconds. A screenshot of
each state goes to FRESCO_TEST_ARTIFACTS (default .artifacts/playground/); FRESCO_DOCS_SCREENSHOT=1 also
writes the result state to docs/playground.png (the README's picture).

Without the `playwright` package or a `chromium` on PATH, the tests skip and say why; `make test`
installs Debian's chromium when it runs as root with apt-get."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.conftest import ROOT, Stack

ARTIFACTS = Path(os.environ.get("FRESCO_TEST_ARTIFACTS") or ROOT / ".artifacts" / "playground")
# Headless on a closed network: without the background-networking flags chromium waits on services it
# cannot reach.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
STEP_DELAY_S = 0.4
API_KEY = "fresco_playground-test-key"
TERMINAL = ("succeeded", "failed", "canceled")


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="the `playwright` package (the test extra) "
                                   "is not installed: pip install -e '.[test]'")
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("`chromium` is not installed: `make test` installs Debian's chromium when run as root "
                    "with apt-get (or: apt-get install --no-install-recommends chromium)")
    playwright = sync_api.sync_playwright().start()
    try:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
    except Exception as exc:  # noqa: BLE001 - a browser that cannot start here: say why, as a skip
        playwright.stop()
        pytest.skip(f"chromium ({chromium}) did not start: {exc}")
    yield browser
    browser.close()
    playwright.stop()


@pytest.fixture(scope="module")
def site(browser, module_server, tmp_path_factory):
    """One stack for the module: an API and a worker with the tiny Turbo and SDXL models (they serve
    turbo, sdxl and img2img), steps slowed down."""
    data = tmp_path_factory.mktemp("playground")
    stack = Stack(module_server.url, data, env={"FRESCO_STEP_DELAY_S": str(STEP_DELAY_S),
                                                      "FRESCO_WORKER_MODELS": "tiny-turbo,tiny-sdxl"})
    try:
        for task in ("turbo", "sdxl", "img2img"):
            stack.wait_serving(task)
        stack.data = data
        yield stack
    finally:
        stack.stop()


class Page:
    """A fresh browser context (its own localStorage) on the playground, and its uncaught errors."""

    def __init__(self, browser, url: str, width: int = 1280, height: int = 900):
        self.context = browser.new_context(viewport={"width": width, "height": height})
        self.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=url)
        self.page = self.context.new_page()
        self.page.set_default_timeout(30_000)
        self.errors: list[str] = []
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        self.page.on("console", lambda m: self.errors.append(m.text) if "Content Security Policy" in m.text else None)
        self.url = url

    def open(self):
        self.page.goto(self.url + "/")
        self.page.wait_for_selector("#f-prompt")
        return self.page

    def close(self):
        self.context.close()
        assert not self.errors, self.errors


@pytest.fixture
def pg(browser, site):
    page = Page(browser, site.url)
    yield page
    page.close()


def shot(page, name: str, docs: bool = False) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
    if docs and os.environ.get("FRESCO_DOCS_SCREENSHOT") == "1":
        page.screenshot(path=str(ROOT / "docs" / "playground.png"), full_page=True)


def wait_for(page, predicate: str, timeout: float = 30) -> None:
    """Poll a JavaScript expression until it is true. (Playwright's wait_for_function evaluates its
    predicate with eval(), which the page's Content-Security-Policy forbids, as it should.)"""
    deadline = time.monotonic() + timeout
    while not page.evaluate(f"() => Boolean({predicate})"):
        if time.monotonic() > deadline:
            raise AssertionError(f"never true: {predicate}")
        time.sleep(0.03)


def wait_status(page, statuses=TERMINAL, timeout: float = 60) -> str:
    wait_for(page, f"{list(statuses)!r}.includes(document.querySelector('#status').textContent)", timeout)
    return page.text_content("#status")


def png_file(path: Path, width: int, height: int, color=(200, 60, 30)) -> Path:
    Image.new("RGB", (width, height), color).save(path)
    return path


def png_bytes(width: int, height: int, color=(200, 60, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, "PNG")
    return buf.getvalue()


def drop_files(page, selector: str, files: list[tuple[str, bytes, str]]) -> None:
    """Drag files (name, bytes, type) from the desktop and drop them onto `selector`."""
    transfer = page.evaluate_handle("""(files) => {
        const transfer = new DataTransfer();
        for (const [name, b64, type] of files) {
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            transfer.items.add(new File([bytes], name, {type}));
        }
        return transfer;
    }""", [[name, base64.b64encode(data).decode(), kind] for name, data, kind in files])
    page.dispatch_event(selector, "dragover", {"dataTransfer": transfer})
    page.dispatch_event(selector, "drop", {"dataTransfer": transfer})


def natural_width(page, selector: str) -> int:
    wait_for(page, f"document.querySelector({selector!r})?.complete "
                   f"&& document.querySelector({selector!r}).naturalWidth")
    return page.eval_on_selector(selector, "img => img.naturalWidth")


# ---------------------------------------------------------------- the tests


def test_a_turbo_job_shows_progress_a_live_preview_and_its_result(pg):
    page = pg.open()
    shot(page, "form")
    page.select_option("#task", "turbo")
    page.fill("#f-prompt", "a red fox in the snow")
    page.fill("#f-width", "384")
    page.fill("#f-height", "256")
    page.fill("#f-steps", "4")
    page.fill("#f-seed", "7")
    # Sample the bar and the preview in the page itself while the job runs, every 20 ms.
    page.evaluate("""() => {
        window.samples = [];
        setInterval(() => window.samples.push({
            status: document.querySelector('#status').textContent,
            value: document.querySelector('#progress').value,
            preview: (document.querySelector('#preview').getAttribute('src') || '').slice(0, 22),
            shown: !document.querySelector('#preview-box').hidden}), 20);
    }""")
    page.click("#submit")
    wait_for(page, "document.querySelector('#preview').src.startsWith('data:image/webp;base64,')"
                           " && document.querySelector('#status').textContent === 'running'")
    shot(page, "running")
    assert wait_status(page) == "succeeded"
    samples = page.evaluate("window.samples")
    running = [s["value"] for s in samples if s["status"] == "running"]
    assert any(b > a for a, b in zip(running, running[1:])), running  # the bar moved while it ran
    assert any(s["shown"] and s["preview"] == "data:image/webp;base64" for s in samples if s["status"] == "running")
    assert natural_width(page, ".gallery img") == 384
    assert page.eval_on_selector(".gallery img", "img => img.naturalHeight") == 256
    assert page.text_content("#seed") == "7"
    assert page.text_content("[data-param='prompt']") == "a red fox in the snow"
    assert page.text_content("[data-param='steps']") == "4"
    assert page.text_content("[data-param='width']") == "384"
    assert page.get_attribute(".gallery a[download]", "href").endswith(".png")
    assert page.is_hidden("#cancel") and page.is_hidden("#preview-box")
    shot(page, "result", docs=True)


def test_img2img_from_a_file_picked_then_one_dropped(pg, tmp_path):
    page = pg.open()
    page.select_option("#task", "img2img")
    page.fill("#f-prompt", "a watercolor")
    page.fill("#f-steps", "4")
    page.set_input_files("#f-image", str(png_file(tmp_path / "picked.png", 320, 256)))
    assert natural_width(page, ".field-image .thumb") == 320
    # Drag and drop: a file dropped onto the zone replaces the one picked.
    drop_files(page, ".field-image .drop", [("dropped.png", png_bytes(264, 200, (30, 90, 200)), "image/png")])
    assert natural_width(page, ".field-image .thumb") == 264
    page.click("#submit")
    assert wait_status(page) == "succeeded"
    assert natural_width(page, ".gallery img") == 264  # img2img keeps the input's size (floored to 8s)
    assert page.get_attribute("[data-param='image'] a", "href").endswith("/input.png")
    shot(page, "img2img")


def test_cancel_a_long_job(pg):
    page = pg.open()
    page.select_option("#task", "sdxl")
    page.fill("#f-prompt", "a lighthouse at dusk")
    for name, value in (("width", "256"), ("height", "256"), ("steps", "100")):
        page.fill(f"#f-{name}", value)
    page.click("#submit")
    wait_for(page, "document.querySelector('#status').textContent === 'running'"
                           " && document.querySelector('#progress').value > 0")
    page.click("#cancel")
    assert wait_status(page, timeout=20) == "canceled"
    assert page.text_content("#job-error") == "Canceled."
    assert page.is_hidden("#cancel")
    shot(page, "canceled")


def test_validation_errors_next_to_their_fields(pg):
    page = pg.open()
    page.select_option("#task", "turbo")
    page.fill("#f-width", "1001")  # not a multiple of 8: the form leaves checking to the server (novalidate)
    page.click("#submit")
    page.wait_for_selector("#err-width:not([hidden])")
    assert page.text_content("#err-width") == "must be a multiple of 8"
    assert page.text_content("#err-prompt") == "is required"
    for field in ("width", "prompt"):
        assert page.get_attribute(f"#f-{field}", "aria-invalid") == "true"
        assert f"err-{field}" in page.get_attribute(f"#f-{field}", "aria-describedby").split()
    assert page.get_attribute("#f-height", "aria-invalid") is None
    assert page.evaluate("document.activeElement.id") in ("f-prompt", "f-width")  # focus goes to a named field
    assert page.is_hidden("#job-body")  # nothing was submitted
    shot(page, "validation-error")
    page.fill("#f-width", "512")
    page.fill("#f-prompt", "fixed")
    page.fill("#f-steps", "1")
    page.click("#submit")
    assert wait_status(page) == "succeeded"
    assert page.is_hidden("#err-width") and page.get_attribute("#f-width", "aria-invalid") is None


def test_history_run_again_and_copy_as_curl(pg, site):
    page = pg.open()
    page.select_option("#task", "turbo")
    page.fill("#f-prompt", "a <tiny-cat> on a roof")
    page.fill("#f-seed", "1234")
    page.fill("#f-width", "256")
    page.fill("#f-height", "256")
    page.check("[data-lora='tiny-style']")
    page.click("#submit")
    assert wait_status(page) == "succeeded"
    job_id = page.text_content("#job-id")

    # Copy as curl: the request just made, the key as $FRESCO_API_KEY; it runs and makes a job.
    page.click("#copy-curl")
    page.wait_for_selector("#curl-box:not([hidden])")
    command = page.text_content("#curl")
    assert command.startswith(f"curl -s '{site.url}/generate'") and '"seed":1234' in command
    assert page.evaluate("navigator.clipboard.readText()") == command
    ran = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=30)
    assert ran.returncode == 0, ran.stderr
    made = json.loads(ran.stdout)
    assert made["id"] != job_id and made["params"]["seed"] == 1234
    assert made["params"]["loras"][0]["name"] == "tiny-style"
    with httpx.Client(base_url=site.url, timeout=30) as client:
        assert client.get(f"/jobs/{made['id']}", params={"wait": 20}).json()["status"] == "succeeded"

    # History survives a reload; an entry re-opens its job; run again refills the seed and parameters.
    page.reload()
    page.wait_for_selector("#f-prompt")
    entry = page.locator(f".history-entry[data-id='{job_id}']")
    assert "turbo · succeeded" in entry.text_content()
    assert entry.locator("img").count() == 1  # its thumbnail
    page.fill("#f-seed", "99")
    page.fill("#f-prompt", "something else")
    entry.click()
    wait_for(page, f"document.querySelector('#job-id').textContent === {job_id!r}")
    assert wait_status(page) == "succeeded" and page.text_content("#seed") == "1234"
    page.click("#run-again")
    wait_for(page, "document.querySelector('#f-seed').value === '1234'")
    assert page.input_value("#f-prompt") == "a <tiny-cat> on a roof"
    assert page.input_value("#f-width") == "256"
    assert page.is_checked("[data-lora='tiny-style']")
    assert page.evaluate("document.activeElement.id") == "submit"
    # Rebuilt from the re-opened job's parameters (this page did not send it), curl still makes a job.
    page.click("#copy-curl")
    wait_for(page, "document.querySelector('#curl').textContent.includes('1234')")
    ran = subprocess.run(["bash", "-c", page.text_content("#curl")], capture_output=True, text=True, timeout=30)
    assert json.loads(ran.stdout)["params"]["seed"] == 1234, ran.stdout + ran.stderr


def test_train_an_adapter_watch_its_loss_and_use_it(pg, site):
    """The Train tab: two images dropped (one with a same-name .txt caption), a caption edited, a bad name
    answered next to its field; the job's loss curve grows and the latest validation image shows while it
    trains; a taken name is said next to the field; "Use it" sets the generate form up with the new LoRA,
    whose generation succeeds. (The module's worker trains tiny-sdxl; its default, tiny-sd, is not served.)"""
    name = "playground-red"
    page = pg.open()
    try:
        page.click("#tab-train")
        page.wait_for_selector("#t-name")
        assert page.is_hidden("#request") and page.get_attribute("#tab-train", "aria-selected") == "true"
        assert page.input_value("#t-model") == "tiny-sdxl"  # a model a live worker trains
        drop_files(page, "#train .drop", [("red.png", png_bytes(96, 96, (220, 20, 20)), "image/png"),
                                          ("blue.png", png_bytes(96, 80, (20, 20, 220)), "image/png"),
                                          ("blue.txt", b"a blue square\n", "text/plain")])
        page.wait_for_selector("#t-caption-1")
        wait_for(page, "document.querySelector('#t-caption-1').value === 'a blue square'")  # from blue.txt
        assert page.text_content("#t-images-count") == "2 images"
        assert natural_width(page, ".train-image:nth-child(2) .thumb") == 96
        page.fill("#t-caption-0", "a red square")
        page.fill("#t-name", "Red Square")  # not a valid name: the server says so next to the field
        for field, value in (("steps", "6"), ("rank", "4"), ("resolution", "256"), ("learning_rate", "0.001"),
                             ("validation-every", "3"), ("validation-prompt", "a red square")):
            page.fill(f"#t-{field}", value)
        page.click("#train-submit")
        page.wait_for_selector("#t-err-name:not([hidden])")
        assert page.text_content("#t-err-name") == "is invalid"
        assert page.get_attribute("#t-name", "aria-invalid") == "true"
        assert page.is_hidden("#job-body")  # nothing was submitted
        page.fill("#t-name", name)
        page.evaluate("""() => {
            window.samples = [];
            setInterval(() => window.samples.push({
                status: document.querySelector('#status').textContent,
                points: Number(document.querySelector('#loss').dataset.points || 0),
                preview: !document.querySelector('#preview-box').hidden
                    && (document.querySelector('#preview').getAttribute('src') || '').startsWith('data:image/')}), 20);
        }""")
        page.click("#train-submit")
        assert wait_status(page) == "succeeded"
        train_id = page.text_content("#job-id")
        running = [s for s in page.evaluate("window.samples") if s["status"] == "running"]
        points = [s["points"] for s in running]
        assert max(points) >= 2 and points == sorted(points), points  # the curve grew while it trained
        assert any(s["preview"] for s in running)  # the latest validation image, live
        assert page.get_attribute("#loss", "data-points") == "6"
        assert page.locator("#loss polyline").count() == 2 and page.is_visible("#loss-box")
        caption = page.text_content("#loss-line")
        assert caption.startswith("loss ") and "at step 6 of 6" in caption, caption
        assert page.text_content("#adapter-name") == name
        assert page.get_attribute("#adapter a[download]", "download") == f"{name}.safetensors"
        assert natural_width(page, ".gallery img") == 256  # a validation image
        assert page.text_content("[data-param='steps']") == "6"
        assert page.locator("[data-param='images'] li").count() == 2
        assert "a blue square" in page.text_content("[data-param='images']")
        shot(page, "trained")

        # The same name again: taken, said next to the field (a 409).
        page.click("#train-submit")
        page.wait_for_selector("#t-err-name:not([hidden])")
        assert page.text_content("#t-err-name").startswith("is taken")
        assert page.text_content("#job-id") == train_id

        # "Use it": the generate form, on the model it was trained on, with the LoRA ticked and its trigger.
        page.click("#use-it")
        wait_for(page, f"document.querySelector('[data-lora=\"{name}\"]')?.checked")
        assert page.get_attribute("#tab-generate", "aria-selected") == "true" and page.is_hidden("#train")
        assert (page.input_value("#task"), page.input_value("#model")) == ("sdxl", "tiny-sdxl")
        assert name in page.input_value("#f-prompt")
        for field, value in (("width", "256"), ("height", "256"), ("steps", "2")):
            page.fill(f"#f-{field}", value)
        page.click("#submit")
        wait_for(page, f"document.querySelector('#job-id').textContent !== {train_id!r}")
        assert wait_status(page) == "succeeded"
        assert json.loads(page.text_content("[data-param='loras']"))[0]["name"] == name
        shot(page, "used")
    finally:
        httpx.delete(f"{site.url}/adapters/{name}")


def test_narrow_window_and_keyboard(browser, site):
    narrow = Page(browser, site.url, width=375, height=800)
    try:
        page = narrow.open()
        no_sideways_scroll = "document.documentElement.scrollWidth <= window.innerWidth"
        assert page.evaluate(no_sideways_scroll)
        shot(page, "narrow")
        page.focus("#tab-generate")
        page.keyboard.press("ArrowRight")  # arrow keys move between the tabs
        assert page.evaluate("document.activeElement.id") == "tab-train" and page.is_visible("#t-name")
        drop_files(page, "#train .drop", [("wide.png", png_bytes(640, 160), "image/png")])
        page.wait_for_selector("#t-caption-0")
        page.click("#train details.more summary")
        assert page.evaluate(no_sideways_scroll)  # the training form fits too, its images and more settings open
        shot(page, "narrow-train")
        page.focus("#tab-train")
        page.keyboard.press("ArrowLeft")
        assert page.is_visible("#f-prompt") and page.is_hidden("#train")
        page.select_option("#task", "turbo")
        page.focus("#f-prompt")
        page.keyboard.type("typed with the keyboard")
        for _ in range(60):  # Tab through the form to the submit button
            if page.evaluate("document.activeElement.id") == "submit":
                break
            page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.id") == "submit"
        page.keyboard.press("Enter")
        assert wait_status(page) == "succeeded"
        assert page.text_content("[data-param='prompt']") == "typed with the keyboard"
        page.click("#copy-curl")
        page.wait_for_selector("#curl-box:not([hidden])")
        assert page.evaluate(no_sideways_scroll)  # the result (512 wide), the curl and the params fit
        img = page.eval_on_selector(".gallery img", "img => [img.naturalWidth, img.getBoundingClientRect().width]")
        assert img[0] == 512 and img[1] < 375
        shot(page, "narrow-result")
    finally:
        narrow.close()


def test_with_api_keys_the_page_is_public_and_asks_for_the_key(browser, site, module_server):
    """A second API on the same Redis and data directory, with keys on (the module's worker runs its jobs)."""
    entry = f"tester:{hashlib.sha256(API_KEY.encode()).hexdigest()}"
    with Stack(module_server.url, site.data, env={"FRESCO_API_KEYS": entry}, workers=0) as keyed:
        for path in ("/", "/playground/app.js", "/playground/style.css"):
            assert httpx.get(keyed.url + path).status_code == 200, path
        assert httpx.get(keyed.url + "/models").status_code == 401
        visitor = Page(browser, keyed.url)
        try:
            page = visitor.page
            sent = []
            page.on("request", lambda r: sent.append((r.url, r.headers.get("authorization"))))
            page.goto(keyed.url + "/")
            page.wait_for_selector("#key-box[open]")
            assert "needs an API key" in page.text_content("#key-message")
            assert page.evaluate("document.activeElement.id") == "api-key"
            sent.clear()
            page.keyboard.type(API_KEY)
            page.keyboard.press("Enter")
            page.wait_for_selector("#f-prompt")
            assert page.evaluate("localStorage.getItem('fresco.apiKey')") == API_KEY
            page.fill("#f-prompt", "with a key")
            page.fill("#f-width", "256")
            page.fill("#f-height", "256")
            page.click("#submit")
            assert wait_status(page) == "succeeded"
            assert natural_width(page, ".gallery img") == 256  # a signed result URL, no header needed
            # Every API call after the key was entered sends it (result URLs are signed instead).
            api_calls = {u.removeprefix(keyed.url): a for u, a in sent if "/results/" not in u}
            assert {"/models", "/generate"} <= set(api_calls) and any("/events?previews=true" in u for u in api_calls)
            assert set(api_calls.values()) == {f"Bearer {API_KEY}"}, api_calls
            page.click("#copy-curl")
            page.wait_for_selector("#curl-box:not([hidden])")
            assert '-H "Authorization: Bearer $FRESCO_API_KEY"' in page.text_content("#curl")
            assert API_KEY not in page.text_content("#curl")
        finally:
            visitor.close()
