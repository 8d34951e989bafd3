// Host versions of CUDA's __half and __nv_bfloat16 for the emulator: 16-bit storage, conversions from float that
// round to nearest even (as __float2half_rn / __float2bfloat16_rn), exact conversions to float.
#pragma once
#include <cstdint>
#include <cstring>

namespace lvmmed::emu {

inline std::uint32_t float_bits(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float bits_float(std::uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline std::uint16_t float_to_half_bits(float f) {
  const std::uint32_t x = float_bits(f);
  const std::uint32_t sign = (x >> 16) & 0x8000u, ax = x & 0x7fffffffu;
  if (ax >= 0x7f800000u) return static_cast<std::uint16_t>(sign | (ax > 0x7f800000u ? 0x7e00u : 0x7c00u));
  if (ax < 0x38800000u) {  // below 2^-14: a subnormal half (or zero); |f| * 2^24 is exact, rounded to nearest even
    const float scaled = bits_float(ax) * 16777216.0f;
    std::uint32_t m = static_cast<std::uint32_t>(scaled);
    const float rest = scaled - static_cast<float>(m);
    if (rest > 0.5f || (rest == 0.5f && (m & 1u))) ++m;
    return static_cast<std::uint16_t>(sign | m);
  }
  const std::uint32_t mant = ax & 0x7fffffu;
  const std::int32_t exp = static_cast<std::int32_t>(ax >> 23) - 127 + 15;
  if (exp >= 31) return static_cast<std::uint16_t>(sign | 0x7c00u);
  std::uint32_t h = (static_cast<std::uint32_t>(exp) << 10) | (mant >> 13);
  const std::uint32_t rest = mant & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;  // a carry may round up to the next binade or to inf
  return static_cast<std::uint16_t>(sign | h);
}

inline float half_bits_to_float(std::uint16_t h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  const std::uint32_t exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
  if (exp == 0) {  // zero or subnormal: mant * 2^-24
    const float v = static_cast<float>(mant) * 5.9604644775390625e-08f;
    return sign ? -v : v;
  }
  if (exp == 31) return bits_float(sign | 0x7f800000u | (mant << 13));
  return bits_float(sign | ((exp - 15 + 127) << 23) | (mant << 13));
}

inline std::uint16_t float_to_bf16_bits(float f) {
  const std::uint32_t x = float_bits(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((x >> 16) | 0x40u);  // quiet NaN
  return static_cast<std::uint16_t>((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

inline float bf16_bits_to_float(std::uint16_t b) {
  return bits_float(static_cast<std::uint32_t>(b) << 16);
}

}  // namespace lvmmed::emu

struct __half {
  std::uint16_t bits = 0;
  __half() = default;
  __half(float f) : bits(lvmmed::emu::float_to_half_bits(f)) {}  // NOLINT: implicit like CUDA's
  operator float() const { return lvmmed::emu::half_bits_to_float(bits); }
};

struct __nv_bfloat16 {
  std::uint16_t bits = 0;
  __nv_bfloat16() = default;
  __nv_bfloat16(float f) : bits(lvmmed::emu::float_to_bf16_bits(f)) {}  // NOLINT: implicit like CUDA's
  operator float() const { return lvmmed::emu::bf16_bits_to_float(bits); }
};

inline float __half2float(__half h) {
  return lvmmed::emu::half_bits_to_float(h.bits);
}
inline __half __float2half_rn(float f) {
  return __half(f);
}
inline __half __float2half(float f) {
  return __half(f);
}
inline float __bfloat162float(__nv_bfloat16 b) {
  return lvmmed::emu::bf16_bits_to_float(b.bits);
}
inline __nv_bfloat16 __float2bfloat16_rn(float f) {
  return __nv_bfloat16(f);
}
inline __nv_bfloat16 __float2bfloat16(float f) {
  return __nv_bfloat16(f);
}
