"""The DynamoDB online store: one table, one item per (feature, major, entity), newer-wins by conditional writes.

Items (partition key `pk`, a string; no sort key)::

    pk = "{feature}:v{major}:{entity}"   v: the binary record (feature_pipelines.online.base)
                                         ts: timestamp µs, ver: MINOR << 32 | PATCH   (newer-wins compares (ts, ver))
                                         exp_us: expiry in µs, expires_at: the same in whole seconds (DynamoDB's TTL attribute)
    pk = "{feature}:v{major}:__schema__" one attribute s<schema id> per schema written (its JSON)
    pk = "__features__"                  versions: string set of "feature:v{major}" ever written (for error messages)

The table is created by the first write if it does not exist: on-demand billing (PAY_PER_REQUEST),
key `pk` (S), TTL enabled on `expires_at`. An existing table must have that key; if its TTL is off,
expired items are never deleted but reads still hide them. DynamoDB's TTL deletes lazily (hours
later), so every read also drops items whose `exp_us` has passed, and a write may replace them.

DynamoDB has no conditional batch write, so a write is one conditional PutItem per entity
(`ConditionExpression`: missing, older (ts, ver), or expired), run on `max_connections` threads; a
failed condition counts as skipped. A write is therefore not atomic as a whole, but retrying it is
safe (newer-wins). Reads are BatchGetItem in chunks of 100 keys (in parallel), retrying
`UnprocessedKeys` with bounded exponential backoff. Credentials come from boto3's chain (AWS_*
variables, AWS_PROFILE, instance roles), never from the caller.
"""

from __future__ import annotations

import math
import os
import random
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import boto3
import polars as pl
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    NoRegionError,
    ReadTimeoutError,
)

from feature_pipelines.errors import StoreError
from feature_pipelines.online.base import (
    FEATURE_TIMESTAMP,
    OnlineRead,
    RowSchema,
    SchemaSet,
    UnknownSchema,
    WriteResult,
    check_read,
    decode,
    encode_frame,
    keys_of,
    label,
    never_written,
    ttl_milliseconds,
)
from feature_pipelines.online.settings import as_bool, as_int, as_seconds, redact_url

_REGISTRY = "__features__"
_TTL_ATTRIBUTE = "expires_at"
_NEWER = "attribute_not_exists(#k) OR #t < :t OR (#t = :t AND #v < :v) OR #x <= :now"
_NEWER_NAMES = {"#k": "pk", "#t": "ts", "#v": "ver", "#x": "exp_us"}
_GET_CHUNK = 100  # BatchGetItem's limit
_PUT_TASK = 250  # at most this many rows per thread task during a write
_DENIED = {"AccessDeniedException", "UnrecognizedClientException", "InvalidSignatureException", "ExpiredTokenException",
           "MissingAuthenticationTokenException", "InvalidClientTokenId", "SignatureDoesNotMatch"}


class DynamoDBOnlineStore:
    """Online store in one DynamoDB table (`table` in `region`; `endpoint_url` for a DynamoDB-compatible server).

    `consistent_reads` makes reads strongly consistent (twice the read cost); by default a read may
    miss a write from the last second. `max_connections` bounds both the HTTP connection pool and
    the threads a write or a large read uses. Timeouts and `max_attempts` (botocore's standard retry
    mode, which also retries throttling) bound how long an unreachable endpoint takes to fail;
    `unprocessed_retries` bounds the retries of a BatchGetItem's UnprocessedKeys.
    """

    def __init__(self, table: str, *, region: str | None = None, endpoint_url: str | None = None,
                 create_table: bool = True, consistent_reads: bool = False, max_connections: int = 16,
                 connect_timeout: float = 5.0, read_timeout: float = 10.0, max_attempts: int = 3,
                 unprocessed_retries: int = 8):
        if not isinstance(table, str) or not 3 <= len(table) <= 255 or not all(c.isalnum() or c in "_.-" for c in table):
            raise StoreError(f"DynamoDB online store table must be 3-255 characters of letters, digits, '_', '-' or '.', got {table!r}")
        self.table = table
        self._create = as_bool(create_table, "create_table", "DynamoDB")
        self._consistent = as_bool(consistent_reads, "consistent_reads", "DynamoDB")
        self._threads = as_int(max_connections, "max_connections", "DynamoDB")
        self._retries = as_int(unprocessed_retries, "unprocessed_retries", "DynamoDB")
        if self._threads < 1:
            raise StoreError(f"DynamoDB online store setting max_connections must be at least 1, got {max_connections!r}")
        self._config = Config(connect_timeout=as_seconds(connect_timeout, "connect_timeout", "DynamoDB"),
                              read_timeout=as_seconds(read_timeout, "read_timeout", "DynamoDB"),
                              retries={"max_attempts": as_int(max_attempts, "max_attempts", "DynamoDB"), "mode": "standard"},
                              max_pool_connections=self._threads)
        self._endpoint = endpoint_url or None
        try:
            client = boto3.session.Session().client("dynamodb", region_name=region or None, endpoint_url=self._endpoint, config=self._config)
        except NoRegionError:
            raise StoreError(f"DynamoDB online store {table!r} has no AWS region: pass region= (the profile's `region`) "
                             f"or set AWS_REGION / AWS_DEFAULT_REGION") from None
        except (ValueError, BotoCoreError) as e:
            shown = redact_url(endpoint_url) if endpoint_url else "the default endpoint"
            raise StoreError(f"invalid DynamoDB online store settings for table {table!r} at {shown}: {e}") from None
        self.region = client.meta.region_name
        where = f" at {redact_url(self._endpoint)}" if self._endpoint else ""
        self.description = f"dynamodb://{self.region}/{table}{where}"
        self._lock = threading.Lock()
        self._state = (os.getpid(), client, None)  # (pid, client, executor): a forked child makes its own
        self._closed = False
        self._ready = False  # the table is known to exist
        self._schemas: dict[tuple[str, int], SchemaSet] = {}

    def __repr__(self) -> str:
        return f"DynamoDBOnlineStore({self.description!r})"

    __str__ = __repr__

    def __enter__(self) -> DynamoDBOnlineStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the worker threads and close the HTTP connections; further calls raise StoreError."""
        with self._lock:
            self._closed = True
            pid, client, executor = self._state
        if pid == os.getpid():
            if executor is not None:
                executor.shutdown(wait=True, cancel_futures=True)
            client.close()

    # -- clients and errors ----------------------------------------------------------------

    def _client(self, threads: bool = False):
        """This process's client (and, with `threads`, its executor), made on first use after a fork."""
        with self._lock:
            if self._closed:
                raise StoreError(f"online store {self.description} is closed")
            pid, client, executor = self._state
            if pid != os.getpid():
                client = boto3.session.Session().client("dynamodb", region_name=self.region, endpoint_url=self._endpoint, config=self._config)
                executor, self._ready = None, False
            if threads and executor is None:
                executor = ThreadPoolExecutor(self._threads, thread_name_prefix="fp-dynamodb")
            self._state = (os.getpid(), client, executor)
            return (client, executor) if threads else client

    def _error(self, e: Exception, what: str) -> StoreError:
        """A StoreError a person can act on: which table, what failed, while doing what."""
        if isinstance(e, NoCredentialsError):
            return StoreError(f"online store {self.description} found no AWS credentials while {what}: set AWS_ACCESS_KEY_ID/"
                              f"AWS_SECRET_ACCESS_KEY or AWS_PROFILE, or run with an instance/task role")
        if isinstance(e, ClientError):
            code = e.response.get("Error", {}).get("Code", "")
            message = e.response.get("Error", {}).get("Message", "") or str(e)
            inner = re.search(r"<Message>(.*?)</Message>", message)  # an error body botocore could not parse (XML)
            message = inner.group(1) if inner else message
            if code in _DENIED or e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 403:
                return StoreError(f"online store {self.description} rejected the credentials while {what}: {code}: {message} "
                                  f"(check the AWS credentials and the IAM policy for dynamodb on table {self.table})")
            return StoreError(f"online store {self.description} failed while {what}: {code}: {message}")
        reason = " ".join(str(e).split()) or type(e).__name__
        if isinstance(e, (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError, ConnectionClosedError)):
            return StoreError(f"online store {self.description} is unreachable: {reason} while {what}")
        return StoreError(f"online store {self.description} failed while {what}: {reason}")

    def _ensure_table(self, client) -> None:
        """Create the table (on demand billing, key pk, TTL on expires_at) if missing; check its key if present."""
        if self._ready:
            return
        try:
            table = client.describe_table(TableName=self.table)["Table"]
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") != "ResourceNotFoundException" or not self._create:
                raise
            try:
                client.create_table(TableName=self.table, BillingMode="PAY_PER_REQUEST",
                                    KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
                                    AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}])
            except ClientError as race:
                if race.response.get("Error", {}).get("Code") != "ResourceInUseException":  # another writer created it first
                    raise
            client.get_waiter("table_exists").wait(TableName=self.table, WaiterConfig={"Delay": 1, "MaxAttempts": 120})
            client.update_time_to_live(TableName=self.table, TimeToLiveSpecification={"Enabled": True, "AttributeName": _TTL_ATTRIBUTE})
            table = client.describe_table(TableName=self.table)["Table"]
        key = [(k["AttributeName"], k["KeyType"]) for k in table.get("KeySchema", [])]
        types = {a["AttributeName"]: a["AttributeType"] for a in table.get("AttributeDefinitions", [])}
        if key != [("pk", "HASH")] or types.get("pk") != "S":
            raise StoreError(f"DynamoDB table {self.table} in {self.region} has key {key} ({types}); the online store needs "
                             f"a partition key 'pk' of type S and no sort key: use another table name")
        self._ready = True

    # -- schemas ---------------------------------------------------------------------------

    def _load_schemas(self, client, feature: str, major: int) -> SchemaSet:
        item = client.get_item(TableName=self.table, Key={"pk": {"S": f"{feature}:v{major}:__schema__"}}, ConsistentRead=True).get("Item", {})
        schemas = SchemaSet(feature, major, [RowSchema.from_json(v["S"]) for k, v in sorted(item.items()) if k.startswith("s")])
        if schemas.by_id:
            self._schemas[(feature, major)] = schemas
        return schemas

    def _stored_versions(self, client, feature: str) -> list[str]:
        item = client.get_item(TableName=self.table, Key={"pk": {"S": _REGISTRY}}, ConsistentRead=True).get("Item", {})
        names = sorted(item.get("versions", {}).get("SS", []))
        return [n.split(":", 1)[1] for n in names if n.split(":", 1)[0] == feature]

    # -- write -----------------------------------------------------------------------------

    def write(self, feature: str, major: int, keys: list[str], frame: pl.DataFrame, *,
              timestamp: str = FEATURE_TIMESTAMP, ttl_seconds: float | None = None,
              version: str | None = None) -> WriteResult:
        """Newer-wins write: one conditional PutItem per entity, on `max_connections` threads.

        A row replaces the stored item only if its (timestamp, version order) is strictly greater (a
        missing or expired item counts as older): a newer timestamp, or the same one from a newer
        MINOR.PATCH of `version`; failed conditions are counted as skipped, so re-publishing a version
        writes nothing. With `ttl_seconds`, each written item expires ttl_seconds after this call.
        """
        ttl_ms = ttl_milliseconds(ttl_seconds, feature, major)
        batch = encode_frame(feature, major, keys, frame, timestamp, version)
        now = time.time_ns() // 1000
        extra = {}
        if ttl_ms is not None:
            expires = now + ttl_ms * 1000
            extra = {"exp_us": {"N": str(expires)}, _TTL_ATTRIBUTE: {"N": str(math.ceil(expires / 1_000_000))}}
        what = f"writing {label(feature, major)}"
        client, executor = self._client(threads=True)
        try:
            self._ensure_table(client)
            existing = self._load_schemas(client, feature, major)
            existing.check_compatible(batch.schema, self.description)
            if batch.schema.id not in existing.by_id:  # registered before any item that uses it
                client.update_item(TableName=self.table, Key={"pk": {"S": f"{feature}:v{major}:__schema__"}}, UpdateExpression="SET #s = :j",
                                   ExpressionAttributeNames={"#s": f"s{batch.schema.id}"}, ExpressionAttributeValues={":j": {"S": batch.schema.json}})
                client.update_item(TableName=self.table, Key={"pk": {"S": _REGISTRY}}, UpdateExpression="ADD #n :v",
                                   ExpressionAttributeNames={"#n": "versions"}, ExpressionAttributeValues={":v": {"SS": [f"{feature}:v{major}"]}})
            pks, stamps, values = batch.entities(f"{feature}:v{major}:"), batch.timestamps.tolist(), batch.values
            common = {":v": {"N": str(batch.order)}, ":now": {"N": str(now)}}
            stop = threading.Event()

            step = max(1, min(_PUT_TASK, math.ceil(len(pks) / self._threads)))  # small writes still use every thread

            def put(start: int) -> int:
                written = 0
                for pk, ts, value in zip(pks[start:start + step], stamps[start:start + step], values[start:start + step]):
                    if stop.is_set():
                        break
                    t = {"N": str(ts)}
                    try:
                        client.put_item(TableName=self.table, Item={"pk": {"S": pk}, "v": {"B": value}, "ts": t, "ver": common[":v"], **extra},
                                        ConditionExpression=_NEWER, ExpressionAttributeNames=_NEWER_NAMES,
                                        ExpressionAttributeValues={":t": t, **common})
                        written += 1
                    except ClientError as e:
                        if e.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                            stop.set()
                            raise
                return written

            futures = [executor.submit(put, start) for start in range(0, len(pks), step)]
            try:
                written = sum(f.result() for f in futures)
            finally:
                stop.set()
        except (ClientError, BotoCoreError) as e:
            raise self._error(e, what) from None
        self._schemas.pop((feature, major), None)
        return WriteResult(written=written, skipped=frame.height - written)

    # -- read ------------------------------------------------------------------------------

    def read(self, reads: list[OnlineRead]) -> list[pl.DataFrame]:
        """Per OnlineRead, one row per requested entity in request order (nulls where unknown, null key or expired).

        The keys of all reads go out together as BatchGetItem requests of up to 100 keys, in parallel
        when there are several; schemas are cached per process. Raises StoreError for a feature/major
        never written (its dtypes are unknown) and for columns it never stored, naming the stored ones.
        """
        for r in reads:
            check_read(r)
        if not reads:
            return []
        what = "reading " + ", ".join(label(r.feature, r.major) for r in reads)
        client = self._client()
        try:
            plans = []
            for r in reads:
                schemas = self._schemas.get((r.feature, r.major))
                if schemas is None or any(c not in schemas.dtypes and c != FEATURE_TIMESTAMP for c in r.columns):
                    schemas = self._load_schemas(client, r.feature, r.major)
                if not schemas.by_id:
                    raise never_written(r.feature, r.major, self.description, self._stored_versions(client, r.feature))
                schemas.check_columns(r.columns, self.description)
                prefix = f"{r.feature}:v{r.major}:"
                plans.append((r, schemas, [None if t is None else prefix + t for t in keys_of(r, schemas, self.description)]))
            found = self._get(list({pk for _, _, pks in plans for pk in pks if pk is not None}), what)
            out = []
            for r, schemas, pks in plans:
                values = [found.get(pk) if pk is not None else None for pk in pks]
                try:
                    out.append(decode(values, schemas, r.columns, r.prefix))
                except UnknownSchema:  # written under a schema registered after we cached: reload once
                    try:
                        out.append(decode(values, self._load_schemas(client, r.feature, r.major), r.columns, r.prefix))
                    except UnknownSchema as e:
                        raise StoreError(f"{label(r.feature, r.major)} in {self.description} holds items of schema id {e.args[0]} "
                                         f"that its __schema__ item does not list; they were written by something else") from None
            return out
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") == "ResourceNotFoundException":  # no table: nothing was ever written
                raise never_written(reads[0].feature, reads[0].major, self.description) from None
            raise self._error(e, what) from None
        except BotoCoreError as e:
            raise self._error(e, what) from None

    def _get(self, pks: list[str], what: str) -> dict[str, bytes]:
        """The unexpired records of these keys (absent keys left out): BatchGetItem chunks, in parallel beyond one."""
        chunks = [pks[i:i + _GET_CHUNK] for i in range(0, len(pks), _GET_CHUNK)]
        now = time.time_ns() // 1000
        if len(chunks) <= 1:
            parts = [self._get_chunk(self._client(), chunk, now, what) for chunk in chunks]
        else:
            client, executor = self._client(threads=True)
            parts = list(executor.map(lambda chunk: self._get_chunk(client, chunk, now, what), chunks))
        return {k: v for part in parts for k, v in part.items()}

    def _get_chunk(self, client, pks: list[str], now: int, what: str) -> dict[str, bytes]:
        request = {self.table: {"Keys": [{"pk": {"S": pk}} for pk in pks], "ProjectionExpression": "#k, #v, #x",
                                "ExpressionAttributeNames": {"#k": "pk", "#v": "v", "#x": "exp_us"}, "ConsistentRead": self._consistent}}
        found: dict[str, bytes] = {}
        for attempt in range(self._retries + 1):
            if attempt:  # throttled or over 16 MB: back off (exponential, jittered, at most 2 s) and ask for the rest
                time.sleep(min(2.0, 0.05 * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0))
            response = client.batch_get_item(RequestItems=request)
            for item in response.get("Responses", {}).get(self.table, []):
                expiry = item.get("exp_us")
                if expiry is None or int(expiry["N"]) > now:
                    found[item["pk"]["S"]] = item["v"]["B"]
            left = response.get("UnprocessedKeys", {}).get(self.table)
            if not left or not left.get("Keys"):
                return found
            request = {self.table: left}
        raise StoreError(f"online store {self.description} left {len(request[self.table]['Keys'])} of {len(pks)} keys unprocessed "
                         f"after {self._retries} retries while {what} (the table is throttled: raise its capacity or "
                         f"unprocessed_retries)")
