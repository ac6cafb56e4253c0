"""Group commit: episodes stored at the same time by several threads of one process go to PostgreSQL together.

A caller (fleet.ingest, outside any transaction of its own, while other threads of the process are storing
episodes too) hands its validated episode's INSERT parameters to this process's writer and waits; a lone caller
runs the same statement on its own connection, paying no hand-off. The writer thread, on a database connection of its own, takes what is queued,
waits up to INGEST_GROUP_WINDOW_MS for more while other threads are still validating theirs (never for a lone
caller; never more than INGEST_GROUP_MAX episodes), and runs every episode's INSERT
statement (the same one, with the same checks, as a lone episode's) in one transaction, sent in one round trip
(psycopg's pipeline mode). Each caller is answered only after COMMIT returns, so an answered episode is durable.

One commit (one WAL flush, one round trip) is shared by the whole group instead of paid per episode. An episode
the statement's own checks refuse (its UUID exists, its robot or version is unknown) writes nothing and returns
no id to its caller alone, as it would alone. An error from the database itself (a constraint, a row deleted
meanwhile) aborts the group's transaction; the writer then runs each of the group's episodes in a transaction of
its own, so only the bad one fails. A lost connection fails the group's callers with the database's error, as a
lone INSERT would, and the next group connects again.

One writer per process (created on first use, again after a fork); an idle writer holds no database connection.
"""
from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass

from core import metrics

log = logging.getLogger(__name__)


@dataclass
class Stats:
    groups: int = 0
    episodes: int = 0
    largest: int = 0
    split: int = 0  # groups that failed together and were run one by one

    def record(self, size: int) -> None:
        self.groups += 1
        self.episodes += size
        self.largest = max(self.largest, size)


class Writer:
    def __init__(self, statement: str, window: float, most: int):
        self.statement, self.window, self.most = statement, window, most
        self.stats = Stats()
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="ingest-group-commit", daemon=True)
        self._thread.start()

    def submit(self, params: dict) -> int | None:
        """Store one episode with the group; its new id, or None when the statement wrote nothing. Raises what
        the database raised for it."""
        future: Future = Future()
        self._queue.put((params, future))
        return future.result()

    # --- the writer thread ------------------------------------------------------------------------------------

    def _run(self) -> None:
        from django.db import connection

        while True:
            try:
                first = self._queue.get(timeout=IDLE_SECONDS)
            except queue.Empty:
                try:
                    connection.close()  # idle: give the connection back (to the pool, in the web process)
                except Exception:  # noqa: BLE001 — a broken connection is dropped all the same
                    log.exception("closing the group-commit writer's idle connection failed")
                first = self._queue.get()
            group = [first]
            try:
                deadline = time.monotonic() + self.window
                while len(group) < self.most:
                    # Wait only for episodes on their way (their threads are validating them now): a lone caller's
                    # episode is committed at once, never held for the window.
                    wait = deadline - time.monotonic() if active() > len(group) else 0.0
                    try:
                        group.append(self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait())
                    except queue.Empty:
                        break
                self._commit(group)
            except BaseException as exc:  # noqa: BLE001 — the writer lives on, and no caller waits forever
                log.exception("group commit of %d episodes failed", len(group))
                self._fail([item for item in group if not item[1].done()], exc)

    def _commit(self, group: list) -> None:
        from django.db import DatabaseError, connection

        self.stats.record(len(group))
        try:
            metrics.INGEST_GROUP_SIZE.observe(len(group))
        except Exception:  # noqa: BLE001 — a metrics file problem must not stop episodes being stored
            log.exception("recording the group size failed")
        try:
            ids = self._execute([params for params, _ in group])
        except DatabaseError as exc:
            if len(group) == 1 or not _usable(connection):
                self._fail(group, exc)
                return
            self.stats.split += 1
            log.info("a group of %d episodes failed together (%s): storing them one by one", len(group), exc)
            for item in group:
                try:
                    (episode_id,) = self._execute([item[0]])
                except Exception as alone:  # noqa: BLE001 — this episode's own failure, for its caller
                    self._fail([item], alone)
                else:
                    item[1].set_result(episode_id)
            return
        except BaseException as exc:  # noqa: BLE001 — a caller must never wait forever
            self._fail(group, exc)
            return
        for (_, future), episode_id in zip(group, ids):
            future.set_result(episode_id)

    def _execute(self, group: list[dict]) -> list[int | None]:
        """The group's INSERTs in one transaction, pipelined; each one's new id or None."""
        import psycopg
        from django.db import connection, transaction

        with connection.wrap_database_errors:
            connection.ensure_connection()
            with transaction.atomic():
                raw = connection.connection
                cursors = []
                with raw.pipeline():
                    for params in group:
                        cursor = psycopg.Cursor(raw)
                        cursor.execute(self.statement, params, prepare=True)
                        cursors.append(cursor)
                ids = []
                for cursor in cursors:
                    row = cursor.fetchone()
                    ids.append(None if row is None else row[0])
                    cursor.close()
        return ids

    def _fail(self, group: list, exc: BaseException) -> None:
        from django.db import connection

        for _, future in group:
            if not future.done():
                future.set_exception(exc)
        try:
            if not _usable(connection):
                connection.close()  # the next group connects again
        except Exception:  # noqa: BLE001
            connection.connection = None  # unusable and unclosable: forget it, the next group connects afresh


def _usable(connection) -> bool:
    return connection.connection is not None and connection.is_usable()


_active = 0  # this process's callers between the start of their ingestion and its answer
_active_lock = threading.Lock()


@contextlib.contextmanager
def producing():
    """Around one caller's whole ingestion (validation included): the writer waits for companions only while
    others are on their way, and a caller alone in its process never needs the writer (nor starts it)."""
    global _active
    with _active_lock:
        _active += 1
    try:
        yield
    finally:
        with _active_lock:
            _active -= 1


def active() -> int:
    return _active


IDLE_SECONDS = 5.0
_writer: Writer | None = None
_writer_pid: int | None = None
_lock = threading.Lock()


def _forget_after_fork() -> None:
    """A forked child has neither the parent's writer thread nor, maybe, a free lock (another thread may have held
    it at the fork): it starts afresh."""
    global _writer, _writer_pid, _lock, _active, _active_lock
    _writer, _writer_pid, _lock = None, None, threading.Lock()
    _active, _active_lock = 0, threading.Lock()


os.register_at_fork(after_in_child=_forget_after_fork)


def writer(statement: str) -> Writer:
    """This process's writer (a new one in a forked child: threads do not survive a fork)."""
    global _writer, _writer_pid
    from django.conf import settings

    with _lock:
        if _writer is None or _writer_pid != os.getpid() or not _writer._thread.is_alive():
            _writer = Writer(statement, settings.INGEST_GROUP_WINDOW_MS / 1000, settings.INGEST_GROUP_MAX)
            _writer_pid = os.getpid()
        return _writer
