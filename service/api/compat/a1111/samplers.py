"""AUTOMATIC1111's samplers and schedule types, and the Fresco scheduler each pair runs as.

A1111 (1.9 and later) names a sampler (`sampler_name`: "Euler a", "DPM++ 2M", ...) and, apart from it, a
schedule type (`scheduler`: "Automatic", "Karras", ...); older clients send both in one name ("DPM++ 2M
Karras"). Fresco's schedulers (`service.families.SCHEDULERS`) are such pairs already, so `/samplers` and
`/schedulers` list only names that map onto one exactly. A client's default sampler must never cost it a
422, so any other name runs as the nearest Fresco scheduler, with a warning that says so.

Flow-matching models (SD 3.5, FLUX.1: a kind whose schedulers are `flow_*`) run what Forge runs them with:
"Euler" (or "Heun" where the kind takes it) with the schedule type "Simple"; any other sampler or schedule
runs as that, with a warning.
"""

from __future__ import annotations

from dataclasses import dataclass

from service.families import SCHEDULERS, Kind
from service.recipe import FLOW_SCHEDULE, SAMPLERS, Sampler  # the table, shared with the recipes outputs carry

assert all(s.plain in SCHEDULERS and (s.karras is None or s.karras in SCHEDULERS) for s in SAMPLERS)

# Schedule types (A1111's `scheduler` field) Fresco can run: name, label, aliases. "Automatic" is each
# sampler's own default; "Uniform" is k-diffusion's default spacing (A1111's name for it).
SCHEDULE_TYPES = (("automatic", "Automatic"), ("uniform", "Uniform"), ("karras", "Karras"))
# Flow-matching models' one schedule type (A1111's `scheduler`), listed after those.
FLOW_SCHEDULE_TYPES = ((FLOW_SCHEDULE.lower(), FLOW_SCHEDULE),)
# A1111's other schedule types: accepted, run with the sampler's default, and warned about.
OTHER_SCHEDULE_TYPES = ("exponential", "polyexponential", "sgm_uniform", "sgm uniform", "kl_optimal", "kl optimal",
                        "align_your_steps", "align your steps", "simple", "normal", "ddim", "beta")

_BY_NAME = {n.lower(): s for s in SAMPLERS for n in (s.name, *s.aliases)}
# Pre-1.9 names with the schedule in them.
_KARRAS_NAMES = {"dpm++ 2m karras": "DPM++ 2M", "k_dpmpp_2m_ka": "DPM++ 2M"}


@dataclass(frozen=True)
class Choice:
    scheduler: str  # Fresco's
    sampler_name: str  # A1111's name of what runs
    schedule_label: str  # A1111's label of the schedule that runs
    warnings: tuple[str, ...] = ()


def _nearest(name: str) -> Sampler:
    """The Fresco sampler closest to an A1111 sampler Fresco does not have."""
    low = name.lower()
    if "ddim" in low or "plms" in low:
        return _BY_NAME["ddim"]
    if "unipc" in low:
        return _BY_NAME["unipc"]
    if low.endswith(" a") or "ancestral" in low or low.endswith("_a") or " a " in low or "lcm" in low:
        return _BY_NAME["euler a"]
    if "dpm" in low:
        return _BY_NAME["dpm++ 2m"]
    if "heun" in low:
        return _BY_NAME["heun"]
    return _BY_NAME["euler"]


def _shown(value: str) -> str:
    return value if len(value) <= 64 else value[:61] + "..."


def choose(sampler_name: str | None, schedule: str | None) -> Choice:
    """The Fresco scheduler for an A1111 sampler and schedule type (either may be absent: "Euler",
    "Automatic"), with warnings where it is not exactly what was asked for."""
    warnings = []
    name = (sampler_name or "Euler").strip()
    low = name.lower()
    sampler = _BY_NAME.get(low)
    implied = None
    if sampler is None and low in _KARRAS_NAMES:
        sampler, implied = _BY_NAME[_KARRAS_NAMES[low].lower()], "karras"
    if sampler is None:
        sampler = _nearest(name)
        implied = "karras" if "karras" in low else None
        warnings.append(f"sampler {_shown(name)!r} is not available; ran the nearest one, {sampler.name!r}")
    kind = (schedule or "").strip().lower() or "automatic"
    if kind in ("automatic", "uniform", "karras"):
        pass
    elif kind in OTHER_SCHEDULE_TYPES:
        warnings.append(f"schedule type {_shown(schedule)!r} is not available; ran {sampler.name!r} with its default")
        kind = "automatic"
    else:
        warnings.append(f"schedule type {_shown(schedule)!r} is unknown; ran {sampler.name!r} with its default")
        kind = "automatic"
    if implied and kind == "automatic":
        kind = implied
    runs = sampler.automatic if kind == "automatic" else kind
    if runs == "karras" and sampler.karras is None:
        warnings.append(f"the Karras schedule is not available with {sampler.name!r}; ran its default")
        kind = runs = "uniform"
    # The label A1111 reports: the schedule asked for, or the one "Automatic" resolved to when it is not uniform.
    label = dict(SCHEDULE_TYPES)[runs if kind != "automatic" or runs == "karras" else "automatic"]
    return Choice(sampler.karras if runs == "karras" else sampler.plain, sampler.name, label, tuple(warnings))


def choose_for(kind: Kind, sampler_name: str | None, schedule: str | None) -> Choice:
    """`choose` for a model of `kind`: on a flow-matching kind, the flow scheduler of the sampler (Euler,
    Heun) where the kind takes it, else Euler's, with the schedule "Simple"."""
    flows = {s.flow: s for s in SAMPLERS if s.flow in kind.schedulers}
    if not flows:
        return choose(sampler_name, schedule)
    warnings = []
    name = (sampler_name or "Euler").strip()
    sampler = _BY_NAME.get(name.lower())
    if sampler is None or sampler.flow not in flows:
        sampler = flows.get(kind.scheduler) or next(iter(flows.values()))
        warnings.append(f"sampler {_shown(name)!r} is not available on {kind.name} models; ran {sampler.name!r}")
    asked = (schedule or "").strip().lower()
    if asked not in ("", "automatic", FLOW_SCHEDULE.lower()):
        warnings.append(f"schedule type {_shown(schedule)!r} is not available on {kind.name} models; ran "
                        f"{FLOW_SCHEDULE!r}")
    return Choice(sampler.flow, sampler.name, FLOW_SCHEDULE, tuple(warnings))


def sampler_listing() -> list[dict]:
    """`GET /sdapi/v1/samplers`."""
    return [{"name": s.name, "aliases": list(s.aliases), "options": dict(s.options)} for s in SAMPLERS]


def schedule_listing() -> list[dict]:
    """`GET /sdapi/v1/schedulers`, in A1111's item shape."""
    return [{"name": name, "label": label, "aliases": None, "default_rho": 7.0 if name == "karras" else -1.0,
             "need_inner_model": name == "uniform"} for name, label in SCHEDULE_TYPES + FLOW_SCHEDULE_TYPES]
