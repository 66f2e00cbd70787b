"""The versioning rules every store shares: which version a write of partitions lands in, and why.

First build 1.0.0; MAJOR when a column is removed or changes dtype; MINOR when a column is added or the
definition's config changes (the new version starts empty); PATCH when an already-materialized partition
gets different data (judged by content hash); identical data changes nothing; a partition holding rows
is never replaced by an empty one within a version unless the caller says so.
"""

from __future__ import annotations

from feature_pipelines.errors import DataError


def _bump(version: str, part: str) -> str:
    major, minor, patch = (int(x) for x in version.split("."))
    return {"major": f"{major + 1}.0.0", "minor": f"{major}.{minor + 1}.0", "patch": f"{major}.{minor}.{patch + 1}"}[part]


def decide_schema(current: dict | None, schema: list, config_hash: str) -> tuple[str, str, str]:
    """The version change a write's schema and definition force: initial/major/minor, or '' (decided per partition)."""
    if current is None:
        return "1.0.0", "initial", "first build"
    version = current["version"]
    old = {c["name"]: c["dtype"] for c in current["columns"]}
    new = {c["name"]: c["dtype"] for c in schema}
    removed = [c for c in old if c not in new]
    changed = [f"{c} {old[c]}→{new[c]}" for c in old if c in new and old[c] != new[c]]
    added = [c for c in new if c not in old]
    if removed or changed:
        parts = ([f"column(s) removed: {', '.join(removed)}"] if removed else []) + (
            [f"dtype changed: {', '.join(changed)}"] if changed else []
        )
        return _bump(version, "major"), "major", "; ".join(parts)
    if added:
        return _bump(version, "minor"), "minor", f"column(s) added: {', '.join(added)}"
    if config_hash != current["config_hash"]:
        return _bump(version, "minor"), "minor", f"definition changed (config {current['config_hash']} → {config_hash})"
    return version, "", ""


def decide(current: dict | None, digests: dict[str, str], schema: list, config_hash: str, *,
           rows: dict[str, int] | None = None) -> tuple[dict, str, str, str]:
    """The versioning rules for one write of partitions (partition -> content hash), shared by every store.

    Returns (per-partition (bump, reason), new version, overall bump, overall reason). With `rows`
    (partition -> row count), a write that would replace a partition holding rows by an empty one in
    the same version raises a DataError before anything is written.
    """
    version, bump, reason = decide_schema(current, schema, config_hash)
    fresh = bump in ("initial", "major", "minor")
    if rows is not None and not fresh:
        _refuse_emptied(current, rows)
    outcome: dict[str, tuple[str, str]] = {}
    for partition, digest in digests.items():
        entry = None if fresh else current["partitions"].get(partition)
        if fresh:
            outcome[partition] = (bump, reason)
        elif entry is None:
            outcome[partition] = ("added", f"partition {partition} added")
        elif entry["content_hash"] == digest:
            outcome[partition] = ("unchanged", f"partition {partition} unchanged")
        else:
            outcome[partition] = ("patch", f"partition {partition} data changed")
    if not fresh:
        patched = [p for p, (b, _) in outcome.items() if b == "patch"]
        added = [p for p, (b, _) in outcome.items() if b == "added"]
        if patched:
            version, bump, reason = _bump(version, "patch"), "patch", f"data changed in {_some(patched)}"
        elif added:
            bump, reason = "added", f"added {_some(added)}"
        else:
            bump, reason = "unchanged", "no partition changed"
    return outcome, version, bump, reason


def _refuse_emptied(current: dict, rows: dict[str, int]) -> None:
    """DataError naming the partitions that hold rows in `current` but would be replaced by no rows."""
    emptied = {p: current["partitions"][p]["rows"] for p, n in rows.items()
               if n == 0 and current["partitions"].get(p, {}).get("rows", 0) > 0}
    if emptied:
        held = ", ".join(f"{p} ({n} rows)" for p, n in sorted(emptied.items())[:5]) + (" …" if len(emptied) > 5 else "")
        raise DataError(
            f"feature {current['name']!r}: refusing to replace {len(emptied)} partition(s) that hold rows in version "
            f"{current['version']} with empty ones: {held}; nothing was written. Expected the new computation to have "
            "rows there too: check that the source still holds the events of these intervals (a truncated, replaced "
            "or filtered source?). If the intervals really are empty now, write them with allow_empty=True."
        )


def _some(partitions: list[str]) -> str:
    """'2024-01-01, 2024-01-02' or '2024-01-01 … 2024-03-30 (90 partitions)' for long lists."""
    ordered = sorted(partitions)
    if len(ordered) <= 3:
        return f"partition{'s' if len(ordered) > 1 else ''} {', '.join(ordered)}"
    return f"partitions {ordered[0]} … {ordered[-1]} ({len(ordered)})"
