// Element types lowsync stores or sends. Sizes are the bytes one element takes in memory and on
// the wire (fp8 formats are 1 byte plus a per-tensor fp32 scale, counted by their users).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace lowsync {

enum class DType : std::uint8_t { f32, f64, bf16, f16, fp8_e4m3, fp8_e5m2, i32, i64, u8, u16 };

constexpr std::size_t dtype_bytes(DType t) {
  switch (t) {
    case DType::f64:
    case DType::i64: return 8;
    case DType::f32:
    case DType::i32: return 4;
    case DType::bf16:
    case DType::f16:
    case DType::u16: return 2;
    case DType::fp8_e4m3:
    case DType::fp8_e5m2:
    case DType::u8: return 1;
  }
  return 0;
}

constexpr std::string_view dtype_name(DType t) {
  switch (t) {
    case DType::f32: return "fp32";
    case DType::f64: return "fp64";
    case DType::bf16: return "bf16";
    case DType::f16: return "fp16";
    case DType::fp8_e4m3: return "fp8_e4m3";
    case DType::fp8_e5m2: return "fp8_e5m2";
    case DType::i32: return "i32";
    case DType::i64: return "i64";
    case DType::u8: return "u8";
    case DType::u16: return "u16";
  }
  return "?";
}

// Compile-time map from C++ element type to DType (used by the communicator's front doors).
template <class T> struct dtype_of;
template <> struct dtype_of<float> { static constexpr DType value = DType::f32; };
template <> struct dtype_of<double> { static constexpr DType value = DType::f64; };
template <> struct dtype_of<std::int32_t> { static constexpr DType value = DType::i32; };
template <> struct dtype_of<std::int64_t> { static constexpr DType value = DType::i64; };
template <> struct dtype_of<std::uint8_t> { static constexpr DType value = DType::u8; };
template <> struct dtype_of<std::uint16_t> { static constexpr DType value = DType::u16; };
template <class T> inline constexpr DType dtype_of_v = dtype_of<T>::value;

}  // namespace lowsync
