from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from gateway import api
from review.views import episode_flag

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
    # Flagging lives with the flags (review) but sits under the episode it flags, beside the fleet's episode pages.
    path("episodes/<int:pk>/flag/", episode_flag, name="episode-flag"),
    path("", include("fleet.urls")),
]
