"""The one way vizcnn reads a checkpoint file: bounded however the file is forged.

Every checkpoint path (``--weights FILE``, the shipped weights, ``study --trained``, the
study's resume and its evolution snapshots) goes through :func:`load_bounded`:

* only a regular file is opened (a FIFO, device, socket or directory is refused at once,
  so nothing blocks);
* the zip must be one archive that every reader sees alike: exactly one
  end-of-central-directory record, whose central directory ends where that record (or
  its zip64 record) begins. Python's ``zipfile`` reads the directory just before the
  record, torch's reader (miniz) the one the record points to; a forged file with two
  directories shows them different entries, so it is refused;
* the sizes that torch's own reader (``PyTorchFileReader``, the one ``torch.load`` uses)
  will inflate, summed over every record, must be within ``max_bytes``; and its record
  list must equal Python's. All of that reads only the directories: nothing is inflated
  before the check has passed, and a refusal says so only then;
* the file is loaded with ``torch.load(weights_only=True)``: a pickle that would run
  code, or build anything but tensors and plain containers, is refused.
"""
from __future__ import annotations

import os
import struct
import zipfile
from pathlib import Path
from typing import Any

import torch

from ..core.errors import BadInputError

#: The bound when a caller has no model to size it by: 2 GiB unpacked.
MAX_CHECKPOINT_BYTES = 2 << 30

_EOCD = b"PK\x05\x06"
_EOCD64_LOCATOR = b"PK\x06\x07"
_EOCD64 = b"PK\x06\x06"
_TAIL = (1 << 16) + 22  # an EOCD record (22 bytes) and the longest comment it may carry


def load_bounded(path: str | os.PathLike, *, max_bytes: int | None = None,
                 map_location: Any = "cpu") -> Any:
    """What ``torch.load(path, weights_only=True, map_location=...)`` returns, read only
    after the checks of this module's docstring passed: a regular file, one consistent
    zip, at most ``max_bytes`` (default :data:`MAX_CHECKPOINT_BYTES`) in the records
    torch's reader would inflate.

    Raises:
        BadInputError: anything else (missing, not a regular file, not a zip checkpoint,
            forged, over the bound, code in the pickle, truncated); one line.
    """
    from ..io.imageio import display_text, open_regular

    shown = display_text(path)
    limit = MAX_CHECKPOINT_BYTES if max_bytes is None else int(max_bytes)
    with open_regular(path, f"weights {shown}", what="checkpoint file") as file:
        _check_archive(file, shown, limit)
        try:
            return torch.load(file, map_location=map_location, weights_only=True)
        except Exception as e:  # noqa: BLE001 — any failure inside torch.load is a bad file
            text = str(e).strip()
            reason = text.splitlines()[0] if text else type(e).__name__
            if "weights_only" in text or "Unsupported global" in text:
                reason = "it holds Python objects other than tensors (refused: loading it could run code)"
            raise BadInputError(f"cannot load weights {shown}: {reason[:300]}") from None


def _check_archive(file, shown: str, limit: int) -> None:
    size = os.fstat(file.fileno()).st_size
    not_zip = (f"cannot load weights {shown}: not a zip checkpoint (torch.save's format since PyTorch 1.6); "
               "load it and save it again with torch.save")
    try:
        _one_directory(file, size, shown)
        with zipfile.ZipFile(file) as archive:
            python_view = {_record(e.filename): e.file_size for e in archive.infolist() if not e.is_dir()}
    except BadInputError:
        raise
    except (zipfile.BadZipFile, struct.error, OSError, ValueError, EOFError):
        raise BadInputError(not_zip) from None
    finally:
        file.seek(0)
    _check_total(sum(python_view.values()), shown, limit)
    try:
        reader = torch._C.PyTorchFileReader(file)
        torch_view = {name: reader.get_record_size(name) for name in reader.get_all_records()}
    except Exception as e:  # noqa: BLE001 — torch's reader cannot read it: not a checkpoint it can load
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise BadInputError(f"cannot load weights {shown}: torch cannot read this zip ({reason[:200]})") from None
    finally:
        file.seek(0)
    if torch_view != python_view:
        raise BadInputError(f"cannot load weights {shown}: a forged zip (torch's reader and Python's see different "
                            "entries); refused before inflating")
    _check_total(sum(torch_view.values()), shown, limit)


def _check_total(declared: int, shown: str, limit: int) -> None:
    if declared > limit:
        raise BadInputError(f"cannot load weights {shown}: its records declare {declared} bytes unpacked, more than "
                            f"the {limit} a checkpoint for this model may hold (refused before inflating)")


def _record(name: str) -> str:
    """A zip entry's name as torch's reader lists it: without the archive's top folder."""
    return name.split("/", 1)[1] if "/" in name else name


def _one_directory(file, size: int, shown: str) -> None:
    """Exactly one end-of-central-directory record, and its central directory ends where
    the record (or its zip64 end record) begins: then every zip reader reads the same
    directory. Reads only the file's last 64 KiB (and the zip64 record)."""
    start = max(0, size - _TAIL)
    file.seek(start)
    tail = file.read()
    found = []
    at = tail.rfind(_EOCD)
    while at != -1:
        if at + 22 <= len(tail):
            (comment,) = struct.unpack("<H", tail[at + 20:at + 22])
            if at + 22 + comment == len(tail):
                found.append(at)
        at = tail.rfind(_EOCD, 0, at)
    if len(found) != 1:
        if not found:
            raise zipfile.BadZipFile("no end of central directory")
        raise BadInputError(f"cannot load weights {shown}: a forged zip ({len(found)} end-of-central-directory "
                            "records); refused before inflating")
    eocd = start + found[0]
    _, _, _, _, entries, cd_size, cd_offset, _ = struct.unpack("<4sHHHHIIH", tail[found[0]:found[0] + 22])
    directory_end = eocd
    loc = found[0] - 20
    has_locator = loc >= 0 and tail[loc:loc + 4] == _EOCD64_LOCATOR
    if has_locator or cd_offset == 0xFFFFFFFF or cd_size == 0xFFFFFFFF or entries == 0xFFFF:  # zip64 (torch.save
        # always writes one): the real numbers are in the zip64 end record, which readers look for first
        if not has_locator:
            raise BadInputError(f"cannot load weights {shown}: a forged zip (zip64 sizes without a zip64 locator); "
                                "refused before inflating")
        (record_at,) = struct.unpack("<Q", tail[loc + 8:loc + 16])
        file.seek(record_at)
        record = file.read(56)
        if len(record) < 56 or record[:4] != _EOCD64:
            raise BadInputError(f"cannot load weights {shown}: a forged zip (its zip64 locator points nowhere); "
                                "refused before inflating")
        cd_size, cd_offset = struct.unpack("<QQ", record[40:56])
        directory_end = record_at
        if record_at + 56 > eocd - 20:
            raise BadInputError(f"cannot load weights {shown}: a forged zip (overlapping zip64 records); "
                                "refused before inflating")
    if cd_offset + cd_size != directory_end:
        raise BadInputError(f"cannot load weights {shown}: a forged zip (its central directory does not end where "
                            "its end record begins, so readers would see different entries); refused before inflating")


__all__ = ["MAX_CHECKPOINT_BYTES", "load_bounded"]
