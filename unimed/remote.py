"""Object storage (``s3://``) for ingest, verify and eval: the one module that talks to a bucket.

It speaks boto3, configured as mosaicml-streaming configures it, so one set of variables serves
training (which reads ``s3://`` streams through streaming's own download and cache) and everything
here: ``S3_ENDPOINT_URL`` for an S3-compatible store (MinIO, Ceph, R2, moto), the usual
``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_PROFILE`` and ``AWS_DEFAULT_REGION``, and
``S3_CANNED_ACL`` for uploads. streaming itself is not imported (it pulls in torch): the converter
stays a light process.

Every failure of the store (unreachable endpoint, no credentials, no such bucket, access denied) is a
one-line :class:`~unimed.errors.UserError` naming the URL. Uploads are single objects, each atomic on
the store (a reader sees the whole object or none), which is what lets the converter publish its
``index.json`` last. Downloads go to a temporary name, then are renamed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import urllib.parse
from collections.abc import Iterator
from typing import Any

from unimed.errors import UserError

__all__ = ["Store", "is_remote", "cache_root", "fetch", "local_folder"]

#: The schemes this module reads and writes (training reads every scheme streaming knows).
SCHEMES = ("s3",)


def is_remote(path: str | os.PathLike | None) -> bool:
    """Whether ``path`` is a URL (``scheme://...``) rather than a local path."""
    return path is not None and "://" in str(path)


def cache_root() -> str:
    """Where unimed keeps downloaded folders and conversion staging: ``$UNIMED_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/unimed`` (``~/.cache/unimed``)."""
    env = os.environ.get("UNIMED_CACHE_DIR")
    if env:
        return os.path.abspath(os.path.expanduser(env))
    return os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "unimed")


def url_folder(kind: str, url: str) -> str:
    """A local folder for ``url`` under the cache root: ``<root>/<kind>/<hash>/<last part of the URL>``,
    so it keeps the remote folder's name (evaluation names a set after its folder)."""
    digest = hashlib.sha1(url.rstrip("/").encode()).hexdigest()[:12]
    tail = url.rstrip("/").rsplit("/", 1)[-1] or "root"
    return os.path.join(cache_root(), kind, digest, tail)


class Store:
    """One ``s3://bucket/prefix`` folder: list, upload, download, read and delete objects by their
    path relative to the folder. ``label`` starts every error message (``--out`` for the converter)."""

    def __init__(self, url: str, label: str = "") -> None:
        parsed = urllib.parse.urlparse(url)
        self.label = f"{label} " if label else ""
        if parsed.scheme not in SCHEMES:
            raise UserError(
                f"{self.label}{url}: only {', '.join(s + '://' for s in SCHEMES)} object storage "
                "is read and written here (training reads what mosaicml-streaming reads)"
            )
        if not parsed.netloc:
            raise UserError(f"{self.label}{url}: no bucket; write s3://BUCKET/PREFIX")
        self.url = url.rstrip("/")
        self.bucket = parsed.netloc
        self.prefix = parsed.path.strip("/")
        self.endpoint = os.environ.get("S3_ENDPOINT_URL") or None
        self._client: Any = None

    @property
    def client(self) -> Any:
        """The boto3 S3 client (made on first use; boto3 clients may be shared between threads)."""
        if self._client is None:
            import boto3
            from botocore.config import Config

            config = Config(connect_timeout=10, read_timeout=120, retries={"max_attempts": 4, "mode": "standard"})
            try:
                self._client = boto3.session.Session().client("s3", config=config, endpoint_url=self.endpoint)
            except ValueError as exc:  # a malformed S3_ENDPOINT_URL
                raise UserError(
                    f"{self.label}{self.url}: S3_ENDPOINT_URL={self.endpoint!r} is not usable ({exc})"
                ) from None
        return self._client

    def key(self, rel: str) -> str:
        """The object key of ``rel`` (a path relative to this folder)."""
        return f"{self.prefix}/{rel}" if self.prefix else rel

    @contextlib.contextmanager
    def errors(self, what: str = "") -> Iterator[None]:
        """Turn the store's failures inside the block into one-line UserErrors naming the URL."""
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            ConnectionError,
            NoCredentialsError,
            PartialCredentialsError,
        )

        where = f"{self.label}{self.url}{'/' + what if what else ''}"
        at = f" at {self.endpoint}" if self.endpoint else ""
        try:
            yield
        except ClientError as exc:
            err = exc.response.get("Error", {})
            code = str(err.get("Code", ""))
            if code in ("NoSuchBucket",) or (code == "404" and not what):
                raise UserError(
                    f"{where}: bucket {self.bucket!r} does not exist{at}; create it or fix the URL"
                ) from None
            if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                raise UserError(
                    f"{where}: access denied{at} ({code}); check the credentials "
                    "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE)"
                ) from None
            if code in ("404", "NoSuchKey"):
                raise UserError(f"{where}: no such object{at}") from None
            raise UserError(
                f"{where}: the object store{at} answered {code}: {err.get('Message', '')}".rstrip(": ")
            ) from None
        except (NoCredentialsError, PartialCredentialsError):
            raise UserError(
                f"{where}: no credentials for the object store; set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)"
            ) from None
        except ConnectionError as exc:
            raise UserError(
                f"{where}: cannot reach the object store{at or ' (AWS)'} ({type(exc).__name__}); "
                "check S3_ENDPOINT_URL and the network"
            ) from None
        except BotoCoreError as exc:
            raise UserError(f"{where}: {type(exc).__name__}: {exc}") from None

    def check(self) -> None:
        """Make sure the endpoint answers and the bucket exists (one request)."""
        with self.errors():
            self.client.head_bucket(Bucket=self.bucket)

    def require_index(self) -> None:
        """Make sure the folder is a finished dataset (its ``index.json`` is there): one line if not."""
        self.check()
        with self.errors("index.json"):
            try:
                self.client.head_object(Bucket=self.bucket, Key=self.key("index.json"))
            except Exception as exc:
                if getattr(exc, "response", {}).get("Error", {}).get("Code") in ("404", "NoSuchKey"):
                    raise UserError(
                        f"{self.label}{self.url}: no index.json (not a converted folder, or its "
                        "conversion has not finished)"
                    ) from None
                raise

    def list(self) -> dict[str, dict]:
        """Every object under the folder: relative path -> ``{"size", "etag"}``."""
        found: dict[str, dict] = {}
        base = f"{self.prefix}/" if self.prefix else ""
        with self.errors():
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=base)
            for page in pages:
                for obj in page.get("Contents", []):
                    rel = obj["Key"][len(base) :]
                    if rel and not rel.endswith("/"):
                        found[rel] = {"size": int(obj["Size"]), "etag": str(obj.get("ETag", "")).strip('"')}
        return found

    def upload(self, local: str, rel: str) -> None:
        """Upload the local file ``local`` as ``rel`` (replacing it); multipart for big files."""
        extra = {"ACL": os.environ["S3_CANNED_ACL"]} if os.environ.get("S3_CANNED_ACL") else None
        with self.errors(rel):
            self.client.upload_file(local, self.bucket, self.key(rel), ExtraArgs=extra)

    def download(self, rel: str, local: str) -> None:
        """Download ``rel`` to the local file ``local`` (a temporary name, then renamed)."""
        os.makedirs(os.path.dirname(local) or ".", exist_ok=True)
        tmp = f"{local}.part{os.getpid()}"
        try:
            with self.errors(rel):
                self.client.download_file(self.bucket, self.key(rel), tmp)
            os.replace(tmp, local)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    def read_json(self, rel: str) -> Any:
        """The JSON object stored at ``rel``."""
        with self.errors(rel):
            body = self.client.get_object(Bucket=self.bucket, Key=self.key(rel))["Body"].read()
        try:
            return json.loads(body)
        except ValueError:
            raise UserError(f"{self.label}{self.url}/{rel}: not valid JSON") from None


_MANIFEST = ".unimed-fetched.json"  # in a fetched folder: relative path -> etag of what was downloaded


def fetch(url: str, local: str | None = None, skip: tuple[str, ...] = (".unimed/",)) -> str:
    """Download the folder ``url`` into ``local`` (default: a folder under :func:`cache_root`); return it.

    A second fetch downloads only objects that changed (by ETag) and removes local files the remote
    no longer holds, so the copy always mirrors the folder. Paths starting with one of ``skip`` (the
    converter's run state) are left out.
    """
    store = Store(url)
    local = local or url_folder("fetched", store.url)
    objects = {rel: o for rel, o in store.list().items() if not rel.startswith(skip)}
    if not objects:
        raise UserError(f"{store.url}: no objects there (not a converted folder, or the URL is wrong)")
    manifest_path = os.path.join(local, _MANIFEST)
    try:
        with open(manifest_path) as fh:
            have = json.load(fh)
    except (OSError, ValueError):
        have = {}
    for rel in sorted(set(have) - set(objects)):
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(local, rel))
        have.pop(rel)
    for rel, obj in sorted(objects.items()):
        path = os.path.join(local, rel)
        if have.get(rel) == obj["etag"] and os.path.isfile(path) and os.path.getsize(path) == obj["size"]:
            continue
        store.download(rel, path)
        have[rel] = obj["etag"]
    os.makedirs(local, exist_ok=True)
    tmp = f"{manifest_path}.tmp{os.getpid()}"
    with open(tmp, "w") as fh:
        json.dump(have, fh)
    os.replace(tmp, manifest_path)
    return local


def local_folder(path: str) -> str:
    """``path`` itself when local; for an ``s3://`` folder, a local copy of it (:func:`fetch`)."""
    return fetch(path) if is_remote(path) else path
