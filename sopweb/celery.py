"""The Celery app: queues `actors` (simulated robots), `learner` (training, concurrency 1), `default`."""
import os

from celery import Celery
from celery.signals import setup_logging

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "sopweb.settings")

app = Celery("sopweb")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@setup_logging.connect
def use_django_logging(**kwargs):
    """Django's LOGGING (settings.py) configures every process; without this Celery adds its own handler too and
    every worker line is printed twice."""
