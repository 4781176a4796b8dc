"""Read W&B offline runs (`wandb/offline-run-*/run-*.wandb`) without a server.

wandb >= 0.31 keeps an offline run's config, history and summary only in its `.wandb` file:
a LevelDB-style log (32 KiB blocks of CRC-framed chunks) of protobuf `Record`s, and it no
longer ships a reader. This module is that reader, used to verify runs and to tell users
what an offline run holds before `wandb sync`.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_FILE_HEADER = struct.Struct("<4sHB")  # ident ":W&B", magic 0xBEE1, version
_CHUNK_HEADER = struct.Struct("<IHB")  # masked crc32, payload length, chunk type
_BLOCK = 32768
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


class OfflineRunFormatError(ValueError):
    """The file is not a W&B offline run log this reader understands."""


def _chunks(data: bytes):
    """Yield the record payloads of a LevelDB-style log, joining FIRST/MIDDLE/LAST chunks."""
    ident, magic, version = _FILE_HEADER.unpack_from(data, 0)
    if ident != b":W&B" or magic != 0xBEE1:
        raise OfflineRunFormatError(f"bad header {ident!r} {magic:#x} v{version}")
    pos, pending = _FILE_HEADER.size, b""
    while pos + _CHUNK_HEADER.size <= len(data):
        room = _BLOCK - pos % _BLOCK
        if room < _CHUNK_HEADER.size:  # block trailer padding
            pos += room
            continue
        _, length, kind = _CHUNK_HEADER.unpack_from(data, pos)
        pos += _CHUNK_HEADER.size
        payload = data[pos:pos + length]
        pos += length
        if kind == 0 and length == 0:  # zero padding at the end of a block
            pos += _BLOCK - pos % _BLOCK if pos % _BLOCK else 0
            continue
        if kind == _FULL:
            yield payload
        elif kind == _FIRST:
            pending = payload
        elif kind == _MIDDLE:
            pending += payload
        elif kind == _LAST:
            yield pending + payload
            pending = b""
        else:
            raise OfflineRunFormatError(f"unknown chunk type {kind} at byte {pos}")


def _item_value(item) -> tuple[str, Any]:
    return item.key or "/".join(item.nested_key), json.loads(item.value_json)


def _config_value(value: Any) -> Any:
    """Config items are stored as {"value": v, ...} in some records and bare in others."""
    return value["value"] if isinstance(value, dict) and "value" in value else value


@dataclass
class OfflineRun:
    """What one offline run recorded: its id, group, config, history rows and summary."""

    path: Path
    run_id: str = ""
    group: str = ""
    project: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)


def read_offline_run(run_dir: str | Path) -> OfflineRun:
    """Parse the `.wandb` file of an `offline-run-*` directory."""
    from wandb.proto import wandb_internal_pb2

    run_dir = Path(run_dir)
    files = sorted(run_dir.glob("run-*.wandb"))
    if not files:
        raise OfflineRunFormatError(f"no run-*.wandb file in {run_dir}")
    run = OfflineRun(path=run_dir)
    for payload in _chunks(files[0].read_bytes()):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            # Later run records (updates) may leave fields empty: keep what is known.
            run.run_id = record.run.run_id or run.run_id
            run.group = record.run.run_group or run.group
            run.project = record.run.project or run.project
            for item in record.run.config.update:
                key, value = _item_value(item)
                run.config[key] = _config_value(value)
        elif kind == "config":
            for item in record.config.update:
                key, value = _item_value(item)
                run.config[key] = _config_value(value)
        elif kind == "history":
            run.history.append(dict(_item_value(item) for item in record.history.item))
        elif kind == "summary":
            run.summary.update(_item_value(item) for item in record.summary.update)
    return run


def find_offline_runs(root: str | Path) -> list[Path]:
    """All `offline-run-*` directories below `root`."""
    return sorted(p for p in Path(root).rglob("offline-run-*") if p.is_dir())
