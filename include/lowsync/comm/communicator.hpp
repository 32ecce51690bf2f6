// Communicator: the only door to MPI (and NCCL when built). Each collective checks its arguments
// (size_t -> int counts, sizes), fences Kokkos, times the call and records it in the ByteLedger
// under a traffic class, then dispatches to the backend. Every rank must call the same
// collectives in the same order; a collective that does not finish within the watchdog timeout
// aborts the job with a message naming it.
#pragma once

#include "lowsync/comm/ledger.hpp"
#include "lowsync/core/dtype.hpp"

#include <mpi.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

namespace lowsync::comm {

enum class ReduceOp : std::uint8_t { sum, max, min, lor };

struct CommOptions {
  // Sum reductions in a fixed rank order (reduce-scatter by alltoall, rank-ordered sum,
  // allgather): bitwise identical run after run, same bytes as a ring, a little slower.
  bool deterministic = false;
  double timeout_seconds = 0.0;  // 0 = no watchdog
  // A barrier (ledger class "obs.wait") before each blocking collective of a non-obs class, so
  // the collective's seconds hold its transfer once every rank has arrived (what the network
  // model predicts) and the wait for the slowest rank's compute is booked apart. For checking
  // the model (tools/netem); costs one barrier latency per collective.
  bool separate_waits = false;
};

// Watches one collective at a time from a helper thread (see communicator.cpp). arm/disarm
// cost a mutex each; with timeout 0 there is no thread and they do nothing.
// Heartbeat (attach_heartbeat, K > 1): arm() also numbers the collective (every rank calls the
// same sequence) and posts the number into slot `rank` of an MPI window on rank 0 (one 8-byte
// MPI_Put + flush; rank 0 stores its own). Rank 0's watchdog thread reads the slots from its
// local window memory without calling MPI, so on a timeout it names the ranks that have not
// reached the collective it waits in, and when rank 0 itself is the one behind, the ranks
// waiting for it.
class Watchdog {
 public:
  Watchdog(double timeout_seconds, int rank);
  ~Watchdog();
  void arm(Collective c, std::string_view traffic, std::int64_t step);
  void disarm();
  // slots: rank 0's window memory (size entries), nullptr elsewhere. Call before the first arm.
  void attach_heartbeat(MPI_Win win, std::int64_t* slots, int size);
  bool enabled() const { return timeout_ > 0.0; }
  // The step the main thread is in (for the message of a rank stuck outside a collective).
  void note_step(std::int64_t step) { current_step_.store(step, std::memory_order_relaxed); }

 private:
  void run();
  std::string laggards_text(std::int64_t below) const;  // rank 0: ranks whose slot < below
  double timeout_;
  int rank_;
  MPI_Win win_ = MPI_WIN_NULL;
  std::int64_t* slots_ = nullptr;
  int size_ = 1;
  std::int64_t seq_ = 0;       // collectives entered by this rank (the heartbeat value)
  std::int64_t armed_seq_ = 0;
  std::atomic<std::int64_t> current_step_{0};
  bool lagging_ = false;       // rank 0: some rank is at a later collective than this one
  std::chrono::steady_clock::time_point lag_since_;
  std::thread thread_;
  std::mutex mutex_;
  std::condition_variable wake_;
  bool stop_ = false;
  bool armed_ = false;
  std::string what_;
  std::int64_t step_ = 0;
  std::chrono::steady_clock::time_point since_;
};

class Communicator;

// A non-blocking allreduce in flight (Communicator::start_allreduce .. wait). The send buffer
// must stay unchanged and the receive buffer untouched until wait(). Destroying an active one
// waits for it (every rank destroys its own at the same point of a normal exit), except while an
// exception unwinds: then the peers may never get there, and MPI_Finalize or the abort takes it.
class PendingAllreduce {
 public:
  PendingAllreduce() = default;
  ~PendingAllreduce();
  PendingAllreduce(PendingAllreduce&& o) noexcept;
  PendingAllreduce& operator=(PendingAllreduce&& o) noexcept;
  PendingAllreduce(const PendingAllreduce&) = delete;
  PendingAllreduce& operator=(const PendingAllreduce&) = delete;
  bool active() const { return active_; }

 private:
  friend class Communicator;
  MPI_Request request_ = MPI_REQUEST_NULL;
  std::string traffic_;
  std::size_t payload_bytes_ = 0;
  double seconds_ = 0.0;  // spent inside the start call so far (the wait adds its own)
  bool active_ = false;
};

// Arms the watchdog for the lifetime of one collective call.
class Guard {
 public:
  Guard(const std::unique_ptr<Watchdog>& w, Collective c, std::string_view traffic, std::int64_t step) : w_(*w) {
    w_.arm(c, traffic, step);
  }
  ~Guard() { w_.disarm(); }
  Guard(const Guard&) = delete;
  Guard& operator=(const Guard&) = delete;

 private:
  Watchdog& w_;
};

class Communicator {
 public:
  // Duplicates `comm` so our traffic never mixes with anyone else's.
  explicit Communicator(MPI_Comm comm, CommOptions options = {});
  ~Communicator();
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;

  int rank() const { return rank_; }
  int size() const { return size_; }
  const CommOptions& options() const { return options_; }

  template <class T> void allreduce(std::span<T> data, ReduceOp op, std::string_view traffic) {
    allreduce_bytes(data.data(), data.size(), dtype_of_v<std::remove_const_t<T>>, op, traffic);
  }
  template <class T> void broadcast(std::span<T> data, int root, std::string_view traffic) {
    broadcast_bytes(data.data(), data.size(), dtype_of_v<std::remove_const_t<T>>, root, traffic);
  }
  // recv.size() == size() * send.size(); rank r's block lands at recv[r * send.size()].
  template <class T>
  void allgather(std::span<const T> send, std::span<T> recv, std::string_view traffic) {
    allgather_bytes(send.data(), send.size(), recv.data(), recv.size(), dtype_of_v<T>, traffic);
  }
  // counts[r] elements from rank r, packed in rank order into recv.
  template <class T>
  void allgatherv(std::span<const T> send, std::span<T> recv, std::span<const std::int64_t> counts,
                  std::string_view traffic) {
    allgatherv_bytes(send.data(), send.size(), recv.data(), recv.size(), counts, dtype_of_v<T>,
                     traffic);
  }
  // send.size() == recv.size() == size() * block: block r of send goes to rank r, and rank r's
  // block for this rank lands at recv[r * block].
  template <class T>
  void alltoall(std::span<const T> send, std::span<T> recv, std::string_view traffic) {
    alltoall_bytes(send.data(), send.size(), recv.data(), recv.size(), dtype_of_v<T>, traffic);
  }
  // On root recv.size() == size() * send.size(); elsewhere recv may be empty.
  template <class T>
  void gather(std::span<const T> send, std::span<T> recv, int root, std::string_view traffic) {
    gather_bytes(send.data(), send.size(), recv.data(), recv.size(), dtype_of_v<T>, root, traffic);
  }
  void barrier(std::string_view traffic = "control");

  // Non-blocking allreduce (recv = op over ranks of send, send.size() == recv.size()): started
  // here, completed by wait() any number of steps later, so the reduction travels while the
  // ranks compute. Every rank starts and waits in the same order as its other collectives. Both
  // calls are watched by the watchdog (each counts as one collective in the heartbeat); the
  // ledger records one allreduce of the payload at wait(), its seconds those spent blocked in
  // start + wait (the overlap shows as fewer comm seconds for the same bytes). With
  // comm.deterministic a sum is done at once by the rank-ordered path (nothing overlaps) so
  // results stay bitwise repeatable.
  template <class T>
  PendingAllreduce start_allreduce(std::span<const T> send, std::span<T> recv, ReduceOp op, std::string_view traffic) {
    if (send.size() != recv.size())
      fail_sizes(send.size(), recv.size());
    return start_allreduce_bytes(send.data(), recv.data(), send.size(), dtype_of_v<T>, op, traffic);
  }
  void wait(PendingAllreduce& pending);

  // Every rank says whether it failed; all learn whether any did (one int allreduce, LOR).
  bool any(bool flag_here, std::string_view traffic = "control");

  ByteLedger& ledger() { return ledger_; }
  const ByteLedger& ledger() const { return ledger_; }
  // Step number the watchdog names in its message.
  void set_step(std::int64_t step) {
    step_ = step;
    watchdog_->note_step(step);
  }
  // For parallel HDF5 (MPI-IO) only: everything else goes through the front doors above.
  MPI_Comm mpi_comm() const { return comm_; }

 private:
  void allreduce_bytes(void* data, std::size_t count, DType t, ReduceOp op, std::string_view traffic);
  void broadcast_bytes(void* data, std::size_t count, DType t, int root, std::string_view traffic);
  void allgather_bytes(const void* send, std::size_t send_count, void* recv, std::size_t recv_count,
                       DType t, std::string_view traffic);
  void allgatherv_bytes(const void* send, std::size_t send_count, void* recv, std::size_t recv_count,
                        std::span<const std::int64_t> counts, DType t, std::string_view traffic);
  void gather_bytes(const void* send, std::size_t send_count, void* recv, std::size_t recv_count,
                    DType t, int root, std::string_view traffic);
  void alltoall_bytes(const void* send, std::size_t send_count, void* recv, std::size_t recv_count, DType t,
                      std::string_view traffic);
  PendingAllreduce start_allreduce_bytes(const void* send, void* recv, std::size_t count, DType t, ReduceOp op,
                                         std::string_view traffic);
  [[noreturn]] static void fail_sizes(std::size_t send, std::size_t recv);
  void deterministic_sum(void* data, std::size_t count, DType t);
  void record(Collective c, std::string_view traffic, std::size_t payload_bytes, double start, bool is_root);
  void wait_for_peers(std::string_view traffic);  // CommOptions::separate_waits

  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0;
  int size_ = 1;
  CommOptions options_;
  ByteLedger ledger_;
  std::int64_t step_ = 0;
  std::vector<std::byte> scratch_;  // deterministic reduction, grown once
  std::unique_ptr<Watchdog> watchdog_;
  MPI_Win heartbeat_ = MPI_WIN_NULL;  // the watchdog's heartbeat slots (rank 0 holds them)
};

}  // namespace lowsync::comm
