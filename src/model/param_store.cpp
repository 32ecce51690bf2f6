// ParamStore (model/param_store.hpp): dtype checks and the fp32 views of 16-bit storage through
// the tensor/half.hpp codecs.
#include "lowsync/model/param_store.hpp"

#include "lowsync/core/error.hpp"
#include "lowsync/tensor/half.hpp"

#include <algorithm>
#include <cmath>

namespace lowsync::model {

const char* store_dtype_name(StoreDType t) {
  switch (t) {
    case StoreDType::fp32: return "fp32";
    case StoreDType::bf16: return "bf16";
    case StoreDType::fp16: return "fp16";
  }
  return "?";
}

std::span<float> ParamStore::fp32() const {
  if (is_16bit()) fail("parameter store holds {} values, not fp32", store_dtype_name(dtype_));
  return f32_;
}

std::span<std::uint16_t> ParamStore::bits() const {
  if (!is_16bit()) fail("parameter store holds fp32 values, not 16-bit bit patterns");
  return bits_;
}

ParamStore ParamStore::subspan(std::size_t offset, std::size_t count) const {
  if (offset + count > size()) fail("parameter store: range [{}, {}) beyond its {} values", offset, offset + count, size());
  ParamStore s = *this;
  if (is_16bit())
    s.bits_ = bits_.subspan(offset, count);
  else
    s.f32_ = f32_.subspan(offset, count);
  return s;
}

void ParamStore::read_fp32(std::span<float> out) const {
  if (out.size() != size()) fail("parameter store: reading {} values into {}", size(), out.size());
  if (!is_16bit()) {
    std::copy(f32_.begin(), f32_.end(), out.begin());
    return;
  }
  tensor::decode_16bit(bits_, out, bf16());
}

std::vector<float> ParamStore::to_fp32() const {
  std::vector<float> out(size());
  read_fp32(out);
  return out;
}

void ParamStore::write_fp32(std::span<const float> in) const {
  if (in.size() != size()) fail("parameter store: writing {} values into {}", in.size(), size());
  if (!is_16bit()) {
    std::copy(in.begin(), in.end(), f32_.begin());
    return;
  }
  tensor::encode_16bit(in, bits_, bf16());
}

bool ParamStore::all_finite() const {
  if (is_16bit()) return tensor::all_finite_16bit(bits_, bf16());
  return std::all_of(f32_.begin(), f32_.end(), [](float v) { return std::isfinite(v); });
}

}  // namespace lowsync::model
