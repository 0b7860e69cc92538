// What the request form and the training form share: elements, a parameter's control built from its JSON
// Schema keywords (as GET /models gives them), a field's wrapper (label, hint, and a slot for the server's
// message about it), the JSON value of an input, and a 422's messages put next to the fields they name.

export const el = (tag, attrs = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
};

export const label = (name) => (name[0].toUpperCase() + name.slice(1)).replaceAll("_", " ");
export const cssId = (name) => name.replace(/[^A-Za-z0-9_-]/g, "-");

/** "256 to 2048, a multiple of 8; default 1024" from a parameter's JSON Schema keywords. */
export function rangeHint(spec, fallback) {
  const parts = [];
  const lo = spec.minimum ?? spec.exclusiveMinimum;
  const hi = spec.maximum ?? spec.exclusiveMaximum;
  if (lo !== undefined && hi !== undefined) {
    parts.push(lo === hi ? `only ${lo}` : `${spec.exclusiveMinimum !== undefined ? "above " : ""}${lo} to ${hi}` +
      (spec.exclusiveMaximum !== undefined ? " (exclusive)" : ""));
  } else if (lo !== undefined) parts.push(`at least ${lo}`);
  if (spec.multipleOf) parts.push(`a multiple of ${spec.multipleOf}`);
  let text = parts.join(", ");
  const dflt = spec.default ?? fallback;
  if (dflt !== undefined && dflt !== null && dflt !== "") text += `${text ? "; " : ""}default ${dflt}`;
  return text;
}

const isNumber = (spec) =>
  typeof spec.default === "number" || "minimum" in spec || "maximum" in spec || "exclusiveMinimum" in spec;

/**
 * The control for parameter `name` from its keywords `spec`: a choice, an on/off/default choice, a number
 * or a line of text, as {input, hint}. `fallback`: the model's default where the schema has none; `max`: a
 * maximum where the schema has none; `placeholder` and `hint` replace the ones worked out; `boolean`: a
 * choice of on/off even without a boolean default.
 */
export function control(id, name, spec, { fallback, max, placeholder, hint, boolean = false } = {}) {
  let input;
  let text = "";
  if (spec.enum) {
    const options = spec.enum.map((v) => el("option", { value: v, text: v }));
    if (spec.default === null || spec.default === undefined) options.unshift(el("option", { value: "", text: "the model's default" }));
    input = el("select", { id, name }, ...options);
    input.value = spec.default ?? "";
  } else if (typeof spec.default === "boolean" || boolean) {
    input = el("select", { id, name, "data-kind": "boolean" },
      el("option", { value: "", text: spec.default === null || spec.default === undefined ? "the model's default" : `default (${spec.default})` }),
      el("option", { value: "true", text: "on" }), el("option", { value: "false", text: "off" }));
  } else if (isNumber(spec)) {
    input = el("input", { id, name, type: "number", inputmode: "decimal", "data-kind": "number",
                          min: spec.minimum ?? spec.exclusiveMinimum, max: spec.maximum ?? spec.exclusiveMaximum ?? max,
                          step: spec.multipleOf || "any", placeholder: placeholder ?? spec.default ?? fallback ?? "" });
    text = rangeHint(spec, fallback);
  } else {
    input = el("input", { id, name, type: "text", placeholder });
  }
  return { input, hint: hint ?? text };
}

/** An input's value as the JSON the API takes (a number, a boolean, text), or undefined when left empty. */
export function value(input) {
  if (input.type === "checkbox") return input.checked || undefined;
  const raw = input.value;
  if (raw === "") return undefined;
  if (input.dataset.kind === "number") return Number(raw);
  if (input.dataset.kind === "boolean") return raw === "true";
  return raw;
}

/**
 * A form the server answers about: its fields' wrappers and the server's messages next to them. `scope`:
 * where fields are looked up by the name the server gives them (their `data-name`); `named`: fields found
 * by name without one (`model`, `task`); `prefix`: for the ids of hints and messages (two forms on a page).
 */
export class FormBase {
  constructor(form, { formError, scope = form, named = {}, prefix = "" }) {
    this.form = form;
    this.formError = formError;
    this.scope = scope;
    this.named = named;
    this.prefix = prefix;
  }

  /** A field's wrapper: label, control, hint and the slot for the server's message about it. */
  wrap(name, text, control, hint, extraClass = "") {
    const key = cssId(name);
    const input = control.matches("input, select, textarea") ? control : control.querySelector("input");
    input.dataset.field = name;
    input.dataset.name = name;
    const hintId = `${this.prefix}hint-${key}`;
    const errorId = `${this.prefix}err-${key}`;
    input.setAttribute("aria-describedby", [hint ? hintId : null, errorId].filter(Boolean).join(" "));
    return el("div", { class: `field field-${key} ${extraClass}`.trim() },
      el("label", { for: input.id, text }), control,
      hint ? el("p", { class: "hint", id: hintId, text: hint }) : null,
      el("p", { class: "field-error", id: errorId, hidden: true }));
  }

  clearErrors() {
    this.formError.hidden = true;
    this.formError.textContent = "";
    for (const input of this.form.querySelectorAll("[aria-invalid]")) input.removeAttribute("aria-invalid");
    for (const p of this.form.querySelectorAll(".field-error")) {
      p.hidden = true;
      p.textContent = "";
    }
  }

  /** Each {field, message} next to the field it names (or its nearest named part), else above the buttons. */
  showErrors(fields, message) {
    this.clearErrors();
    const loose = [];
    let first = null;
    for (const { field, message: text } of fields) {
      const target = this.findField(field);
      if (!target) {
        loose.push(`${field}: ${text}`);
        continue;
      }
      const wrapper = target.closest(".field, .lora, .control, .train-image, fieldset") || target.parentElement;
      const slot = wrapper.querySelector(":scope > .field-error") || wrapper.querySelector(".field-error");
      const input = target.matches("input, select, textarea") ? target : target.querySelector("input, select, textarea");
      const shown = target.dataset.name === field || this.named[field] === target ? text : `${field}: ${text}`;
      slot.textContent = slot.textContent ? `${slot.textContent}; ${shown}` : shown;
      slot.hidden = false;
      const folded = target.closest("details");
      if (folded) folded.open = true; // a message inside "More settings" is seen
      if (input) {
        input.setAttribute("aria-invalid", "true");
        const ids = new Set((input.getAttribute("aria-describedby") || "").split(" ").filter(Boolean));
        if (!slot.id) slot.id = `${this.prefix}err-${Math.random().toString(36).slice(2, 10)}`;
        ids.add(slot.id);
        input.setAttribute("aria-describedby", [...ids].join(" "));
        first = first || input;
      }
    }
    if (loose.length || !fields.length) this.showFormError([message, ...loose].filter(Boolean).join(" — "));
    (first || this.formError).focus?.();
  }

  showFormError(text) {
    this.formError.textContent = text;
    this.formError.hidden = false;
  }

  /** The element a server field name points at (`width`, `loras[1].scale`, `images[0].caption`), or the
   * nearest named part that holds it (`loras[1]`, `loras`). */
  findField(field) {
    if (this.named[field]) return this.named[field];
    let name = field;
    for (;;) {
      const found = this.scope.querySelector(`[data-name="${CSS.escape(name)}"]`);
      if (found) return found;
      const shorter = name.replace(/(\.[^.[\]]+|\[\d+\])$/, "");
      if (!shorter || shorter === name) return null;
      name = shorter;
    }
  }
}
