"""Read an offline W&B run file (run-<id>.wandb) without a server or an account.

The file is a LevelDB-style log (32 KiB blocks of checksummed chunks, after a
7-byte ':W&B' header) of protobuf ``Record`` messages; wandb 0.31 no longer ships
a Python reader for it, so tests use this one to see what a run recorded.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path

from wandb.proto import wandb_internal_pb2 as pb

BLOCK = 32768
HEADER = 7  # ':W&B' + magic (2 bytes) + version (1 byte)
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> Iterator[pb.Record]:
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    pos, pending = HEADER, b""
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:  # block trailer: padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 0:
            continue
        pending = chunk if kind in (FULL, FIRST) else pending + chunk
        if kind in (FULL, LAST):
            record = pb.Record()
            record.ParseFromString(pending)
            yield record
            pending = b""


def read_run(path: Path) -> dict:
    """name, group, config, summary and exit code of one offline run."""
    run = {"name": None, "group": None, "config": {}, "summary": {}, "exit_code": None, "media": 0}
    for record in records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run["name"], run["group"] = record.run.display_name, record.run.run_group
            updates = record.run.config.update
        elif kind == "config":
            updates = record.config.update
        elif kind == "summary":
            for item in record.summary.update:
                run["summary"][item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
            continue
        elif kind == "exit":
            run["exit_code"] = record.exit.exit_code
            continue
        elif kind == "files":
            run["media"] += sum("media/images" in f.path for f in record.files.files)
            continue
        else:
            continue
        for item in updates:
            run["config"][item.key] = json.loads(item.value_json)
    return run
