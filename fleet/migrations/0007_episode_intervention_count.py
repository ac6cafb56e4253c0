"""Episodes carry their number of interventions, so the roll-up trigger on episodes does all the roll-up work.

Before, a second trigger on intervention segments selected the segment's episode and upserted two roll-up rows
for every gate or operator segment: about half of the roll-up triggers' time in every ingestion. Gate and operator
segments are written with their episode and leave only with it (annotators' segments never counted), so the
episode's own row can say how many it has. The roll-up is folded into the trigger function as well (one PL/pgSQL
call per episode instead of two).
"""
from django.db import migrations, models

FORWARD_SQL = """
UPDATE fleet_episode e SET intervention_count = s.n
FROM (SELECT episode_id, count(*) AS n FROM fleet_interventionsegment
      WHERE source IN ('gate', 'operator') GROUP BY episode_id) s
WHERE s.episode_id = e.id;

DROP TRIGGER segment_rollup ON fleet_interventionsegment;
DROP FUNCTION sopweb_rollup_segment();

CREATE OR REPLACE FUNCTION sopweb_rollup_episode() RETURNS trigger AS $$
DECLARE e fleet_episode; sign integer;
BEGIN
  IF TG_OP = 'INSERT' THEN e := NEW; sign := 1; ELSE e := OLD; sign := -1; END IF;
  INSERT INTO fleet_episoderollup AS r (size, bucket, task_id, robot_id, version_id, source, episodes, successes,
                                        steps, success_steps, intervention_steps, interventions)
  SELECT size, date_trunc(unit, e.finished_at, 'UTC'), e.task_id, coalesce(e.robot_id, 0),
         coalesce(e.policy_version_id, 0), e.source, sign, sign * (e.outcome = 'success')::integer,
         sign * e.steps::bigint, sign * CASE WHEN e.outcome = 'success' THEN e.steps ELSE 0 END::bigint,
         sign * e.intervention_steps::bigint, sign * e.intervention_count
  FROM (VALUES ('m', 'minute'), ('h', 'hour')) AS sizes(size, unit)
  ON CONFLICT (size, bucket, task_id, robot_id, version_id, source) DO UPDATE SET
    episodes = r.episodes + EXCLUDED.episodes, successes = r.successes + EXCLUDED.successes,
    steps = r.steps + EXCLUDED.steps, success_steps = r.success_steps + EXCLUDED.success_steps,
    intervention_steps = r.intervention_steps + EXCLUDED.intervention_steps,
    interventions = r.interventions + EXCLUDED.interventions;
  RETURN NULL;
END $$ LANGUAGE plpgsql;

DROP FUNCTION sopweb_rollup_add(timestamptz, bigint, bigint, bigint, text, integer, integer, bigint, bigint, bigint,
                                integer);

CREATE OR REPLACE FUNCTION sopweb_rollup_rebuild() RETURNS void AS $$
BEGIN
  DELETE FROM fleet_episoderollup;
  INSERT INTO fleet_episoderollup (size, bucket, task_id, robot_id, version_id, source, episodes, successes, steps,
                                   success_steps, intervention_steps, interventions)
  SELECT size, date_trunc(unit, e.finished_at, 'UTC'), e.task_id, coalesce(e.robot_id, 0),
         coalesce(e.policy_version_id, 0), e.source, count(*), count(*) FILTER (WHERE e.outcome = 'success'),
         sum(e.steps), coalesce(sum(e.steps) FILTER (WHERE e.outcome = 'success'), 0), sum(e.intervention_steps),
         sum(e.intervention_count)
  FROM fleet_episode e CROSS JOIN (VALUES ('m', 'minute'), ('h', 'hour')) AS sizes(size, unit)
  GROUP BY 1, 2, 3, 4, 5, 6;
END $$ LANGUAGE plpgsql;

SELECT sopweb_rollup_rebuild();
"""


class Migration(migrations.Migration):

    dependencies = [
        ("fleet", "0006_episode_fk_indexes_covered"),
    ]

    operations = [
        migrations.AddField(
            model_name="episode",
            name="intervention_count",
            field=models.PositiveIntegerField(default=0, help_text="Times the gate or an operator took over (its gate and operator segments); the dashboards' interventions. Annotators' relabelled segments do not count."),
        ),
        # Irreversible: the trigger it replaced counted segments one by one; there is no reason to go back to it.
        migrations.RunSQL(FORWARD_SQL),
    ]
