"""Each run's own PostgreSQL database, cloned from a migrated template on the product's server (CREATE DATABASE
... TEMPLATE takes a second where migrating a fresh database takes tens), and dropped when the run is done."""
from __future__ import annotations

import os
import subprocess
import sys

from django.conf import settings

from experiments.processes import ROOT


def database_url(name: str) -> str:
    """A URL for database `name` on the product's PostgreSQL server, with the product's credentials and connection
    options (sslmode and the like)."""
    from urllib.parse import quote, urlencode

    db = settings.DATABASES["default"]
    auth = quote(db["USER"] or "") + (":" + quote(db["PASSWORD"]) if db["PASSWORD"] else "")
    query = {k: v for k, v in db["OPTIONS"].items() if k not in ("pool", "prepare_threshold")}
    host = db["HOST"] or ""
    if host.startswith("/"):  # a unix socket directory
        query["host"], host = host, ""
    port = f":{db['PORT']}" if db["PORT"] else ""
    return f"postgresql://{auth}@{host}{port}/{quote(name)}" + (f"?{urlencode(query)}" if query else "")


def _admin():
    import psycopg

    db = settings.DATABASES["default"]
    options = {key: value for key, value in db["OPTIONS"].items() if key != "pool"}
    params = {"host": db["HOST"], "port": db["PORT"], "user": db["USER"], "password": db["PASSWORD"], **options}
    return psycopg.connect(**{k: v for k, v in params.items() if v}, dbname="postgres", autocommit=True)


def private_name(label: str) -> str:
    """`<product database>_exp_<label>` (PostgreSQL keeps 63 bytes of a name: labels are short)."""
    name = f"{settings.DATABASES['default']['NAME']}_exp_{label}"
    if len(name.encode()) > 63:
        raise ValueError(f"database name {name!r} is longer than PostgreSQL keeps")
    return name


def ensure_template() -> str:
    """The template every run's database is cloned from, migrated to this code's models."""
    from psycopg import sql

    name = private_name("template")
    with _admin() as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    subprocess.run([sys.executable, str(ROOT / "manage.py"), "migrate", "--verbosity", "0"], cwd=ROOT, check=True,
                   env=dict(os.environ, DATABASE_URL=database_url(name), DATABASE_POOL="0"))
    return name


def create_from(template: str, name: str) -> None:
    from psycopg import sql

    with _admin() as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(template)))


def drop(name: str) -> None:
    from psycopg import sql

    with _admin() as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
