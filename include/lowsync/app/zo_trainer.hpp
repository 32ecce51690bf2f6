// Backprop-free training (ALGORITHMS.md §2): foresight pruning before training (data-free NTK
// saliency summed over ranks, magnitude or random), then zeroth-order training of the compressed
// model in the FedSGD form (q loss differences per step on the wire) or the FedAvg form (local
// ZO steps, average of the kept weights every sync.period). The zeroth-order learner
// (zo_learner.cpp) runs it; the memory-lean model (model::SparseMlp) replaces the dense Model.
#pragma once

#include "lowsync/comm/communicator.hpp"
#include "lowsync/data/batch.hpp"
#include "lowsync/model/sparse_mlp.hpp"
#include "lowsync/optim/foresight.hpp"
#include "lowsync/optim/optimizer.hpp"
#include "lowsync/optim/zo.hpp"

#include <cstdint>
#include <memory>
#include <span>
#include <string>

namespace lowsync::app {

// The ZO training state of one rank: compressed model, estimator, update, gradient buffer.
class ZoTrainer {
 public:
  enum class Form { kFedSgd, kFedAvg };
  ZoTrainer(model::SparseMlp& model, const optim::ZoSettings& settings, Form form, int period,
            std::unique_ptr<optim::Optimizer> update, comm::Communicator& comm);
  // One step on this rank's batch; returns the local loss at the current weights.
  // FedSGD: probe, allreduce of the q differences (each scaled by 1/K; traffic "zo"), rebuild
  // and update (identical on every rank). FedAvg: local probe and update with rank-specific
  // directions; every `period` steps the kept values are averaged (traffic "zo.avg").
  double step(const data::Batch& batch, std::int64_t step);
  // Loss and accuracy of the global model on this rank's slice, combined over ranks (FedAvg:
  // the average of the replicas, through a compressed copy of the local values).
  model::EvalResult evaluate(const float* images, const std::int32_t* labels, std::int64_t n);
  std::int64_t syncs() const { return syncs_; }
  std::int64_t dropped_directions() const { return dropped_; }
  // Checkpoint restore (the direction streams are keyed by step, so counters are all there is).
  void restore_counters(std::int64_t syncs, std::int64_t dropped) {
    syncs_ = syncs;
    dropped_ = dropped;
  }
  optim::Optimizer& update() { return *update_; }

 private:
  model::SparseMlp& model_;
  optim::ZoEstimator shared_;  // FedSGD: one direction stream for all ranks
  optim::ZoEstimator local_;   // FedAvg: this rank's own stream
  Form form_;
  int period_;
  std::unique_ptr<optim::Optimizer> update_;
  comm::Communicator& comm_;
  memory::TrackedBuffer<float> grad_;  // nnz
  std::int64_t syncs_ = 0, dropped_ = 0;
  bool synced_ = true;  // FedAvg: replicas equal since the last average
};

}  // namespace lowsync::app
