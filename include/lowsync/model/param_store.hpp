// ParamStore: one flat buffer of model-sized values as it is stored: fp32, or the bf16/fp16 bit
// patterns of native 16-bit storage (precision.storage = native). Optimizers, strategies and
// checkpoints take it, so each has one entry point whatever the storage (STYLE.md §5). A view: it
// owns nothing. The fp32 visitor decodes chunks, lets the caller work in fp32 and encodes back.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace lowsync::model {

enum class StoreDType : std::uint8_t { fp32, bf16, fp16 };
const char* store_dtype_name(StoreDType t);

class ParamStore {
 public:
  ParamStore() = default;
  ParamStore(std::span<float> values) : f32_(values), dtype_(StoreDType::fp32) {}  // NOLINT: a view
  ParamStore(std::vector<float>& values) : ParamStore(std::span<float>(values)) {}   // NOLINT: a view
  ParamStore(std::span<std::uint16_t> bits, bool bf16)
      : bits_(bits), dtype_(bf16 ? StoreDType::bf16 : StoreDType::fp16) {}
  ParamStore(std::vector<std::uint16_t>& bits, bool bf16) : ParamStore(std::span<std::uint16_t>(bits), bf16) {}

  StoreDType dtype() const { return dtype_; }
  bool is_16bit() const { return dtype_ != StoreDType::fp32; }
  bool bf16() const { return dtype_ == StoreDType::bf16; }
  std::size_t size() const { return is_16bit() ? bits_.size() : f32_.size(); }
  std::size_t bytes_per_value() const { return is_16bit() ? 2 : 4; }
  // The stored values; each fails (lowsync::Error) when the store has the other dtype.
  std::span<float> fp32() const;
  std::span<std::uint16_t> bits() const;
  ParamStore subspan(std::size_t offset, std::size_t count) const;
  // The stored bytes (size() * bytes_per_value()), for saving and restoring a store as it is.
  std::span<std::byte> raw_bytes() const {
    return is_16bit() ? std::as_writable_bytes(bits_) : std::as_writable_bytes(f32_);
  }

  // out[i] = value i as fp32 (exact for every dtype); out.size() == size().
  void read_fp32(std::span<float> out) const;
  std::vector<float> to_fp32() const;
  // value i = in[i], rounded to nearest-even for 16-bit storage; in.size() == size().
  void write_fp32(std::span<const float> in) const;
  bool all_finite() const;
  // Calls f(chunk, offset) on consecutive fp32 chunks of at most `chunk` values; for 16-bit
  // storage each chunk is a decoded copy that is encoded back (nearest-even) after f returns,
  // so f may change the values in either storage.
  template <class F>
  void visit_fp32(F&& f, std::size_t chunk = 65536) const {
    if (!is_16bit()) {
      for (std::size_t i = 0; i < f32_.size(); i += chunk) f(f32_.subspan(i, std::min(chunk, f32_.size() - i)), i);
      return;
    }
    std::vector<float> buffer(std::min(chunk, bits_.size()));
    for (std::size_t i = 0; i < bits_.size(); i += chunk) {
      const std::size_t n = std::min(chunk, bits_.size() - i);
      const std::span<float> c(buffer.data(), n);
      subspan(i, n).read_fp32(c);
      f(c, i);
      subspan(i, n).write_fp32(c);
    }
  }

 private:
  std::span<float> f32_;
  std::span<std::uint16_t> bits_;
  StoreDType dtype_ = StoreDType::fp32;
};

// A named store: an optimizer's or a strategy's state buffer ("momentum", "fda_w0", ...).
struct NamedStore {
  std::string name;
  ParamStore data;
};

}  // namespace lowsync::model
