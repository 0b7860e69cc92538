"""Task name -> pipeline class. One place per task; no if/elif ladder."""

from __future__ import annotations

from workers.pipelines.img2img import Img2Img
from workers.pipelines.sdxl import SDXL
from workers.pipelines.svd import SVD
from workers.pipelines.turbo import Turbo
from workers.pipelines.txt2img import Txt2Img

PIPELINES = {cls.task: cls for cls in (SDXL, Turbo, Img2Img, SVD, Txt2Img)}
