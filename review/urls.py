from django.urls import path

from review import views

urlpatterns = [
    path("", views.queue_page, name="review-queue"),
    path("next/", views.next_episode, name="review-next"),
    path("episodes/<int:pk>/", views.review_episode, name="review-episode"),
    path("episodes/<int:pk>/label/", views.save_label, name="review-label"),
    path("episodes/<int:pk>/skip/", views.skip_episode, name="review-skip"),
    path("episodes/<int:pk>/claim/", views.renew_claim, name="review-claim"),
    path("episodes/<int:pk>/dismiss/", views.dismiss_flags, name="review-dismiss"),
    path("episodes/<int:pk>/replay.json", views.replay_status, name="review-replay-status"),
    path("episodes/<int:pk>/replay/retry/", views.replay_retry, name="review-replay-retry"),
    path("episodes/<int:pk>/replay.mp4", views.replay_file, name="review-replay-file"),
    path("flags/", views.my_flags, name="review-flags"),
    path("export/", views.export, name="review-export"),
    path("exports/<int:pk>/", views.export_job, name="review-export-job"),
    path("exports/<int:pk>.json", views.export_status, name="review-export-status"),
    path("exports/<int:pk>/download/", views.export_download, name="review-export-download"),
]
