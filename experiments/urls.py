from django.urls import path

from experiments import views

urlpatterns = [
    path("", views.experiments, name="experiments"),
    path("<str:name>/report/", views.experiment_report, name="experiment-report"),
]
