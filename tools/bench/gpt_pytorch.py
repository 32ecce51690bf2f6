#!/usr/bin/python3
"""The gpt of ALGORITHMS.md §8 in PyTorch, timed like build/bin/bench_gpt: one training step
(forward + backward + AdamW lr 1e-3, betas 0.9/0.95) at batch 16 x 128 tokens on one thread, fp32
and bf16 (torch.autocast on the CPU), on random bytes. Prints tokens/s per precision and, given
bench_gpt's JSON (--lowsync FILE, from `bench_gpt --benchmark_format=json`), lowsync's tokens/s
over PyTorch's: the ratio issue 23 asks for (fp32 >= 2x, bf16 >= 3x).

Debian ships PyTorch 1.13 as python3-torch (not installed by tools/setup.sh: ~1 GB; install
libopenblas0-pthread with it, or its fp32 GEMMs run on the reference BLAS); without it this script
says so and exits 77.

  tools/bench/gpt_speed.sh               # both sides in one run, ratios printed
  tools/bench/gpt_pytorch.py [--seconds 10] [--lowsync bench_gpt.json]
"""
import argparse
import json
import math
import os
import sys
import time

# One thread everywhere: Debian's PyTorch runs fp32 GEMMs through the system BLAS (BLAS_INFO =
# generic); with the reference libblas3 that is ~10x slower than with OpenBLAS
# (libopenblas0-pthread), whose own threads this pins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

try:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
except ImportError:
    print("gpt_pytorch: PyTorch is not installed (apt-get install python3-torch); skipped")
    sys.exit(77)

VOCAB, CTX, WIDTH, LAYERS, HEADS, BATCH = 256, 128, 128, 4, 4, 16


class Block(nn.Module):
    def __init__(self, c, h):
        super().__init__()
        self.h = h
        self.ln1, self.ln2 = nn.LayerNorm(c, eps=1e-5), nn.LayerNorm(c, eps=1e-5)
        self.qkv, self.proj = nn.Linear(c, 3 * c), nn.Linear(c, c)
        self.fc1, self.fc2 = nn.Linear(c, 4 * c), nn.Linear(4 * c, c)
        mask = torch.triu(torch.full((CTX, CTX), float("-inf")), diagonal=1)
        self.register_buffer("mask", mask)

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(c, dim=2)
        shape = (b, t, self.h, c // self.h)
        q, k, v = (z.view(shape).transpose(1, 2) for z in (q, k, v))
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(c // self.h)) + self.mask[:t, :t]
        y = (att.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, t, c)
        x = x + self.proj(y)
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x)), approximate="tanh"))


class Gpt(nn.Module):
    def __init__(self):
        super().__init__()
        self.tok, self.pos = nn.Embedding(VOCAB, WIDTH), nn.Embedding(CTX, WIDTH)
        self.blocks = nn.ModuleList(Block(WIDTH, HEADS) for _ in range(LAYERS))
        self.ln_f = nn.LayerNorm(WIDTH, eps=1e-5)
        self.head = nn.Linear(WIDTH, VOCAB, bias=False)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, 0.0, 0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, x, y):
        h = self.tok(x) + self.pos(torch.arange(x.shape[1]))
        for blk in self.blocks:
            h = blk(h)
        logits = self.head(self.ln_f(h))
        return F.cross_entropy(logits.reshape(-1, VOCAB).float(), y.reshape(-1))


def tokens_per_s(bf16: bool, seconds: float) -> float:
    torch.manual_seed(1)
    model = Gpt()
    params = sum(p.numel() for p in model.parameters())
    assert params == 875_264, f"PyTorch model has {params} parameters, ALGORITHMS.md §8 says 875,264"
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95))
    batches = [(torch.randint(0, VOCAB, (BATCH, CTX)), torch.randint(0, VOCAB, (BATCH, CTX))) for _ in range(4)]

    def step(i):
        x, y = batches[i % len(batches)]
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(x, y)
        loss.backward()
        opt.step()

    for i in range(3):  # warm-up, as bench_gpt
        step(i)
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step(steps)
        steps += 1
    return BATCH * CTX * steps / (time.perf_counter() - start)


def lowsync_rates(path):
    rates = {}
    for b in json.load(open(path))["benchmarks"]:
        for precision in ("fp32", "bf16"):
            if f"/{precision}" in b["name"]:
                rates[precision] = (b["tokens_per_s"], b.get("step_over_primitives"))
    return rates


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0, help="timed seconds per precision (default 10)")
    ap.add_argument("--lowsync", help="bench_gpt --benchmark_format=json output, for the ratios")
    args = ap.parse_args()
    torch.set_num_threads(1)
    ours = lowsync_rates(args.lowsync) if args.lowsync else {}
    targets = {"fp32": 2.0, "bf16": 3.0}
    blas = "OpenBLAS" if any("openblas" in line for line in open("/proc/self/maps")) else "system BLAS (not OpenBLAS)"
    print(f"PyTorch {torch.__version__} ({blas}), 1 thread, batch {BATCH} x {CTX} tokens, AdamW")
    print(f"{'precision':<10}{'pytorch tok/s':>15}{'lowsync tok/s':>15}{'ratio':>8}{'target':>8}")
    for precision in ("fp32", "bf16"):
        theirs = tokens_per_s(precision == "bf16", args.seconds)
        if precision in ours:
            rate = ours[precision][0]
            verdict = "met" if rate / theirs >= targets[precision] else "missed"
            print(f"{precision:<10}{theirs:>15,.0f}{rate:>15,.0f}{rate / theirs:>8.2f}{'>= ' + str(targets[precision]):>8} {verdict}")
        else:
            print(f"{precision:<10}{theirs:>15,.0f}")


if __name__ == "__main__":
    main()
