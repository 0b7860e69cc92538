"""Progress as steps happen, and cooperative cancel.

Each denoising step writes `{stage, step, total_steps, fraction}` to the job and publishes it, in one
Redis round trip that also reads the job's cancel flag; when the flag is set, the step callback raises
`JobCanceled`, which aborts the pipeline at once (SDXL and SVD alike). `fraction` rises monotonically
to 1 across every stage: the denoising stages, then decode, encode and store. While a step is reported,
`latents` and `pipe` are that step's (for live previews, workers/previews.py); else None.
"""

from __future__ import annotations

from typing import Callable

from service.jobs.states import POST_STAGES, Stage, progress


class JobCanceled(Exception):
    """The job's cancel flag was set; the job stops at this step."""


class Progress:
    def __init__(self, report: Callable[[dict], bool], plan: list[tuple[Stage, int]], published: dict | None = None):
        """`report(progress) -> canceled?`; `plan`: the denoising stages and their expected steps.
        `published`: the state the job already shows (written when it started running); the first
        stage's begin then sends nothing new, saving a Redis round trip per job (the first step's
        report checks the cancel flag)."""
        self._published = published
        self._report = report
        self._plan = list(plan)
        self._denoise_total = sum(n for _, n in plan)
        self._denoised = 0  # denoising steps done
        self._posted = 0  # post-stages (decode, encode, store) done
        self._fraction = 0.0
        self._index = -1
        self.stage, self.step, self.total_steps = Stage.QUEUED, 0, 0
        self.step_hook: Callable[[int], None] | None = None  # fault injection in tests
        self.latents = None  # the latents of the step being reported (a tensor), else None
        self.pipe = None  # the pipeline whose step is being reported
        self.job_id: str | None = None  # the (first) job it reports for: a training job's files are its
        self.image = None  # a training job's latest validation image (PIL), its live preview
        self.extra: dict = {}  # a training job's `loss` and `resumed_from`, in every state it reports

    def _send(self) -> None:
        expected = self._denoise_total + len(POST_STAGES)
        fraction = min(0.999, (self._denoised + self._posted) / expected)
        self._fraction = max(self._fraction, fraction)  # never goes back, even when a plan is revised
        if self._report(self.state()):
            raise JobCanceled()

    @property
    def denoised(self) -> int:
        """Denoising steps done so far, over every stage."""
        return self._denoised

    def state(self) -> dict:
        return progress(self.stage, self.step, self.total_steps, round(self._fraction, 4), **self.extra)

    def trained(self, step: int, total: int, loss: float) -> None:
        """A training job's optimizer step `step` of `total` is done, with `loss`: report it (and raise
        JobCanceled when the job was canceled). The fraction counts the steps (saving is the last 1%)."""
        self.stage, self.step, self.total_steps = Stage.TRAINING, step, total
        self.extra["loss"] = round(float(loss), 6)
        if self.step_hook is not None:
            self.step_hook(step)
        self._fraction = max(self._fraction, min(0.99, 0.99 * step / max(1, total)))
        if self._report(self.state()):
            raise JobCanceled()

    def preparing(self, stage: Stage) -> None:
        """Say the job is in a stage before its denoising (loading adapters); the fraction stays."""
        if self.stage != stage:
            self.stage, self.step, self.total_steps = stage, 0, 0
            self._published = None  # what the job shows now: the first denoising stage says itself again
            self._send()

    def begin(self, stage: Stage) -> None:
        """Enter the next planned denoising stage."""
        if self._index + 1 >= len(self._plan) or self._plan[self._index + 1][0] != stage:
            raise ValueError(f"stage {stage!r} is not next in the plan {self._plan}")
        self._index += 1
        self.stage, self.step, self.total_steps = stage, 0, self._plan[self._index][1]
        if self._index == 0 and self._published is not None and self._published == self.state():
            return
        self._send()

    def on_step_end(self, pipe, i, t, callback_kwargs):
        """diffusers' `callback_on_step_end`: counts the step, reports it, raises when canceled."""
        actual = getattr(pipe, "num_timesteps", None)
        if self.step == 0 and actual and actual != self.total_steps:  # what this stage really runs
            self._denoise_total += actual - self.total_steps
            self.total_steps = actual
        self.step += 1
        self._denoised += 1
        if self.step_hook is not None:
            self.step_hook(self.step)
        self.latents, self.pipe = callback_kwargs.get("latents"), pipe
        try:
            if self.step >= self.total_steps and self._index == len(self._plan) - 1:
                self.post(Stage.DECODE)  # the pipeline decodes right after its last step
            else:
                self._send()
        finally:
            self.latents = self.pipe = None
        return callback_kwargs

    def post(self, stage: Stage) -> None:
        """Enter decode, encode or store: all denoising and the earlier post-stages count as done."""
        if self.stage == stage:
            return
        self._denoised = self._denoise_total
        self._posted = POST_STAGES.index(stage)
        self.stage, self.step, self.total_steps = stage, 0, 1
        self._send()

    def finished(self) -> dict:
        self._denoised, self._posted, self._fraction = self._denoise_total, len(POST_STAGES), 1.0
        self.stage, self.step, self.total_steps = Stage.DONE, 1, 1
        return self.state()
