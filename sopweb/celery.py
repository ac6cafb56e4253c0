"""The Celery app: queues `actors` (simulated robots), `learner` (training, concurrency 1), `default`."""
import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "sopweb.settings")

app = Celery("sopweb")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
