"""Run storage by URI: a folder on any filesystem pyarrow opens (``s3://``, ``gs://``, ``abfs://``,
``hdfs://``, ``file://``), which every node of a cluster reaches without a shared disk.

A URI may carry the filesystem's options as a query, as pyarrow and Ray Tune read them, e.g.
``s3://bucket/runs/demo?endpoint_override=10.0.0.5:9000&scheme=http`` for an S3-compatible server.
Credentials come from the environment, as each filesystem defines it (``AWS_ACCESS_KEY_ID``, ...).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs

LOCAL = pafs.LocalFileSystem()
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_uri(text: object) -> bool:
    """Whether ``text`` names a folder by URI (``scheme://...``) rather than a local path."""
    return isinstance(text, str) and bool(SCHEME.match(text))


def located(place: str | Path) -> Path | Remote:
    """A file or folder by local path or by URI; both answer ``/``, ``read_text``, ``write_text`` and
    ``unlink``."""
    return Remote(str(place)) if is_uri(place) else Path(place)


def shown(place: str | Path) -> str:
    """``place`` as a person reads it (a URI without its query)."""
    return Remote(str(place)).base if is_uri(place) else str(place)


@dataclass(frozen=True)
class Remote:
    """A file or folder at ``uri`` (its query, if any, configures the filesystem and is kept by
    :meth:`child`)."""

    uri: str

    @property
    def base(self) -> str:
        """The URI without its query: what a person reads, and what names a local copy."""
        return self.uri.split("?", 1)[0].rstrip("/")

    def child(self, rel: str | Path) -> Remote:
        base, sep, query = self.uri.partition("?")
        return Remote(f"{base.rstrip('/')}/{str(rel).strip('/')}{sep}{query}")

    __truediv__ = child

    def open(self) -> tuple[pafs.FileSystem, str]:
        """The filesystem and the path in it (an error names the URI and pyarrow's reason)."""
        try:
            return pafs.FileSystem.from_uri(self.uri)
        except (OSError, ValueError) as exc:
            raise OSError(f"{self.base}: cannot open ({str(exc).splitlines()[0]})") from None

    def is_file(self) -> bool:
        fs, path = self.open()
        return fs.get_file_info(path).type == pafs.FileType.File

    def read_bytes(self) -> bytes:
        fs, path = self.open()
        with fs.open_input_stream(path) as f:
            return bytes(f.read())

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)

    def write_bytes(self, data: bytes) -> None:
        fs, path = self.open()
        fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with fs.open_output_stream(path) as f:
            f.write(data)

    def write_text(self, text: str, encoding: str = "utf-8") -> None:
        self.write_bytes(text.encode(encoding))

    def unlink(self, missing_ok: bool = False) -> None:
        """Remove the file, as ``Path.unlink`` does (so a probe or a synced file is removed alike from a
        folder or a URI)."""
        fs, path = self.open()
        if fs.get_file_info(path).type == pafs.FileType.File:
            fs.delete_file(path)
        elif not missing_ok:
            raise FileNotFoundError(f"{self.base}: no such file")

    def files(self) -> dict[str, tuple[int, int]]:
        """Every file under the folder: relative path -> (size, modification time in ns; 0 where the
        filesystem keeps none)."""
        fs, path = self.open()
        if fs.get_file_info(path).type != pafs.FileType.Directory:
            return {}
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
        return {
            i.path[len(path) :].lstrip("/"): (int(i.size), int(i.mtime_ns or 0))
            for i in infos
            if i.type == pafs.FileType.File
        }

    def upload(self, local: Path) -> None:
        """A local file or folder copied to this place."""
        fs, path = self.open()
        fs.create_dir(path if local.is_dir() else path.rsplit("/", 1)[0], recursive=True)
        pafs.copy_files(str(local.resolve()), path, source_filesystem=LOCAL, destination_filesystem=fs)

    def download(self, local: Path) -> None:
        """This file or folder copied to ``local``."""
        fs, path = self.open()
        if fs.get_file_info(path).type == pafs.FileType.File:
            local.parent.mkdir(parents=True, exist_ok=True)
        else:
            local.mkdir(parents=True, exist_ok=True)
        pafs.copy_files(path, str(local.resolve()), source_filesystem=fs, destination_filesystem=LOCAL)
