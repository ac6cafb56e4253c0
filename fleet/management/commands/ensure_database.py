"""Create the configured PostgreSQL database if it does not exist yet (a newcomer's first `make demo`)."""
from django.core.management.base import BaseCommand, CommandError
from django.db import connection


class Command(BaseCommand):
    help = "Create the database named in DATABASE_URL if it is missing (needs CREATEDB on the server)."

    def handle(self, *args, **options):
        import psycopg
        from psycopg import sql

        db = connection.settings_dict
        name = db["NAME"]
        # Connection options only: the web process's pool settings (OPTIONS["pool"]) are Django's, not libpq's.
        options = {key: value for key, value in db["OPTIONS"].items() if key != "pool"}
        params = {"host": db["HOST"], "port": db["PORT"], "user": db["USER"], "password": db["PASSWORD"], **options}
        params = {key: value for key, value in params.items() if value}
        try:
            with psycopg.connect(**params, dbname="postgres", autocommit=True) as conn:
                if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
                    return
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        except psycopg.Error as exc:
            raise CommandError(f"could not check or create database {name!r}: {exc}") from None
        self.stdout.write(f"created database {name!r}")
