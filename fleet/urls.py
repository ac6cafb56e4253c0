from django.urls import path

from fleet import views

urlpatterns = [
    path("", views.home, name="home"),
    path("fleet/", views.fleet, name="fleet"),
    path("robots/<int:pk>/pause/", views.robot_pause, name="robot-pause"),
    path("robots/<int:pk>/resume/", views.robot_resume, name="robot-resume"),
    path("episodes/", views.episodes, name="episodes"),
    path("audit/", views.audit, name="audit"),
]
