"""The playground (GET /) in a real browser: Playwright driving Debian's chromium against a real stack
(API, worker, Redis) on the tiny profile, slowed by FRESCO_STEP_DELAY_S so progress and live previews
can be watched; its Train tab trains a LoRA on tiny-sdxl (the worker's model) in seconds; its editing
tasks run on tiny-sd-inpaint (inpaint) and tiny-esrgan (upscale), the hires pass on tiny-sdxl. A screenshot of
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
import numpy as np
import pytest
from PIL import Image, ImageFilter

from tests.conftest import ROOT, Stack
from tests.e2e.inpainting import BLUR, MARGIN

ARTIFACTS = Path(os.environ.get("FRESCO_TEST_ARTIFACTS") or ROOT / ".artifacts" / "playground")
# Headless on a closed network: without the background-networking flags chromium waits on services it
# cannot reach.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
STEP_DELAY_S = 0.4
API_KEY = "fresco_playground-test-key"
TERMINAL = ("succeeded", "failed", "canceled")
WORKER_MODELS = ("tiny-turbo", "tiny-sdxl", "tiny-sd-inpaint", "tiny-esrgan")


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
    turbo, sdxl and img2img), the tiny inpainting checkpoint and the tiny ESRGAN, steps slowed down."""
    data = tmp_path_factory.mktemp("playground")
    stack = Stack(module_server.url, data, env={"FRESCO_STEP_DELAY_S": str(STEP_DELAY_S),
                                                      "FRESCO_WORKER_MODELS": ",".join(WORKER_MODELS)})
    try:
        for task in ("turbo", "sdxl", "img2img", "inpaint", "upscale"):
            stack.wait_serving(task)
        stack.data = data
        yield stack
    finally:
        stack.stop()


class Page:
    """A fresh browser context (its own localStorage) on the playground, and its uncaught errors."""

    def __init__(self, browser, url: str, width: int = 1280, height: int = 900, **options):
        self.context = browser.new_context(viewport={"width": width, "height": height}, **options)
        self.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=url)
        self.page = self.context.new_page()
        self.page.set_default_timeout(30_000)
        self.errors: list[str] = []
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        self.page.on("console", self.console)
        self.url = url

    def console(self, message) -> None:
        """A Content-Security-Policy report, or an error the page logged (not a request the server refused:
        the tests make 401s, 404s and 422s on purpose, and the page says so in its own words)."""
        if "Content Security Policy" in message.text or (
                message.type == "error" and not message.text.startswith("Failed to load resource")):
            self.errors.append(f"{message.type}: {message.text}")

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


# ---------------------------------------------------------------- editing: inpaint (a painted mask), upscale, hires


def textured(width: int, height: int) -> Image.Image:
    """An input image with something in every pixel (gradients under a checkerboard): a repaint shows."""
    x = np.arange(width)[None, :].repeat(height, 0)
    y = np.arange(height)[:, None].repeat(width, 1)
    check = np.where((x // 16 + y // 16) % 2, 230, 40)
    rgb = np.stack([x * 255 // width, y * 255 // height, check], axis=-1).astype(np.uint8)
    return Image.fromarray(rgb, "RGB")


def png_of(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def from_data_url(url: str) -> Image.Image:
    assert url.startswith("data:image/png;base64,"), url[:40]
    return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))


def luminance(url: str) -> np.ndarray:
    return np.asarray(from_data_url(url).convert("L"))


def form_body(page) -> dict:
    """The body the form would send now, as "Copy as curl" shows it (nothing submitted)."""
    page.evaluate("document.querySelector('#curl').textContent = ''")
    page.click("#form-curl")
    wait_for(page, "document.querySelector('#curl').textContent")
    text = page.text_content("#curl")
    if "<<'JSON'\n" in text:  # a long body (an image in it) goes in through stdin
        return json.loads(text.split("<<'JSON'\n", 1)[1].rsplit("\nJSON", 1)[0])
    return json.loads(text.split(" -d '", 1)[1].rsplit("'", 1)[0])


def paint(page, points) -> None:
    """Drag the mouse over the mask canvas through `points`, fractions (x, y) of its displayed size."""
    canvas = page.locator(".mask-canvas")
    canvas.scroll_into_view_if_needed()  # the mouse reaches only what the viewport shows
    box = canvas.bounding_box()
    xy = [(box["x"] + fx * box["width"], box["y"] + fy * box["height"]) for fx, fy in points]
    page.mouse.move(*xy[0])
    page.mouse.down()
    for x, y in xy[1:]:
        page.mouse.move(x, y, steps=10)
    page.mouse.up()


def set_brush(page, px: int) -> None:
    page.eval_on_selector("#f-mask-size", "(el, v) => { el.value = v; el.dispatchEvent(new Event('input')); }", px)


def drop_input(page, image: Image.Image) -> None:
    """Drop `image` onto the input image's zone; wait until the mask canvas has its size."""
    drop_files(page, ".field-image .drop", [("photo.png", png_of(image), "image/png")])
    wait_for(page, f"document.querySelector('.mask-canvas').width === {image.width} "
                   f"&& document.querySelector('.mask-canvas').height === {image.height} "
                   "&& !document.querySelector('.mask-stage').hidden")


def result_image(page, site) -> Image.Image:
    src = page.eval_on_selector(".gallery img", "img => img.src")
    got = httpx.get(src, timeout=30, follow_redirects=True)
    assert got.status_code == 200, src
    return Image.open(io.BytesIO(got.content)).convert("RGB")


def test_inpaint_a_stroke_painted_with_the_mouse_repaints_under_it_only(pg, site):
    """The mask is painted over the input image (brush, eraser, invert, clear) and sent as a PNG the image's
    size, white where painted on black; the result differs from the input under the stroke and is the
    input, pixel for pixel, away from it."""
    page = pg.open()
    page.select_option("#task", "inpaint")
    assert page.input_value("#model") == "tiny-sd-inpaint"  # the inpainting checkpoint: the task's default
    assert "(inpainting)" in page.text_content("#model option[value='tiny-sd-inpaint']")
    assert page.is_hidden(".mask-stage") and page.is_visible(".mask-empty")
    source = textured(256, 192)
    drop_input(page, source)
    assert page.is_hidden(".field-image .thumb")  # the image is shown under the mask instead
    page.fill("#f-prompt", "a bowl of fruit")
    page.fill("#f-steps", "3")
    page.fill("#f-seed", "5")
    page.fill("#f-mask_blur", str(BLUR))
    set_brush(page, 24)
    assert page.text_content(".mask-size-text") == "24 px"
    assert "mask" not in form_body(page)  # nothing painted: no mask

    paint(page, [(0.2, 0.5), (0.8, 0.5)])  # a stroke along y = 96 from x = 51 to 205, 24 px wide
    mask = luminance(form_body(page)["mask"])
    assert mask.shape == (192, 256)
    assert mask[96, 128] == 255 and mask[86, 60] == 255  # painted: white
    assert mask[96, 20] == 0 and mask[10, 128] == 0 and mask[120, 128] == 0  # elsewhere black
    shot(page, "inpaint-painted")

    page.click(".mask-invert")
    inverted = luminance(form_body(page)["mask"])
    assert inverted[96, 128] == 0 and inverted[10, 10] == 255
    page.click(".mask-invert")
    page.click(".mask-eraser")
    assert page.get_attribute(".mask-eraser", "aria-pressed") == "true"
    paint(page, [(0.7, 0.2), (0.7, 0.8)])  # erases across the stroke at x = 179
    erased = luminance(form_body(page)["mask"])
    assert erased[96, 179] == 0 and erased[96, 128] == 255
    page.select_option("#model", "tiny-sdxl")  # another model, the same image: the mask stays
    page.select_option("#model", "tiny-sd-inpaint")
    assert np.array_equal(luminance(form_body(page)["mask"]), erased)
    page.click(".mask-clear")
    assert "mask" not in form_body(page)
    # A mask image loaded from a file, half its size (resized to the image): RGBA, transparent = repaint.
    rgba = Image.new("RGBA", (128, 96), (0, 0, 0, 255))
    rgba.paste((0, 0, 0, 0), (8, 8, 40, 40))
    page.set_input_files(".mask-file", files=[{"name": "mask.png", "mimeType": "image/png", "buffer": png_of(rgba)}])
    wait_for(page, "document.querySelector('.mask-canvas').getContext('2d').getImageData(48, 48, 1, 1).data[3] === 255")
    loaded = luminance(form_body(page)["mask"])
    assert loaded[48, 48] == 255 and loaded[120, 200] == 0 and loaded[8, 48] == 0
    page.click(".mask-clear")

    page.click(".mask-brush")
    paint(page, [(0.2, 0.5), (0.8, 0.5)])
    sent = []
    page.on("request", lambda r: sent.append(r.post_data_json) if r.url.endswith("/generate") else None)
    page.click("#submit")
    assert wait_status(page) == "succeeded"
    shot(page, "inpaint-result")
    body = sent[0]
    assert body["task"] == "inpaint" and body["mask_blur"] == BLUR and "expand" not in body
    mask = luminance(body["mask"])
    assert mask[96, 128] == 255 and mask.shape == (192, 256)
    result = np.asarray(result_image(page, site), dtype=np.int16)
    assert result.shape == (192, 256, 3)
    before = np.asarray(source, dtype=np.int16)
    # Away from the stroke (beyond the blurred mask's reach from any painted pixel): the input's pixels exactly.
    near = np.asarray(Image.fromarray(mask).filter(ImageFilter.MaxFilter(2 * MARGIN + 1)))
    away = near == 0
    assert away.sum() > 0.5 * away.size
    assert np.array_equal(result[away], before[away])
    # Well inside it: repainted.
    inside = np.asarray(Image.fromarray(mask).filter(ImageFilter.MinFilter(9))) == 255
    assert inside.sum() > 1000
    changed = np.abs(result - before).max(axis=-1)[inside]
    assert (changed > 8).mean() > 0.5, np.percentile(changed, [10, 50, 90])
    assert page.get_attribute("[data-param='mask'] a", "href").endswith(".png")

    # Run again: the image and the job's mask come back into the painter.
    page.click("#run-again")
    wait_for(page, "document.querySelector('#f-seed').value === '5' && !document.querySelector('.mask-stage').hidden")
    wait_for(page, "document.querySelector('.mask-canvas').width === 256")
    deadline = time.monotonic() + 10
    while "mask" not in (again := form_body(page)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert np.array_equal(luminance(again["mask"]) > 127, mask > 127)


def test_outpaint_margins_grow_the_canvas(pg, site):
    """The expand fields (step 8): sent as `expand` with the margins given (no mask needed); the result is
    the input's size plus them, and the input's pixels away from the new edge."""
    page = pg.open()
    page.select_option("#task", "inpaint")
    source = textured(128, 96)
    drop_input(page, source)
    for side in ("left", "right", "top", "bottom"):
        assert page.get_attribute(f"#f-expand-{side}", "step") == "8"
    page.fill("#f-prompt", "more of the same")
    page.fill("#f-steps", "2")
    page.fill("#f-expand-right", "64")
    page.fill("#f-expand-top", "0")
    body = form_body(page)
    assert body["expand"] == {"right": 64, "top": 0} and "mask" not in body
    page.fill("#f-expand-right", "0")
    assert "expand" not in form_body(page)  # all 0: none
    page.fill("#f-expand-right", "60")  # not a multiple of 8: the server says so next to the field
    page.click("#submit")
    page.wait_for_selector("#err-expand-right:not([hidden])")
    assert page.get_attribute("#f-expand-right", "aria-invalid") == "true"
    page.fill("#f-expand-right", "64")
    page.click("#submit")
    assert wait_status(page) == "succeeded"
    result = np.asarray(result_image(page, site), dtype=np.int16)
    assert result.shape == (96, 128 + 64, 3)
    keep = np.asarray(source, dtype=np.int16)[:, : 128 - MARGIN]  # the new edge's blur reaches in from the right
    assert np.array_equal(result[:, : 128 - MARGIN], keep)
    assert json.loads(page.text_content("[data-param='expand']"))["right"] == 64
    shot(page, "outpaint")
    page.fill("#f-expand-right", "")
    page.click("#run-again")
    wait_for(page, "document.querySelector('#f-expand-right').value === '64'")
    assert form_body(page)["expand"] == {"left": 0, "right": 64, "top": 0, "bottom": 0}


def test_paint_the_mask_with_a_finger_on_a_phone(browser, site):
    """Touch paints (pointer events; the canvas takes the gesture instead of scrolling), and the editor fits
    a narrow screen."""
    phone = Page(browser, site.url, width=375, height=800, has_touch=True, is_mobile=True)
    try:
        page = phone.open()
        page.select_option("#task", "inpaint")
        drop_input(page, textured(256, 256))
        page.locator(".mask-canvas").scroll_into_view_if_needed()
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        box = page.locator(".mask-canvas").bounding_box()
        assert box["width"] < 375
        scrolled = page.evaluate("window.scrollY")
        cdp = phone.context.new_cdp_session(page)
        x0, y = box["x"] + box["width"] * 0.25, box["y"] + box["height"] * 0.25
        cdp.send("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": [{"x": x0, "y": y}]})
        for i in range(1, 11):  # down: a gesture that scrolls the page anywhere else
            cdp.send("Input.dispatchTouchEvent", {"type": "touchMove", "touchPoints": [
                {"x": x0, "y": y + i * box["height"] * 0.05}]})
        cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
        assert page.evaluate("window.scrollY") == scrolled  # the page did not scroll under the finger
        mask = luminance(form_body(page)["mask"])
        assert mask[64, 64] == 255 and mask[160, 64] == 255 and mask[128, 200] == 0
        shot(page, "inpaint-phone")
    finally:
        phone.close()


def test_upscale_form_makes_the_expected_size(pg, site):
    page = pg.open()
    page.select_option("#task", "upscale")
    models = [o for o in page.eval_on_selector_all("#model option", "os => os.map((o) => o.value)")]
    assert models[0] == "tiny-esrgan" and "lanczos" in models
    assert page.get_attribute("#f-scale", "placeholder") == "2"  # the upscaler's own factor
    assert page.is_visible("#f-tile") and page.is_hidden("#f-prompt")
    drop_files(page, ".field-image .drop", [("small.png", png_of(textured(96, 64)), "image/png")])
    assert natural_width(page, ".field-image .thumb") == 96
    page.click("#submit")
    assert wait_status(page) == "succeeded"
    assert natural_width(page, ".gallery img") == 192
    assert page.eval_on_selector(".gallery img", "img => img.naturalHeight") == 128
    # Another factor: the model's output resized.
    page.select_option("#model", "lanczos")
    page.fill("#f-scale", "3")
    page.click("#submit")
    wait_for(page, "document.querySelector('[data-param=\"scale\"]')?.textContent === '3'"
                   " || document.querySelector('#status').textContent === 'failed'", 60)
    assert wait_status(page) == "succeeded"
    assert natural_width(page, ".gallery img") == 288
    shot(page, "upscale")


def test_hires_section_sends_hires(pg, site):
    """txt2img and sdxl have a hires section, off (not sent) until ticked; its upscalers are latent and GET
    /models's upscalers; the job's params show it, and "Run again" ticks it again."""
    page = pg.open()
    page.select_option("#task", "sdxl")
    assert not page.is_checked("#f-hires") and page.is_hidden("#f-hires-scale")
    options = page.eval_on_selector_all("#f-hires-upscaler option", "os => os.map((o) => o.value)")
    assert options == ["latent", "lanczos", "tiny-esrgan"]
    page.fill("#f-prompt", "a castle")
    for name, value in (("width", "256"), ("height", "256"), ("steps", "2")):  # sdxl's smallest
        page.fill(f"#f-{name}", value)
    assert "hires" not in form_body(page)
    page.check("#f-hires")
    assert page.is_visible("#f-hires-scale")
    assert form_body(page)["hires"] == {"upscaler": "latent"}  # the rest: the server's defaults
    page.fill("#f-hires-scale", "1.5")
    page.select_option("#f-hires-upscaler", "lanczos")
    page.fill("#f-hires-strength", "0.6")  # 2 steps × 0.6: one denoising step
    page.fill("#f-hires-steps", "2")
    sent = []
    page.on("request", lambda r: sent.append(r.post_data_json) if r.url.endswith("/generate") else None)
    page.click("#submit")
    assert wait_status(page) == "succeeded"
    hires = {"scale": 1.5, "upscaler": "lanczos", "strength": 0.6, "steps": 2}
    assert sent[0]["hires"] == hires
    job = httpx.get(f"{site.url}/jobs/{page.text_content('#job-id')}").json()
    assert job["params"]["hires"] == {**hires, "width": 384, "height": 384}  # resolved: the final size too
    assert natural_width(page, ".gallery img") == 384  # 256 × 1.5
    shot(page, "hires")
    page.uncheck("#f-hires")
    assert "hires" not in form_body(page)
    page.click("#run-again")
    wait_for(page, "document.querySelector('#f-hires').checked")
    assert page.input_value("#f-hires-scale") == "1.5" and page.input_value("#f-hires-upscaler") == "lanczos"
    assert page.is_visible("#f-hires-steps")
    # Rebuilt from the job's parameters (after a reload this page has not sent it): `hires` as a request takes it.
    job_id = page.text_content("#job-id")
    page.reload()
    page.wait_for_selector("#f-prompt")
    page.click(f".history-entry[data-id='{job_id}']")
    wait_for(page, f"document.querySelector('#job-id').textContent === {job_id!r}")
    page.click("#copy-curl")
    wait_for(page, "document.querySelector('#curl').textContent.includes('hires')")
    text = page.text_content("#curl")
    assert json.loads(text.split(" -d '", 1)[1].rsplit("'", 1)[0])["hires"] == hires
    page.select_option("#task", "txt2img")  # txt2img has it too
    assert page.is_visible("#f-hires") and page.is_hidden("#f-expand-left")
