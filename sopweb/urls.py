from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from django.views import defaults

from gateway import api
from ops import views as ops_views
from review.views import episode_flag, episode_recording

urlpatterns = [
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("accounts/", include("accounts.urls")),
    path("admin/", admin.site.urls),
    path("api/v1/", api.urls()),
    path("api/schema/", api.schema, name="api-schema"),
    path("", include("gateway.urls")),
    path("learner/", include("learner.urls")),
    path("rollouts/", include("governance.urls")),
    path("review/", include("review.urls")),
    path("experiments/", include("experiments.urls")),
    path("ops/webhooks/", include("ops.urls")),
    path("metrics", ops_views.metrics, name="metrics"),
    path("healthz", ops_views.healthz, name="healthz"),
    path("readyz", ops_views.readyz, name="readyz"),
    # Flagging lives with the flags (review) but sits under the episode it flags, beside the fleet's episode pages.
    path("episodes/<int:pk>/flag/", episode_flag, name="episode-flag"),
    # Likewise the episode as a Rerun recording (review.recording: it carries the label and the rendered replay).
    path("episodes/<int:pk>/recording.rrd", episode_recording, name="episode-recording"),
    path("", include("fleet.urls")),
]


# Errors raised before any view runs (a Host not in ALLOWED_HOSTS, no such URL, a server error) answer robots in the
# robot API's JSON shape, {"error": code, "detail": text}, and people with Django's pages.
def _robot(request) -> bool:
    return request.path.startswith("/api/")


def bad_request(request, exception):
    if _robot(request):
        return api.error(400, "bad_request", "the request is malformed, or its Host is not one this server serves "
                                             "(ALLOWED_HOSTS)")
    return defaults.bad_request(request, exception)


def permission_denied(request, exception):
    if _robot(request):
        return api.error(403, "forbidden", "this request is not allowed")
    return defaults.permission_denied(request, exception)


def page_not_found(request, exception):
    if _robot(request):
        return api.error(404, "not_found", "no robot API endpoint has this path and method (see /api/v1/docs)")
    return defaults.page_not_found(request, exception)


def server_error(request):
    if _robot(request):
        return api.error(500, "server_error", "the server failed; the error is in its log")
    return defaults.server_error(request)


handler400, handler403, handler404, handler500 = bad_request, permission_denied, page_not_found, server_error
