"""The IDX format (MNIST's and EMNIST's files): a magic number with the data type and rank,
big-endian sizes, then the data. torchvision reads it; here a file is checked first, so that
a truncated one is named."""

from __future__ import annotations

from pathlib import Path

import numpy as np

IDX_TYPES = {0x08: 1, 0x09: 1, 0x0B: 2, 0x0C: 4, 0x0D: 4, 0x0E: 8}  # type code -> bytes


def check_idx_file(path: Path) -> str | None:
    """What is wrong with an IDX file (MNIST's format: a magic number with the type and
    rank, big-endian sizes, then the data), or None if its size is what its header says."""
    data = path.read_bytes()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in IDX_TYPES:
        return f"not an IDX file ({len(data):,} bytes, no IDX magic number)"
    rank = data[3]
    if len(data) < 4 + 4 * rank:
        return f"truncated IDX header ({len(data):,} bytes)"
    shape = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(rank)]
    expected = 4 + 4 * rank + int(np.prod(shape)) * IDX_TYPES[data[2]]
    if len(data) != expected:
        return (f"truncated or corrupt IDX file ({len(data):,} bytes; its header, shape "
                f"{tuple(shape)}, needs {expected:,})")
    return None
