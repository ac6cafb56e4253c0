"""An annotator works through the review queue in a real headless Chromium, against the real ASGI server and a
real Celery worker rendering the replays."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from fleet.models import EpisodePayload, Task
from review.models import EpisodeLabel
from tests.reviewing import ingest, recorded

pytestmark = pytest.mark.django_db(transaction=True)
VIDEO = "document.getElementById('replay-video')"


def test_an_annotator_labels_an_episode_from_the_keyboard_and_the_next_one_opens(browser_session, start_worker,
                                                                                 anna):
    task = Task.objects.create(env_name="pick-place-v3", title="Pick place")
    older = ingest(task, recorded(seed=7, steps=160), seed=7, finished_at=timezone.now() - timedelta(minutes=5))
    newer = ingest(task, recorded(seed=8, steps=160), seed=8)
    start_worker(queues="background")
    session = browser_session(anna)
    page = session.page

    page.goto(session.base_url + "/review/")
    # autofocus lands at the browser's next rendering step, not at "load": wait for it, then only the keyboard
    page.wait_for_function("() => document.activeElement && document.activeElement.id === 'start-labelling'")
    page.keyboard.press("Enter")  # the "label the next episode" button has the focus
    page.wait_for_url(f"**/review/episodes/{newer.pk}/")

    # The replay renders (progress polled), then plays: the element reports a duration and advancing time.
    page.wait_for_function(f"() => {VIDEO}.readyState >= 2 && {VIDEO}.duration > 0", timeout=120_000)
    assert page.evaluate(f"{VIDEO}.duration") == pytest.approx(160 / 80, abs=0.05)
    page.keyboard.press(" ")
    page.wait_for_function(f"() => {VIDEO}.currentTime > 0.3", timeout=10_000)
    # Playing moved the shared cursor, on the page and on the charts.
    assert int(page.inner_text("#cursor-step")) > 0
    assert page.evaluate("document.getElementById('chart-actions').layout.shapes.some(s => s.type === 'line')")

    # Clicking the chart seeks the video to that step.
    page.keyboard.press(" ")  # pause (or nothing, if it already ended)
    page.evaluate(f"{VIDEO}.pause()")
    page.locator("#chart-reward").scroll_into_view_if_needed()  # below the player: mouse clicks do not scroll
    box = page.locator("#chart-reward .nsewdrag").first.bounding_box()
    page.mouse.click(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.5)
    page.wait_for_function("() => Number(document.getElementById('cursor-step').textContent) > 40")
    step = int(page.inner_text("#cursor-step"))
    assert 40 < step < 120
    # Frame k of the video shows step 2k (REVIEW_VIDEO_STRIDE) from time k / 40 s.
    page.wait_for_function(f"() => Math.abs({VIDEO}.currentTime - ({step // 2} + 0.5) / 40) < 0.02")
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    assert int(page.inner_text("#cursor-step")) == step + 2

    # Keys label it: F = the failure began here, 2 = the task's second failure mode, X = exclude, Enter = save.
    page.keyboard.press("f")
    assert page.input_value("#id_failure_step") == str(step + 2)
    page.keyboard.press("2")
    page.keyboard.press("x")
    session.screenshot("labelled")
    page.keyboard.press("Enter")
    page.wait_for_url(f"**/review/episodes/{older.pk}/")

    label = EpisodeLabel.objects.get(episode=newer)
    assert (label.failure_mode, label.failure_step, label.disposition, label.annotator) == (
        "dropped_object", step + 2, EpisodeLabel.Disposition.EXCLUDE, anna)
    assert "labelled dropped object" in page.content()
    assert session.console_errors == []


def test_a_replay_that_cannot_render_shows_why_and_a_retry_button(browser_session, start_worker, anna):
    task = Task.objects.create(env_name="pick-place-v3", title="Pick place")
    episode = ingest(task, recorded(seed=7, steps=60), seed=7)
    EpisodePayload.objects.filter(episode=episode).update(data=b"PK\x03\x04 this is not an npz")
    start_worker(queues="background")
    session = browser_session(anna)
    page = session.page
    page.goto(f"{session.base_url}/review/episodes/{episode.pk}/")
    retry = page.locator("#replay-retry")
    retry.wait_for(state="visible", timeout=60_000)
    assert "recorded data is corrupt" in page.inner_text("#replay-message")
    retry.click()  # rendered again: the payload is still corrupt, so the same clear error comes back
    page.wait_for_function("() => document.getElementById('replay').dataset.status === 'failed' && "
                           "!document.getElementById('replay-retry').disabled", timeout=60_000)
    assert "recorded data is corrupt" in page.inner_text("#replay-message")
    assert session.console_errors == []


def cursor(page) -> int:
    return int(page.inner_text("#cursor-step"))


def test_the_replay_plays_at_the_chosen_speed_and_steps_one_control_step_at_a_time(browser_session, start_worker,
                                                                                  anna):
    task = Task.objects.create(env_name="pick-place-v3", title="Pick place")
    episode = ingest(task, recorded(seed=7, steps=160), seed=7)
    start_worker(queues="background")
    session = browser_session(anna)
    page = session.page
    page.goto(f"{session.base_url}/review/episodes/{episode.pk}/")
    page.wait_for_function(f"() => {VIDEO}.readyState >= 2 && {VIDEO}.duration > 0", timeout=120_000)
    assert page.evaluate(f"{VIDEO}.duration") == pytest.approx(160 / 80, abs=0.05)  # the robot's own pace at 1x
    width = page.evaluate(f"{VIDEO}.getBoundingClientRect().width")
    assert width > 500  # larger than the 320-pixel frames it shows

    # 2x: the element plays twice as fast and the cursor runs with it.
    page.select_option("#replay-speed", "2")
    assert page.evaluate(f"{VIDEO}.playbackRate") == 2
    page.click("#replay-play")
    page.wait_for_function("() => Number(document.getElementById('cursor-step').textContent) > 40", timeout=10_000)
    assert page.evaluate(f"{VIDEO}.playbackRate") == 2
    page.click("#replay-play")  # pause (or nothing, if it already ended)
    page.evaluate(f"{VIDEO}.pause()")
    session.screenshot("at-2x")
    page.keyboard.press("[")  # one speed slower
    assert page.evaluate(f"{VIDEO}.playbackRate") == 1.5 and page.input_value("#replay-speed") == "1.5"

    # Frame stepping moves the cursor by one control step; the video shows the drawn step at or before it.
    page.keyboard.press("Home")
    assert cursor(page) == 0
    page.keyboard.press("ArrowRight")
    assert cursor(page) == 1 and page.inner_text("#cursor-frame") == "(the picture is step 0)"
    page.click("#replay-forward")
    assert cursor(page) == 2 and page.inner_text("#cursor-frame") == ""
    page.wait_for_function(f"() => Math.abs({VIDEO}.currentTime - 1.5 / 40) < 0.01")
    page.keyboard.press("Shift+ArrowRight")
    assert cursor(page) == 12
    page.click("#replay-back")
    assert cursor(page) == 11 and page.input_value("#replay-timeline") == "11"
    page.wait_for_function(f"() => Math.abs({VIDEO}.currentTime - 5.5 / 40) < 0.01")
    assert cursor(page) == 11  # the seek to step 10's picture left the cursor on step 11

    # The timeline is in steps; the step found there is the one F writes into the failure-step field.
    page.evaluate("""() => { const timeline = document.getElementById('replay-timeline');
                             timeline.value = '101'; timeline.dispatchEvent(new Event('input')); }""")
    assert cursor(page) == 101
    page.wait_for_function(f"() => Math.abs({VIDEO}.currentTime - 50.5 / 40) < 0.01")
    page.keyboard.press("ArrowLeft")
    page.keyboard.press("f")
    assert page.input_value("#id_failure_step") == "100"
    session.screenshot("stepped")

    # The speed is kept for the next episode the annotator opens.
    page.reload()
    page.wait_for_function(f"() => {VIDEO}.readyState >= 1", timeout=60_000)
    assert page.input_value("#replay-speed") == "1.5" and page.evaluate(f"{VIDEO}.playbackRate") == 1.5
    assert session.console_errors == []


def test_an_annotator_exports_a_v21_dataset_from_the_page_and_downloads_its_zip(browser_session, start_worker, anna,
                                                                                tmp_path):
    import json
    import zipfile

    from tests.test_review import label_three

    task = Task.objects.create(env_name="pick-place-v3", title="Pick place")
    label_three(task, anna)  # one kept, one relabelled, one excluded
    start_worker(queues="background")
    session = browser_session(anna)
    page = session.page
    page.goto(session.base_url + "/review/export/")
    assert page.input_value("select[name=format]") == "v3.0"  # the current format unless asked otherwise
    page.select_option("select[name=format]", "v2.1")
    session.screenshot("form")
    page.get_by_role("button", name="Export the dataset").click()
    page.wait_for_url("**/review/exports/*/")
    page.locator("#export-download").wait_for(state="visible", timeout=120_000)  # polled until ready
    assert "2 episodes" in page.inner_text("#export-message") and "LeRobot v2.1" in page.inner_text("main")
    session.screenshot("ready")
    with page.expect_download() as download:
        page.click("#export-download")
    saved = tmp_path / download.value.suggested_filename
    download.value.save_as(saved)
    with zipfile.ZipFile(saved) as archive:
        info_name = next(name for name in archive.namelist() if name.endswith("meta/info.json"))
        info = json.loads(archive.read(info_name))
        assert any(name.endswith("meta/episodes.jsonl") for name in archive.namelist())
    assert (info["codebase_version"], info["total_episodes"], info["total_frames"]) == ("v2.1", 2, 70)
    assert session.console_errors == []
