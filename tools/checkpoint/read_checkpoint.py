#!/usr/bin/env python3
"""Print a JSON summary of a lowsync checkpoint and verify it independently of the C++ reader.

Reads the layout written by src/io/checkpoint_file.cpp (format_version 1) with h5py and recomputes
every CRC32 with zlib.crc32: one per "global" dataset, one per row of a "per_rank" [K, n] dataset.
Needs a python3 with h5py (Debian: python3-h5py, i.e. /usr/bin/python3).

Exit status: 0 checkpoint complete and every checksum matches; 1 a problem was found (listed in
"problems" and one line per problem on stderr); 2 the file cannot be read as HDF5.

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


def crc32(array):
    # The C++ writer checksums the little-endian bytes of the row-major data.
    data = np.ascontiguousarray(array)
    data = data.astype(data.dtype.newbyteorder("<"), copy=False)
    return zlib.crc32(data.tobytes()) & 0xFFFFFFFF


def attr_value(value, max_chars):
    if isinstance(value, bytes):
        value = value.decode("utf-8")
    elif isinstance(value, np.bytes_):
        value = bytes(value).decode("utf-8")
    elif isinstance(value, np.generic):
        value = value.item()
    elif isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, str) and max_chars is not None and len(value) > max_chars:
        return value[:max_chars] + f"... ({len(value)} chars)"
    return value


def summarize(path, verify=True, max_chars=200):
    problems = []
    summary = {"path": str(path), "attributes": {}, "datasets": {}, "problems": problems}
    with h5py.File(path, "r") as f:
        for key, value in f.attrs.items():
            summary["attributes"][key] = attr_value(value, max_chars)
        version = summary["attributes"].get("format_version")
        if version != FORMAT_VERSION:
            problems.append(f"format_version {version!r}, expected {FORMAT_VERSION}")
        if summary["attributes"].get("complete") != 1:
            problems.append("incomplete checkpoint (no complete = 1 marker)")

        names = []
        f.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
        for name in sorted(names):
            dset = f[name]
            kind = attr_value(dset.attrs.get("kind", b""), None)
            info = {"kind": kind, "dtype": dset.dtype.str, "shape": list(dset.shape)}
            summary["datasets"][name] = info
            if "crc32" not in dset.attrs:
                problems.append(f"dataset '{name}': no crc32 attribute")
                continue
            stored = np.atleast_1d(np.asarray(dset.attrs["crc32"], dtype=np.uint32))
            if kind == "global":
                info["crc32"] = f"{int(stored[0]):08x}"
                if verify:
                    computed = crc32(dset[()])
                    info["crc_ok"] = computed == int(stored[0])
                    if not info["crc_ok"]:
                        problems.append(f"dataset '{name}': checksum mismatch "
                                        f"(crc32 stored {int(stored[0]):08x}, computed {computed:08x})")
            elif kind == "per_rank" and dset.ndim == 2:
                info["saved_ranks"], info["row_length"] = dset.shape
                info["crc32"] = [f"{int(c):08x}" for c in stored]
                if len(stored) != dset.shape[0]:
                    problems.append(f"dataset '{name}': {len(stored)} crc32 values for {dset.shape[0]} rows")
                elif verify:
                    bad = [r for r in range(dset.shape[0]) if crc32(dset[r, :]) != int(stored[r])]
                    info["crc_ok"] = not bad
                    for r in bad:
                        problems.append(f"dataset '{name}': checksum mismatch in row {r}")
            else:
                problems.append(f"dataset '{name}': unknown kind {kind!r}")
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
        except OSError as e:
            skipped.append(f"{path}: cannot open ({e})")
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
    except OSError as e:
        print(f"read_checkpoint: {args.path}: cannot read as HDF5: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    for problem in summary["problems"]:
        print(f"read_checkpoint: {summary['path'] or args.path}: {problem}", file=sys.stderr)
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
