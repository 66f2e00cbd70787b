"""The `feature-pipelines` command: list, inspect, build, publish, serve, demo and look after the store."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from datetime import datetime, timedelta, timezone
from pathlib import Path

import polars as pl

from feature_pipelines.errors import FeaturePipelinesError
from feature_pipelines.profiles import PROJECT_ROOT, load_profile
from feature_pipelines.registry import Registry, load_registry

DEMO_START, DEMO_DAYS = "2024-01-01", 90


def _ensure_dagster_home() -> Path:
    """A persistent Dagster instance, so the UI (`dagster dev`, same DAGSTER_HOME) sees CLI runs."""
    home = Path(os.environ.get("DAGSTER_HOME") or PROJECT_ROOT / ".dagster_home").resolve()
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists() and (PROJECT_ROOT / "dagster.yaml").exists():
        config.write_text((PROJECT_ROOT / "dagster.yaml").read_text())
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

    from feature_pipelines.orchestration import build_definitions
    from feature_pipelines.orchestration.assets import partitions_def

    warnings.filterwarnings("ignore", category=dg.BetaWarning)
    _ensure_dagster_home()
    chosen = registry.select(names, tags)
    if not chosen:
        raise FeaturePipelinesError(f"no feature matches names={names} tags={tags}; features: {sorted(registry.features)}")
    defs = build_definitions(registry, profile=profile or "")
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
            result = defs.resolve_job_def(f"{feature.name}_job").execute_in_process(
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
    store = load_profile(profile).offline_store()
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
        result = publish_partitions(feature, keys, None, profile)
        print(f"  {feature.name} {result.version}: {len(keys)} partition(s), {result.rows} entities → {result.written} written, "
              f"{result.skipped} not newer, to {result.store} in {result.seconds:.2f}s")


def features_table(registry: Registry, profile: str | None) -> pl.DataFrame:
    store = load_profile(profile).offline_store()
    rows = []
    for name, feature in sorted(registry.features.items()):
        manifest = store.latest(name)
        parts = sorted(manifest["partitions"]) if manifest else []
        rows.append(
            {
                "feature": name,
                "version": manifest["version"] if manifest else "-",
                "partitions": len(parts),
                "first": parts[0] if parts else "-",
                "last": parts[-1] if parts else "-",
                "rows": manifest["row_count"] if manifest else 0,
                "columns": len(manifest["columns"]) if manifest else 0,
            }
        )
    return pl.DataFrame(rows)


def demo(registry: Registry, profile: str | None) -> None:
    from feature_pipelines.retrieval import FeatureStore
    from feature_pipelines.sample_data import data_dir, write_transactions

    t0 = time.perf_counter()
    path = data_dir() / "transactions.parquet"
    if not path.exists():
        print(f"generating example transactions → {path}")
        write_transactions(path)
    end = (datetime.fromisoformat(DEMO_START) + timedelta(days=DEMO_DAYS - 1)).date().isoformat()
    print(f"backfilling every feature for {DEMO_DAYS} daily partitions ({DEMO_START} … {end}) into {load_profile(profile).offline_store().description}")
    build(registry, None, None, DEMO_START, end, profile)
    with pl.Config(tbl_rows=20, tbl_cols=12, tbl_width_chars=160, fmt_str_lengths=40):
        print("\nFeatures in the offline store:")
        print(features_table(registry, profile))
        store = FeatureStore(profile, registry)
        tx = pl.read_parquet(path, columns=["timestamp", "first_name", "last_name", "date_of_birth", "merchant_id", "status"])
        labels = tx.filter(pl.col("timestamp") >= datetime(2024, 3, 1, tzinfo=timezone.utc)).head(5)
        labels = labels.select("first_name", "last_name", "date_of_birth", "merchant_id", label_time="timestamp", is_fraud=pl.col("status") == "declined")
        frame = store.get_training_data(["customer_spend:amount_sum_7d", "customer_spend:amount_count_30d", "customer_velocity", "merchant_spend:amount_mean_30d"], labels)
        print("\nA point-in-time training frame (each label sees only features stamped at or before its time):")
        print(frame.drop("first_name", "last_name", "date_of_birth"))
        print(f"\npublishing the online features to {load_profile(profile).online_store().description}")
        publish(registry, None, None, DEMO_START, end, profile)
        online = store.get_online_features(["customer_spend:amount_sum_7d", "customer_velocity", "merchant_spend:amount_mean_30d"],
                                           labels.select("first_name", "last_name", "date_of_birth", "merchant_id").head(3).to_dicts())
        store.close()
        print("\nAn online lookup (newest published values; what `feature-pipelines serve` returns):")
        print(online.drop("first_name", "last_name", "date_of_birth"))
    print(f"\ndemo finished in {time.perf_counter() - t0:.1f}s")


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="feature-pipelines", description=__doc__)
    parser.add_argument("--profile", help="env/<profile>.yaml to use (default $FEATURE_PIPELINES_PROFILE or dev)")
    sub = parser.add_subparsers(dest="command", required=True)
    p_list = sub.add_parser("list", help="list features")
    p_list.add_argument("--tags", action="append", help="only features with this tag (key or key=value)")
    sub.add_parser("inspect", help="show a feature's definition and newest version").add_argument("feature")
    sub.add_parser("versions", help="show a feature's versions").add_argument("feature")
    p_build = sub.add_parser("build", help="materialize features through Dagster")
    p_build.add_argument("--features", help="comma-separated feature names")
    p_build.add_argument("--tags", action="append")
    p_build.add_argument("--partition")
    p_build.add_argument("--start")
    p_build.add_argument("--end")
    p_build.add_argument("--force", action="store_true", help="rebuild even when the range is up to date")
    p_pub = sub.add_parser("publish", help="push materialized partitions of online features to the online store")
    p_pub.add_argument("--features", help="comma-separated feature names (default: every online feature)")
    p_pub.add_argument("--tags", action="append")
    p_pub.add_argument("--partition")
    p_pub.add_argument("--start")
    p_pub.add_argument("--end")
    p_serve = sub.add_parser("serve", help="serve online features over HTTP (GET /health, GET /features, POST /online-features)")
    p_serve.add_argument("--host", default="127.0.0.1")
    p_serve.add_argument("--port", type=int, default=8080)
    p_serve.add_argument("--max-batch", type=int, default=1000, help="most entities per request")
    sub.add_parser("profile", help="show the resolved profile (secrets masked)")
    sub.add_parser("sync", help="rebuild data files missing on disk from committed metadata")
    p_gen = sub.add_parser("generate", help="write the example transactions parquet")
    p_gen.add_argument("--rows", type=int, default=200_000)
    p_gen.add_argument("--days", type=int, default=120)
    sub.add_parser("demo", help="generate data, backfill every example feature, print a training frame")
    args = parser.parse_args(argv)
    try:
        return _run(args)
    except FeaturePipelinesError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def _run(args) -> int:
    registry = load_registry()
    if args.command == "list":
        rows = [
            {"feature": f.name, "kind": f.kind, "entities": ",".join(e.name for e in f.entities), "granularity": f.granularity,
             "columns": len(f.metric_columns), "online": f.online, "tags": ",".join(f"{k}={v}" for k, v in f.tags.items())}
            for f in registry.select(None, args.tags)
        ]
        with pl.Config(tbl_rows=100, tbl_width_chars=160):
            print(pl.DataFrame(rows))
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
        print(json.dumps({"profile": profile.name, "file": str(profile.path), "settings": profile.masked()}, indent=2))
    elif args.command == "sync":
        sync(registry, args.profile)
    elif args.command == "generate":
        from feature_pipelines.sample_data import write_transactions

        print(write_transactions(rows=args.rows, days=args.days))
    elif args.command == "demo":
        demo(registry, args.profile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
