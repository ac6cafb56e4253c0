"""Review pages: the annotators' queue and labelling page, replay videos, operators' flags and how they were
resolved (raising one is fleet's `episode-flag`, on the episode page), dataset exports (Celery jobs)."""
from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import permission_required
from django.core.exceptions import PermissionDenied
from django.db.models import Count
from django.http import FileResponse, Http404, HttpResponse, HttpResponseRedirect, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from core import storage
from core.audit import IllegalTransition
from core.http import bad_form_response, ranged_file_response, retry_later_json, retry_later_page
from core.ratelimit import RateLimited
from fleet.forms import FlagForm
from fleet.models import Episode
from review import jobs
from review.export import labels_to_export
from review.forms import DismissForm, ExportForm, LabelForm, QueueFilterForm
from review.models import (
    AlreadyFlagged,
    ClaimHeld,
    ClaimLost,
    DatasetExport,
    EpisodeFlag,
    EpisodeLabel,
    ExportLimitReached,
    NotReviewable,
    RenderQueueFull,
    ReplayVideo,
    ReviewClaim,
)
from review.queue import claim_next, queue, upcoming

QUEUE_ROWS = 100
SKIPPED_KEPT = 200  # episodes an annotator skipped this session are not offered again (bounded)

SHORTCUTS = [
    ("Space", "play / pause the replay"),
    ("← / →", "one step back / forward (Shift: ten steps)"),
    ("Home / End", "the first / last step"),
    ("[ / ]", "play slower / faster (0.25× to 2×)"),
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
    try:
        jobs.request_replay(request.user, episode.pk)
    except (RateLimited, RenderQueueFull):
        pass  # the episode's page says so, and its replay panel keeps asking
    jobs.render_ahead(upcoming(form.to_filter(), settings.REVIEW_RENDER_AHEAD))  # ready when the annotator gets there
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
    video, replay_refused = None, ""
    try:
        video = jobs.request_replay(request.user, episode.pk)
    except (RateLimited, RenderQueueFull) as exc:
        replay_refused = _refusal(exc)
    query = _queue_query(request)
    flags = list(episode.flags.select_related("raised_by", "resolved_by"))
    return render(request, "review/episode.html", {
        "episode": episode, "form": form, "label": label, "held_by": held_by, "video": video,
        "replay_refused": replay_refused,
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

def _refusal(exc: RateLimited | RenderQueueFull) -> str:
    return f"you asked for {exc}" if isinstance(exc, RateLimited) else str(exc)


def _refused_json(exc: RateLimited | RenderQueueFull) -> JsonResponse:
    """429 for a person past their render rate, 503 while the render queue is full: both with Retry-After."""
    return retry_later_json(_refusal(exc), exc.retry_after, 429 if isinstance(exc, RateLimited) else 503)


@permission_required("fleet.view_episode", raise_exception=True)
def replay_status(request, pk: int):
    """Polled by the page while a replay renders (annotators have no live socket). Asking for a replay nobody
    rendered queues it, within the person's render rate and the render cap (review.jobs)."""
    episode = _episode(pk)
    try:
        video = jobs.request_replay(request.user, episode.pk)
    except (RateLimited, RenderQueueFull) as exc:
        return _refused_json(exc)
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
        jobs.retry_replay(request.user, video)
    except (RateLimited, RenderQueueFull) as exc:
        return _refused_json(exc)
    except IllegalTransition as exc:
        return JsonResponse({"error": str(exc), **video.as_json()}, status=409)
    return JsonResponse(video.as_json())


@permission_required("fleet.view_episode", raise_exception=True)
def replay_file(request, pk: int):
    """The mp4, with byte ranges: browsers fetch parts of a video to seek in it (FileResponse alone sends the
    whole file every time, and Chromium then cannot seek)."""
    video = get_object_or_404(ReplayVideo, pk=pk, status=ReplayVideo.Status.READY)
    signed = storage.signed_url(video.path, content_type="video/mp4")
    if signed:  # object storage serves it, byte ranges and all (its origin is in the CSP's media-src)
        return HttpResponseRedirect(signed)
    try:
        return ranged_file_response(request, storage.local_path(video.path), "video/mp4")
    except FileNotFoundError:  # evicted or cleaned away, maybe a moment ago
        raise Http404("the replay file is gone from storage; it will be rendered again") from None


@permission_required("fleet.view_episode", raise_exception=True)
def episode_recording(request, pk: int):
    """The episode as a Rerun recording (review.recording): whoever may read the episode may take it away."""
    from fleet.sim.episode_data import EpisodeDataError
    from review import recording

    episode = get_object_or_404(Episode.objects.select_related("task", "robot", "policy_version"), pk=pk)
    try:
        data = recording.episode_recording(episode)
    except EpisodeDataError as exc:
        return HttpResponse(f"The episode's recorded data cannot be read: {exc}", status=409,
                            content_type="text/plain; charset=utf-8")
    response = HttpResponse(data, content_type="application/octet-stream")
    response["Content-Disposition"] = f'attachment; filename="{recording.filename(episode)}"'
    return response


# --- flags -----------------------------------------------------------------------------------------------

@require_POST
@permission_required("review.flag_episode", raise_exception=True)
def episode_flag(request, pk: int):
    """An operator asks for an episode to be reviewed, saying why (audited; it jumps the review queue)."""
    row = get_object_or_404(Episode, pk=pk)
    form = FlagForm(request.POST)
    if not form.is_valid():
        return bad_form_response(form)
    try:
        EpisodeFlag.raise_flag(row, request.user, form.cleaned_data["reason"])
    except AlreadyFlagged as exc:
        messages.warning(request, str(exc)[:1].upper() + str(exc)[1:] + ".")
    else:
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

EXPORTS_LISTED = 20


def _export_page(request, form: ExportForm, status: int = 200):
    counts = dict.fromkeys(EpisodeLabel.Disposition.values, 0)
    counts.update(EpisodeLabel.objects.values_list("disposition").annotate(n=Count("pk")).order_by())
    exports = DatasetExport.objects.select_related("requested_by", "task")
    everyone = request.user.has_perm("review.download_any_export")
    if not everyone:
        exports = exports.filter(requested_by=request.user)
    return render(request, "review/export.html", {
        "form": form, "counts": counts, "exports": exports[:EXPORTS_LISTED], "everyone": everyone,
        "keep_days": settings.REVIEW_EXPORT_KEEP_DAYS}, status=status)


@permission_required("review.view_episodelabel", raise_exception=True)
def export(request):
    """GET: the form and the person's exports; POST: queue an export job (review.jobs), then show its page. The job
    builds a LeRobot dataset of the labelled episodes as a zip on the `background` queue."""
    form = ExportForm(request.POST or None)
    if request.method != "POST":
        return _export_page(request, form)
    if not form.is_valid():
        return _export_page(request, form, status=400)
    task, dispositions = form.cleaned_data["task"], form.cleaned_data["disposition"]
    total = labels_to_export(task, dispositions).count()
    if total == 0:
        form.add_error(None, "No labelled episode matches: nothing to export.")
        return _export_page(request, form, status=400)
    if total > settings.REVIEW_EXPORT_MAX_EPISODES:
        form.add_error(None, f"{total} episodes is more than an export job takes "
                             f"({settings.REVIEW_EXPORT_MAX_EPISODES}); filter by task, or use "
                             "`manage.py export_dataset` on the server.")
        return _export_page(request, form, status=400)
    try:
        job = jobs.request_export(request.user, task=task, dispositions=dispositions, episodes=total,
                                  format=form.cleaned_data["format"])
    except ExportLimitReached as exc:
        return retry_later_page(request, str(exc), exc.retry_after,
                                link=(reverse("review-export-job", args=[exc.running.pk]), "Your export in progress"))
    except RateLimited as exc:
        return retry_later_page(request, f"you asked for {exc}", exc.retry_after,
                                link=(reverse("review-export"), "Your exports"))
    return redirect("review-export-job", pk=job.pk)


def _get_export_for_user(user, pk: int, *, fail_if_stale: bool = False) -> DatasetExport:
    """The export if it is the user's own, or the user may see everyone's (supervisors); 404 otherwise, so nobody
    learns that someone else's export exists. `fail_if_stale`: a job whose worker died shows as failed, not stuck."""
    exports = DatasetExport.objects.select_related("requested_by", "task")
    if not user.has_perm("review.download_any_export"):
        exports = exports.filter(requested_by=user)
    export = get_object_or_404(exports, pk=pk)
    if fail_if_stale and export.status in DatasetExport.ACTIVE and DatasetExport.fail_stale(pk=pk):
        export.refresh_from_db()
    return export


def _export_json(export: DatasetExport) -> dict:
    data = export.as_json()
    if export.status == DatasetExport.Status.READY:
        data["download_url"] = reverse("review-export-download", args=[export.pk])
    return data


@permission_required("review.view_episodelabel", raise_exception=True)
def export_job(request, pk: int):
    """One export's progress (static/js/export_job.js polls export_status) and, once ready, its download link."""
    export = _get_export_for_user(request.user, pk, fail_if_stale=True)
    return render(request, "review/export_job.html", {"export": export, "state": _export_json(export),
                                                      "keep_days": settings.REVIEW_EXPORT_KEEP_DAYS})


@permission_required("review.view_episodelabel", raise_exception=True)
def export_status(request, pk: int):
    return JsonResponse(_export_json(_get_export_for_user(request.user, pk, fail_if_stale=True)))


@permission_required("review.view_episodelabel", raise_exception=True)
def export_download(request, pk: int):
    """The export's zip, streamed, for its owner and supervisors only."""
    export = _get_export_for_user(request.user, pk)
    if export.status != DatasetExport.Status.READY:
        raise Http404(f"export {export.pk} is {export.get_status_display()}: there is nothing to download")
    signed = storage.signed_url(export.path, filename=export.filename, content_type="application/zip")
    if signed:
        return HttpResponseRedirect(signed)
    try:
        handle = open(storage.local_path(export.path), "rb")
    except FileNotFoundError:
        raise Http404(f"export {export.pk}'s file is gone from storage; export again") from None
    return FileResponse(handle, as_attachment=True, filename=export.filename, content_type="application/zip")
