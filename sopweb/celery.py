"""The Celery app: queues `actors` (simulated robots), `learner` (training, concurrency 1), `default`, and
`background` (replay rendering, at low CPU priority)."""
import os

from celery import Celery
from celery.signals import celeryd_after_setup, setup_logging

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "sopweb.settings")

app = Celery("sopweb")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@setup_logging.connect
def use_django_logging(**kwargs):
    """Django's LOGGING (settings.py) configures every process; without this Celery adds its own handler too and
    every worker line is printed twice."""


BACKGROUND_QUEUES = {"background"}


@celeryd_after_setup.connect
def lower_background_priority(sender, instance, **kwargs):
    """A worker that serves only bulk queues (replay rendering) runs at BACKGROUND_NICE, pool children included
    (they fork after this): on a machine shared with robots and the learner it takes only CPU nobody else wants.
    A worker that also serves other queues keeps its priority, so governance and sweeps are never slowed."""
    from django.conf import settings

    queues = set(instance.app.amqp.queues.consume_from or ())
    if queues and queues <= BACKGROUND_QUEUES:
        raise_by = settings.BACKGROUND_NICE - os.nice(0)
        if raise_by > 0:
            os.nice(raise_by)
