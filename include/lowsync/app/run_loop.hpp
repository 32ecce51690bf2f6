// RunLoop: the one training loop every run goes through (STYLE.md §5), whatever its learner,
// strategy or precision. It owns the output folder's files (metrics.csv rows, summary.json), the
// progress line, the step-boundary control (one small allreduce: stop signal, time limit,
// checkpoint due, non-finite loss), the evaluation and checkpoint cadence, and the summary fields
// every run shares; the Learner (app/learner.hpp) does the steps.
#pragma once

#include "lowsync/app/learner.hpp"
#include "lowsync/app/trainer.hpp"
#include "lowsync/core/timer.hpp"
#include "lowsync/data/dataset.hpp"
#include "lowsync/data/loader.hpp"
#include "lowsync/data/text.hpp"

#include <nlohmann/json.hpp>

#include <filesystem>
#include <memory>
#include <optional>
#include <vector>

namespace lowsync::app {

// This rank's contiguous slice of a test set (evaluation is split over ranks, then combined).
// Images: [count, sample_size] pixels and [count] labels; text: the validation windows, tokens
// [count, T] as floats and targets [count, T].
struct TestSlice {
  std::vector<float> images;
  std::vector<std::int32_t> labels;
  std::int64_t count = 0;  // samples (images or windows)
};
TestSlice test_slice(const data::Dataset& test, int rank, int world);
// Windows [n r / world, n (r + 1) / world) of the corpus' evaluation windows (data::validation_windows,
// `windows` of them: eval.windows).
TestSlice validation_slice(const data::TextCorpus& corpus, int context, std::int64_t windows, int rank, int world);

// The run trains on text (data.name a text dataset: the gpt workload).
bool text_workload(const config::Config& cfg);
// The model.gpt.* sizes as the model takes them (validated by model::arch_options).
model::ArchOptions model_options(const config::Config& cfg);
// Bytes of context of the text workload (model.gpt.ctx): a sample is a window of T + 1 bytes.
int text_context(const config::Config& cfg);

// Data that every learner reads the same way: each rank loads the files and computes the same
// partition (data.partition), keeps its batch source and its slice of the test set (text: of the
// validation windows).
struct TrainingData {
  data::ImageSplits files;                    // images: data.name from data.dir
  data::TextCorpus text;                      // text: data.name from data.dir
  std::unique_ptr<data::BatchSource> loader;  // this rank's partition of files.train or text's sources
  nlohmann::json label_histograms;            // images: [rank][class] counts, every rank
  nlohmann::json sources;                     // text: [rank][file names], every rank
  int positions = 0;                          // text: tokens per sample (T); 0 for images
  double share = 1.0;                         // this rank's fraction of the training samples (windows)
  TestSlice test;                             // this rank's slice of files.test (text: validation windows)
};
// Collective in effect (same result on every rank, no communication). Logs the label histograms
// (text: each rank's sources).
std::unique_ptr<TrainingData> load_training_data(const config::Config& cfg, const comm::Communicator& comm);

// Loss and accuracy summed over ranks' slices (weighted by their sample counts). Collective.
model::EvalResult combine_over_ranks(const model::EvalResult& local, comm::Communicator& comm);

class RunLoop {
 public:
  // `started`: the clock of this segment of the run, started before the learner was built (data
  // loading and pruning count towards wall_s and train.max_seconds).
  RunLoop(const config::Config& cfg, comm::Communicator& comm, std::filesystem::path out_dir, const Timer& started);
  // Runs the learner from step 1 (or from `resume`, restored through learner.load) to
  // train.steps; writes metrics.csv and summary.json on rank 0. Collective.
  TrainResult run(Learner& learner, const std::optional<std::filesystem::path>& resume);

 private:
  const config::Config& cfg_;
  comm::Communicator& comm_;
  std::filesystem::path out_dir_;
  const Timer& wall_;
};

}  // namespace lowsync::app
