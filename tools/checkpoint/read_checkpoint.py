#!/usr/bin/env python3
"""Print a JSON summary of a lowsync checkpoint and verify it independently of the C++ reader.

Reads the layout written by src/io/checkpoint_file.cpp (format_version 1) with h5py and recomputes
every CRC32 with zlib.crc32: one per "global" dataset, one per row of a "per_rank" [K, n] dataset.
Needs a python3 with h5py (Debian: python3-h5py, i.e. /usr/bin/python3).

Exit status: 0 checkpoint complete and every checksum matches; 1 a problem was found (all listed
in "problems"; one line on stderr names the file and the first); 2 the file cannot be read as
HDF5. A damaged file (truncated, flipped bits, altered attributes) never ends in a traceback.

  read_checkpoint.py run/ckpt-00000100.h5            # summary + verification
  read_checkpoint.py --latest run/                   # newest checkpoint of a directory that verifies
"""
import argparse
import json
import re
import sys
import zlib

import h5py
import numpy as np

FORMAT_VERSION = 1
NAME_RE = re.compile(r"^ckpt-(\d{8,18})\.h5$")


# Integer attributes the C++ reader relies on, with the smallest value each may take.
INTEGER_ATTRIBUTES = {"format_version": 1, "complete": 0, "step": 0, "world_size": 1, "num_params": 1}
REQUIRED_DATASETS = ("model/params",)


class Problem(Exception):
    """Something wrong with one attribute or dataset; becomes one entry of "problems"."""


def crc32(array):
    # The C++ writer checksums the little-endian bytes of the row-major data.
    data = np.ascontiguousarray(array)
    data = data.astype(data.dtype.newbyteorder("<"), copy=False)
    return zlib.crc32(data.tobytes()) & 0xFFFFFFFF


def attr_value(value, max_chars, where="attribute"):
    """A JSON-printable value; raises Problem for bytes that are not UTF-8 or a type no lowsync
    writer produces (references, compound values)."""
    try:
        if isinstance(value, (bytes, np.bytes_)):
            value = bytes(value).decode("utf-8")
        elif isinstance(value, np.ndarray):
            if value.dtype.kind not in "biuf":
                raise Problem(f"{where}: unexpected type {value.dtype}")
            value = value.tolist()
        elif isinstance(value, np.generic):
            value = value.item()
    except UnicodeDecodeError:
        raise Problem(f"{where}: not UTF-8 text") from None
    if not isinstance(value, (str, int, float, bool, list)):
        raise Problem(f"{where}: unexpected type {type(value).__name__}")
    if isinstance(value, str) and max_chars is not None and len(value) > max_chars:
        return value[:max_chars] + f"... ({len(value)} chars)"
    return value


def stored_crcs(dset, name):
    """The crc32 attribute as a 1-D list of 32-bit values; Problem when it is anything else."""
    raw = np.asarray(dset.attrs["crc32"])
    if raw.dtype.kind not in "iu" or raw.ndim > 1:
        raise Problem(f"dataset '{name}': crc32 attribute is not a list of 32-bit integers "
                      f"(dtype {raw.dtype}, shape {list(raw.shape)})")
    values = [int(v) for v in np.atleast_1d(raw)]
    if not values or any(v < 0 or v > 0xFFFFFFFF for v in values):
        raise Problem(f"dataset '{name}': crc32 attribute holds no 32-bit values ({values[:4]})")
    return values


def check_dataset(f, name, info, verify):
    dset = f[name]
    kind = attr_value(dset.attrs.get("kind", b""), None, f"dataset '{name}' attribute kind")
    info.update({"kind": kind, "dtype": dset.dtype.str, "shape": list(dset.shape)})
    if dset.dtype.kind not in "biuf":
        raise Problem(f"dataset '{name}': dtype {dset.dtype} is not a plain number type")
    if "crc32" not in dset.attrs:
        raise Problem(f"dataset '{name}': no crc32 attribute")
    stored = stored_crcs(dset, name)
    problems = []
    if kind == "global":
        info["crc32"] = f"{stored[0]:08x}"
        if len(stored) != 1:
            problems.append(f"dataset '{name}': {len(stored)} crc32 values for a global dataset")
        elif verify:
            computed = crc32(dset[()])
            info["crc_ok"] = computed == stored[0]
            if not info["crc_ok"]:
                problems.append(f"dataset '{name}': checksum mismatch "
                                f"(crc32 stored {stored[0]:08x}, computed {computed:08x})")
    elif kind == "per_rank":
        if dset.ndim != 2:
            raise Problem(f"dataset '{name}': per_rank dataset has shape {list(dset.shape)}, not [ranks, n]")
        info["saved_ranks"], info["row_length"] = dset.shape
        info["crc32"] = [f"{c:08x}" for c in stored]
        if len(stored) != dset.shape[0]:
            problems.append(f"dataset '{name}': {len(stored)} crc32 values for {dset.shape[0]} rows")
        elif verify:
            bad = [r for r in range(dset.shape[0]) if crc32(dset[r, :]) != stored[r]]
            info["crc_ok"] = not bad
            for r in bad:
                problems.append(f"dataset '{name}': checksum mismatch in row {r}")
    else:
        problems.append(f"dataset '{name}': unknown kind {kind!r}")
    return problems


def hdf5_message(e):
    # h5py's errors are one line, KeyError's repr is quoted: keep the text only.
    text = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
    return str(text).splitlines()[0] if str(text) else type(e).__name__


def summarize(path, verify=True, max_chars=200):
    problems = []
    summary = {"path": str(path), "attributes": {}, "datasets": {}, "problems": problems}
    with h5py.File(path, "r") as f:
        # A flipped bit in the HDF5 metadata surfaces as an error of whichever call touches it
        # (RuntimeError, KeyError, OSError, ...): each becomes a problem, never a traceback.
        try:
            items = list(f.attrs.items())
        except Exception as e:  # noqa: BLE001 (any h5py failure is a problem of this file)
            items = []
            problems.append(f"cannot read the file attributes: {hdf5_message(e)}")
        attributes = summary["attributes"]
        for key, value in items:
            try:
                attributes[key] = attr_value(value, max_chars, f"attribute '{key}'")
            except Problem as e:
                attributes[key] = None
                problems.append(str(e))
        for key, lowest in INTEGER_ATTRIBUTES.items():
            v = attributes.get(key)
            if key in attributes and v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < lowest):
                problems.append(f"attribute '{key}' = {v!r}: expected an integer >= {lowest}")
        version = attributes.get("format_version")
        if version != FORMAT_VERSION:
            problems.append(f"format_version {version!r}, expected {FORMAT_VERSION}")
        if attributes.get("complete") != 1:
            problems.append("incomplete checkpoint (no complete = 1 marker)")

        names = []
        try:
            f.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
        except Exception as e:  # noqa: BLE001
            problems.append(f"cannot list the datasets: {hdf5_message(e)}")
        for name in REQUIRED_DATASETS:
            if name not in names:
                problems.append(f"dataset '{name}' missing")
        for name in sorted(names):
            info = summary["datasets"].setdefault(name, {})
            try:
                problems += check_dataset(f, name, info, verify)
            except Problem as e:
                problems.append(str(e))
            except Exception as e:  # noqa: BLE001
                problems.append(f"dataset '{name}': cannot read: {hdf5_message(e)}")
    summary["ok"] = not problems
    return summary


def latest(directory, max_chars):
    import pathlib
    candidates = sorted((int(m.group(1)), p) for p in pathlib.Path(directory).iterdir()
                        if (m := NAME_RE.match(p.name)))
    skipped = []
    for _, path in reversed(candidates):
        try:
            summary = summarize(path, True, max_chars)
        except Exception as e:  # noqa: BLE001 (not HDF5, or metadata too damaged to open)
            skipped.append(f"{path}: cannot open ({hdf5_message(e)})")
            continue
        if summary["ok"]:
            summary["skipped"] = skipped
            return summary
        skipped.append(f"{path}: " + "; ".join(summary["problems"]))
    return {"path": None, "ok": False, "skipped": skipped, "problems": ["no checkpoint verifies"]}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", help="checkpoint file, or directory with --latest")
    parser.add_argument("--latest", action="store_true", help="pick the newest checkpoint of a directory that verifies")
    parser.add_argument("--no-verify", action="store_true", help="skip reading the data (summary only)")
    parser.add_argument("--max-chars", type=int, default=200, help="truncate string attributes (0: never)")
    args = parser.parse_args()
    max_chars = args.max_chars or None
    try:
        summary = latest(args.path, max_chars) if args.latest else summarize(args.path, not args.no_verify, max_chars)
    except FileNotFoundError:
        print(f"read_checkpoint: {args.path}: no such file or directory", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 (h5py raises OSError, RuntimeError, ... on a damaged file)
        print(f"read_checkpoint: {args.path}: cannot read as HDF5: {hdf5_message(e)}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    # One line on stderr names the file and the first problem; the JSON lists them all.
    problems = summary["problems"]
    if problems:
        more = f" (and {len(problems) - 1} more, listed in \"problems\")" if len(problems) > 1 else ""
        print(f"read_checkpoint: {summary['path'] or args.path}: {problems[0]}{more}", file=sys.stderr)
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
