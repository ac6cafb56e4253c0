"""Roll-ups count autonomous and assisted successes apart, and no longer count "successes" at all.

The dashboards' success counted an episode the HG-DAgger gate or an operator rescued as a success; with the gate
acting in about half of all steps, "91 % success" could mean the policy alone succeeded far less. A success is
now autonomous (outcome success, no intervention step of any source, no gate or operator segment:
fleet.models.AUTONOMOUS_SUCCESS) or assisted (every other success). The mixed column is dropped so that no reader
can show the old figure by accident. The trigger function and the rebuild state the condition in SQL; the rebuild
recomputes every roll-up from the episodes in this migration's transaction (the roll-up table is locked meanwhile,
so an ingestion waits and then counts its episode into the new columns).
"""
from django.db import migrations, models

AUTONOMOUS = "e.outcome = 'success' AND e.intervention_steps = 0 AND e.intervention_count = 0"
ASSISTED = "e.outcome = 'success' AND NOT (e.intervention_steps = 0 AND e.intervention_count = 0)"

FORWARD_SQL = f"""
CREATE OR REPLACE FUNCTION sopweb_rollup_episode() RETURNS trigger AS $$
DECLARE e fleet_episode; sign integer;
BEGIN
  IF TG_OP = 'INSERT' THEN e := NEW; sign := 1; ELSE e := OLD; sign := -1; END IF;
  INSERT INTO fleet_episoderollup AS r (size, bucket, task_id, robot_id, version_id, source, episodes,
                                        autonomous_successes, assisted_successes, steps, success_steps,
                                        intervention_steps, interventions)
  SELECT size, date_trunc(unit, e.finished_at, 'UTC'), e.task_id, coalesce(e.robot_id, 0),
         coalesce(e.policy_version_id, 0), e.source, sign, sign * ({AUTONOMOUS})::integer,
         sign * ({ASSISTED})::integer, sign * e.steps::bigint,
         sign * CASE WHEN e.outcome = 'success' THEN e.steps ELSE 0 END::bigint,
         sign * e.intervention_steps::bigint, sign * e.intervention_count
  FROM (VALUES ('m', 'minute'), ('h', 'hour')) AS sizes(size, unit)
  ON CONFLICT (size, bucket, task_id, robot_id, version_id, source) DO UPDATE SET
    episodes = r.episodes + EXCLUDED.episodes,
    autonomous_successes = r.autonomous_successes + EXCLUDED.autonomous_successes,
    assisted_successes = r.assisted_successes + EXCLUDED.assisted_successes,
    steps = r.steps + EXCLUDED.steps, success_steps = r.success_steps + EXCLUDED.success_steps,
    intervention_steps = r.intervention_steps + EXCLUDED.intervention_steps,
    interventions = r.interventions + EXCLUDED.interventions;
  RETURN NULL;
END $$ LANGUAGE plpgsql;

CREATE OR REPLACE FUNCTION sopweb_rollup_rebuild() RETURNS void AS $$
BEGIN
  DELETE FROM fleet_episoderollup;
  INSERT INTO fleet_episoderollup (size, bucket, task_id, robot_id, version_id, source, episodes,
                                   autonomous_successes, assisted_successes, steps, success_steps,
                                   intervention_steps, interventions)
  SELECT size, date_trunc(unit, e.finished_at, 'UTC'), e.task_id, coalesce(e.robot_id, 0),
         coalesce(e.policy_version_id, 0), e.source, count(*), count(*) FILTER (WHERE {AUTONOMOUS}),
         count(*) FILTER (WHERE {ASSISTED}), sum(e.steps),
         coalesce(sum(e.steps) FILTER (WHERE e.outcome = 'success'), 0), sum(e.intervention_steps),
         sum(e.intervention_count)
  FROM fleet_episode e CROSS JOIN (VALUES ('m', 'minute'), ('h', 'hour')) AS sizes(size, unit)
  GROUP BY 1, 2, 3, 4, 5, 6;
END $$ LANGUAGE plpgsql;
"""

REBUILD_SQL = "SELECT sopweb_rollup_rebuild();"

# Backwards: the functions of migration 0007, which count every success in one column.
BACKWARD_SQL = """
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
"""


class Migration(migrations.Migration):

    dependencies = [
        ("fleet", "0013_robot_operator_and_starting"),
    ]

    operations = [
        # Backwards, this runs last: the old functions are back and the new columns gone.
        migrations.RunSQL(migrations.RunSQL.noop, REBUILD_SQL),
        migrations.AddField(
            model_name="episoderollup",
            name="autonomous_successes",
            field=models.IntegerField(default=0, help_text="Successes in which only the policy acted (fleet.models.AUTONOMOUS_SUCCESS)."),
        ),
        migrations.AddField(
            model_name="episoderollup",
            name="assisted_successes",
            field=models.IntegerField(default=0, help_text="Successes with a gate, operator or other intervention step (fleet.models.ASSISTED_SUCCESS)."),
        ),
        # The functions first: the old trigger function writes the column dropped next.
        migrations.RunSQL(FORWARD_SQL, BACKWARD_SQL),
        migrations.RemoveField(model_name="episoderollup", name="successes"),
        migrations.RunSQL(REBUILD_SQL, migrations.RunSQL.noop),
    ]
