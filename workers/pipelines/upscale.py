"""Task `upscale`: an image made `scale` times larger by an upscaler (workers/upscalers.py): ESRGAN-family
weights spandrel loads, tile by tile with blended seams, or the built-in Lanczos filter.

No diffusers model is involved: the task's row is not resident (service/tasks.py), so the Runtime builds
this pipeline from the upscaler's catalogue spec and the settings, and it loads the upscaler once, at
worker start (the process-wide one a hires pass shares). `self.model` stays None: no LoRAs, no previews.
Progress counts tiles: the plan is one `upscale` stage of as many steps as the image has tiles, each
reported (and the job's cancel flag read) as it is done. The output is round(w × scale) × round(h × scale),
the size the API resolved into `width` and `height`.
"""

from __future__ import annotations

from PIL import Image

from service.catalog import ModelSpec
from service.jobs.states import Stage
from workers.pipelines.base import Output, TaskPipeline, input_image, pixels
from workers.progress import Progress
from workers.upscalers import upscaler_for


class Upscale(TaskPipeline):
    task = "upscale"

    def __init__(self, spec: ModelSpec, settings=None):
        super().__init__(None)
        self.spec = spec
        self.upscaler = upscaler_for(spec)

    def plan(self, params: dict) -> list[tuple[Stage, int]]:
        image = params["image"]
        return [(Stage.UPSCALE, self.upscaler.tiles(image["width"], image["height"], params["tile"]))]

    def default_size(self) -> tuple[int, int]:
        return (512, 512)

    def warmup_params(self, width: int, height: int) -> dict:
        return {"scale": float(self.upscaler.scale), "tile": 512, "output_format": "png", "width": width,
                "height": height, "image": input_image(Image.new("RGB", (width, height), (127, 127, 127)))}

    def run(self, params: dict, progress: Progress) -> Output:
        done = 0

        def on_tile() -> None:
            nonlocal done
            done += 1
            progress.on_step_end(None, done, None, {})  # reports the tile; raises when the job was canceled

        progress.begin(Stage.UPSCALE)
        image = self.upscaler.upscale(pixels(params["image"]), float(params["scale"]), params["tile"], on_tile)
        return Output(images=[image])
