// A stand-in for `lowsync train` that tests the job plumbing, not training: MPI starts (so PMIx
// or mpirun wire-up works), one allreduce checks that all ranks talk, and rank 0 writes
// metrics.csv + summary.json with "ranks" = MPI world size. It follows the run contract's
// signal rule: on SIGUSR1 or SIGTERM every rank stops, rank 0 writes <out>/checkpoints/stub.ckpt,
// and all exit 3. STUB_WAIT_S (env, default 0) seconds it waits for such a signal first, unless
// it was started with --resume. Built and used by tools/slurm/test_slurm.sh.
#include <mpi.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

static volatile sig_atomic_t g_stop = 0;
static void on_signal(int sig) { (void)sig; g_stop = 1; }

static int write_text(const char* dir, const char* name, const char* text) {
  char path[4096];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  FILE* f = fopen(path, "w");
  if (!f) return -1;
  fputs(text, f);
  return fclose(f);
}

int main(int argc, char** argv) {
  const char* out = NULL;
  const char* resume = NULL;
  for (int i = 1; i + 1 < argc; ++i) {
    if (strcmp(argv[i], "--out") == 0) out = argv[i + 1];
    if (strcmp(argv[i], "--resume") == 0) resume = argv[i + 1];
  }
  signal(SIGUSR1, on_signal);
  signal(SIGTERM, on_signal);
  MPI_Init(&argc, &argv);
  int rank = 0, size = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  if (!out) {
    if (rank == 0) fprintf(stderr, "stub_trainer: error: --out DIR is required\n");
    MPI_Finalize();
    return 2;
  }
  long sum = 0, mine = rank;
  MPI_Allreduce(&mine, &sum, 1, MPI_LONG, MPI_SUM, MPI_COMM_WORLD);
  const int allreduce_ok = sum == (long)size * (size - 1) / 2;

  // Wait for a stop signal; ranks agree every 100 ms, as the trainer agrees at a step boundary.
  const double wait_s = resume ? 0.0 : atof(getenv("STUB_WAIT_S") ? getenv("STUB_WAIT_S") : "0");
  int stop = 0;
  for (double waited = 0.0; waited < wait_s && !stop; waited += 0.1) {
    struct timespec ts = {0, 100000000};
    nanosleep(&ts, NULL);
    int local = g_stop;
    MPI_Allreduce(&local, &stop, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  }
  if (rank == 0) {
    mkdir(out, 0755);
    if (stop) {
      char dir[4096];
      snprintf(dir, sizeof dir, "%s/checkpoints", out);
      mkdir(dir, 0755);
      write_text(dir, "stub.ckpt", "stub checkpoint\n");
      fprintf(stderr, "stub_trainer: stop signal: checkpoint written, exit 3\n");
    } else {
      char summary[1024];
      snprintf(summary, sizeof summary,
               "{\"lowsync_version\": \"stub\", \"strategy\": \"allreduce\", \"ranks\": %d, "
               "\"steps\": 1, \"allreduce_ok\": %s, \"resumed_from\": \"%s\"}\n",
               size, allreduce_ok ? "true" : "false", resume ? resume : "");
      write_text(out, "metrics.csv", "step,test_acc,bytes_sent\n0,,0\n1,0.5,8\n");
      write_text(out, "summary.json", summary);
      printf("stub_trainer: %d ranks, allreduce %s\n", size, allreduce_ok ? "ok" : "WRONG");
    }
  }
  MPI_Finalize();
  return stop ? 3 : (allreduce_ok ? 0 : 1);
}
