from django.urls import path

from accounts import views

urlpatterns = [
    path("password/", views.PasswordChangeView.as_view(), name="password_change"),
    path("password/done/", views.PasswordChangeDoneView.as_view(), name="password_change_done"),
    path("users/", views.users, name="users"),
    path("users/<int:pk>/deactivate/", views.deactivate, name="user-deactivate"),
    path("users/<int:pk>/reactivate/", views.reactivate, name="user-reactivate"),
]
