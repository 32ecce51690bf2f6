#!/usr/bin/python3
"""tools/checkpoint/read_checkpoint.py on damaged checkpoints: a real checkpoint of a 2-step run
(the trainer, $LOWSYNC), truncated, with flipped bits (HDF5 metadata and every dataset's data)
and with altered attributes, must give exit 1 or 2 and one stderr line naming the file and the
problem, never a traceback; a flip in a dataset's data must be a checksum mismatch of that
dataset. Runs in about 15 seconds (h5py starts once per call).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
READER = REPO / "tools" / "checkpoint" / "read_checkpoint.py"
PY = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable

try:
    import h5py
    import numpy as np
except ImportError:  # Debian python3-h5py; tools/setup.sh installs it
    h5py = None


def read(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([PY, str(READER), str(path)], capture_output=True, text=True, timeout=60)


@unittest.skipIf(h5py is None, "h5py not installed")
class DamagedCheckpointTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        lowsync = os.environ.get("LOWSYNC") or str(REPO / "build" / "bin" / "lowsync")
        if not Path(lowsync).exists():
            raise unittest.SkipTest("LOWSYNC (the trainer binary) not given")
        cls.tmp = Path(tempfile.mkdtemp(prefix="lowsync-readckpt-"))
        out = cls.tmp / "run"
        sets = ["train.steps=2", "eval.every=0", "log.every=1", "checkpoint.every=2",
                "data.train_limit=300", "model.arch=mlp"]
        cmd = [lowsync, "train", "--out", str(out)] + [w for s in sets for w in ("--set", s)]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                           env=dict(os.environ, OMP_NUM_THREADS="1"))
        assert r.returncode == 0, r.stderr[-2000:]
        cls.good = next((out / "checkpoints").glob("ckpt-*.h5"))
        cls.data = cls.good.read_bytes()
        with h5py.File(cls.good) as f:
            names = []
            f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
            # (name, byte offset of its data in the file, kind) of every contiguous dataset.
            cls.datasets = [(n, f[n].id.get_offset(), f[n].attrs["kind"]) for n in names
                            if f[n].id.get_offset() is not None and f[n].size > 0]

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def assert_clean_failure(self, path: Path, what: str, *needles: str) -> subprocess.CompletedProcess:
        r = read(path)
        self.assertNotIn("Traceback", r.stderr, what)
        self.assertIn(r.returncode, (1, 2), f"{what}: rc {r.returncode}")
        lines = r.stderr.strip().splitlines()
        self.assertEqual(len(lines), 1, f"{what}: {r.stderr}")
        self.assertTrue(lines[0].startswith(f"read_checkpoint: {path}: "), f"{what}: {lines[0]}")
        for n in needles:
            self.assertIn(n, lines[0], what)
        if r.returncode == 1:
            self.assertFalse(json.loads(r.stdout)["ok"], what)
        return r

    def test_good_file_verifies(self):
        r = read(self.good)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertTrue(json.loads(r.stdout)["ok"])

    def test_truncated(self):
        path = self.tmp / "truncated.h5"
        for n in (0, 8, 100, 700, 4096, len(self.data) // 2, len(self.data) - 1):
            path.write_bytes(self.data[:n])
            self.assert_clean_failure(path, f"truncated to {n} bytes")

    def test_bit_flips_in_data_are_checksum_mismatches(self):
        path = self.tmp / "flipped_data.h5"
        self.assertGreaterEqual(len(self.datasets), 4)
        for name, offset, _ in self.datasets:
            b = bytearray(self.data)
            b[offset] ^= 0x10
            path.write_bytes(bytes(b))
            self.assert_clean_failure(path, f"flip in {name}", f"dataset '{name}': checksum mismatch")

    def test_bit_flips_in_metadata(self):
        path = self.tmp / "flipped_meta.h5"
        first_data = min(offset for _, offset, _ in self.datasets)
        rng = random.Random(20)
        detected = 0
        for _ in range(30):
            pos = rng.randrange(0, first_data)
            b = bytearray(self.data)
            b[pos] ^= 1 << rng.randrange(8)
            path.write_bytes(bytes(b))
            r = read(path)
            self.assertNotIn("Traceback", r.stderr, f"flip at byte {pos}")
            if r.returncode != 0:  # a flip in unused padding is harmless; any other is reported
                detected += 1
                self.assert_clean_failure(path, f"flip at byte {pos}")
        self.assertGreater(detected, 15)

    def test_altered_attributes(self):
        path = self.tmp / "altered.h5"
        per_rank = next(n for n, _, kind in self.datasets if kind in (b"per_rank", "per_rank"))
        glob = "model/params"
        compound = np.array([(1, 2.0)], dtype=[("a", "i4"), ("b", "f8")])

        def replace_with_text(f):
            del f[glob]
            f.create_dataset(glob, data=np.array(["ab", "c"], dtype=h5py.string_dtype()))
            f[glob].attrs.update({"kind": "global", "crc32": np.uint32(0)})

        cases = {
            "crc32 text": (lambda f: f[glob].attrs.__setitem__("crc32", "abc"), f"dataset '{glob}': crc32"),
            "crc32 negative": (lambda f: f[glob].attrs.__setitem__("crc32", np.int64(-1)), f"dataset '{glob}': crc32"),
            "crc32 2-D": (lambda f: f[per_rank].attrs.__setitem__("crc32", np.zeros((2, 2), np.uint32)), "crc32"),
            "crc32 compound": (lambda f: f[glob].attrs.__setitem__("crc32", compound), "crc32"),
            "kind not UTF-8": (lambda f: f[glob].attrs.__setitem__("kind", np.bytes_(b"\xff\xfe")), "not UTF-8"),
            "config_toml not UTF-8": (lambda f: f.attrs.__setitem__("config_toml", np.bytes_(b"\xff")), "config_toml"),
            "step a reference": (lambda f: f.attrs.__setitem__("step", f[glob].ref), "'step'"),
            "step negative": (lambda f: f.attrs.__setitem__("step", np.int64(-5)), "'step'"),
            "format_version text": (lambda f: f.attrs.__setitem__("format_version", "one"), "format_version"),
            "complete removed": (lambda f: f.attrs.__delitem__("complete"), "incomplete"),
            "params text": (replace_with_text, "not a plain number type"),
            "params removed": (lambda f: f.__delitem__(glob), f"'{glob}' missing"),
        }
        for what, (alter, needle) in cases.items():
            shutil.copy(self.good, path)
            with h5py.File(path, "r+") as f:
                alter(f)
            r = self.assert_clean_failure(path, what, needle)
            self.assertEqual(r.returncode, 1, what)


if __name__ == "__main__":
    result = unittest.main(verbosity=2, exit=False).result
    bad = len(result.failures) + len(result.errors) + len(result.unexpectedSuccesses)
    skipped = len(result.skipped)
    print(f"{result.testsRun - bad - skipped} passed, {bad} failed, {skipped} skipped")
    sys.exit(1 if bad else 0)
