// Strict integer reads from parsed JSON for the readers of untrusted files (snapshots). nlohmann's
// get<int>() casts whatever number it finds: a float outside int's range is undefined behaviour, an
// int64 is silently truncated, 8.5 reads as 8. These accept only JSON integers that fit T, and throw
// std::out_of_range (which the readers turn into DATA_LOSS) for anything else.
#ifndef TRAMS_ENGINE_JSON_INT_H_
#define TRAMS_ENGINE_JSON_INT_H_

#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace trams::engine {

template <typename T>
T JsonInt(const nlohmann::json& j, const char* what) {
  static_assert(std::is_integral_v<T> && std::is_signed_v<T>);
  bool fits = false;
  if (j.is_number_unsigned()) {
    fits = j.get<uint64_t>() <= static_cast<uint64_t>(std::numeric_limits<T>::max());
  } else if (j.is_number_integer()) {
    const int64_t v = j.get<int64_t>();
    fits = v >= std::numeric_limits<T>::min() && v <= std::numeric_limits<T>::max();
  }
  if (!fits) {
    throw std::out_of_range(absl::StrCat("'", what, "' must be an integer in [", std::numeric_limits<T>::min(), ", ",
                                         std::numeric_limits<T>::max(), "], got ",
                                         j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).substr(0, 40)));
  }
  return static_cast<T>(j.get<int64_t>());
}

// The field `key` of object `j`, read as JsonInt.
template <typename T>
T JsonIntAt(const nlohmann::json& j, const char* key) {
  return JsonInt<T>(j.at(key), key);
}

// An array of integers (every element checked).
template <typename T>
std::vector<T> JsonInts(const nlohmann::json& j, const char* what) {
  if (!j.is_array()) throw std::out_of_range(absl::StrCat("'", what, "' must be an array of integers"));
  std::vector<T> out;
  out.reserve(j.size());
  for (const nlohmann::json& v : j) out.push_back(JsonInt<T>(v, what));
  return out;
}

}  // namespace trams::engine

#endif  // TRAMS_ENGINE_JSON_INT_H_
