"""Review pages: the annotators' queue and labelling page, replay videos, operators' flags and how they were
resolved (raising one is fleet's `episode-flag`, on the episode page), dataset export."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import permission_required
from django.core.exceptions import PermissionDenied
from django.db.models import Count
from django.http import FileResponse, Http404, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from core.audit import IllegalTransition
from core.http import bad_form_response, ranged_file_response
from fleet.forms import FlagForm
from fleet.models import Episode
from review.forms import DismissForm, ExportForm, LabelForm, QueueFilterForm
from review.models import ClaimHeld, ClaimLost, EpisodeFlag, EpisodeLabel, NotReviewable, ReplayVideo, ReviewClaim
from review.queue import claim_next, queue, upcoming

QUEUE_ROWS = 100
SKIPPED_KEPT = 200  # episodes an annotator skipped this session are not offered again (bounded)

SHORTCUTS = [
    ("Space", "play / pause the replay"),
    ("← / →", "one step back / forward (Shift: ten steps)"),
    ("F", "the failure began at the cursor's step"),
    ("1 – 9", "failure mode"),
    ("K / X / R", "keep as is / exclude from training / relabel with expert corrections"),
    ("N", "write a note (Esc leaves the notes)"),
    ("Enter", "save the label and open the next episode"),
    ("S", "skip to the next episode without labelling"),
    ("D", "dismiss the open flags and move on"),
]


def _queue_query(request) -> str:
    """The queue's filters, carried from page to page so that "next" follows them."""
    keep = {key: value for key, value in request.GET.items() if key in QueueFilterForm.base_fields and value}
    query = request.GET.copy()
    query.clear()
    query.update(keep)
    return query.urlencode()


def _with_query(url: str, query: str) -> str:
    return f"{url}?{query}" if query else url


def _open_next(request, query: str, skip=()):
    from django.http import QueryDict

    form = QueueFilterForm(QueryDict(query))
    episode = claim_next(request.user, form.to_filter(), skip=[*request.session.get("review_skipped", []), *skip])
    if episode is None:
        messages.info(request, "Nothing left to label with these filters.")
        return redirect(_with_query(reverse("review-queue"), query))
    ReplayVideo.request(episode.pk)
    for episode_id in upcoming(form.to_filter(), settings.REVIEW_RENDER_AHEAD):
        ReplayVideo.request(episode_id)  # rendered ahead: ready by the time the annotator gets there
    return redirect(_with_query(reverse("review-episode", args=[episode.pk]), query))


@permission_required("review.label_episode", raise_exception=True)
def queue_page(request):
    form = QueueFilterForm(request.GET or None)
    if form.is_bound and not form.is_valid():
        return render(request, "review/queue.html", {"form": form, "rows": []}, status=400)
    rows = list(queue(form.to_filter())[:QUEUE_ROWS])
    return render(request, "review/queue.html", {"form": form, "rows": rows, "query": _queue_query(request)})


@require_POST
@permission_required("review.label_episode", raise_exception=True)
def next_episode(request):
    return _open_next(request, _queue_query(request))


def _episode(pk: int) -> Episode:
    return get_object_or_404(Episode.objects.select_related("task", "robot", "policy_version"), pk=pk)


@permission_required("review.label_episode", raise_exception=True)
def review_episode(request, pk: int, form: LabelForm | None = None, status: int = 200):
    from fleet.charts import episode_series
    from fleet.ingest import load_arrays
    from fleet.sim.episode_data import EpisodeDataError

    episode = _episode(pk)
    held_by = None
    try:
        ReviewClaim.claim(episode, request.user)
    except ClaimHeld as exc:
        held_by = str(exc)
    except NotReviewable as exc:
        raise PermissionDenied(str(exc)) from None
    label = EpisodeLabel.objects.filter(episode=episode).select_related("annotator").first()
    if form is None:
        initial = {"disposition": EpisodeLabel.Disposition.KEEP}
        if label is not None:
            initial = {"failure_mode": label.failure_mode, "failure_step": label.failure_step,
                       "notes": label.notes, "disposition": label.disposition}
        form = LabelForm(initial=initial, episode=episode)
    try:
        series, payload_error = episode_series(episode, load_arrays(episode)), ""
    except EpisodeDataError as exc:
        series, payload_error = None, str(exc)
    video = ReplayVideo.request(episode.pk)
    query = _queue_query(request)
    flags = list(episode.flags.select_related("raised_by", "resolved_by"))
    return render(request, "review/episode.html", {
        "episode": episode, "form": form, "label": label, "held_by": held_by, "video": video,
        "series": series, "payload_error": payload_error, "query": query, "shortcuts": SHORTCUTS,
        "flags": flags, "open_flags": any(flag.status == EpisodeFlag.Status.OPEN for flag in flags),
        "modes": form.modes, "claim_seconds": settings.REVIEW_CLAIM_SECONDS,
        "urls": {
            "replay_status": reverse("review-replay-status", args=[episode.pk]),
            "replay_retry": reverse("review-replay-retry", args=[episode.pk]),
            "claim": reverse("review-claim", args=[episode.pk]),
        },
    }, status=status)


@require_POST
@permission_required("review.label_episode", raise_exception=True)
def save_label(request, pk: int):
    episode = _episode(pk)
    form = LabelForm(request.POST, episode=episode)
    if not form.is_valid():
        return review_episode(request, pk, form=form, status=400)
    data = form.cleaned_data
    try:
        ReviewClaim.submit_label(episode, request.user, failure_mode=data["failure_mode"],
                                 failure_step=data["failure_step"], notes=data["notes"],
                                 disposition=data["disposition"])
    except ClaimLost as exc:
        messages.error(request, str(exc)[:1].upper() + str(exc)[1:])
        return redirect(_with_query(reverse("review-queue"), _queue_query(request)))
    except ValueError as exc:
        form.add_error(None, str(exc))
        return review_episode(request, pk, form=form, status=400)
    messages.success(request, f"Episode {episode.pk} labelled {data['failure_mode'].replace('_', ' ')} "
                              f"({EpisodeLabel.Disposition(data['disposition']).label}).")
    return _open_next(request, _queue_query(request))


@require_POST
@permission_required("review.label_episode", raise_exception=True)
def skip_episode(request, pk: int):
    episode = _episode(pk)
    ReviewClaim.release(episode, request.user)
    skipped = [pk, *[e for e in request.session.get("review_skipped", []) if e != pk]][:SKIPPED_KEPT]
    request.session["review_skipped"] = skipped
    return _open_next(request, _queue_query(request))


@require_POST
@permission_required("review.label_episode", raise_exception=True)
def renew_claim(request, pk: int):
    """The labelling page's heartbeat: keeps the claim while the page is open."""
    episode = _episode(pk)
    try:
        claim = ReviewClaim.claim(episode, request.user)
    except ClaimHeld as exc:
        return JsonResponse({"error": str(exc)}, status=409)
    except NotReviewable as exc:
        return JsonResponse({"error": str(exc)}, status=403)
    return JsonResponse({"expires_at": claim.expires_at.isoformat()})


@require_POST
@permission_required("review.label_episode", raise_exception=True)
def dismiss_flags(request, pk: int):
    episode = _episode(pk)
    form = DismissForm(request.POST)
    if not form.is_valid():
        return bad_form_response(form)
    try:
        dismissed = ReviewClaim.dismiss_flags(episode, request.user, form.cleaned_data["reason"])
    except ClaimLost as exc:
        messages.error(request, str(exc)[:1].upper() + str(exc)[1:])
        return redirect(_with_query(reverse("review-queue"), _queue_query(request)))
    messages.success(request, f"Dismissed {dismissed} flag(s) on episode {episode.pk}.")
    return _open_next(request, _queue_query(request), skip=[pk])


# --- replays --------------------------------------------------------------------------------------------

@permission_required("fleet.view_episode", raise_exception=True)
def replay_status(request, pk: int):
    """Polled by the page while a replay renders (annotators have no live socket)."""
    episode = _episode(pk)
    video = ReplayVideo.request(episode.pk)
    data = video.as_json()
    if video.status == ReplayVideo.Status.READY:
        data["url"] = reverse("review-replay-file", args=[episode.pk]) + f"?v={video.finished_at.timestamp():.0f}"
    return JsonResponse(data)


@require_POST
@permission_required("review.label_episode", raise_exception=True)
def replay_retry(request, pk: int):
    """The labelling page's retry button: a state change (audited) that queues a render, so it takes the reviewers'
    permission, not the one to read episodes."""
    video = get_object_or_404(ReplayVideo, pk=pk)
    try:
        video.retry(request.user)
    except IllegalTransition as exc:
        return JsonResponse({"error": str(exc), **video.as_json()}, status=409)
    return JsonResponse(video.as_json())


@permission_required("fleet.view_episode", raise_exception=True)
def replay_file(request, pk: int):
    """The mp4, with byte ranges: browsers fetch parts of a video to seek in it (FileResponse alone sends the
    whole file every time, and Chromium then cannot seek)."""
    video = get_object_or_404(ReplayVideo, pk=pk, status=ReplayVideo.Status.READY)
    try:
        return ranged_file_response(request, video.file, "video/mp4")
    except FileNotFoundError:  # evicted or cleaned away, maybe a moment ago
        raise Http404("the replay file is gone from storage; it will be rendered again") from None


# --- flags -----------------------------------------------------------------------------------------------

@require_POST
@permission_required("review.flag_episode", raise_exception=True)
def episode_flag(request, pk: int):
    """An operator asks for an episode to be reviewed, saying why (audited; it jumps the review queue)."""
    row = get_object_or_404(Episode, pk=pk)
    form = FlagForm(request.POST)
    if not form.is_valid():
        return bad_form_response(form)
    EpisodeFlag.raise_flag(row, request.user, form.cleaned_data["reason"])
    messages.success(request, f"Episode {row.pk} flagged for review.")
    return redirect("episode", pk=row.pk)


@permission_required("review.flag_episode", raise_exception=True)
def my_flags(request):
    """The flags this user raised and how each was resolved (by whom, when, why)."""
    from core.models import AuditEvent

    flags = list(EpisodeFlag.objects.filter(raised_by=request.user)
                 .select_related("episode__task", "resolved_by", "episode__label")[:200])
    resolutions = {}
    events = AuditEvent.objects.filter(object_type=EpisodeFlag._meta.label_lower, object_id__in=[str(f.pk) for f in flags],
                                       verb__in=["flag.labelled", "flag.dismissed"])
    for event in events:
        resolutions.setdefault(int(event.object_id), event)
    for flag in flags:
        flag.resolution = resolutions.get(flag.pk)
    return render(request, "review/flags.html", {"flags": flags})


# --- export ----------------------------------------------------------------------------------------------

@permission_required("review.view_episodelabel", raise_exception=True)
def export(request):
    """GET: the form; POST: the labelled episodes as a LeRobot dataset in a zip (built here, then streamed)."""
    from review.export import export_dataset, labels_to_export

    form = ExportForm(request.POST or None)
    counts = dict.fromkeys(EpisodeLabel.Disposition.values, 0)
    counts.update(EpisodeLabel.objects.values_list("disposition").annotate(n=Count("pk")).order_by())
    if request.method != "POST":
        return render(request, "review/export.html", {"form": form, "counts": counts})
    if not form.is_valid():
        return render(request, "review/export.html", {"form": form, "counts": counts}, status=400)
    labels = labels_to_export(form.cleaned_data["task"], form.cleaned_data["disposition"])
    total = labels.count()
    if total == 0:
        form.add_error(None, "No labelled episode matches: nothing to export.")
        return render(request, "review/export.html", {"form": form, "counts": counts}, status=400)
    if total > settings.REVIEW_EXPORT_MAX_EPISODES:
        form.add_error(None, f"{total} episodes is more than a download builds "
                             f"({settings.REVIEW_EXPORT_MAX_EPISODES}); use `manage.py export_dataset`.")
        return render(request, "review/export.html", {"form": form, "counts": counts}, status=400)
    work = Path(settings.STORAGE_DIR) / "exports"
    work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        name = "sopweb-labelled-episodes"
        export_dataset(labels, Path(tmp) / name)
        archive = shutil.make_archive(str(Path(tmp) / name), "zip", root_dir=tmp, base_dir=name)
        handle = open(archive, "rb")  # still readable once the folder is removed below
    return FileResponse(handle, as_attachment=True, filename=f"{name}.zip", content_type="application/zip")
