"""Where a sweep's trials and checkpoints live: `--storage` as one pyarrow filesystem.

`--storage` is a directory, or a URI pyarrow understands: `file:///shared/runs`,
`s3://bucket/runs` (credentials from the usual AWS variables or the node's IAM role), and
an S3-compatible server such as MinIO with its endpoint in the URI,
`s3://bucket/runs?endpoint_override=host:9000&scheme=http`. Tune, Ray Train and every file
the sweep itself reads or writes there (the sweep record, the trials' final artifacts,
`--resume`'s listing) go through the same filesystem object, so a URI with options works
everywhere a path would.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow.fs

from orchestrator.errors import UsageError

if TYPE_CHECKING:
    import pandas as pd


@dataclass(frozen=True)
class Storage:
    uri: str                             # as given (a local path made absolute)
    filesystem: pyarrow.fs.FileSystem
    root: str                            # the storage's path inside `filesystem`

    @property
    def is_uri(self) -> bool:
        """Given as a URI: the sweep's results then go to ./runs/<run> of the driver."""
        return "://" in self.uri

    def path(self, *parts: str) -> str:
        """A path inside the storage, for `filesystem`."""
        return "/".join([self.root.rstrip("/"), *parts])

    def display(self, *parts: str) -> str:
        """Where `parts` are, for people: the URI without its options, then the parts."""
        return "/".join([self.uri.split("?", 1)[0].rstrip("/"), *parts])

    def subdirectories(self, *parts: str) -> list[str]:
        found = self.filesystem.get_file_info(
            pyarrow.fs.FileSelector(self.path(*parts), allow_not_found=True))
        return sorted(i.base_name for i in found if i.type == pyarrow.fs.FileType.Directory)

    def is_file(self, path: str) -> bool:
        return self.filesystem.get_file_info(path).type == pyarrow.fs.FileType.File

    def read_json(self, path: str) -> Any:
        with self.filesystem.open_input_stream(path) as stream:
            return json.loads(stream.read().decode())

    def write_json(self, path: str, value: Any) -> None:
        self.filesystem.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with self.filesystem.open_output_stream(path) as stream:
            stream.write(json.dumps(value, indent=2, default=str).encode())


FULL_BELOW = 1 << 20  # bytes free under which a local storage counts as full


def storage_full(storage: Storage) -> str:
    """"1.2 KiB free under /path" when a local storage has (almost) no space left, else ""
    (a URI's space is the server's: not measured here)."""
    if storage.is_uri:
        return ""
    import shutil

    free = shutil.disk_usage(storage.root).free
    return f"{free / 1024:.1f} KiB free under {storage.root}" if free < FULL_BELOW else ""


def open_storage(storage: str) -> Storage:
    """The filesystem of `--storage`; UsageError when pyarrow cannot make one of it."""
    if "://" not in storage:
        local = str(Path(storage).expanduser().resolve())
        return Storage(local, pyarrow.fs.LocalFileSystem(), local)
    try:
        filesystem, root = pyarrow.fs.FileSystem.from_uri(storage)
    except (pyarrow.ArrowInvalid, pyarrow.ArrowNotImplementedError, OSError) as error:
        raise UsageError(f"--storage {storage}: {error}") from None
    return Storage(storage, filesystem, root)


def read_final_artifacts(filesystem: pyarrow.fs.FileSystem, checkpoint_path: str | None,
                         name: str) -> dict | None:
    """The JSON file `name` (final.json) of a checkpoint directory in storage, if present."""
    if not checkpoint_path:
        return None
    path = f"{checkpoint_path.rstrip('/')}/{name}"
    if filesystem.get_file_info(path).type != pyarrow.fs.FileType.File:
        return None
    with filesystem.open_input_stream(path) as stream:
        return json.loads(stream.read().decode())


def read_examples(filesystem: pyarrow.fs.FileSystem, checkpoint_path: str | None,
                  name: str) -> pd.DataFrame | None:
    """The per-example outputs (`name`: examples.parquet) of a checkpoint directory in
    storage, if present."""
    if not checkpoint_path:
        return None
    path = f"{checkpoint_path.rstrip('/')}/{name}"
    if filesystem.get_file_info(path).type != pyarrow.fs.FileType.File:
        return None
    from pyarrow import parquet

    return parquet.read_table(path, filesystem=filesystem).to_pandas()


def long_tables(final: dict[str, Any]) -> dict[str, list[dict]]:
    """The long tables of a trial's final.json (one row per trial x ...): its entries that
    are lists of rows (`ood`, `diagnostic`, and a study's own tables). The
    report writes each to results/<name>.csv; W&B logs each but `diagnostic` as a table."""
    return {name: rows for name, rows in final.items()
            if isinstance(rows, list) and rows and all(isinstance(r, dict) for r in rows)}
