"""workers.progress.Progress on its own: a list-recording report function stands in for the Redis
round trip (Progress only ever calls `report(state) -> canceled?`)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from workers.progress import POST_STAGES, JobCanceled, Progress


class Recorder:
    """`report`: keeps every state it is sent; answers `cancel` (canceled?) each time."""

    def __init__(self, cancel: bool = False):
        self.states: list[dict] = []
        self.cancel = cancel

    def __call__(self, state: dict) -> bool:
        self.states.append(dict(state))
        return self.cancel

    @property
    def fractions(self) -> list[float]:
        return [s["fraction"] for s in self.states]


def pipe(num_timesteps=None):
    """What Progress reads from the pipeline in diffusers' step callback: `num_timesteps`, if any."""
    return SimpleNamespace(num_timesteps=num_timesteps) if num_timesteps is not None else object()


def run_stage(progress: Progress, stage: str, steps: int, actual: int | None = None) -> None:
    progress.begin(stage)
    kwargs = {"latents": object()}
    for i in range(steps):
        assert progress.on_step_end(pipe(actual), i, 999 - i, kwargs) is kwargs  # diffusers needs them back


def assert_monotonic(fractions: list[float]) -> None:
    assert all(b >= a for a, b in zip(fractions, fractions[1:])), fractions
    assert all(0.0 <= f <= 1.0 for f in fractions), fractions


def test_fraction_rises_monotonically_and_ends_at_exactly_one():
    rec = Recorder()
    progress = Progress(rec, [("base", 8), ("refiner", 2)])
    assert progress.state() == {"stage": "queued", "step": 0, "total_steps": 0, "fraction": 0.0}
    run_stage(progress, "base", 8, actual=8)
    assert rec.states[-1]["stage"] == "base" and rec.states[-1]["step"] == 8
    run_stage(progress, "refiner", 2, actual=2)
    progress.post("encode")
    progress.post("store")
    assert_monotonic(rec.fractions)
    assert all(f < 1.0 for f in rec.fractions)  # 1.0 only once the job is done
    assert [s["stage"] for s in rec.states[-3:]] == ["decode", "encode", "store"]
    done = progress.finished()
    assert done == {"stage": "done", "step": 1, "total_steps": 1, "fraction": 1.0}
    assert done["fraction"] == 1.0 and progress.state()["fraction"] == 1.0
    # every denoising step was reported, plus the stage entries and the post stages
    assert [s["step"] for s in rec.states if s["stage"] == "base"] == list(range(9))
    assert [s["step"] for s in rec.states if s["stage"] == "refiner"] == [0, 1]


def test_steps_and_totals_reported_per_stage():
    rec = Recorder()
    progress = Progress(rec, [("denoise", 3)])
    progress.begin("denoise")
    assert rec.states[-1] == {"stage": "denoise", "step": 0, "total_steps": 3, "fraction": 0.0}
    progress.on_step_end(pipe(), 0, 1, {})
    progress.on_step_end(pipe(), 1, 1, {})
    assert rec.states[-1]["step"] == 2 and rec.states[-1]["total_steps"] == 3
    # 2 of 3 denoising steps of 3 + 3 post stages
    assert rec.states[-1]["fraction"] == pytest.approx(2 / (3 + len(POST_STAGES)), abs=1e-4)


def test_begin_of_a_stage_not_in_the_plan_raises():
    with pytest.raises((AssertionError, ValueError, KeyError)):
        Progress(Recorder(), [("base", 4)]).begin("refiner")
    with pytest.raises((AssertionError, ValueError, KeyError)):  # out of order
        Progress(Recorder(), [("base", 4), ("refiner", 1)]).begin("refiner")
    progress = Progress(Recorder(), [("denoise", 1)])
    progress.begin("denoise")
    with pytest.raises((IndexError, ValueError, KeyError)):  # past the end of the plan
        progress.begin("denoise")


def test_revised_step_count_updates_total_and_fraction_never_goes_back():
    rec = Recorder()
    # planned 2 + 2, but the refiner really runs 10 steps: the total grows after progress was shown
    progress = Progress(rec, [("base", 2), ("refiner", 2)])
    run_stage(progress, "base", 2, actual=2)
    before = rec.fractions[-1]
    assert before > 0
    progress.begin("refiner")
    progress.on_step_end(pipe(10), 0, 1, {})
    assert progress.total_steps == 10
    assert rec.states[-1]["total_steps"] == 10 and rec.states[-1]["step"] == 1
    assert rec.states[-1]["fraction"] >= before  # 3/15 computed, but never below what was shown
    for i in range(1, 10):
        progress.on_step_end(pipe(10), i, 1, {})
    assert rec.states[-1]["stage"] == "decode"  # the revised count decides when the last step is
    progress.post("encode")
    progress.post("store")
    assert_monotonic(rec.fractions)
    assert progress.finished()["fraction"] == 1.0


def test_fewer_steps_than_planned_reaches_decode_on_the_real_last_step():
    rec = Recorder()
    progress = Progress(rec, [("denoise", 10)])  # e.g. img2img: the pipeline runs steps × strength
    progress.begin("denoise")
    for i in range(4):
        progress.on_step_end(pipe(4), i, 1, {})
    assert progress.total_steps == 1 and progress.stage == "decode"
    assert [s["total_steps"] for s in rec.states[1:4]] == [4, 4, 4]
    assert_monotonic(rec.fractions)
    # decode: all 4 denoising steps done, none of the 3 post stages
    assert rec.states[-1]["fraction"] == pytest.approx(4 / 7, abs=1e-4)


def test_num_timesteps_only_read_on_the_first_step_of_a_stage():
    rec = Recorder()
    progress = Progress(rec, [("denoise", 3)])
    progress.begin("denoise")
    progress.on_step_end(pipe(3), 0, 1, {})
    progress.on_step_end(pipe(50), 1, 1, {})  # a changed attribute mid-stage is not a new plan
    assert progress.total_steps == 3 and rec.states[-1]["total_steps"] == 3


def test_cancel_flag_raises_job_canceled_from_the_step_callback():
    rec = Recorder()
    progress = Progress(rec, [("denoise", 5)])
    progress.begin("denoise")
    progress.on_step_end(pipe(5), 0, 1, {})
    rec.cancel = True
    with pytest.raises(JobCanceled):
        progress.on_step_end(pipe(5), 1, 1, {})
    assert rec.states[-1]["step"] == 2  # the step was reported before stopping
    assert progress.state()["stage"] == "denoise"


def test_cancel_on_the_last_step_raises_too():
    rec = Recorder()
    progress = Progress(rec, [("denoise", 1)])
    progress.begin("denoise")
    rec.cancel = True
    with pytest.raises(JobCanceled):
        progress.on_step_end(pipe(1), 0, 1, {})


def test_cancel_flag_seen_when_a_stage_begins():
    progress = Progress(Recorder(cancel=True), [("base", 2)])
    with pytest.raises(JobCanceled):
        progress.begin("base")


def test_post_encode_after_denoising_counts_all_denoising_done():
    rec = Recorder()
    progress = Progress(rec, [("denoise", 4)])
    progress.begin("denoise")
    progress.on_step_end(pipe(), 0, 1, {})  # the pipeline stopped early; encode still counts it all done
    progress.post("encode")
    assert rec.states[-1] == {"stage": "encode", "step": 0, "total_steps": 1,
                              "fraction": round((4 + 1) / (4 + len(POST_STAGES)), 4)}
    progress.post("encode")  # entering the stage it is in is a no-op
    assert len([s for s in rec.states if s["stage"] == "encode"]) == 1
    progress.post("store")
    assert rec.states[-1]["stage"] == "store"
    assert rec.states[-1]["fraction"] == round((4 + 2) / (4 + len(POST_STAGES)), 4)
    assert_monotonic(rec.fractions)


def test_last_step_of_last_stage_moves_to_decode():
    rec = Recorder()
    progress = Progress(rec, [("base", 2), ("refiner", 1)])
    run_stage(progress, "base", 2, actual=2)
    assert progress.stage == "base"  # the last step of an earlier stage does not
    run_stage(progress, "refiner", 1, actual=1)
    assert progress.stage == "decode"
    assert rec.states[-1] == {"stage": "decode", "step": 0, "total_steps": 1,
                              "fraction": round(3 / (3 + len(POST_STAGES)), 4)}
    progress.post("decode")  # the worker may say so again: nothing new is sent
    assert rec.states[-1]["stage"] == "decode" and len([s for s in rec.states if s["stage"] == "decode"]) == 1


def test_pipeline_without_num_timesteps_keeps_the_plan():
    rec = Recorder()
    progress = Progress(rec, [("denoise", 2)])
    run_stage(progress, "denoise", 2, actual=None)
    assert progress.stage == "decode"
    assert [s["total_steps"] for s in rec.states[:2]] == [2, 2]
