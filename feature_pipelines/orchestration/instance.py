"""Dagster's SQLite instance storage, with a batch of a run's events written in one transaction per database.

A year backfill logs 365 planned and 365 materialization events, and a planned-check event per check
covering 365 partitions. Dagster hands such events to the event log as a batch when
`DAGSTER_EVENT_BATCH_SIZE` is set; its PostgreSQL storage then writes a batch at once, but its SQLite
storage still writes each event on its own (a new engine, connection and commit per database touched,
10–20 ms an event): seconds per backfill, more than the compute. This storage is Dagster's own SQLite
storage (same files, same layout, same code writing each event: an existing `$DAGSTER_HOME` keeps
working either way); in `store_event_batch` it opens the run's database and the index once and lets
Dagster's `store_event` write every event of the batch through those two connections, committed
together. It turns batching on when the instance loads. In dagster.yaml:

    storage:
      custom:
        module: feature_pipelines.orchestration.instance
        class: BatchingSqliteStorage
        config:
          base_dir: {env: DAGSTER_HOME}

Production instances use PostgreSQL (dagster.prod.yaml), which batches natively.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from dagster import EventLogEntry
from dagster._core.storage.event_log.sqlite.sqlite_event_log import INDEX_SHARD_NAME, SqliteEventLogStorage
from dagster._core.storage.sqlite_storage import DagsterSqliteStorage, _event_logs_directory
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

BATCH_SIZE = "1000"  # events per batch: a whole backfill's events in a few transactions
SQLITE_BUSY_TIMEOUT_SECONDS = 30


class BatchingSqliteEventLogStorage(SqliteEventLogStorage):
    """SqliteEventLogStorage whose `store_event_batch` writes a run's batch in one transaction per database."""

    def __init__(self, base_dir: str, inst_data=None):
        super().__init__(base_dir, inst_data=inst_data)
        self._shared = threading.local()  # shard -> open connection, while this thread writes a batch

    @contextmanager
    def _connect(self, shard: str) -> Iterator:
        shared = getattr(self._shared, "connections", None)
        if shared and shard in shared:
            yield shared[shard]  # inside a batch: Dagster's own statements go to the batch's transaction
            return
        with super()._connect(shard) as conn:
            yield conn

    @contextmanager
    def _open(self, shard: str) -> Iterator:
        """What SqliteEventLogStorage._connect does, without taking its lock (the batch holds it)."""
        engine = create_engine(self.conn_string_for_shard(shard), poolclass=NullPool,
                               connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS})
        try:
            if shard not in self._initialized_dbs:
                self._initdb(engine)
                self._initialized_dbs.add(shard)
            with engine.connect() as conn, conn.begin():
                yield conn
        finally:
            engine.dispose()

    def _store_asset_event(self, conn, event: EventLogEntry, event_id: int) -> None:
        latest = getattr(self._shared, "latest", None)
        if latest is not None:
            # Inside a batch the asset row (newest event per asset and kind) is written once, with the last such event,
            # as Dagster's PostgreSQL storage does for a batch: 365 rewrites of the same row would change nothing.
            latest[(event.dagster_event.asset_key if event.dagster_event else None, event.dagster_event_type)] = (conn, event, event_id)
            return
        super()._store_asset_event(conn, event, event_id)

    def store_event_batch(self, events: Sequence[EventLogEntry]) -> None:
        runs = {event.run_id for event in events}
        if len(events) < 2 or len(runs) != 1 or not next(iter(runs)):
            return super().store_event_batch(events)  # Dagster's own: one store_event per event
        with self._db_lock, self._open(next(iter(runs))) as run_conn, self._open(INDEX_SHARD_NAME) as index_conn:
            self._shared.connections = {next(iter(runs)): run_conn, INDEX_SHARD_NAME: index_conn}
            self._shared.latest = {}
            try:
                for event in events:
                    self.store_event(event)
                latest, self._shared.latest = self._shared.latest, None
                for conn, event, event_id in latest.values():
                    super()._store_asset_event(conn, event, event_id)
            finally:
                self._shared.connections = None
                self._shared.latest = None


class BatchingSqliteStorage(DagsterSqliteStorage):
    """Dagster's SQLite storage (runs, event log, schedules under `base_dir`) with the batching event log."""

    def __init__(self, base_dir: str, inst_data=None):
        super().__init__(base_dir, inst_data=inst_data)
        self._event_log_storage = BatchingSqliteEventLogStorage(_event_logs_directory(base_dir))
        # Dagster hands a partitioned output's events to storage as a batch only when this is set.
        os.environ.setdefault("DAGSTER_EVENT_BATCH_SIZE", BATCH_SIZE)

    @classmethod
    def from_config_value(cls, inst_data, config_value):
        return cls.from_local(inst_data=inst_data, **config_value)
