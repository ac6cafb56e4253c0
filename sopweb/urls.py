from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

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
