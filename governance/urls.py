from django.urls import path

from governance import views

urlpatterns = [
    path("", views.rollouts, name="rollouts"),
    path("v<int:number>/", views.version, name="rollout-version"),
    path("v<int:number>/<str:decision>/", views.decide, name="rollout-decide"),
    path("alerts/<int:pk>/acknowledge/", views.acknowledge, name="alert-acknowledge"),
]
