from django.urls import path

from ops import views

urlpatterns = [
    path("", views.webhook_list, name="webhooks"),
    path("<int:pk>/", views.webhook_edit, name="webhook-edit"),
    path("<int:pk>/delete/", views.webhook_delete, name="webhook-delete"),
    path("<int:pk>/test/", views.webhook_test, name="webhook-test"),
    path("<int:pk>/deliveries/", views.webhook_deliveries, name="webhook-deliveries"),
]
