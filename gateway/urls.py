from django.urls import path

from gateway import views

urlpatterns = [
    path("robots/enrol/", views.enrol, name="robot-enrol"),
    path("robots/<int:pk>/credentials/", views.credentials_page, name="robot-credentials"),
    path("robots/<int:pk>/tokens/rotate/", views.rotate, name="robot-token-rotate"),
    path("robots/<int:pk>/tokens/<str:key>/revoke/", views.revoke, name="robot-token-revoke"),
]
