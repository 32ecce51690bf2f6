#!/usr/bin/python3
"""Writes the seed corpora of the libFuzzer targets under tests/fuzz/corpus/ (committed; rerun
after a format change). idx: small IDX image+label pairs (plain and gzip) in fuzz_idx's input form
(2-byte length of the image part, image file, label file). config: TOML texts and --set lines in
fuzz_config's form (first byte: 0 TOML, 1 --set lines). checkpoint: tiny files in the checkpoint
format (format_version 1, complete = 1, global and per-rank datasets with kind and crc32), written
with h5py using the v1.8 object format the writer uses."""
import gzip, os, struct, sys, zlib
from pathlib import Path
import h5py, numpy as np

root = Path(__file__).resolve().parent / "corpus"


def write(target, name, data):
    (root / target).mkdir(parents=True, exist_ok=True)
    (root / target / name).write_bytes(data)


def idx_pair(count, rows, cols, labels, gz=False):
    img = struct.pack(">IIII", 0x803, count, rows, cols) + bytes((i * 37) % 256 for i in range(count * rows * cols))
    lab = struct.pack(">II", 0x801, len(labels)) + bytes(labels)
    if gz:
        img, lab = gzip.compress(img, mtime=0), gzip.compress(lab, mtime=0)
    return struct.pack(">H", len(img)) + img + lab


write("idx", "plain-2x3x3", idx_pair(2, 3, 3, [1, 9]))
write("idx", "gzip-3x2x2", idx_pair(3, 2, 2, [0, 5, 7], gz=True))
write("idx", "label-out-of-range", idx_pair(1, 1, 1, [10]))
write("idx", "truncated", idx_pair(4, 2, 2, [1, 2, 3, 4])[:-3])

write("config", "toml-sections", b"\0[optim]\nname = \"adamw\"\nlr = 0.001\n[sync]\nstrategy = \"fda\"\n"
      b"[data]\npartition = \"dirichlet\"\nalpha = 0.1\ndir = \"/tmp/a \\\"b\\\"\"\n")
write("config", "toml-dotted", b"\0train.steps = 100\ntrain.batch = 32\nmodel.arch = \"cnn\"\nprecision.wire = \"fp8_e4m3\"\n")
write("config", "set-lines", b"\1optim.lr=0.1\nsync.strategy=periodic\nsync.period=10\ncheckpoint.dir=/x y\ntrain.max_seconds=1e3\n")
write("config", "set-demo", b"\1sync.strategy=demo\noptim.demo.topk=8\nprecision.compute=bf16\nlog.progress=off\n")


def crc(a):
    return zlib.crc32(np.ascontiguousarray(a).tobytes())


def checkpoint(name, ranks, n):
    path = root / "checkpoint" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w", libver=("v108", "latest")) as f:
        f.attrs["format_version"] = np.int64(1)
        f.attrs["step"] = np.int64(4)
        f.attrs["world_size"] = np.int64(ranks)
        f.attrs["num_params"] = np.int64(n)
        f.attrs["elapsed_s"] = np.float64(1.5)
        f.attrs["arch"] = np.bytes_(b"mlp")
        f.attrs["config_toml"] = np.bytes_(b"[model]\narch = \"mlp\"\n")
        layout = np.array([[0, n - 2], [n - 2, 2]], dtype="<i8")
        d = f.create_dataset("model/layout", data=layout)
        d.attrs["kind"] = np.bytes_(b"global")
        d.attrs["crc32"] = np.uint32(crc(layout))
        params = np.arange(ranks * n, dtype="<f4").reshape(ranks, n) / 7
        d = f.create_dataset("model/params", data=params)
        d.attrs["kind"] = np.bytes_(b"per_rank")
        d.attrs["crc32"] = np.array([crc(r) for r in params], dtype="<u4")
        cursor = np.array([[0, 3, 10]] * ranks, dtype="<i8")
        d = f.create_dataset("data/cursor", data=cursor)
        d.attrs["kind"] = np.bytes_(b"per_rank")
        d.attrs["crc32"] = np.array([crc(r) for r in cursor], dtype="<u4")
        mask = np.array([0xff, 0x0f], dtype="u1")
        d = f.create_dataset("prune/mask", data=mask)
        d.attrs["kind"] = np.bytes_(b"global")
        d.attrs["crc32"] = np.uint32(crc(mask))
        f.attrs["complete"] = np.int64(1)


checkpoint("two-ranks.h5", 2, 12)
checkpoint("one-rank.h5", 1, 5)
print("seeds written under", root)
