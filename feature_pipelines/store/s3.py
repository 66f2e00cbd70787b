"""The versioned offline store on Amazon S3 (or any S3 API that honours conditional writes).

`S3Blobs` gives `VersionedStore` its primitives through boto3; everything else (layout, versioning,
manifests, the retry loop around the commit) is the one shared implementation in `versioned.py`:

* `read`   — GetObject; the token is the ETag of the very response that carried the bytes.
* `put`    — PutObject (data files: immutable, content-addressed, so rewriting one is harmless).
* `create` — PutObject with `If-None-Match: *`: succeeds only if the key does not exist.
* `swap`   — PutObject with `If-Match: <etag read>`: succeeds only if nobody replaced the object since.

For `feature-pipelines gc`: `list_files` is ListObjectsV2 (LastModified, ETag); `delete` re-reads the
object's ETag and LastModified (HeadObject) and deletes it only if both are still as listed.

`412 PreconditionFailed` and `409 ConditionalRequestConflict` (two conditional writes of one key in
flight at once) mean "lost the race": `create`/`swap` return False and the store re-reads and retries.
A PUT is atomic on S3, so a failed or interrupted commit leaves the previous `_latest.json` whole.

Credentials come from boto3's standard chain (environment variables, shared config/credentials
files and `AWS_PROFILE`, SSO, container and instance roles), or from a `boto3.Session` you pass. They
are never logged and never appear in `description`, in manifests, in Dagster metadata or in error
messages; `scan_options()` hands polars a fresh copy on every call (temporary credentials renew).
Polars reads the partition files itself (object_store), so scans push column selection and filters
down to ranged GETs.

boto3 is an optional dependency (`pip install 'feature_pipelines[aws]'`); Dagster is not needed,
though `S3Store.from_resource` accepts a `dagster_aws.s3.S3Resource`.
"""

from __future__ import annotations

from typing import Any

from feature_pipelines.errors import StoreError
from feature_pipelines.store.blobs import BlobInfo
from feature_pipelines.store.versioned import VersionedStore

# S3 API operation -> the IAM action a policy must allow for it.
_IAM_ACTION = {
    "GetObject": "s3:GetObject",
    "HeadObject": "s3:GetObject",
    "PutObject": "s3:PutObject",
    "ListObjectsV2": "s3:ListBucket",
    "HeadBucket": "s3:ListBucket",
    "DeleteObject": "s3:DeleteObject",
}
_LOST_RACE = {"PreconditionFailed", "ConditionalRequestConflict", "412", "409"}


def _boto3():
    try:
        import boto3  # noqa: PLC0415 - optional dependency
        import botocore  # noqa: PLC0415, F401
    except ImportError:
        raise StoreError("the S3 offline store needs boto3: pip install 'feature_pipelines[aws]'") from None
    return boto3


def _identity(etag: str, modified) -> str:
    """What tells one write of a key from another: ETag and LastModified (to the second: listings and HEAD differ below)."""
    return f"{etag}|{modified.replace(microsecond=0).isoformat()}"


def _clean_prefix(prefix: str | None) -> str:
    return "/".join(part for part in (prefix or "").split("/") if part)


class S3Blobs:
    """`Blobs` in an S3 bucket under `prefix`, through boto3 (see the module docstring).

    `region` and `endpoint_url` override what the session resolves (use `endpoint_url` for MinIO,
    moto, SeaweedFS, ...: path-style addressing is used then). `session` defaults to a new
    `boto3.Session()` (the standard credential chain). `config` is an optional `botocore.config.Config`
    merged over this store's defaults (standard retries, 10 s connect / 60 s read timeouts).
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        region: str | None = None,
        endpoint_url: str | None = None,
        session: Any = None,
        *,
        config: Any = None,
        verify: bool | str | None = None,
    ) -> None:
        boto3 = _boto3()
        from botocore import UNSIGNED  # noqa: PLC0415
        from botocore.config import Config  # noqa: PLC0415

        if not bucket or "/" in bucket:
            raise StoreError(f"S3 bucket name {bucket!r} is not valid: give the bare bucket name, e.g. 'my-features' (put folders in `prefix`)")
        self.bucket = bucket
        self.prefix = _clean_prefix(prefix)
        self.endpoint_url = endpoint_url or None
        self.session = session if session is not None else boto3.session.Session()
        self.region = region or self.session.region_name or None
        defaults = Config(
            retries={"mode": "standard", "max_attempts": 5},
            connect_timeout=10,
            read_timeout=60,
            s3={"addressing_style": "path"} if self.endpoint_url else {},
        )
        self.config = defaults.merge(config) if config is not None else defaults
        self.unsigned = getattr(self.config, "signature_version", None) is UNSIGNED
        kwargs: dict[str, Any] = {"config": self.config}
        if self.region:
            kwargs["region_name"] = self.region
        if self.endpoint_url:
            kwargs["endpoint_url"] = self.endpoint_url
        if verify is not None:
            kwargs["verify"] = verify
        self.client = self.session.client("s3", **kwargs)
        self._bucket_region: str | None = None

    # ---- keys and names ------------------------------------------------------------------

    def _key(self, path: str) -> str:
        path = path.strip("/")
        if any(part in (".", "..") for part in path.split("/")):
            raise ValueError(f"path {path!r} escapes the store root {self.uri('')}")
        return f"{self.prefix}/{path}" if self.prefix and path else (self.prefix or path)

    def uri(self, path: str) -> str:
        return f"s3://{self.bucket}/{self._key(path)}"

    @property
    def where(self) -> str:
        """Where this store lives, for messages: `s3://bucket/prefix` (and the endpoint, if not AWS)."""
        root = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        return f"{root} (endpoint {self.endpoint_url})" if self.endpoint_url else root

    # ---- the primitives ------------------------------------------------------------------

    def read(self, path: str) -> tuple[bytes, str] | None:
        key = self._key(path)
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=key)
            return response["Body"].read(), response["ETag"]
        except Exception as err:  # noqa: BLE001 - translated below
            if _code(err) in ("NoSuchKey", "404"):
                return None
            raise self._error(err, "GetObject", key) from None

    def put(self, path: str, data: bytes) -> None:
        key = self._key(path)
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=_content_type(key))
        except Exception as err:  # noqa: BLE001
            raise self._error(err, "PutObject", key) from None

    def create(self, path: str, data: bytes) -> bool:
        return self._conditional_put(path, data, IfNoneMatch="*")

    def swap(self, path: str, data: bytes, token: str) -> bool:
        return self._conditional_put(path, data, IfMatch=token)

    def _conditional_put(self, path: str, data: bytes, **condition: str) -> bool:
        key = self._key(path)
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=_content_type(key), **condition)
            return True
        except Exception as err:  # noqa: BLE001
            code = _code(err)
            if code not in _LOST_RACE and not (code in ("NoSuchKey", "404") and "IfMatch" in condition):
                raise self._error(err, "PutObject", key) from None
        # Lost the race, or won it on an attempt whose answer was lost and whose retry then found
        # our own write in place: the object holding exactly our bytes means our write is there.
        current = self.read(path)
        return current is not None and current[0] == data

    def exists(self, path: str) -> bool:
        key = self._key(path)
        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
            return True
        except Exception as err:  # noqa: BLE001
            if _code(err) in ("404", "NoSuchKey", "NotFound"):
                return False
            if _code(err) != "403":
                raise self._error(err, "HeadObject", key) from None
        # A HEAD answer has no body, so a 403 does not say why (refused credentials? no permission?
        # a missing key without s3:ListBucket?). A one-byte GET does.
        try:
            self.client.get_object(Bucket=self.bucket, Key=key, Range="bytes=0-0")
            return True
        except Exception as err:  # noqa: BLE001
            if _code(err) == "InvalidRange":  # an empty object
                return True
            if _code(err) == "NoSuchKey":
                return False
            raise self._error(err, "HeadObject", key) from None

    def list_dirs(self, path: str) -> list[str]:
        base = self._key(path)
        base = f"{base}/" if base else ""
        names = set()
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=base, Delimiter="/"):
                for common in page.get("CommonPrefixes", []):
                    names.add(common["Prefix"][len(base):].rstrip("/"))
        except Exception as err:  # noqa: BLE001
            raise self._error(err, "ListObjectsV2", base) from None
        return sorted(n for n in names if n and not n.startswith("."))

    def list_files(self, path: str) -> list[BlobInfo]:
        base = self._key(path)
        base = f"{base}/" if base else ""
        root = f"{self.prefix}/" if self.prefix else ""
        out = []
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=base):
                for item in page.get("Contents", []):
                    out.append(BlobInfo(item["Key"][len(root):], item["LastModified"], item["Size"],
                                        _identity(item["ETag"], item["LastModified"])))
        except Exception as err:  # noqa: BLE001
            raise self._error(err, "ListObjectsV2", base) from None
        return sorted(out)

    def delete(self, info: BlobInfo) -> bool:
        key = self._key(info.path)
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=key)
        except Exception as err:  # noqa: BLE001
            if _code(err) in ("404", "NoSuchKey", "NotFound"):
                return False
            raise self._error(err, "HeadObject", key) from None
        if _identity(head["ETag"], head["LastModified"]) != info.version:
            return False  # written again since it was listed
        try:
            self.client.delete_object(Bucket=self.bucket, Key=key)
        except Exception as err:  # noqa: BLE001
            raise self._error(err, "DeleteObject", key) from None
        return True

    # ---- polars --------------------------------------------------------------------------

    def storage_options(self) -> dict[str, str]:
        """polars/object_store options for reading this bucket: endpoint, region, current credentials.

        Credentials are resolved now from the session's chain (refreshable ones are renewed when
        due), so call this per scan rather than keeping the result. The dict holds secrets: it is
        for polars only, never to be logged or stored.
        """
        options = {"aws_region": self._region_for_reads()}
        if self.endpoint_url:
            options["aws_endpoint_url"] = self.endpoint_url
            if self.endpoint_url.startswith("http://"):
                options["aws_allow_http"] = "true"
        credentials = None if self.unsigned else self.session.get_credentials()
        if credentials is None:
            # No credentials: read anonymously (public bucket) rather than let object_store go
            # looking for an instance role of its own.
            options["aws_skip_signature"] = "true"
            return options
        frozen = credentials.get_frozen_credentials()
        options["aws_access_key_id"] = frozen.access_key
        options["aws_secret_access_key"] = frozen.secret_key
        if frozen.token:
            options["aws_session_token"] = frozen.token
        return options

    def _region_for_reads(self) -> str:
        """The bucket's region: configured, else asked of S3 once (HeadBucket), else us-east-1."""
        if self.region:
            return self.region
        if self._bucket_region is None:
            try:
                head = self.client.head_bucket(Bucket=self.bucket)
                self._bucket_region = head["ResponseMetadata"]["HTTPHeaders"].get("x-amz-bucket-region") or "us-east-1"
            except Exception:  # noqa: BLE001 - a guess is better than failing the scan here
                self._bucket_region = "us-east-1"
        return self._bucket_region

    # ---- errors --------------------------------------------------------------------------

    def _error(self, err: Exception, operation: str, key: str) -> StoreError:
        """One StoreError that says which bucket, which operation, and what to do about it."""
        where = self.where
        action = _IAM_ACTION.get(operation, f"s3:{operation}")
        code = _code(err)
        name = type(err).__name__
        if code == "NoSuchBucket" or (operation in ("ListObjectsV2", "HeadBucket") and code == "404"):
            region = "" if self.endpoint_url else f" (region {self.region or 'from the AWS config'})"
            return StoreError(
                f"{where}: bucket {self.bucket!r} does not exist{region}; "
                f"create it (aws s3 mb s3://{self.bucket}) or fix `bucket` in the profile's offline_store"
            )
        if code in ("AccessDenied", "403", "AllAccessDisabled", "AccountProblem"):
            return StoreError(
                f"{where}: access denied for {operation} on {key or '/'} — the credentials need {action} on this bucket "
                f"(arn:aws:s3:::{self.bucket}{'/' + self.prefix if self.prefix else ''}"
                f"{'/*' if action != 's3:ListBucket' else ''})"
                + ("; S3 also answers 403 for a missing key when s3:ListBucket is not allowed" if operation == "HeadObject" else "")
            )
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken", "TokenRefreshRequired",
                    "InvalidClientTokenId", "UnrecognizedClientException"):
            why = {
                "InvalidAccessKeyId": "the access key id is not known",
                "SignatureDoesNotMatch": "the secret access key does not match the access key id",
            }.get(code, "the session token is invalid or has expired")
            return StoreError(
                f"{where}: the credentials were refused for {operation} ({code}: {why}) — check AWS_ACCESS_KEY_ID/"
                f"AWS_SECRET_ACCESS_KEY/AWS_SESSION_TOKEN or AWS_PROFILE (`aws sts get-caller-identity` shows who you are)"
            )
        if code in ("PermanentRedirect", "AuthorizationHeaderMalformed", "IllegalLocationConstraintException"):
            return StoreError(f"{where}: bucket {self.bucket!r} is in another region than {self.region!r}; set `region` in the profile's offline_store to the bucket's region")
        if name in ("NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError"):
            return StoreError(
                f"{where}: no usable AWS credentials for {operation} ({name}) — set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, or run with an instance/task role"
            )
        if name in ("EndpointConnectionError", "ConnectTimeoutError", "ConnectionClosedError", "ReadTimeoutError"):
            return StoreError(f"{where}: cannot reach S3{f' at {self.endpoint_url}' if self.endpoint_url else ''} for {operation} ({name}); check the network and `endpoint_url`")
        if name == "ClientError":
            message = getattr(err, "response", {}).get("Error", {}).get("Message", "")
            return StoreError(f"{where}: {operation} on {key or '/'} failed: {code} {message}".rstrip())
        return StoreError(f"{where}: {operation} on {key or '/'} failed: {name}: {err}")


def _code(err: Exception) -> str:
    response = getattr(err, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


def _content_type(key: str) -> str:
    return "application/json" if key.endswith(".json") else "text/plain" if key.endswith(".gitignore") else "application/octet-stream"


class S3Store(VersionedStore):
    """The versioned offline store in `s3://<bucket>/<prefix>`.

    >>> store = S3Store("my-features", prefix="feature_store", region="eu-west-1")  # doctest: +SKIP

    Same layout, versioning and commit protocol as `LocalStore`; commits are conditional PUTs of
    `_latest.json`. Reads go through polars with `scan_options()` (endpoint, region, credentials).
    """

    blobs: S3Blobs

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        region: str | None = None,
        endpoint_url: str | None = None,
        *,
        session: Any = None,
        config: Any = None,
        verify: bool | str | None = None,
    ) -> None:
        blobs = S3Blobs(bucket, prefix, region, endpoint_url, session, config=config, verify=verify)
        super().__init__(blobs, description=blobs.where)
        self.bucket, self.prefix, self.endpoint_url = blobs.bucket, blobs.prefix, blobs.endpoint_url

    @classmethod
    def from_resource(cls, resource: Any, bucket: str, prefix: str = "") -> S3Store:
        """Build from a `dagster_aws.s3.S3Resource` (or anything with its fields), so a Dagster
        deployment configures S3 access once: region, endpoint, profile, keys, retries, SSL checks."""
        from botocore import UNSIGNED  # noqa: PLC0415
        from botocore.config import Config  # noqa: PLC0415

        session = _boto3().session.Session(
            profile_name=getattr(resource, "profile_name", None),
            aws_access_key_id=getattr(resource, "aws_access_key_id", None),
            aws_secret_access_key=getattr(resource, "aws_secret_access_key", None),
            aws_session_token=getattr(resource, "aws_session_token", None),
            region_name=getattr(resource, "region_name", None),
        )
        config = Config(
            retries={"mode": "standard", "max_attempts": getattr(resource, "max_attempts", 5) or 5},
            **({"signature_version": UNSIGNED} if getattr(resource, "use_unsigned_session", False) else {}),
        )
        return cls(bucket, prefix, region=getattr(resource, "region_name", None),
                   endpoint_url=getattr(resource, "endpoint_url", None), session=session, config=config,
                   verify=getattr(resource, "verify", None))

    def scan_options(self) -> dict:
        """Keyword arguments for `pl.scan_parquet` on this store's `s3://` files (they hold credentials: never log them)."""
        return {"storage_options": self.blobs.storage_options(), "credential_provider": None}

    def __repr__(self) -> str:
        return f"S3Store({self.description!r})"
