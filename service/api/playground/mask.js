// The inpaint task's mask, painted over the input image: a canvas the image's size laid over its preview,
// painted with the mouse, a pen or a finger (pointer events), with a brush size, an eraser, clear and invert.
// What is painted is sent as `mask`: a PNG data URL the size of the image, white where painted on black
// (the contract's convention: white = repaint). A mask image (a file, or a job's stored mask) can be loaded
// into it too: read as luminance, as the API reads one.

import { el } from "./fields.js";
import { readFile } from "./images.js";

const TINT = "#ff2d78"; // what painted areas look like over the image (shown half transparent by the CSS)

/** An image element loaded from `src` (a data URL). */
function loadImage(src) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("the image could not be read"));
    img.src = src;
  });
}

export class MaskPainter {
  /** `id`: the id of its brush-size input (the field's label points at it). */
  constructor(id) {
    this.url = ""; // the image painted over (a data URL)
    this.ready = Promise.resolve(); // settles once that image is shown (and the canvas its size)
    this.erasing = false;
    this.last = null; // the previous point of the stroke being painted
    this.pointer = null;
    this.image = el("img", { class: "mask-image", alt: "the input image, to paint the mask over" });
    this.canvas = el("canvas", { class: "mask-canvas", width: 8, height: 8, "aria-label": "mask: paint over what to repaint" });
    this.stage = el("div", { class: "mask-stage" }, this.image, this.canvas);
    this.size = el("input", { id, type: "range", min: 1, max: 256, step: 1, value: 32, class: "mask-size" });
    this.sizeText = el("output", { for: id, class: "mask-size-text", text: "32 px" });
    this.brush = el("button", { type: "button", class: "quiet mask-brush", "aria-pressed": "true", text: "Brush" });
    this.eraser = el("button", { type: "button", class: "quiet mask-eraser", "aria-pressed": "false", text: "Eraser" });
    this.clearButton = el("button", { type: "button", class: "quiet mask-clear", text: "Clear" });
    this.invertButton = el("button", { type: "button", class: "quiet mask-invert", text: "Invert" });
    this.file = el("input", { type: "file", accept: "image/png,image/jpeg,image/webp", class: "mask-file",
                              "aria-label": "Load a mask image (white = repaint)" });
    this.empty = el("p", { class: "hint mask-empty", text: "Drop an input image above to paint its mask." });
    this.tools = el("div", { class: "mask-tools" },
      el("span", { class: "mask-size-box" }, this.size, this.sizeText), this.brush, this.eraser, this.clearButton,
      this.invertButton);
    this.fileBox = el("label", { class: "mask-file-box" }, "Or load a mask image: ", this.file);
    this.element = el("div", { class: "mask-editor" }, this.empty, this.stage, this.tools, this.fileBox);
    this.stage.hidden = this.tools.hidden = this.fileBox.hidden = true;
    // Read back on every request (painted(), toDataUrl()): kept in memory rather than on the GPU.
    this.ctx = this.canvas.getContext("2d", { willReadFrequently: true });

    this.size.addEventListener("input", () => {
      this.sizeText.textContent = `${this.size.value} px`;
    });
    this.brush.addEventListener("click", () => this.setErasing(false));
    this.eraser.addEventListener("click", () => this.setErasing(true));
    this.clearButton.addEventListener("click", () => this.clear());
    this.invertButton.addEventListener("click", () => this.invert());
    this.file.addEventListener("change", () => {
      const file = this.file.files && this.file.files[0];
      this.file.value = "";
      if (file) readFile(file).then((url) => this.loadMask(url)).catch(() => {});
    });
    this.canvas.addEventListener("pointerdown", (event) => this.down(event));
    this.canvas.addEventListener("pointermove", (event) => this.move(event));
    for (const type of ["pointerup", "pointercancel", "lostpointercapture"]) {
      this.canvas.addEventListener(type, (event) => this.up(event));
    }
  }

  setErasing(on) {
    this.erasing = on;
    this.brush.setAttribute("aria-pressed", String(!on));
    this.eraser.setAttribute("aria-pressed", String(on));
  }

  /** Paint over `url` (a data URL; "" or null: none). The mask is kept for an image of the same size, else
   * cleared. */
  setImage(url) {
    url = url || "";
    if (url !== this.url) {
      this.url = url;
      this.ready = this.show(url);
    }
    return this.ready;
  }

  async show(url) {
    if (!url) {
      this.image.removeAttribute("src");
      this.stage.hidden = this.tools.hidden = this.fileBox.hidden = true;
      this.empty.hidden = false;
      this.clear();
      return;
    }
    let img;
    try {
      img = await loadImage(url);
    } catch {
      return;
    }
    if (this.url !== url) return; // another image came meanwhile
    const { naturalWidth: width, naturalHeight: height } = img;
    if (this.canvas.width !== width || this.canvas.height !== height) {
      this.canvas.width = width; // clears it
      this.canvas.height = height;
      // A brush a tenth of the shorter side to start with.
      const brush = Math.max(1, Math.min(256, Math.round(Math.min(width, height) / 10)));
      this.size.value = brush;
      this.sizeText.textContent = `${brush} px`;
    }
    this.image.src = url;
    this.stage.style.aspectRatio = `${width} / ${height}`;
    this.stage.hidden = this.tools.hidden = this.fileBox.hidden = false;
    this.empty.hidden = true;
  }

  // ---------------------------------------------------------------- painting

  /** A pointer event's point in the image's pixels. */
  point(event) {
    const rect = this.canvas.getBoundingClientRect();
    return { x: ((event.clientX - rect.left) * this.canvas.width) / rect.width,
             y: ((event.clientY - rect.top) * this.canvas.height) / rect.height };
  }

  down(event) {
    // The main button (a mouse's left, a pen's tip, a finger); one pointer at a time (a second finger is ignored).
    if (event.button !== 0 || !this.url || this.pointer !== null) return;
    event.preventDefault();
    this.pointer = event.pointerId;
    this.canvas.setPointerCapture?.(event.pointerId);
    this.last = this.point(event);
    this.stroke(this.last, this.last);
  }

  move(event) {
    if (this.pointer !== event.pointerId || !this.last) return;
    event.preventDefault();
    // Every point the browser coalesced into this event: smooth strokes from a fast hand.
    const points = event.getCoalescedEvents ? event.getCoalescedEvents() : [];
    for (const e of points.length ? points : [event]) {
      const p = this.point(e);
      this.stroke(this.last, p);
      this.last = p;
    }
  }

  up(event) {
    if (this.pointer !== event.pointerId) return;
    this.pointer = null;
    this.last = null;
    this.canvas.dispatchEvent(new Event("change", { bubbles: true }));
  }

  /** A round-ended line from `a` to `b` (a dot when they are the same point), painted or erased. */
  stroke(a, b) {
    const ctx = this.ctx;
    ctx.save();
    ctx.globalCompositeOperation = this.erasing ? "destination-out" : "source-over";
    ctx.strokeStyle = ctx.fillStyle = TINT;
    ctx.lineWidth = Number(this.size.value);
    ctx.lineCap = ctx.lineJoin = "round";
    ctx.beginPath();
    if (a.x === b.x && a.y === b.y) {
      ctx.arc(a.x, a.y, ctx.lineWidth / 2, 0, Math.PI * 2);
      ctx.fill();
    } else {
      ctx.moveTo(a.x, a.y);
      ctx.lineTo(b.x, b.y);
      ctx.stroke();
    }
    ctx.restore();
  }

  clear() {
    this.ctx.clearRect(0, 0, this.canvas.width, this.canvas.height);
  }

  /** What was painted becomes unpainted and the rest painted. */
  invert() {
    const { width, height } = this.canvas;
    const data = this.ctx.getImageData(0, 0, width, height);
    const px = data.data;
    for (let i = 0; i < px.length; i += 4) {
      px[i] = 0xff;
      px[i + 1] = 0x2d;
      px[i + 2] = 0x78;
      px[i + 3] = 255 - px[i + 3];
    }
    this.ctx.putImageData(data, 0, 0);
  }

  /** A mask image (a data URL or a promise of one: white = repaint, or transparent = repaint where its alpha
   * varies) painted in place of the mask, resized to the image. */
  async loadMask(url) {
    const img = await loadImage(await url);
    const { width, height } = this.canvas;
    const scratch = el("canvas", { width, height });
    const sctx = scratch.getContext("2d", { willReadFrequently: true });
    sctx.drawImage(img, 0, 0, width, height);
    const data = sctx.getImageData(0, 0, width, height);
    const px = data.data;
    let alphaVaries = false;
    for (let i = 3; i < px.length && !alphaVaries; i += 4) alphaVaries = px[i] !== px[3];
    const clear = !alphaVaries && px[3] === 0; // transparent everywhere: everything repainted (as the API reads it)
    for (let i = 0; i < px.length; i += 4) {
      const luma = Math.round(0.299 * px[i] + 0.587 * px[i + 1] + 0.114 * px[i + 2]);
      const level = alphaVaries ? 255 - px[i + 3] : clear ? 255 : luma;
      px[i] = 0xff;
      px[i + 1] = 0x2d;
      px[i + 2] = 0x78;
      px[i + 3] = level;
    }
    this.ctx.putImageData(data, 0, 0);
  }

  // ---------------------------------------------------------------- the mask sent

  /** Whether anything is painted. */
  painted() {
    if (!this.url) return false;
    const px = this.ctx.getImageData(0, 0, this.canvas.width, this.canvas.height).data;
    for (let i = 3; i < px.length; i += 4) if (px[i]) return true;
    return false;
  }

  /** The mask as a PNG data URL the image's size: white where painted (grey where partly), black elsewhere. */
  toDataUrl() {
    const { width, height } = this.canvas;
    const out = el("canvas", { width, height });
    const ctx = out.getContext("2d");
    const data = this.ctx.getImageData(0, 0, width, height);
    const px = data.data;
    for (let i = 0; i < px.length; i += 4) {
      const level = px[i + 3];
      px[i] = px[i + 1] = px[i + 2] = level;
      px[i + 3] = 255;
    }
    ctx.putImageData(data, 0, 0);
    return out.toDataURL("image/png");
  }
}
