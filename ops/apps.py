from django.apps import AppConfig


class OpsConfig(AppConfig):
    name = "ops"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        # Alerts reach the webhooks through governance's signal; a Celery pool child that exits stops counting in
        # the live gauges (core.metrics).
        from celery.signals import worker_process_shutdown

        from core import metrics
        from governance.models import alert_changed
        from ops import webhooks

        alert_changed.connect(webhooks.alert_changed, dispatch_uid="ops.webhooks")
        worker_process_shutdown.connect(lambda pid=None, **kw: metrics.process_exited(pid), weak=False,
                                        dispatch_uid="ops.metrics_process_exited")
