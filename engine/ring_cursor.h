// The memory pool's ring-buffer cursor arithmetic, shared by the host StreamState and the CUDA
// backend's stream (header only, no dependencies, so the CUDA module can use it too).
#pragma once

namespace trams::engine {

// After appending `n` tokens to a ring of `capacity` rows holding `size` tokens from row `start`, only the
// newest `capacity` survive: the oldest survivor is appended token size + n - capacity.
inline void AdvanceRing(int capacity, int n, int* start, int* size) {
  if (capacity <= 0) return;
  if (*size + n > capacity) {
    *start = (*start + *size + n - capacity) % capacity;
    *size = capacity;
  } else {
    *size += n;
  }
}

}  // namespace trams::engine
