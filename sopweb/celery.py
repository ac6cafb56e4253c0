"""The Celery app: queues `actors` (simulated robots), `learner` (training, concurrency 1), `control` (governance
checks, the offline sweep, the learner's watchdog: never behind bulk work), `default`, and `background` (replay
rendering and dataset exports, at low CPU priority). Routes are in settings (CELERY_TASK_ROUTES)."""
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
ACTOR_QUEUE = "actors"


@celeryd_after_setup.connect
def warm_actor_imports(sender, instance, **kwargs):
    """A worker that serves the actors imports torch and Meta-World once, before its pool forks: each pool process
    starts with them loaded (shared pages, not sixteen copies), instead of paying seconds of CPU each while its
    first robot waits. Only imports: no torch thread pool, no MuJoCo context and no thread exists yet to be lost
    in the fork (actors.runner._prepare_process makes those in each child)."""
    queues = set(instance.app.amqp.queues.consume_from or ())
    if ACTOR_QUEUE in queues:
        from actors.runner import load_libraries

        load_libraries()


@celeryd_after_setup.connect
def lower_background_priority(sender, instance, **kwargs):
    """A worker that serves only bulk queues (replay rendering, exports) runs at BACKGROUND_NICE, pool children
    included (they fork after this): on a machine shared with robots and the learner it takes only CPU nobody else
    wants. A worker that also serves other queues keeps its priority, so governance and sweeps are never slowed."""
    from django.conf import settings

    queues = set(instance.app.amqp.queues.consume_from or ())
    if queues and queues <= BACKGROUND_QUEUES:
        lower_priority(settings.BACKGROUND_NICE)


def lower_priority(nice: int) -> None:
    """Run this process (and what it forks) at `nice`. Where the kernel groups processes by session (autogroup,
    the default on desktop and many server kernels), niceness only ranks a session's own processes against each
    other, and every session — each process honcho or systemd starts — gets an equal share of the CPU: so a
    session leader also lowers its session's group, which holds only this process and its children."""
    raise_by = nice - os.nice(0)
    if raise_by > 0:
        os.nice(raise_by)
    if os.getsid(0) == os.getpid():
        try:
            with open("/proc/self/autogroup", "r+") as autogroup:  # "/autogroup-42 nice 0"
                if int(autogroup.read().split()[-1]) < nice:
                    autogroup.write(str(nice))
        except (OSError, ValueError, IndexError):
            pass  # no autogroups (or not allowed to change them): niceness alone applies
