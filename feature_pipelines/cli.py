"""The `feature-pipelines` command: list, inspect, build, publish, serve and look after the store.

It works on the project around the working directory (the nearest pyproject.toml with
`[tool.feature_pipelines]`, as `dg` finds its project), or the one given by `--project-dir`; its
features come from that table's `package`, or `--module`. `--profile`, `--module` and `--project-dir`
go before or after the subcommand.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
import warnings
from pathlib import Path

import polars as pl

from feature_pipelines.errors import FeaturePipelinesError
from feature_pipelines.profiles import load_profile
from feature_pipelines.project import PACKAGE_ENV, PROJECT_DIR_ENV, find_project
from feature_pipelines.registry import Registry, project_registry

# A new project's instance: Dagster's SQLite storage, writing a partitioned run's events in one transaction.
_INSTANCE_YAML = """storage:
  custom:
    module: feature_pipelines.orchestration.instance
    class: BatchingSqliteStorage
    config:
      base_dir:
        env: DAGSTER_HOME
run_monitoring:
  enabled: true
  start_timeout_seconds: 180
  cancel_timeout_seconds: 180
telemetry:
  enabled: false
"""


def _ensure_dagster_home() -> Path:
    """A persistent Dagster instance, so the UI (`dg dev`, same DAGSTER_HOME) sees CLI runs.

    $DAGSTER_HOME, else `.dagster_home` in the project; a new one gets the project's dagster.yaml, if any.
    The first process to use a new home creates its storage while holding a lock on it, so several
    CLI processes started at once on a fresh home (CI jobs) do not race inside Dagster's migrations.
    """
    import fcntl

    import dagster as dg

    root = find_project().root
    home = Path(os.environ.get("DAGSTER_HOME") or root / ".dagster_home").resolve()
    home.mkdir(parents=True, exist_ok=True)
    os.environ["DAGSTER_HOME"] = str(home)
    ready = home / ".feature_pipelines.initialized"  # written once the storage exists, under the lock
    if ready.exists():
        return home  # initialized already: nothing to race for
    with open(home / ".feature_pipelines.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        config = home / "dagster.yaml"
        if not config.exists():
            tmp = home / f".dagster.yaml.{os.getpid()}"
            tmp.write_text((root / "dagster.yaml").read_text() if (root / "dagster.yaml").is_file() else _INSTANCE_YAML)
            os.replace(tmp, config)
        with dg.DagsterInstance.get() as instance:
            instance.get_runs(limit=1)  # creates (or migrates) the run, event and schedule storage once
        ready.touch()
    return home


def _up_to_date(store, feature, keys: list[str]) -> dict | None:
    """The newest manifest if every partition in `keys` is in it, built by this definition from the same source content."""
    from feature_pipelines.engine import PolarsEngine
    from feature_pipelines.orchestration.assets import lineage_fingerprint

    manifest = store.latest(feature.name)
    if manifest is None or manifest["config_hash"] != feature.config_hash:
        return None
    fingerprint = lineage_fingerprint(feature, PolarsEngine())
    parts = manifest["partitions"]
    current = fingerprint is not None and all(
        (parts.get(k) or {}).get("lineage", {}).get("source_fingerprint") == fingerprint for k in keys
    )
    return manifest if current else None


def partition_range(feature, start: str | None, end: str | None) -> tuple[str, str]:
    """The first and last partition to build: `start` (default: the feature's first partition) to `end`
    (default: its last complete one, or its `end`), each checked to be a partition of the feature."""
    from feature_pipelines.orchestration.assets import partitions_def

    pdef = partitions_def(feature)
    available_first, available_last = pdef.get_first_partition_key(), pdef.get_last_partition_key()
    span = f"{feature.granularity} partitions from {available_first} to {available_last}"
    if available_last is None:
        raise FeaturePipelinesError(f"feature {feature.name!r} has no complete partition yet (it starts {available_first})")
    first, last = start or available_first, end or available_last
    for key, option in ((first, "--start"), (last, "--end")):
        if not pdef.has_partition_key(key):
            raise FeaturePipelinesError(f"{option} {key!r} is not a partition of {feature.name!r}; it has {span}")
    if pdef.time_window_for_partition_key(first).start > pdef.time_window_for_partition_key(last).start:
        raise FeaturePipelinesError(f"--start {first} is after --end {last}; give the range oldest first")
    return first, last


# Which process runs a CLI build (runs execute in this process): a later CLI call can tell a run whose process died.
_RUNNER = {"feature_pipelines/host": socket.gethostname(), "feature_pipelines/pid": str(os.getpid())}


def _fail_orphaned_runs(instance) -> None:
    """Mark failed the runs a `feature-pipelines build` on this host started and never finished because its process was
    killed: no run monitor watches in-process runs, so they would show as running forever."""
    import dagster as dg

    started = instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING],
                                              tags={"feature_pipelines/host": _RUNNER["feature_pipelines/host"]}))
    for run in started:
        pid = int(run.tags.get("feature_pipelines/pid", "0") or 0)
        if pid and pid != os.getpid() and not _alive(pid):
            instance.report_run_failed(run, message=f"the feature-pipelines process (pid {pid}) running it ended without finishing "
                                                    "it (killed?); marked failed by a later feature-pipelines command")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _cause(failure) -> str:
    """The innermost error of a failed step, without Dagster's wrapping ('Error occurred while executing op')."""
    if failure is None:
        return "see the run in the Dagster UI (dg dev)"
    if failure.user_failure_data is not None and failure.user_failure_data.description:
        return failure.user_failure_data.description
    error = failure.error
    while error.cause is not None:
        error = error.cause
    message = error.message.strip()
    for ours in ("DataError", "DefinitionError", "StoreError", "ProfileError", "FeaturePipelinesError"):
        message = message.removeprefix(f"feature_pipelines.errors.{ours}: ")
    return message


def _samples(failure) -> str:
    """The failing-row samples a blocking check attached to the run's failure, as text."""
    metadata = failure.user_failure_data.metadata if failure is not None and failure.user_failure_data is not None else {}
    return "\n".join(f"{name}:\n{entry.value}" for name, entry in metadata.items() if name.endswith("sample"))


def build(registry: Registry, names: list[str] | None, tags: list[str] | None, start: str | None, end: str | None,
          profile: str | None, force: bool = False, verbose: bool = False) -> list[dict]:
    """Materialize features through Dagster: one run per feature, the whole range in one pass.

    A feature whose partitions in the range were all built by the same definition from the same
    source content is reported as up to date and not run again, unless `force`. A failure prints the
    failing check's sample rows and ends with one line carrying the cause (Dagster's trace with `verbose`).
    """
    import dagster as dg

    from feature_pipelines.orchestration import Names, build_defs
    from feature_pipelines.orchestration.assets import partitions_def

    warnings.filterwarnings("ignore", category=dg.BetaWarning)
    _ensure_dagster_home()
    chosen = registry.select(names, tags)
    if not chosen:
        raise FeaturePipelinesError(f"no feature matches names={names} tags={tags}; features: {sorted(registry.features)}")
    defs = build_defs(registry, profile=profile, automation="none")
    store = load_profile(profile).offline_store()
    summary = []
    with dg.DagsterInstance.get() as instance:
        _fail_orphaned_runs(instance)
        ranges = {feature.name: partition_range(feature, start, end) for feature in chosen}  # every range checked before any run
        for feature in chosen:
            first, last = ranges[feature.name]
            keys = partitions_def(feature).get_partition_keys_in_range(dg.PartitionKeyRange(first, last))
            t0 = time.perf_counter()
            print(f"  {feature.name}: {len(keys)} partition(s) {first} … {last}", end="", flush=True)
            done = None if force else _up_to_date(store, feature, keys)
            if done is not None:
                version = done["version"]
                print(f" → {version} (up to date: same definition and source; --force rebuilds)")
                summary.append({"feature": feature.name, "version": version, "partitions": len(keys), "run_id": None})
                continue
            result = defs.resolve_job_def(Names().job(feature.name)).execute_in_process(
                instance=instance,
                tags={"dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": last, **_RUNNER},
                # The CLI prints its own progress and errors; Dagster's per-event log (and traces) is in the UI, or with --verbose.
                run_config={"loggers": {"console": {"config": {"log_level": "WARNING" if verbose else "CRITICAL"}}}},
                raise_on_error=False,
            )
            if not result.success:
                failure = result.failure_data_for_node(feature.name)
                print(" FAILED", flush=True)
                if verbose and failure is not None and failure.error is not None:
                    print(failure.error.to_string(), file=sys.stderr)
                samples = _samples(failure)
                if samples:
                    print(samples, file=sys.stderr)
                raise FeaturePipelinesError(f"building {feature.name} failed (run {result.run_id}): {_cause(failure)}")
            mats = result.asset_materializations_for_node(feature.name)
            bumps = sorted({m.metadata["bump"].value for m in mats})
            version = mats[-1].metadata["version"].value if mats else "?"
            empty = sum(1 for m in mats if m.metadata["dagster/row_count"].value == 0)
            print(f" → {version} ({', '.join(bumps)}{f'; {empty} partition(s) with no rows' if empty else ''}) in {time.perf_counter() - t0:.1f}s")
            if {"minor", "major"} & set(bumps):
                held = sorted(store.manifest(feature.name, version)["partitions"])
                print(f"    {feature.name} {version} is a new version and starts empty: it holds {len(held)} partition(s), {held[0]} … {held[-1]}. "
                      f"Training and serving read it from now on; backfill the rest with: feature-pipelines build --features {feature.name}")
            summary.append({"feature": feature.name, "version": version, "partitions": len(keys), "run_id": result.run_id})
    return summary


def publish(registry: Registry, names: list[str] | None, tags: list[str] | None, start: str | None, end: str | None,
            profile: str | None) -> None:
    """Push the newest row per entity of materialized partitions (default: all) of online features, newer-wins."""
    from feature_pipelines.orchestration.publish import publish_partitions

    if start and end and start > end:
        raise FeaturePipelinesError(f"--start {start} is after --end {end}; give the range oldest first")
    chosen = [f for f in registry.select(names, tags) if f.online or names]
    active = load_profile(profile)
    store = active.offline_store()
    for feature in chosen:
        if not feature.online:
            raise FeaturePipelinesError(f"feature {feature.name!r} is not served online (online=False in its definition)")
        manifest = store.latest(feature.name)
        if manifest is None:
            print(f"  {feature.name}: nothing materialized yet; skipped")
            continue
        have = sorted(manifest["partitions"])
        keys = [k for k in have if (start is None or k >= start) and (end is None or k <= end)]
        if not keys:
            raise FeaturePipelinesError(f"feature {feature.name!r} has no materialized partition in {start} … {end}; it has {have[0]} … {have[-1]}")
        result = publish_partitions(feature, keys, None, store, active.online)
        print(f"  {feature.name} {result.version}: {len(keys)} partition(s), {result.rows} entities → {result.written} written, "
              f"{result.skipped} not newer, to {result.store} in {result.seconds:.2f}s")


def features_table(registry: Registry, tags: list[str] | None, profile: str | None) -> pl.DataFrame:
    """One row per feature: its definition and what the offline store holds of it."""
    store = load_profile(profile).offline_store()
    rows = []
    for feature in registry.select(None, tags):
        manifest = store.latest(feature.name)
        parts = sorted(manifest["partitions"]) if manifest else []
        rows.append({
            "feature": feature.name, "kind": feature.kind, "entities": ",".join(e.name for e in feature.entities),
            "granularity": feature.granularity, "columns": len(feature.metric_columns), "online": feature.online,
            "version": manifest["version"] if manifest else "-", "partitions": len(parts),
            "first": parts[0] if parts else "-", "last": parts[-1] if parts else "-", "rows": manifest["row_count"] if manifest else 0,
        })
    return pl.DataFrame(rows)


def sync(registry: Registry, profile: str | None) -> None:
    """Verify every data file the committed versions reference (present, readable, content hash as committed) and rebuild
    the missing or damaged ones the current definition reproduces exactly; one line per problem, per feature a summary,
    and a StoreError at the end when something could not be rebuilt or checked."""
    from feature_pipelines.engine import PolarsEngine
    from feature_pipelines.errors import StoreError

    store = load_profile(profile).offline_store()
    store.blobs  # noqa: B018 - a store without data files (Unity Catalog) says so here
    engine = PolarsEngine()
    unread, failed = [], []
    for name in store.features():
        try:
            checks = store.check_files(name)
        except FeaturePipelinesError as err:
            print(f"  {name}: {str(err).removeprefix(f'feature {name!r}: ')}")
            unread.append(name)
            continue
        feature = registry.features.get(name)
        damaged = [c for c in checks if c.status in ("missing", "unreadable", "corrupt")]
        why: dict[str, str] = {}  # path -> why it was not rebuilt
        if damaged and feature is None:
            why = {c.path: f"no feature {name!r} in this project" for c in damaged}
        elif damaged:
            why = {c.path: f"the current definition of {name} differs from the one that committed it (config "
                           f"{c.config_hash} → {feature.config_hash}); rebuild with `feature-pipelines build --features {name}`"
                   for c in damaged if c.config_hash != feature.config_hash}
            frames: dict = {}
            for run in _consecutive(feature, sorted({c.partition for c in damaged if c.path not in why})):
                try:
                    frames.update(engine.compute(feature, run))  # one pass per run of consecutive partitions
                except (FeaturePipelinesError, OSError, pl.exceptions.PolarsError) as err:
                    cause = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                    why.update({c.path: f"computing it failed: {cause}" for c in damaged if c.partition in run})
            for check in damaged:
                if check.path not in why:
                    reason = store.restore_file(check, frames[check.partition])
                    if reason:
                        why[check.path] = reason
        counts = {"rebuilt": 0, "not rebuilt": 0, "of an older hash format (not verified)": 0, "verified": 0}
        for check in checks:
            where = f"  {name} {check.partition} ({', '.join(check.versions)}): "
            if check.status == "ok":
                counts["verified"] += 1
            elif check.status == "old_format":
                counts["of an older hash format (not verified)"] += 1
                print(where + check.detail)
            elif check.path in why:
                counts["not rebuilt"] += 1
                failed.append((check, why[check.path]))
                print(f"{where}{check.detail}; not rebuilt: {why[check.path]}")
            else:
                counts["rebuilt"] += 1
                print(f"{where}{check.detail} → rebuilt")
        for version in sorted({v for c in checks if c.status == "missing" for v in c.versions}, key=lambda v: [int(x) for x in v.split(".")]):
            missing = [c for c in checks if c.status == "missing" and version in c.versions]
            print(f"  {name} {version}: restored {sum(c.path not in why for c in missing)} of {len(missing)} missing file(s)")
        summary = ", ".join(f"{n} {what}" for what, n in counts.items() if n)
        print(f"  {name}: {len(checks)} data file(s) checked, {'all verified' if counts['verified'] == len(checks) else summary}")
    problems = []
    if failed:
        check, reason = failed[0]
        problems.append(f"{len(failed)} data file(s) could not be rebuilt: {check.uri} ({check.detail}; {reason})"
                        + (f" and {len(failed) - 1} more" if len(failed) > 1 else ""))
    if unread:
        problems.append(f"the metadata of {', '.join(unread)} cannot be read (see above)")
    if problems:
        raise StoreError(f"sync: {'; '.join(problems)}")


def _consecutive(feature, keys: list[str]) -> list[list[str]]:
    """Sorted partition keys of `feature` split into runs of consecutive partitions (what the engine computes in one pass)."""
    grain, runs = feature.grain, []
    try:
        for key in keys:
            if runs and grain.next(grain.parse_key(runs[-1][-1])) == grain.parse_key(key):
                runs[-1].append(key)
            else:
                runs.append([key])
    except FeaturePipelinesError:  # keys that are not time partitions: one at a time
        return [[key] for key in keys]
    return runs


def _duration(text: str):
    """'90s', '30m', '1h', '2d', '0s' or a number of seconds, as a timedelta."""
    import re
    from datetime import timedelta

    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not found:
        raise FeaturePipelinesError(f"--older-than {text!r} is not a duration: give e.g. 1h, 30m, 90s, 2d or 0s")
    return timedelta(seconds=float(found.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[found.group(2)])


def gc(names: list[str] | None, older_than: str, dry_run: bool, profile: str | None) -> None:
    """Remove what killed or outraced writers left in the offline store: temp files and data files no version references,
    older than `older_than` (rules: feature_pipelines/store/cleanup.py); print each one."""
    grace = _duration(older_than)
    store = load_profile(profile).offline_store()
    store.blobs  # noqa: B018 - a store without data files (Unity Catalog) says so here
    removed = store.collect_garbage(names, older_than=grace, dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    now = time.time()
    for leftover in removed:
        age = (now - leftover.modified.timestamp()) / 3600
        print(f"  {verb} {leftover.path} ({leftover.reason}, {age:.1f} h old, {leftover.size} bytes)")
    if removed:
        print(f"  {verb} {len(removed)} file(s), {sum(r.size for r in removed)} bytes, from {store.description}")
    else:
        print(f"  nothing to remove in {store.description} (leftovers younger than {older_than} are kept: a writer may "
              "still be using them)")


def _parser() -> argparse.ArgumentParser:
    # The project options are accepted before or after the subcommand: a parent parser adds them to every
    # subparser with SUPPRESS defaults, so a value given in one place is not reset by the other.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--profile", default=argparse.SUPPRESS,
                        help="profile to use: <profiles folder>/<name>.yaml or a .yaml path (default $FEATURE_PIPELINES_PROFILE or dev)")
    common.add_argument("--module", default=argparse.SUPPRESS,
                        help="package or module holding the features (default: [tool.feature_pipelines] package)")
    common.add_argument("--project-dir", default=argparse.SUPPRESS,
                        help="the project's folder (default: the nearest pyproject.toml above the working directory)")
    parser = argparse.ArgumentParser(prog="feature-pipelines", description=__doc__, parents=[common],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, parents=[common])

    command("list", "list the project's features").add_argument("--tags", action="append", help="only features with this tag (key or key=value)")
    command("inspect", "show a feature's definition and newest version").add_argument("feature")
    command("versions", "show a feature's versions").add_argument("feature")
    p_build = command("build", "materialize features through Dagster (default: every partition of each feature)")
    p_build.add_argument("--features", help="comma-separated feature names (default: all)")
    p_build.add_argument("--tags", action="append", help="only features with this tag (key or key=value)")
    p_build.add_argument("--partition", help="one partition, e.g. 2024-01-05")
    p_build.add_argument("--start", help="first partition (default: the feature's first)")
    p_build.add_argument("--end", help="last partition, inclusive (default: the feature's last complete partition, or its end)")
    p_build.add_argument("--force", action="store_true", help="rebuild even when the range is up to date")
    p_build.add_argument("--verbose", action="store_true", help="on failure, print Dagster's events and the full trace")
    p_pub = command("publish", "push materialized partitions of online features to the online store")
    p_pub.add_argument("--features", help="comma-separated feature names (default: every online feature)")
    p_pub.add_argument("--tags", action="append")
    p_pub.add_argument("--partition")
    p_pub.add_argument("--start")
    p_pub.add_argument("--end")
    p_serve = command("serve", "serve online features over HTTP (GET /health, /ready, /features, /metrics, /openapi.json; "
                               "POST /online-features) on uvicorn")
    p_serve.add_argument("--host", default="127.0.0.1")
    p_serve.add_argument("--port", type=int, default=8080, help="0 picks a free port (printed)")
    p_serve.add_argument("--max-batch", type=int, default=1000, help="most entities per request")
    p_serve.add_argument("--max-body", type=int, help="largest request body in bytes (default 1 MiB, or 1 KiB per --max-batch entity)")
    p_serve.add_argument("--workers", type=int, default=1, help="worker processes sharing the port (default 1)")
    p_serve.add_argument("--threads", type=int, default=4,
                         help="store threads per worker: concurrent store reads and store connections per worker (default 4)")
    p_serve.add_argument("--backlog", type=int, default=2048, help="listen backlog (default 2048)")
    p_serve.add_argument("--keep-alive-timeout", type=float, default=5.0, help="seconds an idle connection stays open (default 5)")
    p_serve.add_argument("--request-timeout", type=float, default=10.0, help="seconds to receive a whole request, else 408 (default 10)")
    p_serve.add_argument("--store-timeout", type=float, default=5.0, help="seconds to answer from the store, else 503 (default 5)")
    p_serve.add_argument("--graceful-timeout", type=float, default=10.0,
                         help="on SIGTERM/SIGINT, seconds to finish requests in flight (default 10)")
    p_serve.add_argument("--max-in-flight", type=int, help="requests in progress per worker before answering 503 at once (default: no limit)")
    p_serve.add_argument("--tls-cert", help="PEM certificate: serve HTTPS (with --tls-key)")
    p_serve.add_argument("--tls-key", help="PEM private key of --tls-cert")
    p_serve.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"])
    command("profile", "show the resolved profile (secrets masked)")
    command("sync", "verify data files against the metadata; rebuild missing or damaged ones")
    p_gc = command("gc", "remove temp files and data files no version references, left by killed or outraced writers")
    p_gc.add_argument("--features", help="comma-separated feature names (default: every feature folder)")
    p_gc.add_argument("--older-than", default="1h",
                      help="only files last written longer ago than this, e.g. 30m, 2h, 0s (default 1h: a writer still running is never hit)")
    p_gc.add_argument("--dry-run", action="store_true", help="list what would be removed, remove nothing")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # --project-dir and --module reach every part (profiles, registry, stores) through the environment, for this call only.
    saved = {v: os.environ.get(v) for v in (PROJECT_DIR_ENV, PACKAGE_ENV)}
    for option, variable in (("project_dir", PROJECT_DIR_ENV), ("module", PACKAGE_ENV)):
        value = getattr(args, option, None)
        if value:
            os.environ[variable] = str(Path(value).resolve()) if option == "project_dir" else value
    args.profile = getattr(args, "profile", None)
    try:
        return _run(args)
    except FeaturePipelinesError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        for variable, value in saved.items():
            if value is None:
                os.environ.pop(variable, None)
            else:
                os.environ[variable] = value


def _run(args) -> int:
    registry = project_registry() if args.command in ("list", "inspect", "build", "publish", "serve", "sync") else None
    if args.command == "list":
        with pl.Config(tbl_rows=100, tbl_cols=12, tbl_width_chars=160):
            print(features_table(registry, args.tags, args.profile))
    elif args.command == "inspect":
        feature = registry.feature(args.feature)
        manifest = load_profile(args.profile).offline_store().latest(feature.name)
        print(json.dumps({"definition": feature.config(), "config_hash": feature.config_hash, "ttl": str(feature.ttl), "online": feature.online,
                          "columns": feature.metric_columns, "validators": {c: [v.rule for v in r] for c, r in feature.validators.items()},
                          "latest": None if manifest is None else {k: manifest[k] for k in ("version", "row_count", "updated_at", "change")} | {"partitions": len(manifest["partitions"])}},
                         indent=2, default=str))
    elif args.command == "versions":
        store = load_profile(args.profile).offline_store()
        rows = []
        for v in store.versions(args.feature):
            m = store.manifest(args.feature, v)
            rows.append({"version": v, "partitions": len(m["partitions"]), "rows": m["row_count"], "created_at": m["created_at"], "change": m["change"]["reason"]})
        with pl.Config(tbl_rows=100, fmt_str_lengths=80, tbl_width_chars=160):
            print(pl.DataFrame(rows))
    elif args.command == "build":
        if args.partition and (args.start or args.end):
            raise FeaturePipelinesError("give either --partition or --start/--end, not both")
        start = args.partition or args.start
        end = args.partition or args.end
        names = args.features.split(",") if args.features else None
        build(registry, names, args.tags, start, end, args.profile, force=args.force, verbose=args.verbose)
    elif args.command == "publish":
        start = args.partition or args.start
        end = args.partition or args.end
        publish(registry, args.features.split(",") if args.features else None, args.tags, start, end, args.profile)
    elif args.command == "serve":
        from feature_pipelines.serving import ServeOptions, serve

        online = load_profile(args.profile).online_store()  # a bad profile fails here, once; each worker opens its own store
        where = online.description
        online.close()
        options = ServeOptions(host=args.host, port=args.port, profile=args.profile, workers=args.workers, threads=args.threads,
                               max_batch=args.max_batch, max_body=args.max_body, backlog=args.backlog,
                               keep_alive_timeout=args.keep_alive_timeout, request_timeout=args.request_timeout,
                               store_timeout=args.store_timeout, graceful_timeout=args.graceful_timeout,
                               max_in_flight=args.max_in_flight, tls_cert=args.tls_cert, tls_key=args.tls_key,
                               log_level=args.log_level)
        serve(options, on_listening=lambda url: print(
            f"serving online features from {where} on {url} ({args.workers} worker(s) x {args.threads} store threads)", flush=True))
    elif args.command == "profile":
        profile = load_profile(args.profile)
        print(json.dumps({"profile": profile.name, "file": str(profile.path) if profile.path else "built-in",
                          "project": str(find_project().root), "settings": profile.masked()}, indent=2))
    elif args.command == "sync":
        sync(registry, args.profile)
    elif args.command == "gc":
        gc(args.features.split(",") if args.features else None, args.older_than, args.dry_run, args.profile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
