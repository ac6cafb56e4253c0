from django.urls import path

from learner import views

urlpatterns = [
    path("", views.learner, name="learner"),
    path("versions/", views.versions, name="versions"),
]
