#!/usr/bin/env python3
"""Independent numpy reference of the foundation's MLP workload (784-512-256-10 ReLU, softmax
cross-entropy, plain SGD lr 0.05, batch 64, 2,000 steps, U(+-1/sqrt(fan_in)) init, per-epoch
shuffling): what accuracy should lowsync reach? Shares no code with lowsync.
usage: /usr/bin/python3 tools/bench/reference_mlp.py [seed] [steps]"""
import gzip, sys
import numpy as np

def idx(path):
    with gzip.open(path) as f:
        data = f.read()
    dims = data[3]  # IDX: the 4th magic byte is the number of dimensions
    shape = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * dims).reshape(shape)

d = "/usr/share/datasets/fashion-mnist/"
xtr = idx(d + "train-images-idx3-ubyte.gz").reshape(-1, 784).astype(np.float32) / 255
ytr = idx(d + "train-labels-idx1-ubyte.gz").astype(np.int64)
xte = idx(d + "t10k-images-idx3-ubyte.gz").reshape(-1, 784).astype(np.float32) / 255
yte = idx(d + "t10k-labels-idx1-ubyte.gz").astype(np.int64)
seed = int(sys.argv[1]) if len(sys.argv) > 1 else 1
steps = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
rng = np.random.default_rng(seed)
sizes = [784, 512, 256, 10]
W = [rng.uniform(-1, 1, (o, i)).astype(np.float32) / np.sqrt(i) for i, o in zip(sizes, sizes[1:])]
b = [rng.uniform(-1, 1, o).astype(np.float32) / np.sqrt(i) for i, o in zip(sizes, sizes[1:])]

def forward(x):
    acts = [x]
    for l in range(3):
        z = acts[-1] @ W[l].T + b[l]
        acts.append(np.maximum(z, 0) if l < 2 else z)
    return acts

order, pos = rng.permutation(len(xtr)), 0
for step in range(steps):
    if pos + 64 > len(order):
        order, pos = rng.permutation(len(xtr)), 0
    idxs = order[pos:pos + 64]
    pos += 64
    acts = forward(xtr[idxs])
    logits = acts[-1]
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    g = p
    g[np.arange(64), ytr[idxs]] -= 1
    g /= 64
    for l in (2, 1, 0):
        gW, gb = g.T @ acts[l], g.sum(0)
        if l > 0:
            g = (g @ W[l]) * (acts[l] > 0)
        W[l] -= 0.05 * gW
        b[l] -= 0.05 * gb
acc = (forward(xte)[-1].argmax(1) == yte).mean()
print(f"numpy reference MLP, seed {seed}, {steps} steps: test accuracy {acc:.4f}")
