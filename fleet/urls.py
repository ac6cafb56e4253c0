from django.urls import path

from fleet import views

urlpatterns = [
    path("", views.home, name="home"),
    path("fleet/", views.fleet, name="fleet"),
    path("fleet/snapshot.json", views.fleet_snapshot_json, name="fleet-snapshot"),
    path("fleet/breakdown/", views.breakdown, name="breakdown"),
    path("fleet/<str:command>/", views.fleet_command, name="fleet-command"),
    path("robots/add/", views.robot_add, name="robot-add"),
    path("robots/<int:pk>/", views.robot_detail, name="robot-detail"),
    path("robots/<int:pk>/tasks/", views.robot_tasks, name="robot-tasks"),
    path("robots/<int:pk>/<str:command>/", views.robot_command, name="robot-command"),
    path("episodes/", views.episodes, name="episodes"),
    path("episodes/<int:pk>/", views.episode, name="episode"),
    path("audit/", views.audit, name="audit"),
]
