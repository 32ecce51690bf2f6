// Memory-lean forward-only MLP for zeroth-order training (ALGORITHMS.md §2): the kept parameters
// live compressed (SparseParams: nnz values + shared bitmap), the forward runs a sparse
// kernel straight on them, and two activation buffers are reused between layers (nothing is kept
// for a backward pass). Flat parameter layout and initialisation equal model::Model("mlp"), so a
// dense ZO run, a pruned run and backprop start from the same weights.
#pragma once

#include "lowsync/core/memory.hpp"
#include "lowsync/data/batch.hpp"
#include "lowsync/model/model.hpp"
#include "lowsync/model/mask.hpp"

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

namespace lowsync::model {

// One fully connected layer of the flat layout: weight [out, in] at weight_offset, bias [out] at
// bias_offset; ReLU after every layer but the last.
struct DenseLayerSpec {
  std::size_t in = 0, out = 0;
  std::size_t weight_offset = 0, bias_offset = 0;
  bool relu = true;
};

// The "mlp" architecture (784-512-256-10) as layer specs, its ParamInfo list and parameter count.
std::vector<DenseLayerSpec> mlp_layer_specs();
std::vector<ParamInfo> mlp_param_infos();
std::size_t mlp_num_params();
// Initial value of flat parameter j, identical to Model("mlp", _, seed).params()[j].
float mlp_initial_value(std::uint64_t seed, std::size_t j);
// One OutputUnit per neuron (weight row + bias), for select_top_k's one-per-unit rule.
std::vector<OutputUnit> mlp_output_units();

// Dense reference forward/backward of the MLP on arbitrary weights (pruning phase, tests):
// out = f(x; w) [n, 10]; backward accumulates nothing, it overwrites grad (d entries) with
// d(sum_b <dout_b, f(x_b; w)>)/dw for the given dout [n, 10].
class DenseMlpRef {
 public:
  explicit DenseMlpRef(int batch);
  void forward(std::span<const float> w, const float* x, std::span<float> out);
  // Uses the activations of the last forward (same w and x).
  void backward(std::span<const float> w, const float* x, std::span<const float> dout, std::span<float> grad);
  int batch() const { return batch_; }

 private:
  int batch_;
  std::vector<DenseLayerSpec> specs_;
  std::vector<memory::TrackedBuffer<float>> acts_;  // post-activation output of each layer [n, out]
  memory::TrackedBuffer<float> d_a_, d_b_;          // gradient scratch [n, max width]
};

class SparseMlp {
 public:
  // batch = training batch per rank; values initialised as Model("mlp", batch, seed) at the kept
  // coordinates of `mask` (all kept when null). directions_per_pass = how many perturbed copies
  // perturbed_losses() evaluates in one pass (its activations take that many times the room).
  SparseMlp(int batch, std::uint64_t seed, std::shared_ptr<const Mask> mask = nullptr, int directions_per_pass = 1);

  std::size_t num_params() const { return params_.num_params(); }  // d
  std::size_t nnz() const { return params_.size(); }
  SparseParams& params() { return params_; }
  const SparseParams& params() const { return params_; }
  const std::vector<DenseLayerSpec>& layers() const { return specs_; }
  int batch() const { return batch_; }

  // Mean softmax cross-entropy over n <= batch() samples, accumulated in double.
  double forward_loss(const float* images, const std::int32_t* labels, int n);
  double forward_loss(const data::Batch& b) { return forward_loss(b.images, b.labels, b.size); }
  // losses[i] = mean loss of direction i's perturbed model (Perturbations) on the n samples, for
  // every i < p.keys.size() <= directions_per_pass(), in one pass over the kept weights: each
  // weight row is listed and its normals drawn once per pass, and the first layer reads each input
  // tile once for all directions. Each loss is bitwise forward_loss() of the model perturbed in
  // place by optim::zo_perturb(params(), keys[i], mu, coef) from the same values.
  void perturbed_losses(const float* images, const std::int32_t* labels, int n, const Perturbations& p,
                        std::span<double> losses);
  void perturbed_losses(const data::Batch& b, const Perturbations& p, std::span<double> losses) {
    perturbed_losses(b.images, b.labels, b.size, p, losses);
  }
  int directions_per_pass() const { return directions_; }
  // Loss and accuracy over n samples in chunks of batch().
  EvalResult evaluate(const float* images, const std::int32_t* labels, std::int64_t n);
  // Multiply-adds x 2 of one sample's forward on the kept weights (plus bias adds).
  double forward_flops_per_sample() const;
  // Bytes of the forward's activation buffers (input, two ping-pong buffers of directions_per_pass()
  // copies each) and row scratch.
  std::size_t activation_bytes() const;

 private:
  // Runs the forward of the unperturbed model (p null: one copy) or of p's directions; returns the
  // logits, direction-major [directions][10, n] (feature-major within a direction).
  const float* forward(const float* images, int n, const Perturbations* p);

  int batch_, directions_;
  std::vector<DenseLayerSpec> specs_;
  std::vector<std::size_t> weight_k_, bias_k_;  // index of the first kept value of each block
  SparseParams params_;
  memory::TrackedBuffer<float> input_;           // the batch, feature-major [784, batch]
  memory::TrackedBuffer<float> act_[2];          // ping-pong outputs [directions][width, batch]
  memory::TrackedBuffer<std::uint32_t> row_cols_;  // kept columns of one output row [<= in]
  memory::TrackedBuffer<std::uint64_t> row_index_; // their flat indices (the normals' counters)
  memory::TrackedBuffer<float> row_vals_;          // their values
  memory::TrackedBuffer<float> row_w_;             // each direction's weights of the row [directions][<= in]
  memory::TrackedBuffer<float> bias_w_;            // each direction's biases of a layer [directions][<= out]
  memory::TrackedBuffer<float> normals_;           // one direction's normals of a row or bias vector
};

}  // namespace lowsync::model
