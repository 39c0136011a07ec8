// The session arena's bookkeeping: one region allocated at start-up (cudaMalloc once) and carved into
// stream pools by offset. Best fit over a coalescing free list; running out is a `false` return the
// caller turns into ResourceExhausted, never a crash. Plain C++ (host-tested); not thread-safe (the
// context's mutex guards it).
#pragma once

#include <cstdint>
#include <map>

namespace trams::cuda {

class ArenaAllocator {
 public:
  explicit ArenaAllocator(int64_t capacity, int64_t alignment = 256);

  // Reserves `bytes` (rounded up to the alignment); false when no free block is large enough.
  bool Allocate(int64_t bytes, int64_t* offset);
  // Returns a block from Allocate(); neighbours are merged. Unknown offsets are ignored.
  void Release(int64_t offset);

  int64_t capacity() const { return capacity_; }
  int64_t used() const { return used_bytes_; }
  int64_t free_bytes() const { return capacity_ - used_bytes_; }
  int64_t largest_free() const;
  int64_t blocks() const { return static_cast<int64_t>(used_.size()); }
  int64_t Rounded(int64_t bytes) const { return (bytes + alignment_ - 1) / alignment_ * alignment_; }

 private:
  int64_t capacity_;
  int64_t alignment_;
  int64_t used_bytes_ = 0;
  std::map<int64_t, int64_t> free_;  // offset -> size, never two adjacent
  std::map<int64_t, int64_t> used_;  // offset -> size
};

}  // namespace trams::cuda
