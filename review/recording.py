"""An episode as a Rerun recording (`.rrd`, written with rerun-sdk), so it opens in the Rerun viewer beside a
team's other robot data: `rerun episode-12.rrd`.

Two timelines, `step` (control steps) and `time` (seconds since the episode began, step x CONTROL_DT); entities:

    episode                  the summary as Markdown (static): task, robot, version, seed, outcome, label
    observation/state        39 scalars per step
    action/executed          the 4 action components the robot took (dx, dy, dz, gripper)
    action/expert            the scripted expert's action at every step
    action/training          for a relabelled episode, the learner's target (the expert's corrections from the
                             failure step)
    reward, success          scalars
    intervention/source      who acted at each step: 0 policy, 1 expert gate, 2 operator, 3 annotator
    intervention/segments    a log line where each intervention segment starts and ends
    replay/video             when the episode's replay has been rendered: the mp4 itself and, at every step it
                             shows, a reference to its frame (so the video follows the step timeline)

Recorded in memory (no viewer, no file sink) and returned as bytes.
"""
from __future__ import annotations

import logging

import numpy as np

from core import storage
from fleet.ingest import load_arrays
from fleet.models import Episode, InterventionSegment
from fleet.sim.envs import CONTROL_DT
from review.export import ACTION_NAMES, SOURCE_NAMES
from review.models import ReplayVideo

log = logging.getLogger(__name__)

APPLICATION_ID = "sopweb"
SEGMENT_WORDS = {InterventionSegment.Source.GATE: "the scripted expert (gate)",
                 InterventionSegment.Source.OPERATOR: "an operator",
                 InterventionSegment.Source.ANNOTATOR: "the annotator's relabel"}


def filename(episode: Episode) -> str:
    return f"episode-{episode.pk}.rrd"


def episode_recording(episode: Episode) -> bytes:
    import rerun as rr

    arrays = load_arrays(episode)
    steps = np.arange(len(arrays["obs"]))
    rec = rr.RecordingStream(APPLICATION_ID, recording_id=str(episode.uuid))
    stream = rec.binary_stream()
    try:
        rec.send_recording_name(f"episode {episode.pk} · {episode.task.env_name}")

        def series(entity: str, values: np.ndarray, names: list[str] | None = None) -> None:
            if names:
                rec.log(entity, rr.SeriesLines(names=names), static=True)
            rec.send_columns(entity, indexes=[rr.TimeColumn("step", sequence=steps),
                                              rr.TimeColumn("time", duration=steps * CONTROL_DT)],
                             columns=rr.Scalars.columns(scalars=np.asarray(values, np.float64)))

        label = getattr(episode, "label", None)  # None when unlabelled (the reverse one-to-one raises)
        rec.log("episode", rr.TextDocument(_summary(episode, label), media_type=rr.MediaType.MARKDOWN), static=True)
        series("observation/state", arrays["obs"])
        names = ACTION_NAMES["motors"]
        series("action/executed", arrays["action"], names)
        series("action/expert", arrays["expert_action"], names)
        training = label.training_arrays(arrays) if label is not None else None
        if training is not None and not np.array_equal(training["action"], arrays["action"]):
            series("action/training", training["action"], names)
        series("reward", arrays["reward"])
        series("success", arrays["success"].astype(np.float64))
        series("intervention/source", arrays["intervention_source"].astype(np.float64))
        for segment in episode.interventions.order_by("start_step"):
            who = SEGMENT_WORDS.get(segment.source, segment.source)
            for step, text in ((segment.start_step, f"{who} takes control (steps {segment.start_step}-"
                                                    f"{segment.end_step - 1})"),
                               (segment.end_step, f"{who} hands control back")):
                rec.set_time("step", sequence=step)
                rec.set_time("time", duration=step * CONTROL_DT)
                rec.log("intervention/segments", rr.TextLog(text, level=rr.TextLogLevel.INFO))
        rec.reset_time()
        _video(rec, episode)
        rec.flush()
        return stream.read() or b""
    finally:
        rec.disconnect()


def _summary(episode: Episode, label) -> str:
    lines = [f"# Episode {episode.pk}", "",
             f"- task: {episode.task.env_name}",
             f"- robot: {episode.robot.name if episode.robot else '—'}",
             f"- policy version: {episode.policy_version.number if episode.policy_version else '—'}",
             f"- source: {episode.source}; seed {episode.seed}; outcome {episode.outcome}; {episode.steps} steps",
             f"- finished: {episode.finished_at.isoformat()}", f"- uuid: {episode.uuid}",
             f"- intervention sources: {', '.join(f'{code} {name}' for code, name in enumerate(SOURCE_NAMES))}"]
    if label is not None:
        lines += ["", "## Label", f"- failure mode: {label.failure_mode or '—'}",
                  f"- failure step: {label.failure_step if label.failure_step is not None else '—'}",
                  f"- disposition: {label.disposition}", f"- notes: {label.notes or '—'}"]
    return "\n".join(lines)


def _video(rec, episode: Episode) -> None:
    """The rendered replay, when there is one, with its frames on the step timeline (frame i shows step
    i x stride)."""
    import rerun as rr

    video = ReplayVideo.objects.filter(pk=episode.pk, status=ReplayVideo.Status.READY).first()
    if video is None or not video.path:
        return
    try:
        data = storage.read_bytes(video.path)
    except (FileNotFoundError, OSError) as exc:  # evicted since: the recording goes without it
        log.info("episode %s: replay %s unreadable (%s); recording without video", episode.pk, video.path, exc)
        return
    try:
        asset = rr.AssetVideo(contents=data, media_type="video/mp4")
        stamps = asset.read_frame_timestamps_nanos()
    except (RuntimeError, ValueError) as exc:  # a damaged file: the recording says so and goes without it
        log.warning("episode %s: replay %s is not a readable mp4 (%s)", episode.pk, video.path, exc)
        rec.log("replay/status", rr.TextDocument(f"The rendered replay could not be read ({exc}); render it again "
                                                 "from the labelling page."), static=True)
        return
    rec.log("replay/video", asset, static=True)
    frame_steps = np.arange(len(stamps)) * (video.stride or 1)
    rec.send_columns("replay/video", indexes=[rr.TimeColumn("step", sequence=frame_steps),
                                              rr.TimeColumn("time", duration=frame_steps * CONTROL_DT)],
                     columns=rr.VideoFrameReference.columns_nanos(stamps))
