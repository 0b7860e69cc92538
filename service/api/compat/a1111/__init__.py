"""AUTOMATIC1111's web UI API (`/sdapi/v1`), for the clients written against it: Open WebUI, SillyTavern,
LibreChat, webuiapi.

An adapter at the edge (architecture convention 12): a txt2img or img2img request becomes native request
bodies (`translate.py`: txt2img, sdxl or turbo, with `hires` for the hires fix; img2img, or inpaint with a
mask), an extra-single-image request one `upscale` body (`extras.py`), which take the one submit path
(validation, limits, queue, workers, metrics) and are waited for (`service/api/compat/waiting.py`); their
records become A1111's answer (`answer.py`). What A1111 keeps as global server state (the loaded
checkpoint, the running job) is kept per API key in Redis (`state.py`). The lists clients read
(`sd-models`, `samplers`, `schedulers`, `loras`, `upscalers`) come from the models file (`checkpoints.py`,
`samplers.py`, `prompt_loras.py`, `upscalers.py`). docs/a1111.md has the mapping tables.
"""

from service.api.compat.a1111.routes import router

__all__ = ["router"]
