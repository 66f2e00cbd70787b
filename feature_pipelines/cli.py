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
import sys
import time
import warnings
from pathlib import Path

import polars as pl

from feature_pipelines.errors import FeaturePipelinesError
from feature_pipelines.profiles import load_profile
from feature_pipelines.project import PACKAGE_ENV, PROJECT_DIR_ENV, find_project
from feature_pipelines.registry import Registry, project_registry

_INSTANCE_YAML = "storage:\n  sqlite:\n    base_dir:\n      env: DAGSTER_HOME\ntelemetry:\n  enabled: false\n"


def _ensure_dagster_home() -> Path:
    """A persistent Dagster instance, so the UI (`dg dev`, same DAGSTER_HOME) sees CLI runs.

    $DAGSTER_HOME, else `.dagster_home` in the project; a new one gets the project's dagster.yaml, if any.
    """
    root = find_project().root
    home = Path(os.environ.get("DAGSTER_HOME") or root / ".dagster_home").resolve()
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        config.write_text((root / "dagster.yaml").read_text() if (root / "dagster.yaml").is_file() else _INSTANCE_YAML)
    os.environ["DAGSTER_HOME"] = str(home)
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


def build(registry: Registry, names: list[str] | None, tags: list[str] | None, start: str | None, end: str | None,
          profile: str | None, force: bool = False) -> list[dict]:
    """Materialize features through Dagster: one run per feature, the whole range in one pass.

    A feature whose partitions in the range were all built by the same definition from the same
    source content is reported as up to date and not run again, unless `force`.
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
        for feature in chosen:
            pdef = partitions_def(feature)
            first = start or pdef.get_first_partition_key()
            last = end or first
            for key in (first, last):
                if not pdef.has_partition_key(key):
                    raise FeaturePipelinesError(
                        f"partition {key!r} is not a partition of {feature.name!r} "
                        f"({feature.granularity} from {pdef.get_first_partition_key()} to {pdef.get_last_partition_key()})"
                    )
            keys = pdef.get_partition_keys_in_range(dg.PartitionKeyRange(first, last))
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
                tags={"dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": last},
                # The CLI prints its own progress line; Dagster's per-event console log is in the UI.
                run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
                raise_on_error=False,
            )
            if not result.success:
                failure = result.failure_data_for_node(feature.name)
                detail = failure.user_failure_data.description if failure and failure.user_failure_data else (failure.error.message if failure else "see the run in the Dagster UI")
                print(" FAILED")
                raise FeaturePipelinesError(f"building {feature.name} failed (run {result.run_id}): {detail}")
            mats = result.asset_materializations_for_node(feature.name)
            bumps = sorted({m.metadata["bump"].value for m in mats})
            version = mats[-1].metadata["version"].value if mats else "?"
            print(f" → {version} ({', '.join(bumps)}) in {time.perf_counter() - t0:.1f}s")
            summary.append({"feature": feature.name, "version": version, "partitions": len(keys), "run_id": result.run_id})
    return summary


def publish(registry: Registry, names: list[str] | None, tags: list[str] | None, start: str | None, end: str | None,
            profile: str | None) -> None:
    """Push the newest row per entity of materialized partitions (default: all) of online features, newer-wins."""
    from feature_pipelines.orchestration.publish import publish_partitions

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
    """Recompute data files the metadata references but the disk lacks (e.g. after a git clone), verifying hashes."""
    from feature_pipelines.engine import PolarsEngine
    from feature_pipelines.store.versioned import _parquet_bytes, content_hash

    store = load_profile(profile).offline_store()
    engine = PolarsEngine()
    for name in store.features():
        feature = registry.features.get(name)
        for version in store.versions(name):
            manifest = store.manifest(name, version)
            missing = [k for k, e in manifest["partitions"].items() if not store.blobs.exists(f"{name}/{e['file']}")]
            if not missing:
                continue
            if feature is None or feature.config_hash != manifest["config_hash"]:
                print(f"  {name} {version}: {len(missing)} file(s) missing, but the current definition differs; skipped")
                continue
            fixed = 0
            for key in missing:
                frame = engine.compute(feature, [key])[key]
                entry = manifest["partitions"][key]
                if content_hash(frame) != entry["content_hash"]:
                    print(f"  {name} {version} {key}: recomputed data differs from the committed hash; not restored")
                    continue
                store.blobs.put(f"{name}/{entry['file']}", _parquet_bytes(frame))
                fixed += 1
            print(f"  {name} {version}: restored {fixed} of {len(missing)} missing file(s)")


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
    p_build = command("build", "materialize features through Dagster")
    p_build.add_argument("--features", help="comma-separated feature names")
    p_build.add_argument("--tags", action="append")
    p_build.add_argument("--partition")
    p_build.add_argument("--start")
    p_build.add_argument("--end")
    p_build.add_argument("--force", action="store_true", help="rebuild even when the range is up to date")
    p_pub = command("publish", "push materialized partitions of online features to the online store")
    p_pub.add_argument("--features", help="comma-separated feature names (default: every online feature)")
    p_pub.add_argument("--tags", action="append")
    p_pub.add_argument("--partition")
    p_pub.add_argument("--start")
    p_pub.add_argument("--end")
    p_serve = command("serve", "serve online features over HTTP (GET /health, GET /features, POST /online-features)")
    p_serve.add_argument("--host", default="127.0.0.1")
    p_serve.add_argument("--port", type=int, default=8080)
    p_serve.add_argument("--max-batch", type=int, default=1000, help="most entities per request")
    command("profile", "show the resolved profile (secrets masked)")
    command("sync", "rebuild data files missing on disk from committed metadata")
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
        start = args.partition or args.start
        end = args.partition or args.end or start
        names = args.features.split(",") if args.features else None
        build(registry, names, args.tags, start, end, args.profile, force=args.force)
    elif args.command == "publish":
        start = args.partition or args.start
        end = args.partition or args.end
        publish(registry, args.features.split(",") if args.features else None, args.tags, start, end, args.profile)
    elif args.command == "serve":
        from feature_pipelines.retrieval import FeatureStore
        from feature_pipelines.serving import make_server

        store = FeatureStore(args.profile, registry)
        server = make_server(store, args.host, args.port, args.max_batch)
        print(f"serving online features from {store.online.description} on http://{args.host}:{server.server_address[1]}", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
            store.close()
    elif args.command == "profile":
        profile = load_profile(args.profile)
        print(json.dumps({"profile": profile.name, "file": str(profile.path) if profile.path else "built-in",
                          "project": str(find_project().root), "settings": profile.masked()}, indent=2))
    elif args.command == "sync":
        sync(registry, args.profile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
