// The schema: every configuration key lowsync knows, with type, default, bounds and one line of
// documentation. This is the only place a key is declared; `lowsync config` prints it as the
// reference table (docs/configuration.md, made by tools/config_doc.sh).
#include "lowsync/config/config.hpp"

#include <limits>

namespace lowsync::config {
namespace {

KeySpec integer(std::string key, std::int64_t def, double min, double max, std::string help) {
  return {std::move(key), Type::integer, def, std::move(help), {}, min, max};
}
KeySpec real(std::string key, double def, double min, double max, std::string help) {
  return {std::move(key), Type::real, def, std::move(help), {}, min, max};
}
KeySpec boolean(std::string key, bool def, std::string help) {
  return {std::move(key), Type::boolean, def, std::move(help), {}, {}, {}};
}
KeySpec choice(std::string key, std::string def, std::vector<std::string> choices, std::string help) {
  return {std::move(key), Type::string, std::move(def), std::move(help), std::move(choices), {}, {}};
}
KeySpec text(std::string key, std::string def, std::string help) {
  return {std::move(key), Type::string, std::move(def), std::move(help), {}, {}, {}};
}

constexpr double kBig = 1e18;
const double kInf = std::numeric_limits<double>::infinity();

std::vector<KeySpec> build_schema() {
  return {
      // model and data
      choice("model.arch", "mlp", {"mlp", "cnn", "gpt"}, "network: mlp 784-512-256-10, cnn (2 conv + 2 fc) or gpt (byte-level causal transformer, ALGORITHMS.md §8)"),
      integer("model.gpt.ctx", 128, 1, 4096, "gpt: context length T in bytes (positions per window; the position table has T rows)"),
      integer("model.gpt.width", 128, 1, 8192, "gpt: model width C (embedding and residual size; a multiple of model.gpt.heads)"),
      integer("model.gpt.layers", 4, 1, 256, "gpt: transformer blocks L (pre-LN, attention + 4C GELU MLP)"),
      integer("model.gpt.heads", 4, 1, 256, "gpt: attention heads H per block (head size C/H, scores scaled by 1/sqrt(C/H))"),
      choice("data.name", "fashion-mnist", {"fashion-mnist", "fortunes"}, "dataset (data/registry.cpp); its files are read from data.dir: fashion-mnist (images, model.arch = mlp | cnn) or fortunes (byte-level text, model.arch = gpt; the default with gpt)"),
      text("data.dir", "/usr/share/datasets/fashion-mnist", "folder of the data.name dataset's files (fashion-mnist: the four IDX files, .gz or plain; fortunes: every plain file but *.dat and *.u8, default /usr/share/games/fortunes)"),
      choice("data.partition", "iid", {"iid", "dirichlet", "shards", "by_source"}, "how training data is split over ranks: images iid | dirichlet | shards; text iid (every rank draws windows from all training bytes) | by_source (whole files dealt to ranks by Dirichlet(data.alpha), at least one each)"),
      real("data.alpha", 0.5, 1e-6, kBig, "Dirichlet concentration for data.partition = dirichlet | by_source (small = skewed)"),
      integer("data.shards_per_rank", 2, 1, 1000, "label-sorted shards per rank for data.partition=shards"),
      integer("data.train_limit", 0, 0, kBig, "use only the first N training samples (0 = all 60000; images only)"),
      // training loop
      integer("train.steps", 2000, 1, kBig, "total optimizer steps (a resumed run counts from its checkpoint)"),
      integer("train.batch", 64, 1, 1 << 20, "samples per rank per step"),
      integer("train.seed", 1, 0, kBig, "seed of initialisation, shuffling, partitions and all shared randomness"),
      real("train.max_seconds", 0.0, 0.0, kBig, "stop cleanly (checkpoint + exit 3) after this wall time; 0 = no limit"),
      integer("train.threads", 1, 1, 1024, "OpenMP threads per rank for oneDNN"),
      // optimizer
      choice("optim.name", "sgd", {"sgd", "adamw", "demo", "zo"}, "optimizer (demo and zo are set by their strategies)"),
      real("optim.lr", 0.05, 0.0, kBig, "learning rate"),
      real("optim.momentum", 0.0, 0.0, 0.999999, "SGD momentum (0 = plain SGD)"),
      real("optim.weight_decay", 0.0, 0.0, kBig, "weight decay (decoupled for adamw)"),
      real("optim.beta1", 0.9, 0.0, 0.999999, "AdamW first-moment decay"),
      real("optim.beta2", 0.999, 0.0, 0.999999999, "AdamW second-moment decay"),
      real("optim.eps", 1e-8, 0.0, 1.0, "AdamW epsilon"),
      real("optim.demo.beta", 0.999, 0.0, 0.999999, "DeMo momentum decay (must be < 1)"),
      integer("optim.demo.topk", 32, 1, 1 << 20, "DeMo coefficients kept per DCT chunk"),
      integer("optim.demo.chunk", 64, 1, 4096, "DeMo target chunk length per dimension"),
      choice("optim.demo.index", "u16", {"u16", "i64"}, "DeMo wire format of coefficient indices"),
      choice("optim.demo.value", "fp32", {"fp32", "bf16"}, "DeMo wire format of coefficient values"),
      integer("optim.zo.q", 64, 1, 1 << 20, "zeroth-order directions per step"),
      integer("optim.zo.directions_per_pass", 1, 1, 64, "zeroth-order directions evaluated in one pass over the weights: each holds its own activations (batch x 768 floats), so 8 runs a dense q = 64 step 1.3x faster than 1 but adds 1.4 MB at batch 64, more than a 10%-pruned model itself"),
      real("optim.zo.mu", 1e-3, 0.0, 1.0, "zeroth-order smoothing (perturbation size)"),
      choice("optim.zo.difference", "forward", {"forward", "central"}, "zeroth-order finite difference"),
      choice("optim.zo.form", "fedsgd", {"fedsgd", "fedavg"}, "federated ZO: send q loss differences per step, or average the kept weights every sync.period (optim.name = zo ignores sync.strategy)"),
      choice("optim.zo.update", "sgd", {"sgd", "adam"}, "optimizer applied to the ZO gradient estimate"),
      // synchronization
      choice("sync.strategy", "allreduce", {"none", "allreduce", "periodic", "fda", "demo", "powersgd", "diloco"}, "when and what ranks synchronise"),
      integer("sync.period", 10, 1, kBig, "steps between model averages for sync.strategy=periodic; inner steps H per round for diloco"),
      boolean("sync.average_optimizer_state", false, "periodic/fda: also average optimizer state at a sync"),
      integer("sync.check_every", 100, 0, kBig, "steps between replica checksum checks (0 = never)"),
      choice("sync.fda.estimator", "linear", {"naive", "linear", "sketch"}, "FDA variance estimator"),
      real("sync.fda.threshold", -1.0, -1.0, kInf, "FDA threshold Theta (absolute); -1 = use threshold_per_param"),
      real("sync.fda.threshold_per_param", 3.9e-5, 0.0, kBig, "FDA threshold as Theta = c * num_params"),
      integer("sync.fda.sketch_depth", 5, 1, 64, "FDA AMS sketch rows"),
      integer("sync.fda.sketch_width", 250, 1, 32768, "FDA AMS sketch columns"),
      real("sync.fda.sketch_eps", -1.0, -1.0, kBig, "FDA sketch discount: subtract M/(1+eps); -1 = 1.5/sqrt(sketch_width) (spec: 1/sqrt(width))"),
      integer("sync.powersgd.rank", 4, 1, 1 << 16, "PowerSGD rank r: each gradient matrix travels as P [rows, r] and Q [cols, r] (per matrix min(r, rows, cols); conv kernels as [out, in*kh*kw])"),
      integer("sync.powersgd.start_iter", 10, 0, kBig, "PowerSGD: plain fp32 gradient allreduce for steps 1..start_iter, compression after (PyTorch: 1000)"),
      real("sync.powersgd.min_compression_rate", 2.0, 0.0, kBig, "PowerSGD compresses a matrix only if r*(rows+cols)*rate < rows*cols; the others and every 1-D tensor (biases) travel whole in the P allreduce; 0 = compress every matrix"),
      real("sync.diloco.outer_lr", 0.7, 0.0, kBig, "DiLoCo outer Nesterov SGD learning rate on the pseudo-gradient theta_g - mean theta_k (1 with outer_momentum 0 = periodic averaging)"),
      real("sync.diloco.outer_momentum", 0.9, 0.0, 0.999999, "DiLoCo outer Nesterov momentum mu"),
      integer("sync.diloco.fragments", 1, 1, 1 << 20, "Streaming DiLoCo: F fragments (contiguous groups of whole tensors, largest group minimised, logged at the start); fragment f syncs at steps t with (t - floor(f*H/F)) mod H == 0; needs F <= sync.period and <= the model's tensors"),
      integer("sync.diloco.overlap", 0, 0, kBig, "Streaming DiLoCo: tau inner steps between a fragment's non-blocking allreduce and its merge (0 = blocking, merged at once); < sync.period"),
      real("sync.diloco.mix", 0.5, 0.0, 1.0, "Streaming DiLoCo with overlap: the merge theta_k = alpha*theta_k + (1 - alpha)*theta_g of a fragment (alpha)"),
      // precision
      choice("precision.compute", "fp32", {"fp32", "bf16", "fp16", "fp8"}, "compute precision of forward/backward"),
      choice("precision.wire", "fp32", {"fp32", "bf16", "fp16", "fp8_e4m3", "fp8_e5m2"}, "format of what strategies send"),
      choice("precision.update_rounding", "nearest", {"nearest", "stochastic"}, "bf16/fp16 compute with SGD/AdamW: round the updated parameters to the 16-bit grid to nearest-even (the standalone default) or stochastically (unbiased; keeps updates below half an ulp in expectation; uniforms keyed by train.seed, step and element, the same on every rank)"),
      choice("precision.storage", "auto", {"auto", "native", "float"}, "bf16/fp16 compute: store parameters, gradients and optimizer state (and FDA's w0, w0_prev) as 16-bit values (native) or as 16-bit-rounded floats; auto = native for none/allreduce/periodic/fda with an fp32 or compute-format wire and SGD/AdamW, float for DeMo (fp32 by spec) and fp8 wires; FDA's linear xi stays fp32 (docs/precision.md)"),
      // pruning
      choice("prune.method", "none", {"none", "ntk", "magnitude", "random"}, "foresight pruning before training"),
      real("prune.sparsity", 0.9, 0.0, 0.9999, "fraction of weights removed"),
      integer("prune.rounds", 10, 1, 1000, "pruning rounds (exponential schedule)"),
      integer("prune.batch", 16, 1, 4096, "ntk: Gaussian inputs per rank per pruning round"),
      real("prune.eps", 0.01, 0.0, 1.0, "ntk: std of the weight perturbation delta of the finite-difference NTK trace"),
      choice("prune.ntk.init", "fresh", {"fresh", "train"}, "ntk: weights the saliency is taken at: fresh = a new initialisation per round and rank (ALGORITHMS.md §2), train = the initialisation training starts from (docs/strategies.md)"),
      choice("prune.ntk.normalize", "unit", {"none", "mean", "layer", "unit"}, "ntk: ranking of the saliency each round: none = global top-k over all tensors (ALGORITHMS.md §2 as written; starves fc1), mean = each tensor's scores divided by their mean then global top-k, layer = each tensor keeps its own top share (same density per tensor), unit = each weight row (an output unit's fan-in) keeps its own top share (docs/strategies.md)"),
      // communication
      choice("comm.backend", "mpi", {"mpi", "nccl"}, "collective backend (nccl only when built with it)"),
      boolean("comm.deterministic", false, "rank-ordered sums: bitwise repeatable runs (a little slower)"),
      boolean("comm.separate_waits", false,
              "a barrier (ledger class obs.wait) before each strategy collective: its seconds are the transfer alone (model checks)"),
      real("comm.timeout_seconds", 300.0, 0.0, kBig, "abort if a collective takes longer (0 = no watchdog)"),
      real("net.alpha_us", 2.0, 0.0, kBig, "network model: per-message latency in microseconds"),
      real("net.beta_gbps", 100.0, 1e-9, kBig, "network model: link bandwidth in Gbit/s"),
      // evaluation, logging, checkpoints
      integer("eval.every", 500, 0, kBig, "steps between test-set evaluations (0 = only at the end)"),
      integer("eval.windows", 256, 1, 1 << 24, "text (gpt): validation windows of model.gpt.ctx + 1 bytes, spread evenly over the validation bytes (the last 10% of each file) and split over ranks"),
      integer("eval.batch", 1000, 1, 1 << 20, "evaluation batch (native 16-bit storage: at most train.batch, the batch its stage is sized for)"),
      integer("log.every", 50, 1, kBig, "steps between metrics.csv rows and progress lines"),
      choice("log.progress", "auto", {"auto", "bar", "lines", "off"}, "progress output on rank 0"),
      integer("checkpoint.every", 0, 0, kBig, "steps between checkpoints (0 = none)"),
      real("checkpoint.every_seconds", 0.0, 0.0, kBig, "seconds between checkpoints (0 = none)"),
      integer("checkpoint.keep", 2, 1, 1000, "complete checkpoints kept"),
      text("checkpoint.dir", "", "checkpoint folder (default <out>/checkpoints)"),
      // test-only fault injection
      integer("debug.hang_rank", -1, -1, 1 << 20, "TEST ONLY: this rank sleeps forever inside debug.hang_step (-1 = off)"),
      integer("debug.hang_step", 0, 0, kBig, "TEST ONLY: step at which debug.hang_rank hangs"),
  };
}

}  // namespace

const std::vector<KeySpec>& schema() {
  static const std::vector<KeySpec> s = build_schema();
  return s;
}

const KeySpec* find_key(std::string_view key) {
  for (const KeySpec& spec : schema())
    if (spec.key == key) return &spec;
  return nullptr;
}

}  // namespace lowsync::config
