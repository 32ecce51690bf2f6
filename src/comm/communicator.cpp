// MPI backend of the Communicator. Collectives are Open MPI's blocking ones (its tuned algorithms;
// the non-blocking libnbc versions measured 1.4x slower on the MLP gradient), except
// start_allreduce/wait, non-blocking by design (Streaming DiLoCo's overlap). A watchdog thread
// watches each call: if one does not finish within comm.timeout_seconds it names the collective
// and the step and ends the process, and the launcher (mpirun, srun --kill-on-bad-exit) then
// takes every rank down instead of leaving them hanging.
#include "lowsync/comm/communicator.hpp"

#include "lowsync/core/error.hpp"
#include "lowsync/core/log.hpp"

#include <Kokkos_Core.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <exception>
#include <thread>
#include <climits>
#include <cstring>
#include <vector>

namespace lowsync::comm {
namespace {

MPI_Datatype mpi_type(DType t) {
  switch (t) {
    case DType::f32: return MPI_FLOAT;
    case DType::f64: return MPI_DOUBLE;
    case DType::i32: return MPI_INT32_T;
    case DType::i64: return MPI_INT64_T;
    case DType::u8: return MPI_UINT8_T;
    case DType::u16: case DType::bf16: case DType::f16: return MPI_UINT16_T;
    case DType::fp8_e4m3: case DType::fp8_e5m2: return MPI_UINT8_T;
  }
  fail("communicator: unsupported dtype {}", dtype_name(t));
}

MPI_Op mpi_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::sum: return MPI_SUM;
    case ReduceOp::max: return MPI_MAX;
    case ReduceOp::min: return MPI_MIN;
    case ReduceOp::lor: return MPI_LOR;
  }
  return MPI_SUM;
}

int checked_count(std::size_t count, std::string_view what) {
  if (count > static_cast<std::size_t>(INT_MAX))
    fail("communicator: {} of {} elements exceeds the MPI int count limit ({})", what, count, INT_MAX);
  return static_cast<int>(count);
}

void check_mpi(int rc, const char* call) {
  if (rc == MPI_SUCCESS) return;
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, msg, &len);
  fail("{} failed: {}", call, std::string(msg, static_cast<std::size_t>(len)));
}

}  // namespace

Communicator::Communicator(MPI_Comm comm, CommOptions options) : options_(options) {
  check_mpi(MPI_Comm_dup(comm, &comm_), "MPI_Comm_dup");
  MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
  MPI_Comm_rank(comm_, &rank_);
  MPI_Comm_size(comm_, &size_);
  watchdog_ = std::make_unique<Watchdog>(options_.timeout_seconds, rank_);
  if (watchdog_->enabled() && size_ > 1) {
    void* base = nullptr;
    const MPI_Aint bytes = rank_ == 0 ? static_cast<MPI_Aint>(size_) * 8 : 0;
    // All ranks must agree before the barrier below, or a rank whose allocation failed skips it.
    const int allocated = MPI_Win_allocate(bytes, 8, MPI_INFO_NULL, comm_, &base, &heartbeat_) == MPI_SUCCESS ? 1 : 0;
    int all_allocated = 0;
    MPI_Allreduce(&allocated, &all_allocated, 1, MPI_INT, MPI_MIN, comm_);
    if (all_allocated == 1) {
      MPI_Win_set_errhandler(heartbeat_, MPI_ERRORS_RETURN);
      auto* slots = rank_ == 0 ? static_cast<std::int64_t*>(base) : nullptr;
      if (slots != nullptr) std::fill(slots, slots + size_, std::int64_t{0});
      MPI_Barrier(comm_);  // slots zeroed before any rank puts
      MPI_Win_lock_all(MPI_MODE_NOCHECK, heartbeat_);
      watchdog_->attach_heartbeat(heartbeat_, slots, size_);
    } else {
      heartbeat_ = MPI_WIN_NULL;  // no names in timeout messages, nothing else changes (a window
                                  // that exists on some ranks only is left to MPI_Finalize)
    }
  }
}

Communicator::~Communicator() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  watchdog_.reset();  // the thread reads the window memory
  // MPI_Win_free synchronizes: skipped while an exception unwinds (the peers may never get
  // here), the window is then left to MPI_Finalize / the process exit.
  if (!finalized && heartbeat_ != MPI_WIN_NULL && std::uncaught_exceptions() == 0) {
    MPI_Win_unlock_all(heartbeat_);
    MPI_Win_free(&heartbeat_);
  }
  if (!finalized && comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
}

Watchdog::Watchdog(double timeout_seconds, int rank) : timeout_(timeout_seconds), rank_(rank) {
  if (timeout_ > 0.0) thread_ = std::thread([this] { run(); });
}

Watchdog::~Watchdog() {
  if (thread_.joinable()) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    wake_.notify_all();
    thread_.join();
  }
}

void Watchdog::attach_heartbeat(MPI_Win win, std::int64_t* slots, int size) {
  std::lock_guard<std::mutex> lock(mutex_);
  win_ = win;
  slots_ = slots;
  size_ = size;
}

void Watchdog::arm(Collective c, std::string_view traffic, std::int64_t step) {
  if (timeout_ <= 0.0) return;
  ++seq_;
  if (slots_ != nullptr) {
    std::atomic_ref<std::int64_t>(slots_[0]).store(seq_, std::memory_order_relaxed);
  } else if (win_ != MPI_WIN_NULL) {
    MPI_Put(&seq_, 1, MPI_INT64_T, 0, rank_, 1, MPI_INT64_T, win_);
    MPI_Win_flush(0, win_);
  }
  std::lock_guard<std::mutex> lock(mutex_);
  what_ = fmt::format("{} ({})", collective_name(c), traffic);
  step_ = step;
  armed_seq_ = seq_;
  since_ = std::chrono::steady_clock::now();
  armed_ = true;
  lagging_ = false;  // rank 0 reached a collective: it is not stuck, whatever it lagged before
}

std::string Watchdog::laggards_text(std::int64_t below) const {
  std::string out;
  int n = 0;
  for (int r = 0; r < size_; ++r) {
    const std::int64_t v = std::atomic_ref<std::int64_t>(slots_[r]).load(std::memory_order_relaxed);
    if (v >= below) continue;
    if (++n <= 16) out += fmt::format("{}{}", out.empty() ? "" : ",", r);
  }
  if (n > 16) out += fmt::format(",... ({} ranks)", n);
  return out;
}

void Watchdog::disarm() {
  if (timeout_ <= 0.0) return;
  std::lock_guard<std::mutex> lock(mutex_);
  armed_ = false;
}

void Watchdog::run() {
  const auto period = std::chrono::duration<double>(std::min(1.0, timeout_ / 4.0));
  std::unique_lock<std::mutex> lock(mutex_);
  while (!stop_) {
    wake_.wait_for(lock, period);
    if (stop_) continue;
    const auto now = std::chrono::steady_clock::now();
    if (!armed_) {
      // Rank 0 outside a collective while others already wait in a later one: it is the rank
      // they wait for (a collective needs every rank), so it says so before their watchdogs end
      // the job.
      if (slots_ == nullptr) continue;
      std::int64_t ahead = 0;
      for (int r = 0; r < size_; ++r)
        ahead = std::max(ahead, std::atomic_ref<std::int64_t>(slots_[r]).load(std::memory_order_relaxed));
      // slots_[0] is this rank's own number (seq_ belongs to the main thread).
      if (ahead <= std::atomic_ref<std::int64_t>(slots_[0]).load(std::memory_order_relaxed)) {
        lagging_ = false;
      } else if (!lagging_) {
        lagging_ = true;
        lag_since_ = now;
      } else if (std::chrono::duration<double>(now - lag_since_).count() > timeout_) {
        std::fprintf(stderr,
                     "lowsync: rank 0: error: ranks are waiting for rank(s) %s, which did not reach collective #%lld "
                     "within comm.timeout_seconds = %g s (this rank is busy outside a collective at step %lld); "
                     "aborting the job\n",
                     laggards_text(ahead).c_str(), static_cast<long long>(ahead), timeout_,
                     static_cast<long long>(current_step_.load(std::memory_order_relaxed)));
        std::fflush(stderr);
        std::_Exit(4);
      }
      continue;
    }
    const double waited = std::chrono::duration<double>(now - since_).count();
    if (waited > timeout_) {
      std::string waiting_for;
      if (slots_ != nullptr) {
        const std::string late = laggards_text(armed_seq_);
        waiting_for = late.empty() ? "; every rank reached it (one may have died inside it)"
                                   : fmt::format("; waiting for rank(s) {}, which did not reach it", late);
      } else if (win_ != MPI_WIN_NULL) {
        waiting_for = "; rank 0 names the ranks that did not reach it";
      }
      std::fprintf(stderr,
                   "lowsync: rank %d: error: %s did not complete within comm.timeout_seconds = %g s at step %lld%s: "
                   "a peer rank died or hangs; aborting the job\n",
                   rank_, what_.c_str(), timeout_, static_cast<long long>(step_), waiting_for.c_str());
      std::fflush(stderr);
      // The other ranks give rank 0, which holds the heartbeat, a moment to name the ranks.
      if (rank_ != 0 && win_ != MPI_WIN_NULL) {
        lock.unlock();
        std::this_thread::sleep_for(std::chrono::duration<double>(std::min(2.0, timeout_)));
      }
      // Not MPI_Abort: this thread may not call MPI. A non-zero exit without MPI_Finalize makes
      // mpirun (and srun --kill-on-bad-exit) end every other rank.
      std::_Exit(4);
    }
  }
}

void Communicator::record(Collective c, std::string_view traffic, std::size_t payload_bytes, double start, bool is_root) {
  ledger_.record(c, traffic, payload_bytes, wire_bytes(c, payload_bytes, size_, is_root), MPI_Wtime() - start);
}

void Communicator::wait_for_peers(std::string_view traffic) {
  if (options_.separate_waits && size_ > 1 && !traffic.starts_with("obs")) barrier(kWaitTraffic);
}

void Communicator::allreduce_bytes(void* data, std::size_t count, DType t, ReduceOp op, std::string_view traffic) {
  Kokkos::fence();  // data may have been written by a Kokkos kernel
  wait_for_peers(traffic);
  const double start = MPI_Wtime();
  const int n = checked_count(count, "allreduce");
  if (options_.deterministic && op == ReduceOp::sum && size_ > 1 && (t == DType::f32 || t == DType::f64)) {
    deterministic_sum(data, count, t);
  } else if (size_ > 1) {
    const Guard guard(watchdog_, Collective::allreduce, traffic, step_);
    check_mpi(MPI_Allreduce(MPI_IN_PLACE, data, n, mpi_type(t), mpi_op(op), comm_), "MPI_Allreduce");
  }
  record(Collective::allreduce, traffic, count * dtype_bytes(t), start, false);
}

// Reduce-scatter by alltoall, sum of each chunk in rank order 0..N-1, allgather: every rank
// gets bitwise the same result run after run, with the bytes of a ring allreduce.
void Communicator::deterministic_sum(void* data, std::size_t count, DType t) {
  const std::size_t elem = dtype_bytes(t);
  const auto N = static_cast<std::size_t>(size_);
  std::vector<int> counts(N), displs(N);
  for (std::size_t r = 0; r < N; ++r) {
    const std::size_t begin = r * count / N, end = (r + 1) * count / N;
    counts[r] = checked_count(end - begin, "deterministic allreduce chunk");
    displs[r] = static_cast<int>(begin);
  }
  const std::size_t mine = static_cast<std::size_t>(counts[rank_]);
  scratch_.resize(N * mine * elem);
  std::vector<int> recv_counts(N, static_cast<int>(mine)), recv_displs(N);
  for (std::size_t r = 0; r < N; ++r) recv_displs[r] = static_cast<int>(r * mine);
  const Guard guard(watchdog_, Collective::allreduce, "deterministic", step_);
  check_mpi(MPI_Alltoallv(data, counts.data(), displs.data(), mpi_type(t), scratch_.data(), recv_counts.data(),
                          recv_displs.data(), mpi_type(t), comm_), "MPI_Alltoallv");
  auto sum_chunks = [&](auto* out, const auto* in) {
    for (std::size_t i = 0; i < mine; ++i) {
      auto acc = in[i];
      for (std::size_t r = 1; r < N; ++r) acc += in[r * mine + i];
      out[displs[rank_] + i] = acc;
    }
  };
  if (t == DType::f32) sum_chunks(static_cast<float*>(data), reinterpret_cast<const float*>(scratch_.data()));
  else sum_chunks(static_cast<double*>(data), reinterpret_cast<const double*>(scratch_.data()));
  check_mpi(MPI_Allgatherv(MPI_IN_PLACE, 0, mpi_type(t), data, counts.data(), displs.data(), mpi_type(t), comm_),
            "MPI_Allgatherv");
}

void Communicator::broadcast_bytes(void* data, std::size_t count, DType t, int root, std::string_view traffic) {
  if (root < 0 || root >= size_) fail("broadcast: root {} is not a rank of {}", root, size_);
  Kokkos::fence();
  wait_for_peers(traffic);
  const double start = MPI_Wtime();
  const int n = checked_count(count, "broadcast");
  if (size_ > 1) {
    const Guard guard(watchdog_, Collective::broadcast, traffic, step_);
    check_mpi(MPI_Bcast(data, n, mpi_type(t), root, comm_), "MPI_Bcast");
  }
  record(Collective::broadcast, traffic, count * dtype_bytes(t), start, rank_ == root);
}

void Communicator::allgather_bytes(const void* send, std::size_t send_count, void* recv, std::size_t recv_count,
                                   DType t, std::string_view traffic) {
  if (recv_count != send_count * static_cast<std::size_t>(size_))
    fail("allgather: receive buffer holds {} elements, expected {} x {} ranks", recv_count, send_count, size_);
  Kokkos::fence();
  wait_for_peers(traffic);
  const double start = MPI_Wtime();
  const int n = checked_count(send_count, "allgather");
  {
    const Guard guard(watchdog_, Collective::allgather, traffic, step_);
    check_mpi(MPI_Allgather(send, n, mpi_type(t), recv, n, mpi_type(t), comm_), "MPI_Allgather");
  }
  record(Collective::allgather, traffic, send_count * dtype_bytes(t), start, false);
}

void Communicator::alltoall_bytes(const void* send, std::size_t send_count, void* recv, std::size_t recv_count,
                                  DType t, std::string_view traffic) {
  const auto world = static_cast<std::size_t>(size_);
  if (send_count != recv_count || send_count % world != 0)
    fail("alltoall: send {} / receive {} elements, expected equal multiples of {} ranks", send_count, recv_count, size_);
  Kokkos::fence();
  wait_for_peers(traffic);
  const double start = MPI_Wtime();
  const int block = checked_count(send_count / world, "alltoall");
  {
    const Guard guard(watchdog_, Collective::alltoall, traffic, step_);
    check_mpi(MPI_Alltoall(send, block, mpi_type(t), recv, block, mpi_type(t), comm_), "MPI_Alltoall");
  }
  record(Collective::alltoall, traffic, send_count * dtype_bytes(t), start, false);
}

void Communicator::allgatherv_bytes(const void* send, std::size_t send_count, void* recv, std::size_t recv_count,
                                    std::span<const std::int64_t> counts, DType t, std::string_view traffic) {
  if (counts.size() != static_cast<std::size_t>(size_))
    fail("allgatherv: {} counts given for {} ranks", counts.size(), size_);
  if (static_cast<std::size_t>(counts[rank_]) != send_count)
    fail("allgatherv: rank {} sends {} elements but counts[{}] = {}", rank_, send_count, rank_, counts[rank_]);
  std::vector<int> c(size_), d(size_);
  std::size_t total = 0;
  for (int r = 0; r < size_; ++r) {
    if (counts[r] < 0) fail("allgatherv: negative count {} for rank {}", counts[r], r);
    c[r] = checked_count(static_cast<std::size_t>(counts[r]), "allgatherv count");
    d[r] = checked_count(total, "allgatherv displacement");
    total += static_cast<std::size_t>(counts[r]);
  }
  if (total != recv_count) fail("allgatherv: receive buffer holds {} elements, counts sum to {}", recv_count, total);
  Kokkos::fence();
  wait_for_peers(traffic);
  const double start = MPI_Wtime();
  {
    const Guard guard(watchdog_, Collective::allgatherv, traffic, step_);
    check_mpi(MPI_Allgatherv(send, c[rank_], mpi_type(t), recv, c.data(), d.data(), mpi_type(t), comm_),
              "MPI_Allgatherv");
  }
  record(Collective::allgatherv, traffic, send_count * dtype_bytes(t), start, false);
}

void Communicator::gather_bytes(const void* send, std::size_t send_count, void* recv, std::size_t recv_count,
                                DType t, int root, std::string_view traffic) {
  if (root < 0 || root >= size_) fail("gather: root {} is not a rank of {}", root, size_);
  if (rank_ == root && recv_count != send_count * static_cast<std::size_t>(size_))
    fail("gather: root receive buffer holds {} elements, expected {} x {} ranks", recv_count, send_count, size_);
  Kokkos::fence();
  wait_for_peers(traffic);
  const double start = MPI_Wtime();
  const int n = checked_count(send_count, "gather");
  {
    const Guard guard(watchdog_, Collective::gather, traffic, step_);
    check_mpi(MPI_Gather(send, n, mpi_type(t), recv, n, mpi_type(t), root, comm_), "MPI_Gather");
  }
  record(Collective::gather, traffic, send_count * dtype_bytes(t), start, rank_ == root);
}

void Communicator::barrier(std::string_view traffic) {
  const double start = MPI_Wtime();
  {
    const Guard guard(watchdog_, Collective::barrier, traffic, step_);
    check_mpi(MPI_Barrier(comm_), "MPI_Barrier");
  }
  record(Collective::barrier, traffic, 0, start, false);
}

PendingAllreduce::~PendingAllreduce() {
  if (!active_ || std::uncaught_exceptions() > 0) return;
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Wait(&request_, MPI_STATUS_IGNORE);
}

PendingAllreduce::PendingAllreduce(PendingAllreduce&& o) noexcept
    : request_(o.request_), traffic_(std::move(o.traffic_)), payload_bytes_(o.payload_bytes_), seconds_(o.seconds_),
      active_(o.active_) {
  o.request_ = MPI_REQUEST_NULL;
  o.active_ = false;
}

PendingAllreduce& PendingAllreduce::operator=(PendingAllreduce&& o) noexcept {
  if (this == &o) return *this;
  if (active_) MPI_Wait(&request_, MPI_STATUS_IGNORE);  // never drop a request MPI still owns
  request_ = o.request_;
  traffic_ = std::move(o.traffic_);
  payload_bytes_ = o.payload_bytes_;
  seconds_ = o.seconds_;
  active_ = o.active_;
  o.request_ = MPI_REQUEST_NULL;
  o.active_ = false;
  return *this;
}

void Communicator::fail_sizes(std::size_t send, std::size_t recv) {
  fail("start_allreduce: send holds {} elements, receive {}", send, recv);
}

PendingAllreduce Communicator::start_allreduce_bytes(const void* send, void* recv, std::size_t count, DType t,
                                                     ReduceOp op, std::string_view traffic) {
  Kokkos::fence();
  const double start = MPI_Wtime();
  const int n = checked_count(count, "start_allreduce");
  PendingAllreduce p;
  p.traffic_ = std::string(traffic);
  p.payload_bytes_ = count * dtype_bytes(t);
  p.active_ = true;
  if (send != recv && count > 0) std::memcpy(recv, send, count * dtype_bytes(t));
  if (options_.deterministic && op == ReduceOp::sum && size_ > 1 && (t == DType::f32 || t == DType::f64)) {
    deterministic_sum(recv, count, t);  // done now: request_ stays null, wait() only records
  } else if (size_ > 1) {
    const Guard guard(watchdog_, Collective::allreduce, traffic, step_);
    check_mpi(MPI_Iallreduce(MPI_IN_PLACE, recv, n, mpi_type(t), mpi_op(op), comm_, &p.request_), "MPI_Iallreduce");
  }
  p.seconds_ = MPI_Wtime() - start;
  return p;
}

void Communicator::wait(PendingAllreduce& p) {
  if (!p.active_) fail("wait: no allreduce in flight ({})", p.traffic_.empty() ? "never started" : p.traffic_);
  const double start = MPI_Wtime();
  if (p.request_ != MPI_REQUEST_NULL) {
    const Guard guard(watchdog_, Collective::allreduce, p.traffic_, step_);
    check_mpi(MPI_Wait(&p.request_, MPI_STATUS_IGNORE), "MPI_Wait (allreduce)");
  }
  p.active_ = false;
  const double seconds = p.seconds_ + (MPI_Wtime() - start);
  ledger_.record(Collective::allreduce, p.traffic_, p.payload_bytes_,
                 wire_bytes(Collective::allreduce, p.payload_bytes_, size_, false), seconds);
}

bool Communicator::any(bool flag_here, std::string_view traffic) {
  std::int32_t flag = flag_here ? 1 : 0;
  allreduce(std::span<std::int32_t>(&flag, 1), ReduceOp::max, traffic);
  return flag != 0;
}

}  // namespace lowsync::comm
