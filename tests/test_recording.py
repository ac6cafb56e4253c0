"""An episode as a Rerun recording (review/recording.py): downloaded from the episode pages and opened with the
Rerun SDK's own reader, which finds the time series, the intervention segments, the label and, once the replay is
rendered, the video with its frames on the step timeline."""
from __future__ import annotations

import numpy as np
from django.urls import reverse
from django.utils import timezone

from core import storage
from fleet.ingest import load_arrays
from review.models import ReplayVideo
from tests.reviewing import ingest, recorded
from tests.test_review import label_three, task  # noqa: F401  (the fixture)


def read_recording(path) -> dict:
    """{entity: [record batches]} and the stores of an .rrd, as the Rerun SDK reads it."""
    from rerun.chunk import RrdReader

    reader = RrdReader(path)
    chunks: dict[str, list] = {}
    for chunk in reader.stream():
        chunks.setdefault(chunk.entity_path, []).append(chunk.to_record_batch())
    return {"stores": reader.recordings(), "chunks": chunks}


def column(batches, name) -> list:
    """One component's values over the entity's chunks that hold it (a static chunk may hold only its styling)."""
    return [value for batch in batches if name in batch.schema.names for value in batch.column(name).to_pylist()]


def download(client, episode, tmp_path):
    response = client.get(reverse("episode-recording", args=[episode.pk]))
    assert response.status_code == 200, response.content[:200]
    assert response["Content-Disposition"] == f'attachment; filename="episode-{episode.pk}.rrd"'
    path = tmp_path / f"episode-{episode.pk}.rrd"
    path.write_bytes(response.content)
    return read_recording(path)


def test_the_recording_holds_the_episodes_series_segments_and_label(client, task, anna, olivia, tmp_path):  # noqa: F811
    arrays, episodes = label_three(task, anna)
    episode = episodes["relabelled"]  # gate at steps 5-9, relabelled from step 25
    client.force_login(olivia)  # an operator: anyone who may read the episode
    page = client.get(reverse("episode", args=[episode.pk])).content.decode()
    assert reverse("episode-recording", args=[episode.pk]) in page
    found = download(client, episode, tmp_path)

    (store,) = found["stores"]
    assert (store.application_id, store.recording_id) == ("sopweb", str(episode.uuid))
    chunks = found["chunks"]
    assert {"/episode", "/observation/state", "/action/executed", "/action/expert", "/action/training", "/reward",
            "/success", "/intervention/source", "/intervention/segments"} <= set(chunks)
    state = chunks["/observation/state"]
    assert column(state, "step") == list(range(40))
    np.testing.assert_array_equal(np.array(column(state, "Scalars:scalars"), np.float32), arrays["relabelled"]["obs"])
    np.testing.assert_array_equal(np.array(column(chunks["/action/executed"], "Scalars:scalars"), np.float32),
                                  arrays["relabelled"]["action"])
    training = np.array(column(chunks["/action/training"], "Scalars:scalars"), np.float32)
    np.testing.assert_array_equal(training[25:], arrays["relabelled"]["expert_action"][25:])  # the corrections
    assert column(chunks["/intervention/source"], "Scalars:scalars")[5:10] == [[1.0]] * 5
    segments = chunks["/intervention/segments"]
    logged = sorted(zip(column(segments, "step"), (text for (text,) in column(segments, "TextLog:text"))))
    assert logged == [(5, "the scripted expert (gate) takes control (steps 5-9)"),
                      (10, "the scripted expert (gate) hands control back"),
                      (25, "the annotator's relabel takes control (steps 25-39)"),
                      (40, "the annotator's relabel hands control back")]
    ((summary,),) = column(chunks["/episode"], "TextDocument:text")
    assert f"# Episode {episode.pk}" in summary and "failure step: 25" in summary and "disposition: relabel" in summary
    assert "/replay/video" not in chunks  # not rendered yet

    # An unlabelled episode has no training series and no label section; outsiders get nothing.
    plain = ingest(task, arrays["kept"])
    assert "/action/training" not in download(client, plain, tmp_path)["chunks"]


def test_a_rendered_replay_travels_in_the_recording_with_its_frames_on_the_step_timeline(
        client, anna, task, tmp_path):  # noqa: F811
    from fleet.sim.envs import make_task
    from fleet.sim.replay import VideoSpec, render_video

    episode = ingest(task, recorded(seed=7, steps=60), seed=7)
    name = f"replays/episode-{episode.pk}.mp4"
    target = tmp_path / "render.mp4"
    info = render_video(make_task("pick-place-v3"), 7, load_arrays(episode), target,
                        VideoSpec(width=160, height=128, stride=2))
    storage.upload(name, target)
    ReplayVideo.objects.create(episode=episode, status=ReplayVideo.Status.READY, path=name, fps=info["fps"],
                               stride=2, frames=info["frames"], finished_at=timezone.now())
    client.force_login(anna)
    assert reverse("episode-recording", args=[episode.pk]) in client.get(
        reverse("review-episode", args=[episode.pk])).content.decode()
    chunks = download(client, episode, tmp_path)["chunks"]

    video = chunks["/replay/video"]
    ((blob,),) = column(video, "AssetVideo:blob")  # one row holding one blob (a list of bytes)
    assert bytes(blob) == target.read_bytes()
    frames = [batch for batch in video if "VideoFrameReference:timestamp" in batch.schema.names]
    assert column(frames, "step") == list(range(0, 60, 2))  # frame k shows step 2k
    assert len(column(frames, "VideoFrameReference:timestamp")) == info["frames"] == 30


def test_a_damaged_replay_file_leaves_the_recording_without_video_and_says_why(client, anna, task, settings,  # noqa: F811
                                                                              tmp_path):
    from tests.reviewing import synthetic

    episode = ingest(task, synthetic())
    storage.write_bytes(f"replays/episode-{episode.pk}.mp4", bytes(range(256)) * 4)
    ReplayVideo.objects.create(episode=episode, status=ReplayVideo.Status.READY,
                               path=f"replays/episode-{episode.pk}.mp4", fps=40, stride=2, frames=20,
                               finished_at=timezone.now())
    client.force_login(anna)
    chunks = download(client, episode, tmp_path)["chunks"]
    assert "/replay/video" not in chunks and "/observation/state" in chunks
    ((note,),) = column(chunks["/replay/status"], "TextDocument:text")
    assert note.startswith("The rendered replay could not be read")


def test_outsiders_get_no_recording(client, oscar, task):  # noqa: F811
    from tests.reviewing import synthetic

    episode = ingest(task, synthetic())
    client.force_login(oscar)
    assert client.get(reverse("episode-recording", args=[episode.pk])).status_code == 403
    client.logout()
    assert client.get(reverse("episode-recording", args=[episode.pk])).status_code in (302, 403)

