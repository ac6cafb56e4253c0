from django.urls import path

from governance import views

urlpatterns = [
    path("", views.rollouts, name="rollouts"),
    path("mode/", views.change_mode, name="rollout-mode"),
    path("freeze/", views.freeze_deployments, {"action": "freeze"}, name="rollout-freeze"),
    path("unfreeze/", views.freeze_deployments, {"action": "unfreeze"}, name="rollout-unfreeze"),
    path("v<int:number>/", views.version, name="rollout-version"),
    path("v<int:number>/<str:decision>/", views.decide, name="rollout-decide"),
    path("alerts/<int:pk>/acknowledge/", views.acknowledge, name="alert-acknowledge"),
]
