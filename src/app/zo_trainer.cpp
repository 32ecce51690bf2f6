// One zeroth-order step of the compressed MLP (model::SparseMlp), FedSGD or FedAvg form, and the
// evaluation of its global model (ALGORITHMS.md §2). The zeroth-order learner (zo_learner.cpp)
// drives it; only compressed values, their optimizer state and two activation buffers are held.
#include "lowsync/app/zo_trainer.hpp"

#include "lowsync/core/rng.hpp"

#include <algorithm>

namespace lowsync::app {

ZoTrainer::ZoTrainer(model::SparseMlp& model, const optim::ZoSettings& settings, Form form, int period,
                     std::unique_ptr<optim::Optimizer> update, comm::Communicator& comm)
    : model_(model),
      shared_(settings),
      local_([&] {
        optim::ZoSettings s = settings;
        s.seed = stream_key({settings.seed, static_cast<std::uint64_t>(comm.rank())});
        return s;
      }()),
      form_(form),
      period_(period),
      update_(std::move(update)),
      comm_(comm),
      grad_("zo.grad", model.nnz()) {}

double ZoTrainer::step(const data::Batch& batch, std::int64_t step) {
  auto& params = model_.params();
  const auto loss = [&] { return model_.forward_loss(batch); };
  const auto perturbed = [&](const model::Perturbations& p, std::span<double> losses) {
    model_.perturbed_losses(batch, p, losses);
  };
  const auto t = static_cast<std::uint64_t>(step);
  if (form_ == Form::kFedSgd) {
    optim::ZoProbe probe = shared_.probe(t, loss, perturbed);
    dropped_ += probe.num_dropped;
    // Equal batches on every rank: the union-batch loss difference is the mean of the local
    // ones. A NaN (dropped) entry anywhere makes the sum NaN, so every rank drops it.
    const float inv = 1.0f / static_cast<float>(comm_.size());
    for (float& dl : probe.loss_diffs) dl *= inv;
    comm_.allreduce(std::span<float>(probe.loss_diffs), comm::ReduceOp::sum, "zo");
    shared_.apply_estimate(probe.loss_diffs, t, params, grad_.span());
    update_->step(params.values(), grad_.span());
    return probe.loss;
  }
  optim::ZoProbe probe = local_.probe(t, loss, perturbed);
  dropped_ += probe.num_dropped;
  local_.apply_estimate(probe.loss_diffs, t, params, grad_.span());
  update_->step(params.values(), grad_.span());
  synced_ = false;
  if (comm_.size() > 1 && step % period_ == 0) {
    // Only the kept values travel: the mask is shared, so no indices.
    auto values = params.values();
    comm_.allreduce(values, comm::ReduceOp::sum, "zo.avg");
    const float inv = 1.0f / static_cast<float>(comm_.size());
    for (float& v : values) v *= inv;
    ++syncs_;
    synced_ = true;
  }
  return probe.loss;
}

model::EvalResult ZoTrainer::evaluate(const float* images, const std::int32_t* labels, std::int64_t n) {
  const bool average = form_ == Form::kFedAvg && comm_.size() > 1 && !synced_;
  memory::TrackedBuffer<float> saved;  // compressed (nnz), only for the duration of the evaluation
  auto values = model_.params().values();
  if (average) {
    saved = memory::TrackedBuffer<float>("zo.eval_saved", values.size());
    std::copy(values.begin(), values.end(), saved.data());
    comm_.allreduce(values, comm::ReduceOp::sum, "obs.eval");
    const float inv = 1.0f / static_cast<float>(comm_.size());
    for (float& v : values) v *= inv;
  }
  const auto local = model_.evaluate(images, labels, n);
  if (average) std::copy(saved.data(), saved.data() + values.size(), values.begin());
  double sums[3] = {local.loss * static_cast<double>(local.samples), local.accuracy * static_cast<double>(local.samples),
                    static_cast<double>(local.samples)};
  comm_.allreduce(std::span<double>(sums, 3), comm::ReduceOp::sum, "obs.eval");
  return {sums[0] / sums[2], sums[1] / sums[2], static_cast<std::int64_t>(sums[2])};
}

}  // namespace lowsync::app
