"""Dagster's SQLite instance storage, with a partitioned run's asset events written in one transaction.

A year backfill logs 365 materializations (and 365 planned events). Dagster can hand such events to the
event log as a batch (`DAGSTER_EVENT_BATCH_SIZE`); its PostgreSQL storage then writes a batch at once,
but its SQLite storage writes each event on its own (two new connections and two commits per asset
event), about 10–20 ms apiece: seconds per backfill, more than the compute. This storage is Dagster's
own SQLite storage (same files, same layout: an existing `$DAGSTER_HOME` keeps working either way)
whose `store_event_batch` does per event exactly what `SqliteEventLogStorage.store_event` does, inside
one transaction per database. It turns batching on when the instance loads. Use it in dagster.yaml:

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
from collections.abc import Sequence

from dagster import EventLogEntry
from dagster._core.storage.event_log.sql_event_log import SqlEventLogStorageTable
from dagster._core.storage.event_log.sqlite.sqlite_event_log import ASSET_EVENTS, SqliteEventLogStorage
from dagster._core.storage.sqlite_storage import DagsterSqliteStorage, _event_logs_directory

BATCH_SIZE = "1000"  # events per batch: a whole backfill's materializations in a few transactions


class BatchingSqliteEventLogStorage(SqliteEventLogStorage):
    """SqliteEventLogStorage whose `store_event_batch` writes a run's asset events in one transaction per database."""

    def store_event_batch(self, events: Sequence[EventLogEntry]) -> None:
        runs = {event.run_id for event in events}
        if len(events) < 2 or len(runs) != 1 or not all(e.is_dagster_event and e.dagster_event_type in ASSET_EVENTS for e in events):
            return super().store_event_batch(events)  # Dagster's own: one store_event per event
        statements = [self.prepare_insert_event(event) for event in events]
        with self.run_connection(events[0].run_id) as conn:
            for statement in statements:
                conn.execute(statement)
        # Mirrored into the cross-run index, as store_event does for asset events, in one transaction. The
        # asset table keeps only the newest event per asset and kind, so (as Dagster's PostgreSQL batch write
        # does) only the last such event of the batch updates it.
        with self.index_transaction() as conn:
            ids = [conn.execute(statement.returning(SqlEventLogStorageTable.c.id)).scalar_one() for statement in statements]
            self._store_asset_event_tags(conn, list(events), ids)
            last = {(e.dagster_event.asset_key, e.dagster_event_type): (e, i) for e, i in zip(events, ids)}
            for event, event_id in last.values():
                self._store_asset_event(conn, event, event_id)


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
