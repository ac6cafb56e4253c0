from django.urls import path

from learner import views

urlpatterns = [path("versions/", views.versions, name="versions")]
