// The request form, built from GET /models: per task its models, per parameter its range, default and
// choices, per model its LoRAs, embeddings and ControlNets. collect() gives the POST /generate body;
// showErrors() (fields.js) puts a 422's messages next to the fields the server names; useAdapter() sets it up
// for an adapter just trained. Editing: a task with an input `image` and a `mask` (inpaint) gets a mask
// painted over the image (mask.js); `expand` and `hires` are laid out by edit.js, their parts named
// `expand.left`, `hires.scale`… and gathered into one object each.

import { HIRES_PARTS, expandGroup, hiresGroup } from "./edit.js";
import { FormBase, control, el, label, value as inputValue } from "./fields.js";
import { dropZone, readImageUrl } from "./images.js";
import { MaskPainter } from "./mask.js";

// Fields the page does not offer (webhooks need a receiver; retries are for scripts).
const HIDDEN = new Set(["task", "model", "retries", "webhook", "webhook_events_filter"]);
const FIRST = ["prompt", "negative_prompt"];
const TEXT = new Set(["prompt", "negative_prompt"]);
// Kept when the task changes (the same meaning in every task that has them); input images are too.
const CARRY = new Set(["prompt", "negative_prompt", "seed"]);
// An input image, whatever its name (`image`, `mask`): a field of the request type ImageRef
// (service/api/schemas.py), which GET /models shows with this length limit (base64 of an image).
export const IMAGE_MAX_LENGTH = 64 * 1024 * 1024;
const isImage = (spec) => spec.maxLength === IMAGE_MAX_LENGTH;
// What a few editing parameters mean, where their range says too little.
const HINTS = {
  mask_padding: "empty: the whole image is the context; N: only the mask's box plus N px, at the model's size",
  mask_blur: "px of blur on the mask's edge (0 to 64); default 4",
  fill: "what the masked area starts from",
  tile: "px per tile (0: the whole image at once); default 512",
};

export class RequestForm extends FormBase {
  /** `form`: the <form>; `models`: GET /models's body. */
  constructor(form, models) {
    const task = form.querySelector("#task");
    const model = form.querySelector("#model");
    const fields = form.querySelector("#fields");
    super(form, { formError: form.querySelector("#form-error"), scope: fields, named: { model, task } });
    this.task = task;
    this.model = model;
    this.fields = fields;
    this.info = form.querySelector("#model-info");
    this.images = new WeakMap(); // drop zone -> {dataUrl} | Promise
    this.setModels(models);
    if ("turbo" in models.tasks) this.task.value = "turbo"; // the quickest to try
    this.task.addEventListener("change", () => this.render({ keep: CARRY }));
    this.model.addEventListener("change", () => this.render({ keep: null, sameTask: true }));
    this.render({ keep: CARRY });
  }

  /** Take GET /models's body: the tasks POST /generate takes (a training job has its own route and form). */
  setModels(models) {
    this.models = models;
    const wanted = this.task.value;
    const generate = Object.keys(models.tasks).filter((t) => models.tasks[t].route === "/generate");
    this.task.replaceChildren(...generate.map((t) => el("option", { value: t, text: t })));
    if (generate.includes(wanted)) this.task.value = wanted;
  }

  /** A fresh GET /models (a newly trained adapter in it, say): the form rebuilt, its values and ticks kept. */
  update(models) {
    const ticked = [...this.fields.querySelectorAll("[data-lora]")].filter((c) => c.checked).map((c) =>
      [c.dataset.lora, this.fields.querySelector(`[data-lora-scale="${CSS.escape(c.dataset.lora)}"]`).value]);
    this.setModels(models);
    this.render({ keep: null }); // the model chosen stays chosen while the task lists it
    for (const [name, scale] of ticked) this.tick(name, scale);
  }

  /** Tick LoRA `name` (at `scale`, when given); false when this model has no such LoRA. */
  tick(name, scale) {
    const check = this.fields.querySelector(`[data-lora="${CSS.escape(name || "")}"]`);
    if (!check) return false;
    check.checked = true;
    if (scale !== undefined && scale !== null) this.fields.querySelector(`[data-lora-scale="${CSS.escape(name)}"]`).value = scale;
    return true;
  }

  /**
   * Set the form up for a freshly trained adapter (a training job's `result.adapter`): a task and the model
   * it was trained on (the task shown if it fits, else one that needs no input image), the LoRA ticked,
   * and its token (an embedding's) or trigger put in the prompt. False when no task lists it for the model.
   */
  useAdapter(adapter) {
    const fits = (task) => this.models.tasks[task].models.some((m) => m.name === adapter.model &&
      (m.adapters || []).some((a) => a.name === adapter.name));
    const tasks = [...this.task.options].map((o) => o.value).filter(fits);
    if (!tasks.length) return false;
    const plain = tasks.filter((t) => !Object.values(this.models.tasks[t].parameters).some(isImage));
    const task = tasks.includes(this.task.value) ? this.task.value : plain[0] || tasks[0];
    if (task !== this.task.value) {
      this.task.value = task;
      this.render({ keep: CARRY });
    }
    if (this.model.value !== adapter.model) {
      this.model.value = adapter.model;
      this.render({ keep: null, sameTask: true });
    }
    if (adapter.kind === "lora") this.tick(adapter.name);
    const word = adapter.token || adapter.trigger;
    const prompt = this.fields.querySelector("#f-prompt");
    if (word && prompt && !prompt.value.includes(word)) this.insertToken(word);
    return true;
  }

  get taskInfo() {
    return this.models.tasks[this.task.value];
  }

  get modelInfo() {
    return this.taskInfo.models.find((m) => m.name === this.model.value) || this.taskInfo.models[0];
  }

  // ---------------------------------------------------------------- building

  /** Rebuild the fields for the chosen task and model, keeping the values named in `keep` (null: all). */
  render({ keep = CARRY, sameTask = false } = {}) {
    const values = this.snapshot();
    const info = this.taskInfo;
    if (!sameTask) {
      const wanted = this.model.value;
      this.model.replaceChildren(...info.models.map((m) =>
        el("option", { value: m.name, text: `${m.name}${m.inpainting ? " (inpainting)" : ""}${m.loaded ? "" : " (no live worker)"}` })));
      const names = info.models.map((m) => m.name);
      this.model.value = names.includes(wanted) ? wanted : info.default_model || names[0];
    }
    const model = this.modelInfo;
    this.addControl = null; // set by controls() when this model has ControlNets
    this.info.textContent = model.description || "";
    // A parameter with one allowed value (Turbo's guidance_scale) is no choice: left out.
    const params = Object.entries(info.parameters)
      .filter(([name, spec]) => !HIDDEN.has(name) && !(spec.minimum !== undefined && spec.minimum === spec.maximum));
    params.sort(([a, specA], [b, specB]) => rank(a, specA) - rank(b, specB));
    const nodes = [];
    const painted = "mask" in info.parameters && isImage(info.parameters.mask) && "image" in info.parameters;
    for (const [name, spec] of params) {
      if (name === "loras") nodes.push(this.adapters(model, info));
      else if (name === "control") nodes.push(this.controls(model, info));
      else if (name === "mask" && painted) nodes.push(this.maskField());
      else if (name === "expand") nodes.push(expandGroup(this));
      else if (name === "hires") nodes.push(hiresGroup(this, this.models));
      else nodes.push(this.field(name, spec, model));
    }
    this.fields.replaceChildren(...nodes.filter(Boolean));
    this.restore(values, keep);
    if (painted) this.paintOver(this.fields.querySelector('[data-field="image"]')); // after the image is back
    this.clearErrors();
  }

  field(name, spec, model) {
    const id = `f-${name}`;
    // only the schedulers the model's kind takes (flow matching for SD 3.5 and FLUX.1; none for Turbo)
    if (name === "scheduler" && Array.isArray(model.schedulers) && spec.enum) spec = { ...spec, enum: model.schedulers };
    const modelDefault = (model.defaults || {})[name] ?? (name === "num_frames" ? model.max_num_frames : undefined) ??
      (name === "scale" ? model.scale : undefined); // an upscaler's own factor
    if (isImage(spec)) {
      const zone = dropZone(id, (z, promise) => this.images.set(z, promise));
      return this.wrap(name, label(name), zone, "PNG, JPEG or WebP: drop it here or choose a file");
    }
    if (TEXT.has(name)) {
      const input = el("textarea", { id, name, rows: name === "prompt" ? 3 : 2, maxlength: spec.maxLength,
                                     placeholder: name === "prompt" ? "a red fox in the snow" : "" });
      return this.wrap(name, label(name), input, name === "prompt" ? "Ctrl+Enter submits" : "");
    }
    const seed = name === "seed";
    const { input, hint } = control(id, name, spec, {
      fallback: modelDefault, max: name === "num_frames" ? model.max_num_frames : undefined, boolean: name === "refiner",
      placeholder: seed ? "random" : undefined, hint: seed ? "empty: a random seed, reported with the result" : HINTS[name] });
    return this.wrap(name, label(name), input, hint);
  }

  /** The mask, painted over the input image (one painter for the page: what is painted survives a change of
   * model or task while the image stays). */
  maskField() {
    this.painter = this.painter || new MaskPainter("f-mask-size");
    const box = el("fieldset", { class: "group mask", "data-name": "mask" }, el("legend", { text: "Mask" }),
      el("p", { class: "hint", id: "hint-mask", text: "Paint over what to repaint (mouse, pen or finger); what is left " +
        "unpainted comes back exactly as it went in." }),
      this.painter.element, el("p", { class: "field-error", id: "err-mask", hidden: true }));
    this.painter.size.setAttribute("aria-label", "Brush size");
    this.painter.size.setAttribute("aria-describedby", "hint-mask err-mask");
    return box;
  }

  /** The painter follows the image the drop zone of `input` shows (the painted mask is kept while the zone
   * holds the image it was painted over: the zone's own image shows it again, and the same image keeps it). */
  paintOver(input) {
    const zone = input && input.closest(".drop");
    if (!zone) return;
    zone.closest(".field").classList.add("with-mask");
    const show = zone.showImage;
    zone.showImage = (dataUrl) => {
      show(dataUrl);
      this.painter.setImage(dataUrl);
    };
    if (!this.images.get(zone)) this.painter.setImage("");
  }

  /** The painter, when the form shows it. */
  get shownPainter() {
    return this.painter && this.fields.contains(this.painter.element) ? this.painter : null;
  }

  adapters(model, info) {
    const adapters = model.adapters || [];
    const loras = adapters.filter((a) => a.kind === "lora");
    const embeddings = adapters.filter((a) => a.kind === "embedding");
    if (!loras.length && !embeddings.length) return null;
    const box = el("fieldset", { class: "group adapters", "data-name": "loras" }, el("legend", { text: "Adapters" }));
    if (loras.length) {
      box.append(el("p", { class: "hint", text: `LoRAs: up to ${info.limits.max_loras}, in the order ticked` }));
    }
    loras.forEach((a, i) => {
      const check = el("input", { type: "checkbox", id: `lora-${i}`, "data-lora": a.name });
      const scale = el("input", { type: "number", id: `lora-${i}-scale`, "data-lora-scale": a.name, step: 0.05,
                                  min: a.scale.minimum, max: a.scale.maximum, value: a.scale.default,
                                  "aria-label": `${a.name} scale`, inputmode: "decimal" });
      const err = el("p", { class: "field-error", id: `err-lora-${i}`, hidden: true });
      check.setAttribute("aria-describedby", err.id);
      scale.setAttribute("aria-describedby", err.id);
      const triggers = a.triggers && a.triggers.length ? `triggers: ${a.triggers.join(", ")}` : "";
      box.append(el("div", { class: "lora", "data-lora-row": a.name },
        check, el("label", { for: check.id, text: a.name }), scale,
        el("span", { class: "hint", text: [a.description, triggers].filter(Boolean).join("; ") }), err));
    });
    if (embeddings.length) {
      const chips = embeddings.flatMap((e) => e.tokens.map((token) => {
        const chip = el("button", { type: "button", class: "chip", text: token, title: `${e.name}: put ${token} in the prompt` });
        chip.addEventListener("click", () => this.insertToken(token));
        return chip;
      }));
      box.append(el("p", { class: "hint embeddings" }, "Embeddings (click to add the token to the prompt): ", ...chips));
    }
    box.append(el("p", { class: "field-error", id: "err-loras", hidden: true }));
    return box;
  }

  insertToken(token) {
    const prompt = this.form.querySelector("#f-prompt");
    if (!prompt) return;
    const at = prompt.selectionStart ?? prompt.value.length;
    const before = prompt.value.slice(0, at);
    const pad = before && !before.endsWith(" ") ? " " : "";
    prompt.value = `${before}${pad}${token} ${prompt.value.slice(at)}`.trimEnd();
    prompt.focus();
  }

  controls(model, info) {
    const nets = model.controlnets || [];
    if (!nets.length) return null;
    const list = el("div", { class: "controls" });
    const add = el("button", { type: "button", class: "quiet", id: "control-add", text: "Add a ControlNet" });
    const box = el("fieldset", { class: "group", "data-name": "control" }, el("legend", { text: "ControlNets" }), list, add,
      el("p", { class: "field-error", id: "err-control", hidden: true }));
    const max = info.limits.max_controls || 2;
    const sync = () => {
      [...list.children].forEach((row, i) => renumberControl(row, i));
      add.hidden = list.children.length >= max;
    };
    add.addEventListener("click", () => {
      list.append(this.controlRow(nets, info, sync));
      sync();
      list.lastElementChild.querySelector("select").focus();
    });
    this.addControl = () => {
      const row = this.controlRow(nets, info, sync);
      list.append(row);
      sync();
      return row;
    };
    sync();
    return box;
  }

  controlRow(nets, info, sync) {
    const row = el("div", { class: "control" });
    const modelSelect = el("select", { "data-part": "model" },
      ...nets.map((n) => el("option", { value: n.name, text: `${n.name} (${n.kind})` })));
    const zone = dropZone("", (z, p) => this.images.set(z, p));
    const num = (part, min, max, value) => el("input", { type: "number", "data-part": part, "data-kind": "number",
                                                        min, max, step: "any", value, inputmode: "decimal" });
    const preprocess = el("select", { "data-part": "preprocess" },
      el("option", { value: "", text: "the ControlNet's default" }),
      ...(info.preprocessors || []).map((p) => el("option", { value: p, text: p })));
    const remove = el("button", { type: "button", class: "quiet", text: "Remove" });
    remove.addEventListener("click", () => {
      row.remove();
      sync();
    });
    const part = (name, text, control) => el("div", { class: "field" },
      el("label", { text }), control, el("p", { class: "field-error", hidden: true }));
    row.append(part("model", "ControlNet", modelSelect), part("image", "Control image", zone),
      part("scale", "Scale (0 to 2)", num("scale", 0, 2, 1)), part("start", "Start (0 to 1)", num("start", 0, 1, 0)),
      part("end", "End (0 to 1)", num("end", 0, 1, 1)), part("preprocess", "Preprocess", preprocess), remove);
    return row;
  }

  // ---------------------------------------------------------------- values

  /** The values of the plain fields, by name, and the images dropped (for a rebuild). */
  snapshot() {
    const out = {};
    for (const input of this.fields.querySelectorAll("[data-field]")) {
      if (input.type === "file") out[input.dataset.field] = this.images.get(input.closest(".drop"));
      else if (input.type === "checkbox") out[input.dataset.field] = input.checked;
      else out[input.dataset.field] = input.value;
    }
    return out;
  }

  restore(values, keep) {
    for (const [name, value] of Object.entries(values)) {
      const input = this.fields.querySelector(`[data-field="${name}"]`);
      if (!input || value === undefined) continue;
      if (keep && !keep.has(name) && input.type !== "file") continue;
      if (input.type === "file") {
        const zone = input.closest(".drop");
        this.images.set(zone, value);
        Promise.resolve(value).then((v) => zone.showImage?.(v)).catch(() => {});
      } else if (input.type === "checkbox") setChecked(input, value);
      else input.value = value;
    }
  }

  /** The POST /generate body the form says (empty fields left out: the server's defaults). */
  async collect() {
    const body = { task: this.task.value, model: this.model.value };
    for (const input of this.fields.querySelectorAll("[data-field]")) {
      const name = input.dataset.field;
      if (input.type === "file") {
        const image = await this.images.get(input.closest(".drop"));
        if (image) body[name] = image;
        continue;
      }
      if (input.dataset.kind === "switch") {
        if (input.checked) body[name] = body[name] || {}; // a section sent (its parts' defaults) while on
        continue;
      }
      const [group, part] = name.split(".");
      const v = inputValue(input);
      if (part) { // a part of an object (`hires.scale`): sent when its section is on (or has no switch)
        const box = input.closest("[data-group]");
        const on = !box || box.querySelector('[data-kind="switch"]').checked;
        if (on && v !== undefined) body[group] = { ...body[group], [part]: v };
      } else if (v !== undefined) body[name] = v;
    }
    if (body.expand && Object.values(body.expand).every((v) => v === 0)) delete body.expand; // no margins: none
    const painter = this.shownPainter;
    if (painter && painter.painted()) body.mask = painter.toDataUrl();
    const loras = [...this.fields.querySelectorAll("[data-lora]")].filter((c) => c.checked);
    if (loras.length) {
      body.loras = loras.map((check) => {
        const scale = this.fields.querySelector(`[data-lora-scale="${check.dataset.lora}"]`).value;
        return scale === "" ? { name: check.dataset.lora } : { name: check.dataset.lora, scale: Number(scale) };
      });
    }
    const rows = [...this.fields.querySelectorAll(".control")];
    if (rows.length) {
      body.control = [];
      for (const row of rows) {
        const entry = {};
        for (const input of row.querySelectorAll("[data-part]")) {
          if (input.value === "") continue;
          entry[input.dataset.part] = input.dataset.kind === "number" ? Number(input.value) : input.value;
        }
        const image = await this.images.get(row.querySelector(".drop"));
        if (image) entry.image = image;
        body.control.push(entry);
      }
    }
    this.numberLoras(loras);
    return body;
  }

  /** The ticked LoRAs' rows answer to `loras[i]` in the order sent. */
  numberLoras(ticked) {
    for (const row of this.fields.querySelectorAll("[data-lora-row]")) {
      for (const node of [row, ...row.querySelectorAll("input")]) delete node.dataset.name;
    }
    ticked.forEach((check, i) => {
      const row = check.closest("[data-lora-row]");
      row.dataset.name = `loras[${i}]`;
      check.dataset.name = `loras[${i}].name`;
      row.querySelector("[data-lora-scale]").dataset.name = `loras[${i}].scale`;
    });
  }

  /** Refill the form from a job: its task, model and resolved params (the seed included). */
  async fill(job) {
    const params = job.params || {};
    this.task.value = job.task;
    this.render({ keep: new Set() });
    if ([...this.model.options].some((o) => o.value === job.model)) {
      this.model.value = job.model;
      this.render({ keep: new Set(), sameTask: true });
    }
    const pending = [];
    for (const input of this.fields.querySelectorAll("[data-field]")) {
      const name = input.dataset.field;
      const [group, part] = name.split(".");
      const value = part ? (params[group] || {})[part] : params[name];
      if (input.type === "checkbox") setChecked(input, value !== undefined && value !== null && value !== false);
      if (value === undefined || value === null || input.type === "checkbox") continue;
      if (input.type === "file") {
        if (value && value.url) {
          const zone = input.closest(".drop");
          const promise = readImageUrl(value.url);
          this.images.set(zone, promise);
          pending.push(promise.then((v) => zone.showImage(v)).catch(() => zone.showError("the input image could not be fetched: drop it again")));
        }
      } else if (typeof value === "boolean") input.value = String(value);
      else if (typeof value !== "object") input.value = String(value);
    }
    const painter = this.shownPainter;
    if (painter) painter.clear();
    if (painter && params.mask && params.mask.url) { // after the image: the mask is resized to it
      const image = this.images.get(this.fields.querySelector('[data-field="image"]')?.closest(".drop"));
      pending.push(Promise.resolve(image).then((url) => painter.setImage(url))
        .then(() => painter.loadMask(readImageUrl(params.mask.url)))
        .catch(() => this.showFormError("The mask could not be fetched: paint it again.")));
    }
    for (const lora of params.loras || []) this.tick(lora.name, lora.scale);
    for (const control of params.control || []) {
      if (!this.addControl) break;
      const row = this.addControl();
      for (const part of ["model", "scale", "start", "end", "preprocess"]) {
        const input = row.querySelector(`[data-part="${part}"]`);
        if (input && control[part] !== undefined && control[part] !== null) input.value = String(control[part]);
      }
      row.querySelector(".drop").showError("drop the control image again (it is not sent back)");
    }
    await Promise.allSettled(pending);
  }

  /** A request body from a job's resolved params (for a job this page did not send): the input images,
   * which a JobView shows only as URLs, are left out. */
  bodyFromJob(job) {
    const info = this.models.tasks[job.task];
    if (!info) return null;
    const body = { task: job.task, model: job.model };
    for (const [name, value] of Object.entries(job.params || {})) {
      if (!(name in info.parameters) || HIDDEN.has(name) || isImage(info.parameters[name]) || value === null) continue;
      if (name === "loras") body.loras = value.map((l) => (l.name ? { name: l.name, scale: l.scale } : { url: l.url, scale: l.scale }));
      else if (name === "hires") { // the resolved section adds its final size, which a request does not take
        body.hires = Object.fromEntries(HIRES_PARTS.map((part) => [part, value[part]]));
      } else if (name !== "control") body[name] = value;
    }
    return body;
  }
}

/** Tick or untick a checkbox, and tell its listeners (a section's switch shows or hides its parts). */
function setChecked(input, on) {
  input.checked = Boolean(on);
  input.dispatchEvent(new Event("change"));
}

function rank(name, spec) {
  const i = FIRST.indexOf(name);
  if (i >= 0) return i;
  if (isImage(spec)) return FIRST.length;
  if (name === "seed") return 90;
  if (name === "expand") return 85;
  if (name === "hires") return 88;
  if (name === "loras") return 95;
  if (name === "control") return 96;
  return 50;
}

function renumberControl(row, i) {
  row.dataset.name = `control[${i}]`;
  for (const input of row.querySelectorAll("[data-part]")) input.dataset.name = `control[${i}].${input.dataset.part}`;
  row.querySelector(".drop input").dataset.name = `control[${i}].image`;
  row.querySelectorAll(".field").forEach((part, j) => {
    const input = part.querySelector("input, select");
    const error = part.querySelector(".field-error");
    input.id = `control-${i}-${j}`;
    error.id = `err-control-${i}-${j}`;
    input.setAttribute("aria-describedby", error.id);
    part.querySelector("label").htmlFor = input.id;
  });
  row.setAttribute("aria-label", `ControlNet ${i + 1}`);
  row.setAttribute("role", "group");
}
