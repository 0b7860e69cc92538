"""Upscalers as AUTOMATIC1111 names them: `/sdapi/v1/upscalers` and `/latent-upscale-modes`, and the name
a client sends (`hr_upscaler`, `upscaler_1`) -> the Fresco upscaler that runs.

A1111 lists "None" (no upscaler: a plain Lanczos resize in a hires fix, the image as it is in Extras),
"Lanczos", then its model upscalers; its latent modes ("Latent", "Latent (nearest)", …) are a list of
their own, used only by the hires fix. Fresco lists "None", its catalogue's upscalers (the built-in
`lanczos` as "Lanczos", the models file's `upscalers:` by their names) and one latent mode, "Latent"
(bilinear, as A1111's). A1111's other latent modes run as "Latent", with a warning; a name neither lists
is a 422 naming the field, as A1111 refuses an upscaler it does not have.
"""

from __future__ import annotations

from service.catalog import Catalog
from service.catalog.models import BUILTIN_UPSCALER
from service.recipe import A1111_HIRES_UPSCALERS

NONE = "None"
LATENT = "Latent"
LATENT_MODES = ("Latent", "Latent (antialiased)", "Latent (bicubic)", "Latent (bicubic antialiased)",
                "Latent (nearest)", "Latent (nearest-exact)")  # A1111's


class UnknownUpscaler(ValueError):
    """A name the server has no upscaler for; the message lists the names it has."""


def a1111_name(name: str) -> str:
    return A1111_HIRES_UPSCALERS.get(name, name)


def listing(catalog: Catalog) -> list[dict]:
    """`/sdapi/v1/upscalers`: "None", then the catalogue's upscalers (`lanczos` as A1111's "Lanczos")."""
    out = [{"name": NONE, "model_name": None, "model_path": None, "model_url": None, "scale": 4.0}]
    for name in _ordered(catalog):
        spec = catalog.models[name]
        builtin = spec.source == BUILTIN_UPSCALER
        out.append({"name": a1111_name(name), "model_name": None if builtin else name,
                    "model_path": None if builtin else spec.source, "model_url": None,
                    "scale": float(spec.scale or 1)})
    return out


def _ordered(catalog: Catalog) -> list[str]:
    """The catalogue's upscalers, the built-in Lanczos first (as A1111 lists its own)."""
    return sorted(catalog.models_for("upscale"), key=lambda name: catalog.models[name].source != BUILTIN_UPSCALER)


def latent_modes() -> list[dict]:
    return [{"name": LATENT}]


def _catalog_upscaler(catalog: Catalog, name: str) -> str | None:
    wanted = name.strip().lower()
    for model in _ordered(catalog):
        if wanted in (model.lower(), a1111_name(model).lower()):
            return model
    return None


def names(catalog: Catalog, latent: bool) -> list[str]:
    return [NONE, *([LATENT] if latent else []), *(a1111_name(m) for m in _ordered(catalog))]


def for_hires(catalog: Catalog, name, warnings: list[str]) -> str:
    """`hr_upscaler` -> `hires.upscaler`: absent or a latent mode: "latent"; "None": "lanczos" (A1111 resizes
    with Lanczos); an upscaler's name: it. UnknownUpscaler otherwise."""
    if name is None or (isinstance(name, str) and not name.strip()):
        return "latent"
    if not isinstance(name, str):
        raise UnknownUpscaler("must be a string")
    if name.strip().lower() in (m.lower() for m in LATENT_MODES):
        if name.strip().lower() != LATENT.lower():
            warnings.append(f"hr_upscaler: {name.strip()} ran as Latent (bilinear), the latent mode Fresco has")
        return "latent"
    if name.strip() == NONE and BUILTIN_UPSCALER in catalog.models:
        return BUILTIN_UPSCALER
    found = _catalog_upscaler(catalog, name)
    if found is None:
        raise UnknownUpscaler(f"is not an upscaler of this server; use one of {names(catalog, latent=True)} "
                              f"(GET /sdapi/v1/upscalers, /sdapi/v1/latent-upscale-modes)")
    return found


def for_extras(catalog: Catalog, name) -> str | None:
    """`upscaler_1` -> the `upscale` task's model, or None for "None" (the image stays as it is)."""
    if name is None or (isinstance(name, str) and name.strip() in ("", NONE)):
        return None
    if not isinstance(name, str):
        raise UnknownUpscaler("must be a string")
    found = _catalog_upscaler(catalog, name)
    if found is None:
        raise UnknownUpscaler(f"is not an upscaler of this server; use one of {names(catalog, latent=False)} "
                              f"(GET /sdapi/v1/upscalers)")
    return found
