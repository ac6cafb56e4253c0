"""Learner restarts are marked on the metrics, and the learner page reads its points by time.

`resumed_from` marks the first point after a slice rebuilt the trainer from saved state. Points written before
this migration are marked where a run's step went back (the saw-tooth the page showed after a restart): there the
resumed slice repeats steps that were lost, so it resumed from just below its first step. The indexes are built
concurrently: the learner keeps writing metrics (about ten a second) meanwhile.
"""
from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models

MARK_PAST_RESTARTS = """
UPDATE learner_trainingmetric m SET resumed_from = m.step - 1
FROM (SELECT id, step, lag(step) OVER (PARTITION BY run_id ORDER BY created_at, id) AS before
      FROM learner_trainingmetric) o
WHERE o.id = m.id AND o.before IS NOT NULL AND o.step <= o.before;
"""


class Migration(migrations.Migration):
    atomic = False  # CREATE INDEX CONCURRENTLY runs outside a transaction

    dependencies = [
        ("learner", "0003_checkpoint_removed_at"),
    ]

    operations = [
        migrations.AddField(
            model_name="trainingmetric",
            name="resumed_from",
            field=models.PositiveBigIntegerField(blank=True, help_text="The first point after a restart: the saved step the slice resumed from.", null=True),
        ),
        migrations.RunSQL(MARK_PAST_RESTARTS, migrations.RunSQL.noop),
        AddIndexConcurrently(
            model_name="trainingmetric",
            index=models.Index(fields=["run", "created_at"], name="metric_run_time"),
        ),
        AddIndexConcurrently(
            model_name="trainingmetric",
            index=models.Index(condition=models.Q(("resumed_from__isnull", False)), fields=["run", "created_at"], name="metric_run_restarts"),
        ),
    ]
