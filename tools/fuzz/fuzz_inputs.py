#!/usr/bin/env python3
"""Fuzz lowsync's inputs: mutated checkpoints (truncated, bit-flipped, zeroed blocks), mutated
Fashion-MNIST IDX files (broken gzip, and valid gzip with corrupted IDX headers and labels) and
random bad configurations. Every input must end in a clean result: exit 0 (the mutation was
harmless) or a one-line error with exit 1/2, never a signal, another status or a hang.

  fuzz_inputs.py --lowsync build/bin/lowsync --checkpoint runs/x/checkpoints/ckpt-00000004.h5 --count 100
Prints one line per failure and a summary; exits 1 if any input crashed or hung.
"""
import argparse, gzip, os, random, re, shutil, subprocess, sys, tempfile

def run(cmd, timeout):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return "hang", ""
    return p.returncode, p.stderr + p.stdout

def mutate_bytes(data, rng):
    kind = rng.choice(["truncate", "flip", "zero"])
    b = bytearray(data)
    if kind == "truncate":
        return kind, bytes(b[: rng.randrange(0, len(b))])
    if kind == "flip":
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
        return kind, bytes(b)
    start = rng.randrange(len(b))
    for i in range(start, min(len(b), start + 4096)):
        b[i] = 0
    return kind, bytes(b)

def mutate_idx(raw, rng):
    """Valid gzip, corrupted IDX: header fields (magic, count, dims) or payload bytes (labels)."""
    b = bytearray(raw)
    kind = rng.choice(["magic", "count", "dims", "payload", "short"])
    if kind == "magic":
        b[rng.randrange(4)] = rng.randrange(256)
    elif kind == "count":
        b[4:8] = rng.randrange(2**32).to_bytes(4, "big")
    elif kind == "dims" and len(b) > 16 and b[3] == 3:
        b[8:12] = rng.choice([0, 1, 27, 29, 2**31 - 1]).to_bytes(4, "big")
    elif kind == "short":
        b = b[: rng.randrange(0, min(len(b), 64))]
    else:
        for _ in range(rng.randint(1, 32)):
            b[rng.randrange(8, len(b))] = rng.randrange(256)
    return kind, bytes(b)

def bad_config_values(rng, keys):
    key, typ = rng.choice(keys)
    values = {"integer": ["-1", "1e99", "3.5", '"x"', "true", "99999999999999999999999"],
              "real": ["-1e300", "nan", "inf", '"fast"', "[1, 2]", "1e400"],
              "boolean": ["2", '"yes"', "1.0"],
              "string": ["3", '"no-such-choice"', '""', "[]", '"\\u00e9\\u00e9"']}
    return key, rng.choice(values.get(typ, ["?"]))

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lowsync", required=True)
    ap.add_argument("--checkpoint", required=True, help="a good checkpoint to mutate")
    ap.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--count", type=int, default=50, help="inputs per kind (checkpoint, IDX, config)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=120)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    work = tempfile.mkdtemp(prefix="lowsync-fuzz-")
    stats = {"inputs": 0, "accepted": 0, "clean_error": 0, "crash": 0, "hang": 0}
    def judge(label, code, out):
        stats["inputs"] += 1
        if code == "hang":
            stats["hang"] += 1
            print(f"HANG: {label}")
        elif code == 0:
            stats["accepted"] += 1
        elif code in (1, 2) and "error" in out:
            stats["clean_error"] += 1
        else:
            stats["crash"] += 1
            print(f"CRASH ({code}): {label}: {out.strip().splitlines()[-3:] if out.strip() else ''}")
    try:
        good = open(a.checkpoint, "rb").read()
        for i in range(a.count):
            kind, data = mutate_bytes(good, rng)
            path = os.path.join(work, f"ckpt-{i}.h5")
            open(path, "wb").write(data)
            cmd = [a.lowsync, "inspect", path] if i % 2 == 0 else \
                  [a.lowsync, "train", "--resume", path, "--out", os.path.join(work, "resume"), "--set",
                   "log.progress=off"]
            judge(f"checkpoint {kind} #{i}", *run(cmd, a.timeout))
            os.remove(path)

        files = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
                 "t10k-labels-idx1-ubyte.gz"]
        raw = {f: gzip.open(os.path.join(a.data_dir, f)).read() for f in files}
        data_dir = os.path.join(work, "data")
        for i in range(a.count):
            shutil.rmtree(data_dir, ignore_errors=True)
            os.makedirs(data_dir)
            victim = rng.choice(files)
            for f in files:
                if f != victim:
                    os.symlink(os.path.join(a.data_dir, f), os.path.join(data_dir, f))
            if rng.random() < 0.4:  # broken gzip stream
                kind, data = mutate_bytes(open(os.path.join(a.data_dir, victim), "rb").read(), rng)
                open(os.path.join(data_dir, victim), "wb").write(data)
            else:
                kind, data = mutate_idx(raw[victim], rng)
                with gzip.open(os.path.join(data_dir, victim), "wb", compresslevel=1) as g:
                    g.write(data)
            cmd = [a.lowsync, "train", "--set", f"data.dir={data_dir}", "--set", "data.train_limit=200",
                   "--set", "train.steps=2", "--set", "eval.every=0", "--set", "log.progress=off",
                   "--out", os.path.join(work, "idx")]
            judge(f"IDX {victim} {kind} #{i}", *run(cmd, a.timeout))

        table = subprocess.run([a.lowsync, "config"], capture_output=True, text=True).stdout
        keys = []
        for key, kind in re.findall(r"^\| `([a-z_.0-9]+)` \| (.*?) \| `", table, re.M):
            kind = ("integer" if "integer" in kind else "real" if "number" in kind else
                    "boolean" if "true or false" in kind else "string")
            keys.append((key, kind))
        assert keys, "could not parse `lowsync config`"
        for i in range(a.count):
            path = os.path.join(work, f"cfg-{i}.toml")
            r = rng.random()
            if r < 0.6:
                key, value = bad_config_values(rng, keys)
                text = f"{key} = {value}\n"
            elif r < 0.8:
                text = "".join(rng.choice("[]=\"'.#\n abc123{},") for _ in range(rng.randint(1, 80)))
            else:
                text = f"no.such_key{i} = 1\n"
            open(path, "w").write(text)
            cmd = [a.lowsync, "train", "--config", path, "--set", "train.steps=1", "--set", "data.train_limit=100",
                   "--set", "eval.every=0", "--set", "log.progress=off", "--out", os.path.join(work, "cfg")]
            judge(f"config {text[:60]!r}", *run(cmd, a.timeout))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("fuzz: {inputs} inputs, {clean_error} clean errors, {accepted} accepted, {crash} crashes, "
          "{hang} hangs".format(**stats))
    return 1 if stats["crash"] or stats["hang"] else 0

if __name__ == "__main__":
    sys.exit(main())
