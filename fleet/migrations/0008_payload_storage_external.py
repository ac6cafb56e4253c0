"""Payloads arrive deflated (fleet.sim.episode_data.encode): PostgreSQL's default storage ran pglz over each one
before giving up and storing it as it was, about 1.1 ms of a 2.2 ms insert of a 71 KiB payload on the machine this
was measured on (bench/ingest.py prints both). EXTERNAL keeps the out-of-line storage without the attempt. Rows
already stored keep their form; both read back the same."""
from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ("fleet", "0007_episode_intervention_count"),
    ]

    operations = [
        migrations.RunSQL("ALTER TABLE fleet_episodepayload ALTER COLUMN data SET STORAGE EXTERNAL",
                          "ALTER TABLE fleet_episodepayload ALTER COLUMN data SET STORAGE EXTENDED"),
    ]
