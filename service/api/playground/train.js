// The training form, built from GET /models's training task (the one whose route is /train): its models,
// methods, parameters and limits. Images are dropped or picked, many at once, each with a caption to edit
// (a .txt file of the same name, dropped with it, gives its caption: kohya's convention). collect() gives
// the POST /train body; showErrors() (fields.js) puts a 422's messages next to the fields, images included.

import { FormBase, control, el, label, rangeHint, value as inputValue } from "./fields.js";
import { TYPES, filesZone, readFile, readImageUrl } from "./images.js";

// Fields laid out by hand, or not offered (webhooks need a receiver; retries are for scripts).
const OWN = new Set(["task", "model", "name", "method", "images", "validation", "replace", "retries", "webhook",
                     "webhook_events_filter"]);
const MAIN = ["steps", "rank", "learning_rate", "resolution"]; // shown; the rest under "More settings"
const MORE_FIRST = ["trigger", "init_token", "seed"];
const METHODS = { lora: "LoRA", embedding: "embedding (a new token)", "lora+embedding": "LoRA + embedding" };
const LABELS = { init_token: "Initial token", min_snr_gamma: "Min-SNR gamma" };
const megabytes = (bytes) => `${Math.round((bytes / 1024 / 1024) * 10) / 10} MB`;
const stem = (name) => name.replace(/\.[^.]*$/, "");
const isText = (file) => file.type === "text/plain" || file.name.toLowerCase().endsWith(".txt");

/** GET /models's task for POST /train, as [name, info]; null when it has none (or no models for it). */
export function trainTask(models) {
  const found = Object.entries(models.tasks).find(([, info]) => info.route === "/train");
  return found && found[1].models.length ? found : null;
}

export class TrainForm extends FormBase {
  /** `form`: the training <form>; `models`: GET /models's body (with a training task: see trainTask). */
  constructor(form, models) {
    super(form, { formError: form.querySelector("#train-error"), prefix: "t-" });
    this.info = trainTask(models)[1];
    this.fields = form.querySelector("#train-fields");
    this.items = []; // the images, in order: {row, image (a data URL promise), caption, thumb, label, error, remove}
    this.build();
  }

  // ---------------------------------------------------------------- building

  build() {
    const info = this.info;
    const params = info.parameters;
    const limits = info.limits || {};
    const loaded = info.models.filter((m) => m.loaded).map((m) => m.name);
    this.model = el("select", { id: "t-model", name: "model" }, ...info.models.map((m) =>
      el("option", { value: m.name, text: m.loaded ? m.name : `${m.name} (no live worker)` })));
    // The default model, unless no live worker trains it and one trains another.
    this.model.value = loaded.includes(info.default_model) || !loaded.length ? info.default_model || info.models[0].name : loaded[0];
    this.method = el("select", { id: "t-method", name: "method" }, ...(info.methods || ["lora"]).map((m) =>
      el("option", { value: m, text: METHODS[m] || m })));
    if (params.method && params.method.default) this.method.value = params.method.default;
    this.name = el("input", { id: "t-name", name: "name", type: "text", autocomplete: "off", spellcheck: "false",
                              maxlength: 64, placeholder: "my-style" });

    this.zone = filesZone("t-images", (files) => this.addFiles(files),
                          { accept: [...TYPES, ".txt", "text/plain"].join(",") });
    const zoneInput = this.zone.querySelector("input");
    zoneInput.setAttribute("aria-label", "Training images");
    zoneInput.setAttribute("aria-describedby", "t-hint-images t-err-images");
    this.count = el("p", { class: "hint", id: "t-images-count", "aria-live": "polite" });
    this.list = el("ol", { class: "train-images" });
    const images = el("fieldset", { class: "group wide", "data-name": "images" }, el("legend", { text: "Images" }),
      this.zone,
      el("p", { class: "hint", id: "t-hint-images", text: `PNG, JPEG or WebP, up to ${limits.max_images || "many"} images of ` +
        `${megabytes(limits.max_image_bytes || 0)} at most; a .txt file of the same name gives an image its caption.` }),
      this.count, this.list, el("p", { class: "field-error", id: "t-err-images", hidden: true }));

    const main = MAIN.filter((name) => name in params).map((name) => this.param(name, params[name]));

    const every = params.validation && params.validation.default ? params.validation.default.every : 0;
    const validation = el("fieldset", { class: "group wide validation", "data-name": "validation" },
      el("legend", { text: "Validation images" }),
      el("p", { class: "hint wide", text: "Made with the adapter as it is while it trains; the latest is shown live." }),
      this.wrap("validation.prompt", "Prompt", el("textarea", { id: "t-validation-prompt", rows: 2, maxlength: 2000 }),
                "empty: the trigger (or token) and the first caption", "wide"),
      this.wrap("validation.every", "Every", el("input", { id: "t-validation-every", type: "number", "data-kind": "number",
                                                          min: 0, step: 1, inputmode: "numeric", placeholder: every }),
                "steps between two; 0: at the end only"),
      el("p", { class: "field-error wide", hidden: true }));

    const rest = Object.keys(params).filter((n) => !OWN.has(n) && !MAIN.includes(n) && !MORE_FIRST.includes(n));
    const replace = el("input", { type: "checkbox", id: "t-replace", name: "replace", "aria-describedby": "t-err-replace" });
    replace.dataset.field = replace.dataset.name = "replace";
    const more = el("details", { class: "more wide" }, el("summary", { text: "More settings" }),
      el("div", { class: "more-fields" },
        ...[...MORE_FIRST, ...rest].filter((name) => name in params).map((name) => this.param(name, params[name])),
        el("div", { class: "field field-replace wide" },
          el("div", { class: "check" }, replace, el("label", { for: "t-replace", text: "Replace my adapter of this name" })),
          el("p", { class: "field-error", id: "t-err-replace", hidden: true }))));

    this.fields.replaceChildren(
      this.wrap("model", "Model", this.model, ""),
      this.wrap("method", "Method", this.method, ""),
      this.wrap("name", "Name", this.name, "the adapter's: lowercase letters, digits, . _ - (up to 64)", "wide"),
      images, ...main, validation, more);
    this.model.addEventListener("change", () => this.onModel());
    this.method.addEventListener("change", () => this.onMethod());
    this.onModel();
    this.onMethod();
    this.renumber();
  }

  param(name, spec) {
    const opts = {};
    if (name === "learning_rate") opts.hint = `${rangeHint(spec)}; empty: the method's default`;
    if (name === "seed") Object.assign(opts, { placeholder: "random", hint: "empty: a random seed" });
    if (name === "init_token") opts.hint = "the word the new token's vectors start from";
    if (name === "trigger") opts.hint = "words put before every caption; default: the name"; // onMethod() rewords it
    if (name === "alpha") opts.placeholder = "the rank";
    const { input, hint } = control(`t-${name}`, name, spec, opts);
    return this.wrap(name, LABELS[name] || label(name), input, hint);
  }

  /** The resolution's default is the model's native size. */
  onModel() {
    const model = this.info.models.find((m) => m.name === this.model.value);
    const side = model && model.defaults ? model.defaults.width : undefined;
    const spec = this.info.parameters.resolution;
    const input = this.fields.querySelector("#t-resolution");
    if (!spec || !input) return;
    input.placeholder = spec.default ?? side ?? "";
    this.fields.querySelector("#t-hint-resolution").textContent =
      rangeHint(spec, side) + (side && spec.default == null ? " (the model's native size)" : "");
  }

  /** A LoRA has a rank and trigger words; an embedding a token (and the word it starts from). */
  onMethod() {
    const method = this.method.value;
    const embedding = method.includes("embedding");
    const part = (name) => this.fields.querySelector(`.field-${name}`);
    if (part("rank")) part("rank").hidden = method === "embedding";
    if (part("alpha")) part("alpha").hidden = method === "embedding";
    if (part("init_token")) part("init_token").hidden = !embedding;
    const trigger = part("trigger");
    if (trigger) {
      trigger.querySelector("label").textContent = embedding ? "Token" : "Trigger";
      trigger.querySelector(".hint").textContent = embedding
        ? "the new token, in angle brackets; default: <name>" : "words put before every caption; default: the name";
    }
  }

  // ---------------------------------------------------------------- images

  /** Files dropped or picked: the images added to the list; .txt files give captions to those of their name. */
  addFiles(files) {
    const limits = this.info.limits || {};
    const texts = new Map(files.filter(isText).map((f) => [stem(f.name), f]));
    const problems = [];
    let added = 0;
    for (const file of files.filter((f) => !isText(f))) {
      if (!TYPES.includes(file.type)) {
        problems.push(`${file.name} is not a PNG, JPEG or WebP image`);
      } else if (limits.max_images && this.items.length >= limits.max_images) {
        problems.push(`${file.name} left out: at most ${limits.max_images} images`);
      } else if (limits.max_image_bytes && file.size > limits.max_image_bytes) {
        problems.push(`${file.name} is larger than ${megabytes(limits.max_image_bytes)}, the limit`);
      } else {
        const text = texts.get(stem(file.name));
        texts.delete(stem(file.name));
        this.addImage(readFile(file), text ? text.text() : "", file.name);
        added += 1;
      }
    }
    for (const [name, text] of texts) { // a caption file for an image already in the list
      const item = this.items.find((i) => i.file && stem(i.file) === name);
      if (item) text.text().then((t) => { item.caption.value = t.trim(); });
      else problems.push(`${text.name}: no image of that name`);
    }
    this.renumber();
    if (problems.length) this.zone.showError(problems.join("; "));
    else this.zone.showText(added ? `Added ${added}. Drop more, or choose more files.` : "");
  }

  /** One image (a data URL promise) with its caption (text, or a promise of it); `file`: its file's name. */
  addImage(image, caption, file) {
    const thumb = el("img", { class: "thumb", alt: "" });
    const input = el("input", { type: "text", class: "caption", maxlength: 2000, autocomplete: "off",
                                placeholder: "what it shows (the trigger is added)" });
    const labelNode = el("label", { text: "Caption" });
    const error = el("p", { class: "field-error", hidden: true });
    const remove = el("button", { type: "button", class: "quiet", text: "Remove" });
    const row = el("li", { class: "train-image" }, thumb,
      el("div", { class: "caption-box" }, labelNode, input,
        el("div", { class: "caption-foot" }, el("span", { class: "hint", text: file || "" }), remove), error));
    const item = { row, image, caption: input, thumb, label: labelNode, error, remove, file };
    this.items.push(item);
    this.list.append(row);
    image.then((url) => { thumb.src = url; }, (err) => {
      this.removeImage(item);
      this.zone.showError(err.message);
    });
    Promise.resolve(caption).then((text) => { if (!input.value) input.value = (text || "").trim(); }, () => {});
    remove.addEventListener("click", () => {
      const at = this.items.indexOf(item);
      this.removeImage(item);
      const next = this.items[at] || this.items[at - 1];
      (next ? next.remove : this.zone.querySelector("input")).focus();
    });
    return item;
  }

  removeImage(item) {
    const at = this.items.indexOf(item);
    if (at < 0) return;
    this.items.splice(at, 1);
    item.row.remove();
    this.renumber();
  }

  /** Each row answers to `images[i]` in the order sent (a 422 names them so). */
  renumber() {
    this.items.forEach((item, i) => {
      item.row.dataset.name = `images[${i}]`;
      item.thumb.dataset.name = `images[${i}].image`;
      item.thumb.alt = `training image ${i + 1}`;
      item.caption.id = `t-caption-${i}`;
      item.caption.dataset.name = `images[${i}].caption`;
      item.label.htmlFor = item.caption.id;
      item.label.textContent = `Caption of image ${i + 1}`;
      item.error.id = `t-err-images-${i}`;
      item.caption.setAttribute("aria-describedby", item.error.id);
      item.remove.setAttribute("aria-label", `Remove image ${i + 1}`);
    });
    const n = this.items.length;
    this.count.textContent = n ? `${n} image${n === 1 ? "" : "s"}` : "No images yet.";
  }

  // ---------------------------------------------------------------- values

  /** The POST /train body the form says (empty fields left out: the server's defaults). */
  async collect() {
    const body = {};
    for (const input of this.fields.querySelectorAll("[data-field]")) {
      if (input.closest("[hidden]")) continue; // a rank for an embedding, a starting word for a LoRA
      const v = inputValue(input);
      if (v === undefined) continue;
      const [head, tail] = input.dataset.field.split(".");
      if (tail) (body[head] ||= {})[tail] = v;
      else body[head] = v;
    }
    body.images = [];
    for (const item of this.items) {
      const image = await item.image.catch(() => null);
      const caption = item.caption.value.trim();
      if (image) body.images.push(caption ? { image, caption } : { image });
    }
    return body;
  }

  /** Refill the form from a training job: its model and resolved params, its images from their URLs. */
  async fill(job) {
    const params = job.params || {};
    this.clearErrors();
    if ([...this.model.options].some((o) => o.value === job.model)) this.model.value = job.model;
    for (const input of this.fields.querySelectorAll("[data-field]")) {
      const [head, tail] = input.dataset.field.split(".");
      if (head === "model") continue;
      const v = tail ? (params[head] || {})[tail] : params[head];
      if (input.type === "checkbox") input.checked = false; // replacing is a choice made again
      else input.value = v === undefined || v === null ? "" : String(v);
    }
    this.onModel();
    this.onMethod();
    for (const item of [...this.items]) this.removeImage(item);
    const pending = (params.images || []).map((entry, i) => {
      const url = entry && entry.image && entry.image.url;
      if (!url) return null;
      const image = readImageUrl(url);
      this.addImage(image, entry.caption || "", `image ${i + 1} of job ${job.id.slice(0, 8)}`);
      return image;
    });
    this.renumber();
    await Promise.allSettled(pending.filter(Boolean));
  }

  /** A request body from a training job's resolved params (for a job this page did not send): its images,
   * which a JobView shows only as URLs, are left out. */
  bodyFromJob(job) {
    const body = { model: job.model };
    for (const [name, v] of Object.entries(job.params || {})) {
      if (v === null || name === "images" || !(name in this.info.parameters) || name === "retries" || name === "webhook") continue;
      body[name] = v;
    }
    return body;
  }

  /** A name taken (a 409): said next to the name field. */
  nameTaken() {
    this.showErrors([{ field: "name", message: "is taken: you have an adapter of this name. Choose another, " +
                      "or tick “Replace my adapter of this name” under More settings." }], "");
  }
}
