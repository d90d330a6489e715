// Fixed-width big-endian integers for the documented on-disk formats.
#ifndef CARDVAULT_SERVER_UTIL_BIG_ENDIAN_H_
#define CARDVAULT_SERVER_UTIL_BIG_ENDIAN_H_

#include <cstdint>
#include <string>

#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace cardvault::util {

inline void AppendBigEndian16(uint16_t v, std::string* out) {
  out->push_back(static_cast<char>(v >> 8));
  out->push_back(static_cast<char>(v));
}

inline void AppendBigEndian32(uint32_t v, std::string* out) {
  for (int shift = 24; shift >= 0; shift -= 8) {
    out->push_back(static_cast<char>(v >> shift));
  }
}

inline void AppendBigEndian64(uint64_t v, std::string* out) {
  for (int shift = 56; shift >= 0; shift -= 8) {
    out->push_back(static_cast<char>(v >> shift));
  }
}

// `in` must hold at least 2 bytes.
inline uint16_t ReadBigEndian16(absl::string_view in) {
  return static_cast<uint16_t>(static_cast<uint8_t>(in[0]) << 8 |
                               static_cast<uint8_t>(in[1]));
}

// `in` must hold at least 4 bytes.
inline uint32_t ReadBigEndian32(absl::string_view in) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v = (v << 8) | static_cast<uint8_t>(in[i]);
  return v;
}

// `in` must hold at least 8 bytes.
inline uint64_t ReadBigEndian64(absl::string_view in) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v = (v << 8) | static_cast<uint8_t>(in[i]);
  return v;
}

// A time as Unix milliseconds, 8 bytes; InfiniteFuture ("never") as 0.
inline void AppendUnixMillis(absl::Time t, std::string* out) {
  AppendBigEndian64(t == absl::InfiniteFuture()
                        ? 0
                        : static_cast<uint64_t>(absl::ToUnixMillis(t)),
                    out);
}

// Reads what AppendUnixMillis wrote; 0 reads as `if_zero`.
inline absl::Time ReadUnixMillis(absl::string_view in, absl::Time if_zero) {
  const uint64_t ms = ReadBigEndian64(in);
  return ms == 0 ? if_zero : absl::FromUnixMillis(static_cast<int64_t>(ms));
}

}  // namespace cardvault::util

#endif  // CARDVAULT_SERVER_UTIL_BIG_ENDIAN_H_
