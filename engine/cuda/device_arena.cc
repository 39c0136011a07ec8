#include "engine/cuda/device_arena.h"

#include <algorithm>
#include <iterator>

namespace trams::cuda {

ArenaAllocator::ArenaAllocator(int64_t capacity, int64_t alignment)
    : capacity_(capacity / alignment * alignment), alignment_(alignment) {
  if (capacity_ > 0) free_[0] = capacity_;
}

bool ArenaAllocator::Allocate(int64_t bytes, int64_t* offset) {
  const int64_t need = std::max<int64_t>(alignment_, Rounded(bytes));
  auto best = free_.end();
  for (auto it = free_.begin(); it != free_.end(); ++it) {
    if (it->second >= need && (best == free_.end() || it->second < best->second)) best = it;
  }
  if (best == free_.end()) return false;
  const int64_t at = best->first, size = best->second;
  free_.erase(best);
  if (size > need) free_[at + need] = size - need;
  used_[at] = need;
  used_bytes_ += need;
  *offset = at;
  return true;
}

void ArenaAllocator::Release(int64_t offset) {
  auto it = used_.find(offset);
  if (it == used_.end()) return;
  int64_t at = it->first, size = it->second;
  used_bytes_ -= size;
  used_.erase(it);
  auto next = free_.lower_bound(at);
  if (next != free_.end() && next->first == at + size) {
    size += next->second;
    next = free_.erase(next);
  }
  if (next != free_.begin()) {
    auto prev = std::prev(next);
    if (prev->first + prev->second == at) {
      prev->second += size;
      return;
    }
  }
  free_[at] = size;
}

int64_t ArenaAllocator::largest_free() const {
  int64_t best = 0;
  for (const auto& [at, size] : free_) best = std::max(best, size);
  return best;
}

}  // namespace trams::cuda
