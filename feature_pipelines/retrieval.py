"""FeatureStore: what training and serving code use to read features.

Serving reads the online store: the newest published value per entity and feature, nulls for
unknown entities and expired values (a value expires `ttl` after it was published).

Training frames are point-in-time correct: each label row gets, per feature, the newest stored row
of its entity with `feature_timestamp <= label time` (a row stamped t summarises events before t,
so it is knowable at t) and, when the feature has a ttl, `label time - feature_timestamp <= ttl`;
otherwise nulls. Naive label timestamps are UTC, aware ones are converted exactly; times are
compared at microsecond precision.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

import numpy as np
import polars as pl

from feature_pipelines.errors import DataError, DefinitionError, FeaturePipelinesError, StoreError
from feature_pipelines.keys import with_surrogate_key
from feature_pipelines.online.base import OnlineRead
from feature_pipelines.profiles import load_profile
from feature_pipelines.registry import Registry, project_registry
from feature_pipelines.spec.feature import Feature, FeatureService
from feature_pipelines.spec.granularity import epoch_us
from feature_pipelines.store.versioned import snapshot_name

_TS = "__label_us"


@dataclass
class _Request:
    """One feature at one version, with the columns asked for (None = all)."""

    feature: Feature
    version: str | None
    columns: list[str] | None


class FeatureStore:
    """Reads features from the stores of a profile (default: $FEATURE_PIPELINES_PROFILE or 'dev').

    The features are `registry`'s, else the project's: the package named in `[tool.feature_pipelines]`
    of the nearest pyproject.toml above the working directory (see `feature_pipelines.project`).
    """

    def __init__(self, profile: str | None = None, registry: Registry | None = None) -> None:
        self.profile = load_profile(profile)
        self.offline = self.profile.offline_store()
        self.registry = registry or project_registry()
        self._online = None
        self._served: dict[str, tuple[float, int, list[str]]] = {}  # feature -> (checked at, major, stored columns)
        self._plans: dict[tuple, list[tuple[Feature, int, list[str], list[str]]]] = {}
        self.last_snapshot: dict[str, str] = {}  # feature -> "VERSION+rN" the last training frame read

    @property
    def online(self):
        """The profile's online store, opened on first use."""
        if self._online is None:
            self._online = self.profile.online_store()
        return self._online

    def close(self) -> None:
        if self._online is not None:
            self._online.close()
            self._online = None

    # ---- resolving what was asked for ------------------------------------------------------

    def _feature(self, item: Feature | str) -> Feature:
        if isinstance(item, Feature):
            return item
        return self.registry.feature(item)

    def _resolve(self, features) -> list[_Request]:
        """Requests for names, 'name@1.2.0', 'name:column', 'name@1.2.0:column', Features and FeatureServices."""
        if isinstance(features, (str, Feature, FeatureService)):
            features = [features]
        refs: list[Feature | str] = []
        for item in features:
            if isinstance(item, str) and item in self.registry.services:
                item = self.registry.services[item]
            if isinstance(item, FeatureService):
                refs += [self.registry.feature(r) if isinstance(r, str) and r in self.registry.features else r for r in item.features]
            elif isinstance(item, (str, Feature)):
                refs.append(item)
            else:
                raise DefinitionError(f"features must be names, Features or FeatureServices; got {type(item).__name__}: {item!r}")
        requests: dict[str, _Request] = {}
        for ref in refs:
            if isinstance(ref, Feature):
                name, version, column = ref.name, None, ""
            else:
                head, _, column = ref.partition(":")
                name, _, version = head.partition("@")
            feature = self._feature(ref if isinstance(ref, Feature) else name)
            version = version or None
            known = requests.get(feature.name)
            if known is None:
                requests[feature.name] = _Request(feature, version, [column] if column else None)
                continue
            if known.version != version:
                raise DefinitionError(
                    f"feature {feature.name!r} is requested at two versions ({known.version or 'newest'} and "
                    f"{version or 'newest'}); its columns would collide — request one version per call"
                )
            if not column:
                known.columns = None
            elif known.columns is not None and column not in known.columns:
                known.columns.append(column)
        return list(requests.values())

    # ---- serving ---------------------------------------------------------------------------

    SERVED_REFRESH_SECONDS = 30.0
    """How long the newest version's MAJOR and columns are cached before the offline manifest is read again."""

    def _served_version(self, feature: Feature) -> tuple[int, list[str]]:
        now = time.monotonic()
        cached = self._served.get(feature.name)
        if cached is None or now - cached[0] > self.SERVED_REFRESH_SECONDS:
            manifest = self.offline.manifest(feature.name)
            columns = [c["name"] for c in manifest["columns"] if c["name"] not in (*manifest["keys"], manifest["timestamp_column"])]
            cached = (now, int(manifest["version"].split(".")[0]), columns)
            self._served[feature.name] = cached
        return cached[1], cached[2]

    def _online_plan(self, features) -> list[tuple[Feature, int, list[str], list[str]]]:
        """(feature, major, columns, output names) per requested feature; cached per request shape."""
        key = tuple(features) if isinstance(features, (list, tuple)) and all(isinstance(f, str) for f in features) else None
        plan = self._plans.get(key) if key is not None else None
        if plan is not None and all(time.monotonic() - self._served[f.name][0] <= self.SERVED_REFRESH_SECONDS for f, *_ in plan):
            return plan
        plan = []
        for request in self._resolve(features):
            if request.version is not None:
                raise DefinitionError(
                    f"online reads serve the newest published version; drop the pin in "
                    f"'{request.feature.name}@{request.version}' (pins are for get_training_data)"
                )
            if not request.feature.online:
                raise DefinitionError(f"feature {request.feature.name!r} is not served online; declare it with online=True")
            major, stored = self._served_version(request.feature)
            columns = request.columns or stored
            unknown = [c for c in columns if c not in stored]
            if unknown:
                raise DefinitionError(f"feature {request.feature.name!r} has no column(s) {unknown}; its columns are {stored}")
            plan.append((request.feature, major, columns, [f"{request.feature.name}__{c}" for c in columns]))
        if key is not None:
            self._plans[key] = plan
        return plan

    def get_online_features(self, features, entity_rows) -> pl.DataFrame:
        """The newest published values for each entity row, in input order, as `<feature>__<column>` after the input columns.

        `entity_rows`: a polars or pandas DataFrame or a list of dicts holding each feature's join
        keys, or the PII columns of an entity with `from_columns`. Unknown entities and expired
        values give nulls.
        """
        rows = pl.DataFrame(entity_rows) if isinstance(entity_rows, list) else _as_polars(entity_rows)
        plan = self._online_plan(features)
        work = rows
        reads = []
        for feature, major, columns, names in plan:
            work = _with_join_keys(work, feature, rows.columns)
            clash = [c for c in names if c in rows.columns]
            if clash:
                raise DataError(f"entity rows already have column(s) {clash}; rename them, they would collide with feature values")
            # The store reads only the join keys and names the values `<feature>__<column>` itself.
            reads.append(OnlineRead(feature.name, major, work, columns, prefix=f"{feature.name}__"))
        try:
            frames = self.online.read(reads)
        except StoreError as err:
            text = str(err)
            if "never written" in text or "has no column(s)" in text:
                names = ",".join(f.name for f, *_ in plan)
                raise StoreError(
                    f"{text}. The newest offline version has a MAJOR or columns that were never published: the online store "
                    f"still holds what the previous publish wrote. Publish the new version (`feature-pipelines publish "
                    f"--features {names}`; the publish sensor does it after each materialization), or until then request only "
                    "the columns published before (`name:column`)") from None
            raise
        # Columns straight from the decoded frames (feature_timestamp is last): no select, no rename,
        # which would cost more than the lookup itself at batch size 1.
        return rows.hstack([s for frame in frames for s in frame.get_columns()[:-1]])

    # ---- training --------------------------------------------------------------------------

    def get_training_data(self, features, entity_df, timestamp: str = "label_time", *, strict: bool = False) -> pl.DataFrame:
        """The input rows, in input order and untouched, plus `<feature>__<column>` values as of each row's time.

        `features`: names, 'name@1.2.0' pins (default newest version), 'name:column' subsets,
        Features or FeatureServices. `entity_df` (polars or pandas) holds `timestamp` and each
        feature's join keys, or the PII columns of an entity with `from_columns`.
        Only the requested columns are read, and only partitions that can match the label times.

        Reproducibility: `store.last_snapshot` maps each feature to the exact snapshot read, `VERSION+rN` (the version as
        commit N left it); pinning `"name@VERSION+rN"` reads exactly that again, whatever was appended since.

        Coverage: a label at time t needs the partition that closed last before t. When the version read
        has not materialized that partition (a new MINOR/MAJOR version starts empty), the row's values are
        null or older than they should be: a `CoverageWarning` says, per feature, how many label rows that
        is and how to backfill; with `strict=True` it is a DataError instead.
        """
        labels = _as_polars(entity_df)
        requests = self._resolve(features)
        if timestamp not in labels.columns:
            raise DataError(f"entity_df has no timestamp column {timestamp!r}; its columns are {labels.columns}")
        dtype = labels.schema[timestamp]
        if not isinstance(dtype, pl.Datetime):
            raise DataError(
                f"entity_df column {timestamp!r} has dtype {dtype}, expected Datetime (naive values are read as UTC); "
                "parse strings with pl.col(...).str.to_datetime() and turn dates into datetimes explicitly"
            )
        # Epoch microseconds are zone-free: aware values convert exactly, naive ones count as UTC.
        work = labels.select(pl.col(timestamp).dt.epoch("us").alias(_TS), *[pl.col(c) for c in labels.columns if c != timestamp])
        n = work.height
        order = work[_TS].arg_sort(nulls_last=True).to_numpy()  # stable
        inverse = np.empty(n, dtype=np.int64)
        inverse[order] = np.arange(n)
        ts_sorted = work[_TS].gather(order)
        valid_ts = ts_sorted.drop_nulls()
        lo, hi = (valid_ts.min(), valid_ts.max()) if len(valid_ts) else (None, None)

        outputs: list[pl.Series] = []
        snapshots: dict[str, str] = {}
        for request in requests:
            feature = request.feature
            work = _with_join_keys(work, feature, labels.columns)
            manifest = self.offline.manifest(feature.name, request.version)
            stored = [c["name"] for c in manifest["columns"] if c["name"] not in (*manifest["keys"], manifest["timestamp_column"])]
            columns = request.columns or stored
            unknown = [c for c in columns if c not in stored]
            if unknown:
                raise DefinitionError(
                    f"feature {feature.name!r} version {manifest['version']} has no column(s) {unknown}; its columns are {stored}"
                )
            names = [f"{feature.name}__{c}" for c in columns]
            clash = [c for c in names if c in labels.columns]
            if clash:
                raise DataError(f"entity_df already has column(s) {clash}; rename them, they would collide with feature values")
            _check_coverage(feature, manifest, ts_sorted, strict)
            snapshots[feature.name] = snapshot_name(manifest)
            keys = list(manifest["keys"])
            ttl_us = feature.ttl_us
            rows = self._rows_for(feature, manifest, keys, columns, lo, hi, ttl_us)
            left = work.select(*keys, _TS)[order]
            left = _align_keys(left, rows, keys, feature.name)
            joined = left.set_sorted(_TS).join_asof(
                rows.set_sorted("__ft"),
                left_on=_TS,
                right_on="__ft",
                by=keys,
                strategy="backward",
                tolerance=ttl_us if ttl_us else None,
                check_sortedness=False,
            )
            outputs += [joined[c].gather(inverse).alias(name) for c, name in zip(columns, names)]
        self.last_snapshot = snapshots
        return labels.hstack(outputs)

    def _rows_for(self, feature: Feature, manifest: dict, keys: list[str], columns: list[str], lo, hi, ttl_us) -> pl.DataFrame:
        """The stored rows that can match labels in [lo, hi]: keys, value columns and `__ft` (epoch µs), sorted by time."""
        grain = feature.grain
        wanted = []
        if lo is not None:
            for key in sorted(manifest["partitions"]):
                start = grain.parse_key(key)
                start_us, end_us = epoch_us(start), epoch_us(grain.next(start))
                # Rows of a partition are stamped within [its start, its end].
                if start_us <= hi and (not ttl_us or end_us >= lo - ttl_us):
                    wanted.append(key)
        frame = self.offline.scan(feature.name, manifest["version"], wanted)
        select = [*keys, pl.col(manifest["timestamp_column"]).dt.epoch("us").alias("__ft"), *columns]
        try:
            rows = frame.select(select).collect()
        except (OSError, pl.exceptions.ComputeError) as err:
            if hasattr(self.offline, "read_failure"):  # names the damaged file and its repair
                raise self.offline.read_failure(feature.name, manifest, wanted, err) from None
            raise StoreError(
                f"feature {feature.name!r} version {manifest['version']}: a data file could not be read ({err}); "
                "if data files are missing after a clone, run `feature-pipelines sync`"
            ) from err
        if not rows["__ft"].is_sorted():
            rows = rows.sort("__ft", maintain_order=True)
        return rows


class CoverageWarning(UserWarning):
    """Label rows fall on partitions the feature version read has not materialized: their values are null or older."""


def _check_coverage(feature: Feature, manifest: dict, label_us: pl.Series, strict: bool) -> None:
    """Warn (or, strict, raise) when label rows need partitions the version has not materialized."""
    grain = feature.grain
    first, last = feature.start, feature.end
    have = manifest["partitions"]
    # Label times to the start of their interval, vectorised (Dagster's weeks start on Sunday, polars' on Monday).
    moments = pl.from_epoch(label_us.drop_nulls(), time_unit="us").dt.replace_time_zone("UTC")
    every = {"hourly": "1h", "daily": "1d", "weekly": "1w", "monthly": "1mo"}[feature.granularity]
    shift = pl.duration(days=1) if feature.granularity == "weekly" else pl.duration(days=0)
    floors = moments.to_frame("t").select(((pl.col("t") + shift).dt.truncate(every) - shift).alias("floor")).group_by("floor").len()
    missing: dict[str, int] = {}
    for start, n in floors.iter_rows():
        closed = _previous(grain, start)  # the interval that closed last before the label: its row is the one wanted
        key = grain.key(closed)
        if closed >= first and (last is None or closed < last) and key not in have:
            missing[key] = missing.get(key, 0) + n
    if not missing:
        return
    rows = sum(missing.values())
    span = f"{min(missing)} … {max(missing)}"
    held = f"{min(have)} … {max(have)} ({len(have)} partitions)" if have else "no partition yet"
    message = (f"feature {feature.name!r} version {manifest['version']}: {rows} of {len(label_us)} label row(s) need partitions it has "
               f"not materialized ({len(missing)} partition(s), {span}; it holds {held}), so their values are null or older than "
               f"they should be. Backfill them: feature-pipelines build --features {feature.name} --start {min(missing)} --end {max(missing)}")
    if strict:
        raise DataError(message)
    warnings.warn(message, CoverageWarning, stacklevel=3)


def _previous(grain, start):
    """The start of the interval just before the one starting at `start`."""
    from datetime import timedelta

    return grain.floor(start - timedelta(microseconds=1))


def _as_polars(frame) -> pl.DataFrame:
    if isinstance(frame, pl.DataFrame):
        return frame
    if isinstance(frame, pl.LazyFrame):
        return frame.collect()
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover - pandas is optional
        pd = None
    if pd is not None and isinstance(frame, pd.DataFrame):
        return pl.from_pandas(frame)
    raise DataError(f"entity_df must be a polars or pandas DataFrame, got {type(frame).__name__}")


_PII_DTYPES: dict[tuple, dict[str, pl.DataType]] = {}  # (source, PII columns) -> their dtypes in the source


def _pii_dtypes(feature: Feature) -> dict[str, pl.DataType]:
    """Source dtypes of the PII columns of `feature`'s derived keys ({} when the source cannot be read here)."""
    wanted = tuple(sorted({c for cols in feature.derived_keys.values() for c in cols}))
    key = (feature.source, wanted)  # not the feature's name: two registries may reuse a name for other sources
    if key not in _PII_DTYPES:
        try:
            schema = feature.source.scan().collect_schema()
            _PII_DTYPES[key] = {c: schema[c] for c in wanted if c in schema}
        except (FeaturePipelinesError, OSError, pl.exceptions.PolarsError):
            _PII_DTYPES[key] = {}
    return _PII_DTYPES[key]


def _with_join_keys(work: pl.DataFrame, feature: Feature, input_columns: list[str]) -> pl.DataFrame:
    """Add surrogate keys computed from PII columns where needed; fail clearly when a key cannot be had.

    The surrogate key hashes typed values, so PII given as text (JSON has no dates) is parsed to the
    source column's temporal dtype first when that is known.
    """
    for key, cols in feature.derived_keys.items():
        if key in work.columns:
            continue
        missing = [c for c in cols if c not in work.columns]
        if missing:
            raise DataError(
                f"feature {feature.name!r} needs join key {key!r} or the columns it is derived from {list(cols)}; "
                f"entity_df lacks {missing} (its columns are {input_columns})"
            )
        casts = []
        for column, dtype in _pii_dtypes(feature).items():
            if column in work.columns and work.schema[column] == pl.String and dtype.is_temporal():
                parse = pl.col(column).str.to_date() if dtype == pl.Date else pl.col(column).str.to_datetime(time_zone=getattr(dtype, "time_zone", None))
                casts.append(parse.cast(dtype).alias(column))
        if casts:
            try:
                work = work.with_columns(casts)
            except pl.exceptions.PolarsError as err:
                raise DataError(f"feature {feature.name!r}: PII column(s) of {key!r} given as text do not parse as dates/times: {err}") from err
        work = with_surrogate_key(work, key, list(cols))
    missing = [k for k in feature.join_keys if k not in work.columns]
    if missing:
        raise DataError(f"entity_df lacks join key(s) {missing} of feature {feature.name!r}; its columns are {input_columns}")
    return work


def _align_keys(left: pl.DataFrame, rows: pl.DataFrame, keys: list[str], name: str) -> pl.DataFrame:
    """Cast label keys to the stored key dtypes when that is lossless; otherwise say which key differs."""
    casts = []
    for key in keys:
        want, have = rows.schema[key], left.schema[key]
        if want == have:
            continue
        try:
            casts.append(left[key].cast(want, strict=True))
        except pl.exceptions.InvalidOperationError as err:
            raise DataError(f"entity_df column {key!r} has dtype {have}, but feature {name!r} stores it as {want}: {err}") from err
    return left.with_columns(casts) if casts else left


__all__ = ["FeatureStore"]
