"""Durable files on any fsspec filesystem: write to a temp name, then rename into place.

A reader (or a resumed run) therefore sees a file complete or not at all. On object stores
the rename is a copy + delete, still never a partial object under the final name.
"""

from __future__ import annotations

import io
import json
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq


def filesystem(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    return fsspec.core.url_to_fs(url)


def absolute(url: str) -> str:
    """A local path made absolute (URLs unchanged): Ray Train workers run in a directory of
    their own, where a relative path would name another place."""
    return url if "://" in url else str(Path(url).resolve())


def absolute_if_dir(path: str) -> str:
    """A path naming a local directory made absolute; anything else (a hub id, tiny:<name>, a
    URL, "") as it is."""
    return str(Path(path).resolve()) if path and Path(path).is_dir() else path


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts])


def write_bytes_atomic(url: str, data: bytes) -> None:
    fs, path = filesystem(url)
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    if parent:
        fs.makedirs(parent, exist_ok=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    with fs.open(tmp, "wb") as f:
        f.write(data)
    fs.mv(tmp, path)


def write_parquet_atomic(table: pa.Table, url: str) -> None:
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    write_bytes_atomic(url, buffer.getvalue())


def write_json_atomic(obj, url: str) -> None:
    write_bytes_atomic(url, json.dumps(obj, indent=2, sort_keys=True).encode())


def read_json(url: str):
    fs, path = filesystem(url)
    with fs.open(path, "rb") as f:
        return json.load(f)


def exists(url: str) -> bool:
    fs, path = filesystem(url)
    return fs.exists(path)


def list_parquet(dir_url: str) -> list[str]:
    """Complete Parquet files of a directory (temp files excluded), sorted by name."""
    fs, path = filesystem(dir_url)
    if not fs.exists(path):
        return []
    names = sorted(p for p in fs.ls(path, detail=False) if p.endswith(".parquet"))
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return [n if protocol == "file" else f"{protocol}://{n}" for n in names]


def read_parquet_dir(dir_url: str, schema: pa.Schema) -> pa.Table:
    """All of a directory's Parquet files as one table with `schema` (empty if none)."""
    tables = []
    for url in list_parquet(dir_url):
        fs, path = filesystem(url)
        with fs.open(path, "rb") as f:
            tables.append(pq.read_table(f, schema=schema))
    return pa.concat_tables(tables) if tables else schema.empty_table()


def redact_uri(uri: str) -> str:
    """The URI without what may be a secret: the user and password before the host, and the
    query (presigned URLs carry their signature there)."""
    parts = urlsplit(uri)
    if not parts.netloc and not parts.query:
        return uri
    host = parts.netloc.rpartition("@")[2]
    userinfo = "<redacted>@" if "@" in parts.netloc else ""
    return urlunsplit((parts.scheme, userinfo + host, parts.path, "<redacted>" if parts.query else "", parts.fragment))
