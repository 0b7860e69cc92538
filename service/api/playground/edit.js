// The editing parameters GET /models shows only as objects (`{"default": null}`), laid out here: inpaint's
// `expand` (outpainting margins) and the `hires` pass of txt2img and sdxl (an optional section: off, it is not
// sent). Their parts are fields named `expand.left`, `hires.scale`… (the names a 422 gives them), which
// RequestForm.collect() gathers into one object. The ranges are the request schemas' (service/api/schemas.py:
// Expand, Hires; tests/service/api/test_playground.py checks them).

import { control, el } from "./fields.js";

export const EXPAND = {"sides": ["left", "right", "top", "bottom"], "minimum": 0, "maximum": 1024, "multipleOf": 8};
export const HIRES = {
  "scale": {"default": 2.0, "minimum": 1, "maximum": 4},
  "strength": {"default": 0.5, "exclusiveMinimum": 0, "maximum": 1},
  "steps": {"default": null, "minimum": 1, "maximum": 100},
};
export const HIRES_PARTS = ["scale", "upscaler", "strength", "steps"]; // what a request's `hires` takes
export const HIRES_BUILTIN = ["latent", "lanczos"]; // `latent`: its latents resized; the rest: its pixels

/** Outpainting: the pixels to add on each side, as four number fields. */
export function expandGroup(form) {
  const box = el("fieldset", { class: "group edit-group expand", "data-name": "expand" },
    el("legend", { text: "Outpaint (extend the canvas)" }),
    el("p", { class: "hint wide", text: `Pixels to add on each side, ${EXPAND.minimum} to ${EXPAND.maximum}, a multiple of ` +
      `${EXPAND.multipleOf}: the new area is painted (filled per Fill first). All 0: none.` }));
  for (const side of EXPAND.sides) {
    const input = el("input", { id: `f-expand-${side}`, type: "number", inputmode: "numeric", "data-kind": "number",
                                min: EXPAND.minimum, max: EXPAND.maximum, step: EXPAND.multipleOf, placeholder: 0 });
    box.append(form.wrap(`expand.${side}`, side[0].toUpperCase() + side.slice(1), input, ""));
  }
  box.append(el("p", { class: "field-error wide", hidden: true }));
  return box;
}

/** The upscalers a hires pass may name: the built-in ones, then the ones GET /models lists for `upscale`. */
export function hiresUpscalers(models) {
  const listed = ((models.tasks.upscale && models.tasks.upscale.models) || []).map((m) => m.name);
  return [...new Set([...HIRES_BUILTIN, ...listed])];
}

/** The hires pass: a switch, and (shown while on) its scale, upscaler, strength and steps. */
export function hiresGroup(form, models) {
  const on = el("input", { id: "f-hires", type: "checkbox", "data-kind": "switch" });
  const parts = el("div", { class: "edit-parts" });
  const box = el("fieldset", { class: "group edit-group hires", "data-group": "hires" },
    el("legend", { text: "Hires fix" }),
    form.wrap("hires", "Upscale and refine (a second pass at a larger size)", on, "", "check"),
    parts);
  const number = (part, hint) => {
    const { input, hint: range } = control(`f-hires-${part}`, part, HIRES[part],
                                           part === "steps" ? { placeholder: "the job's", hint } : {});
    return form.wrap(`hires.${part}`, part[0].toUpperCase() + part.slice(1), input, range);
  };
  const upscaler = el("select", { id: "f-hires-upscaler" },
    ...hiresUpscalers(models).map((name) => el("option", { value: name, text: name === "latent" ? "latent (its latents)" : name })));
  parts.append(number("scale"),
    form.wrap("hires.upscaler", "Upscaler", upscaler, ""),
    number("strength"),
    number("steps", "empty: the job's steps"));
  const sync = () => {
    parts.hidden = !on.checked;
  };
  on.addEventListener("change", sync);
  sync();
  return box;
}
