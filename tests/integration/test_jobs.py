#!/usr/bin/python3
"""The job scripts without a Slurm (seconds): sbatch headers (walltime signal, requeue, site
placeholders, multi-node shape), train.threads from SLURM_CPUS_PER_TASK, SRUN_FLAGS /
MPIRUN_FLAGS / EXTRA_SETS split like a shell line but never expanded, the requeue-on-exit-3 path
of every sbatch script (fake srun, scontrol and trainer on PATH), one job array per rank count
(tools/sweep.py slurm-groups, jobs/slurm/submit_sweep.sh with a fake sbatch) and shell-quoted
printed commands. tools/slurm/test_slurm.sh runs the same scripts on a real Slurm."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import unittest
from pathlib import Path

REPO = Path(os.environ.get("LOWSYNC_SOURCE_DIR") or Path(__file__).resolve().parents[2])
PY = "/usr/bin/python3"
SWEEP = REPO / "tools" / "sweep.py"
LAUNCH = REPO / "jobs" / "lib" / "launch.sh"
COMMON = REPO / "jobs" / "lib" / "common.sh"
SLURM = REPO / "jobs" / "slurm"
SBATCH_SCRIPTS = ["train.sbatch", "long.sbatch", "multinode.sbatch", "sweep.sbatch"]

# A trainer: logs its arguments; without --resume it writes a checkpoint and exits 3 (as on the
# walltime signal); with --resume it writes a finished summary.json and exits 0.
FAKE_TRAINER = r"""#!/bin/bash
out=""; prev=""; resume=0
for a in "$@"; do [[ $prev == --out ]] && out=$a; [[ $a == --resume ]] && resume=1; prev=$a; done
printf '%s\0' "$@" > "$FAKE_LOG/trainer.$(date +%s%N)"
mkdir -p "$out/checkpoints"
if [[ $resume == 1 ]]; then
  echo '{"ranks": 1, "steps": 20, "stopped_early": false}' > "$out/summary.json"
  exit 0
fi
echo x > "$out/checkpoints/ckpt-00000010.h5"
echo '{"ranks": 1, "steps": 10, "stopped_early": true}' > "$out/summary.json"
exit 3
"""
# srun: logs its arguments, then runs the command after its leading options.
FAKE_SRUN = r"""#!/bin/bash
printf '%s\0' "$@" > "$FAKE_LOG/srun.$(date +%s%N)"
while [[ $1 == -* ]]; do shift; done
exec "$@"
"""
FAKE_SCONTROL = r"""#!/bin/bash
echo "$*" >> "$FAKE_LOG/scontrol"
"""
FAKE_SBATCH = r"""#!/bin/bash
n=$(( $(ls "$FAKE_LOG" | grep -c '^sbatch\.') + 100 ))
printf '%s\0' "$@" > "$FAKE_LOG/sbatch.$n"
echo "$n;cluster"
"""


def run(cmd, **kw):
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=120, **kw)


def clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "LOWSYNC", "SRUN_", "MPIRUN_"))
           and k not in ("EXTRA_SETS", "RESUME", "OUT", "RANKS", "CONFIG", "LAUNCHER")}
    env.update({k: str(v) for k, v in extra.items()})
    return env


def sbatch_lines(name: str) -> list[str]:
    return (SLURM / name).read_text().splitlines()


class Fakes:
    """A temp dir with fake srun/scontrol/sbatch first on PATH and a fake trainer."""

    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="lowsync jobs "))  # a space, on purpose
        self.bin = self.dir / "bin"
        self.log = self.dir / "log"
        self.bin.mkdir()
        self.log.mkdir()
        for name, text in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL), ("sbatch", FAKE_SBATCH),
                           ("lowsync", FAKE_TRAINER)):
            p = self.bin / name
            p.write_text(text)
            p.chmod(0o755)
        self.trainer = self.bin / "lowsync"

    def env(self, **extra) -> dict:
        return clean_env(PATH=f"{self.bin}:{os.environ['PATH']}", FAKE_LOG=self.log, LAUNCHER="srun",
                         LOWSYNC=self.trainer, LOWSYNC_ROOT=REPO, **extra)

    def calls(self, prefix: str) -> list[list[str]]:
        files = sorted(self.log.glob(prefix + ".*"))
        return [f.read_text().split("\0")[:-1] for f in files]

    def scontrol(self) -> list[str]:
        f = self.log / "scontrol"
        return f.read_text().splitlines() if f.exists() else []

    def cleanup(self):
        shutil.rmtree(self.dir, ignore_errors=True)


class SbatchHeaderTest(unittest.TestCase):
    def test_walltime_signal_and_requeue(self):
        for name in SBATCH_SCRIPTS:
            lines = sbatch_lines(name)
            signal = [l for l in lines if l.startswith("#SBATCH --signal=")]
            self.assertEqual(len(signal), 1, name)
            # B: the batch shell, which forwards it; USR1 is one of the two stop signals the
            # trainer handles (src/app/signals.cpp: SIGTERM, SIGUSR1).
            self.assertRegex(signal[0], r"^#SBATCH --signal=B:USR1@[0-9]+$", name)
            self.assertIn("#SBATCH --requeue", lines, name)
            self.assertIn("#SBATCH --open-mode=append", lines, name)

    def test_site_placeholders_are_there_and_inactive(self):
        for name in SBATCH_SCRIPTS:
            lines = sbatch_lines(name)
            for opt in ("account", "partition", "qos", "mem"):
                self.assertTrue(any(l.startswith(f"##SBATCH --{opt}=") for l in lines), f"{name}: --{opt}")
                # sbatch reads only lines starting exactly "#SBATCH": an active placeholder would
                # submit with "<project>" as the account.
                self.assertFalse(any(l.startswith(f"#SBATCH --{opt}=") for l in lines), f"{name}: --{opt}")

    def test_multinode_shape(self):
        lines = sbatch_lines("multinode.sbatch")
        self.assertTrue(any(re.match(r"#SBATCH --nodes=[2-9]", l) for l in lines))
        self.assertTrue(any(l.startswith("#SBATCH --ntasks-per-node=") for l in lines))
        self.assertTrue(any(l.startswith("#SBATCH --cpus-per-task=") for l in lines))
        self.assertFalse(any(l.startswith("#SBATCH --ntasks=") for l in lines))


class SplitWordsTest(unittest.TestCase):
    def dry(self, ranks="2", **env):
        r = run(["bash", LAUNCH, ranks, "prog", "a b"], env=clean_env(LAUNCH_DRY_RUN=1, **env))
        return r, (shlex.split(r.stdout) if r.returncode == 0 else None)

    def test_srun_flags_quoted_not_expanded(self):
        with tempfile.TemporaryDirectory() as tmp:
            marker = Path(tmp) / "ran"
            flags = f"--constraint=\"a b\" --label --comment='$(touch {marker})' `touch {marker}`"
            r, words = self.dry(LAUNCHER="srun", SRUN_FLAGS=flags)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertFalse(marker.exists())
            self.assertIn("--constraint=a b", words)
            self.assertIn(f"--comment=$(touch {marker})", words)
            self.assertIn(f"`touch", words)
            self.assertEqual(words[-2:], ["prog", "a b"])

    def test_mpirun_flags_quoted(self):
        r, words = self.dry(LAUNCHER="mpirun", MPIRUN_FLAGS="-x 'NOTE=a b' --mca btl self,tcp")
        self.assertEqual(r.returncode, 0, r.stderr)
        i = words.index("-x")
        self.assertEqual(words[i:i + 5], ["-x", "NOTE=a b", "--mca", "btl", "self,tcp"])

    def test_unbalanced_quote_is_one_line_error(self):
        for var, launcher in (("SRUN_FLAGS", "srun"), ("MPIRUN_FLAGS", "mpirun")):
            r, _ = self.dry(LAUNCHER=launcher, **{var: "--comment='a b"})
            self.assertEqual(r.returncode, 2, var)
            self.assertEqual(len(r.stderr.strip().splitlines()), 1, r.stderr)
            self.assertIn(var, r.stderr)

    def test_srun_asks_for_the_cpus_per_task_again(self):
        _, words = self.dry(LAUNCHER="srun", SLURM_CPUS_PER_TASK="3")
        self.assertIn("--cpus-per-task=3", words)
        _, words = self.dry(LAUNCHER="srun")
        self.assertFalse(any(w.startswith("--cpus-per-task") for w in words))

    @unittest.skipUnless(shutil.which("mpirun"), "mpirun not installed")
    def test_printed_launch_line_is_shell_quoted(self):
        args = ["a b", "$HOME", "it's", "x;y"]
        r = run(["bash", LAUNCH, "1", "/bin/true", *args], env=clean_env(LAUNCHER="mpirun"))
        self.assertEqual(r.returncode, 0, r.stderr)
        line = next(l for l in r.stderr.splitlines() if l.startswith("launch.sh: "))
        self.assertEqual(shlex.split(line[len("launch.sh: "):])[-5:], ["/bin/true", *args])


class TrainArgsTest(unittest.TestCase):
    def args(self, *extra, **env):
        script = f'source {shlex.quote(str(COMMON))}; lowsync_train_args OUT "$@" && printf "%s\\0" "${{TRAIN_ARGS[@]}}"'
        r = run(["bash", "-c", script, "bash", *extra], env=clean_env(**env))
        return r, r.stdout.split("\0")[:-1]

    def test_threads_from_slurm_cpus_per_task(self):
        r, a = self.args(SLURM_CPUS_PER_TASK="4", EXTRA_SETS="train.steps=5")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(a, ["train", "--set", "train.threads=4", "--set", "train.steps=5", "--out", "OUT"])
        _, a = self.args(EXTRA_SETS="train.steps=5")
        self.assertNotIn("train.threads=4", a)

    def test_explicit_threads_win(self):
        _, a = self.args(SLURM_CPUS_PER_TASK="4", EXTRA_SETS="train.threads=2")
        self.assertEqual([w for w in a if w.startswith("train.threads")], ["train.threads=2"])
        _, a = self.args("--set", "train.threads=3", SLURM_CPUS_PER_TASK="4")
        self.assertEqual([w for w in a if w.startswith("train.threads")], ["train.threads=3"])

    def test_extra_sets_quoted_values(self):
        r, a = self.args(EXTRA_SETS="data.dir='/data/fashion mnist' train.steps=5 log.x=$HOME")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(a[1:7], ["--set", "data.dir=/data/fashion mnist", "--set", "train.steps=5",
                                  "--set", "log.x=$HOME"])
        r, _ = self.args(EXTRA_SETS="train.steps=5 oops")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("'oops' is not key=value", r.stderr)


class RequeueTest(unittest.TestCase):
    """Each sbatch script, run as Slurm would run it (env) but with fake srun/scontrol/trainer:
    exit 3 requeues the job and the restart resumes."""

    def setUp(self):
        self.f = Fakes()
        self.work = self.f.dir / "submit dir"
        self.work.mkdir()

    def tearDown(self):
        self.f.cleanup()

    def job(self, script, restart, *args, **env):
        e = self.f.env(**{"SLURM_SUBMIT_DIR": self.work, "SLURM_JOB_ID": "77", "SLURM_NTASKS": "2",
                          "SLURM_RESTART_COUNT": restart, **env})
        return run(["bash", SLURM / script, *args], env=e, cwd=self.work)

    def test_train_scripts_requeue_and_resume(self):
        for script in ("train.sbatch", "long.sbatch", "multinode.sbatch"):
            with self.subTest(script):
                shutil.rmtree(self.work / "runs", ignore_errors=True)
                for f in self.f.log.iterdir():
                    f.unlink()
                r = self.job(script, 0, SLURM_CPUS_PER_TASK="2")
                self.assertEqual(r.returncode, 0, r.stderr)
                self.assertEqual(self.f.scontrol(), ["requeue 77"])
                first = self.f.calls("trainer")
                self.assertEqual(len(first), 1)
                self.assertNotIn("--resume", first[0])
                self.assertIn("train.threads=2", first[0])
                srun = self.f.calls("srun")[0]
                self.assertIn("--ntasks=2", srun)
                self.assertIn("--cpus-per-task=2", srun)
                # The restart (SLURM_RESTART_COUNT=1) resumes from runs/77 and ends the job.
                r = self.job(script, 1, SLURM_CPUS_PER_TASK="2")
                self.assertEqual(r.returncode, 0, r.stderr)
                second = self.f.calls("trainer")[1]
                i = second.index("--resume")
                self.assertEqual(second[i + 1], "runs/77")
                self.assertEqual(self.f.scontrol(), ["requeue 77"])

    def test_requeue_limit_and_no_slurm(self):
        r = self.job("train.sbatch", 20)
        self.assertEqual(r.returncode, 3)
        self.assertEqual(self.f.scontrol(), [])
        self.assertIn("MAX_REQUEUES", r.stderr)
        shutil.rmtree(self.work / "runs")
        e = self.f.env(RANKS="1", OUT=self.work / "o")
        r = run(["bash", SLURM / "train.sbatch"], env=e, cwd=REPO)
        self.assertEqual(r.returncode, 3)
        self.assertIn("not under Slurm", r.stderr)
        self.assertEqual(self.f.scontrol(), [])

    def test_sweep_task_requeues_and_resumes(self):
        sweep = self.work / "s.toml"
        sweep.write_text('out_root = "out"\nstrategies = ["allreduce", "periodic"]\nranks = [1]\n'
                         '[set]\n"train.steps" = 20\n')
        env = dict(SLURM_ARRAY_TASK_ID="1", SLURM_ARRAY_JOB_ID="76", SLURM_NTASKS="1",
                   SLURM_CPUS_PER_TASK="3")
        r = self.job("sweep.sbatch", 0, sweep, **env)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(self.f.scontrol(), ["requeue 76_1"])
        self.assertIn("train.threads=3", self.f.calls("trainer")[0])
        # The stopped run's summary.json says stopped_early: the restart resumes, not skips.
        r = self.job("sweep.sbatch", 1, sweep, **env)
        self.assertEqual(r.returncode, 0, r.stderr)
        calls = self.f.calls("trainer")
        self.assertEqual(len(calls), 2, r.stdout + r.stderr)
        self.assertIn("--resume", calls[1])
        self.assertIn("stopped (resuming from", r.stdout)


SWEEP_TOML = """name = "g"
strategies = ["allreduce", "periodic"]
ranks = [4, 1, 2]
[set]
"train.steps" = 20
"""


class SweepGroupsTest(unittest.TestCase):
    def setUp(self):
        self.f = Fakes()
        self.sweep = self.f.dir / "s.toml"
        self.sweep.write_text(SWEEP_TOML)
        self.out = self.f.dir / "out root"

    def tearDown(self):
        self.f.cleanup()

    def groups(self, *extra, sweep=None):
        r = run([PY, SWEEP, "slurm-groups", sweep or self.sweep, "--out-root", self.out, *extra])
        self.assertEqual(r.returncode, 0, r.stderr)
        return [tuple(l.split("\t")) for l in r.stdout.splitlines()]

    def test_one_group_per_rank_count(self):
        # Index order: allreduce n4 n1 n2, periodic n4 n1 n2.
        self.assertEqual(self.groups(), [("1", "1,4", "2"), ("2", "2,5", "2"), ("4", "0,3", "2")])
        seeds = self.f.dir / "seeds.toml"
        seeds.write_text('strategies = ["allreduce", "periodic"]\nranks = [1, 2]\nseeds = [1, 2]\n')
        self.assertEqual(self.groups(sweep=seeds), [("1", "0-1,4-5", "4"), ("2", "2-3,6-7", "4")])

    def test_done_runs_left_out(self):
        r = run([PY, SWEEP, "list", self.sweep, "--out-root", self.out, "--format", "tsv"])
        run4 = Path(r.stdout.splitlines()[4].split("\t")[3])  # periodic n1
        run4.mkdir(parents=True)
        (run4 / "summary.json").write_text('{"steps": 20, "stopped_early": false}')
        self.assertEqual(self.groups()[0], ("1", "1", "1"))
        self.assertEqual(self.groups("--all")[0], ("1", "1,4", "2"))
        # A stopped run is not done.
        (run4 / "summary.json").write_text('{"steps": 12, "stopped_early": true}')
        self.assertEqual(self.groups()[0], ("1", "1,4", "2"))

    def submit(self, *args, **env):
        return run(["bash", SLURM / "submit_sweep.sh", self.sweep, *args],
                   env=self.f.env(SWEEP_OUT=self.out, **env), cwd=self.f.dir)

    def test_submit_sweep_one_array_per_rank_count(self):
        r = self.submit("--time=10", "--account=my project", THROTTLE="3")
        self.assertEqual(r.returncode, 0, r.stderr)
        calls = self.f.calls("sbatch")
        self.assertEqual(len(calls), 3)
        for call, (ranks, spec) in zip(calls, [("1", "1,4"), ("2", "2,5"), ("4", "0,3")]):
            self.assertIn(f"--ntasks={ranks}", call)
            self.assertIn(f"--array={spec}%3", call)
            self.assertIn("--account=my project", call)
            self.assertEqual(call[-2:], [str(SLURM / "sweep.sbatch"), str(self.sweep)])
        self.assertEqual(re.findall(r"submitted (\d+): (\d) ranks, (\d) runs", r.stdout),
                         [("100", "1", "2"), ("101", "2", "2"), ("102", "4", "2")])
        # The printed sbatch commands are shell-quoted: they split back into the same words.
        printed = [shlex.split(l[len("submit_sweep.sh: "):]) for l in r.stdout.splitlines()
                   if l.startswith("submit_sweep.sh: sbatch")]
        self.assertEqual(printed, [["sbatch", *c] for c in calls])

    def test_submit_dry_run_and_nothing_left(self):
        r = self.submit(DRY_RUN="1")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(self.f.calls("sbatch"), [])
        self.assertEqual(r.stdout.count("submit_sweep.sh: sbatch"), 3)
        r = run([PY, SWEEP, "list", self.sweep, "--out-root", self.out, "--format", "tsv"])
        for line in r.stdout.splitlines():
            d = Path(line.split("\t")[3])
            d.mkdir(parents=True)
            (d / "summary.json").write_text('{"steps": 20, "stopped_early": false}')
        r = self.submit()
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("nothing to submit", r.stdout)
        self.assertEqual(self.f.calls("sbatch"), [])

    def test_bad_throttle(self):
        r = self.submit(THROTTLE="x")
        self.assertEqual(r.returncode, 2)
        self.assertIn("THROTTLE", r.stderr)


class SweepFilesTest(unittest.TestCase):
    """Every jobs/sweeps/*.toml parses and expands (tools/sweep.py list) to its run count; the
    files that replaced tools/bench/{precision,fda_compare,demo_compare}.py keep their rows."""

    EXPECTED = {"smoke.toml": 4, "strategies.toml": 20, "precision.toml": 18,
                "precision_compute.toml": 4, "precision_storage.toml": 20, "fda_compare.toml": 32,
                "demo_compare.toml": 3, "demo_compare_cnn.toml": 3, "compare.toml": 132,
                "compare_adamw.toml": 96, "compare_wire.toml": 36, "compare_gpt.toml": 153,
                "powersgd.toml": 15, "diloco.toml": 7, "diloco_lr.toml": 36}

    def expand(self, path: Path) -> list[dict]:
        r = run([PY, SWEEP, "list", path, "--format", "json", "--out-root", "/nonexistent/out"])
        self.assertEqual(r.returncode, 0, f"{path.name}: {r.stderr}")
        return json.loads(r.stdout)

    def test_every_sweep_file_expands(self):
        files = sorted((REPO / "jobs" / "sweeps").glob("*.toml"))
        self.assertEqual(sorted(f.name for f in files), sorted(self.EXPECTED))
        for f in files:
            with self.subTest(sweep=f.name):
                self.assertTrue(f.read_text().startswith("#"), "starts with a comment saying what it runs")
                runs = self.expand(f)
                self.assertEqual(len(runs), self.EXPECTED[f.name])
                for r in runs:
                    keys = [s.partition("=")[0] for s in r["sets"]]
                    self.assertEqual(len(keys), len(set(keys)), r["name"])

    def test_bench_rows(self):
        def rows(name):
            return [dict(s.partition("=")[::2] for s in r["sets"])
                    for r in self.expand(REPO / "jobs" / "sweeps" / name)]
        fda = rows("fda_compare.toml")
        self.assertEqual(sorted({r["data.partition"] for r in fda}), ["dirichlet", "iid"])
        self.assertEqual(sorted(int(r["sync.period"]) for r in fda if r["sync.strategy"] == "periodic"),
                         sorted([10, 50, 200, 400, 1000] * 2))
        self.assertEqual(len({(r["sync.fda.estimator"], r["sync.fda.threshold"]) for r in fda
                              if r["sync.strategy"] == "fda"}), 9)
        self.assertEqual(sum(r["sync.strategy"] == "none" for r in fda), 2)
        for name, lr in (("demo_compare.toml", "0.003"), ("demo_compare_cnn.toml", "0.009")):
            demo = rows(name)
            self.assertEqual(sorted((r["sync.strategy"], r["optim.name"], r.get("optim.demo.value", "-")) for r in demo),
                             [("allreduce", "adamw", "-"), ("demo", "demo", "bf16"), ("demo", "demo", "fp32")])
            self.assertEqual({r["optim.lr"] for r in demo}, {lr})
        storage = rows("precision_storage.toml")
        self.assertEqual(sum(r["precision.storage"] == "float" for r in storage), 10)
        compute = rows("precision_compute.toml")
        self.assertEqual([(r["precision.compute"], r["precision.wire"]) for r in compute],
                         [("fp32", "fp32"), ("bf16", "fp32"), ("fp16", "fp32"), ("fp8", "fp32")])
        for old in ("precision.py", "fda_compare.py", "demo_compare.py"):
            self.assertFalse((REPO / "tools" / "bench" / old).exists(), f"{old}: replaced by a sweep file")


class PrintedCommandsTest(unittest.TestCase):
    """Commands printed for a user to copy split back (shlex) into the words that were run."""

    def setUp(self):
        self.f = Fakes()

    def tearDown(self):
        self.f.cleanup()

    def test_sweep_run_index_and_run_local(self):
        sweep = self.f.dir / "s.toml"
        sweep.write_text('strategies = ["allreduce"]\nranks = [2]\n')
        out = self.f.dir / "o $x 'q'"
        r = run([PY, SWEEP, "run-index", sweep, "0", "--out", out, "--dry-run", "--lowsync", self.f.trainer],
                env=clean_env(SLURM_CPUS_PER_TASK="3"))
        self.assertEqual(r.returncode, 0, r.stderr)
        words = shlex.split(re.match(r"sweep: \[0\] [^:]+: (.*)", r.stdout).group(1))
        self.assertEqual(words[:5], ["bash", str(LAUNCH), "2", str(self.f.trainer), "train"])
        self.assertEqual(words[words.index("--out") + 1], str(out))
        self.assertIn("train.threads=3", words)
        r = run([PY, SWEEP, "run-local", sweep, "--out-root", out, "--dry-run", "--lowsync", self.f.trainer],
                env=clean_env())
        line = next(l for l in r.stdout.splitlines() if l.startswith("sweep: [0]"))
        words = shlex.split(re.match(r"sweep: \[0\] [^:]+: (.*)", line).group(1))
        self.assertTrue(words[words.index("--out") + 1].startswith(str(out) + "/"))
        self.assertFalse(any(w.startswith("train.threads") for w in words))

    def test_local_train_resume_hint(self):
        out = self.f.dir / "run $1"
        r = run(["bash", REPO / "jobs" / "local" / "train.sh", "--set", "log.every=5"],
                env=self.f.env(RANKS="1", OUT=out, EXTRA_SETS="train.steps=7"), cwd=REPO)
        self.assertEqual(r.returncode, 3, r.stderr)
        line = next(l for l in r.stderr.splitlines() if "to resume:" in l)
        words = shlex.split(line.split("to resume:", 1)[1])
        self.assertEqual(words[:3], [f"RESUME={out}", f"OUT={out}", "RANKS=1"])
        self.assertIn("EXTRA_SETS=train.steps=7", words)
        self.assertEqual(words[-3:], [str(REPO / "jobs" / "local" / "train.sh"), "--set", "log.every=5"])


if __name__ == "__main__":
    unittest.main(verbosity=2)
