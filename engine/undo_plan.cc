#include "engine/undo_plan.h"

#include <algorithm>

namespace trams::engine {
namespace {

// Overwrite indices [k0, k1) as runs of contiguous ring rows.
void Runs(int capacity, int start0, int size0, int k0, int k1, std::vector<UndoRun>* runs) {
  const int s0 = start0 + size0, first = capacity - size0;
  for (int k = k0; k < k1;) {
    const int row = (s0 + k) % capacity;
    const int count = std::min(k1 - k, capacity - row);
    runs->push_back({row, count, k - first});
    k += count;
  }
}

}  // namespace

int UndoRowsToSave(int capacity, int start0, int size0, int64_t appended, int saved_rows, int n,
                   std::vector<UndoRun>* runs) {
  runs->clear();
  if (capacity <= 0) return saved_rows;
  const int target = static_cast<int>(std::min<int64_t>(capacity, appended + n));
  Runs(capacity, start0, size0, std::max(saved_rows, capacity - size0), target, runs);
  return std::max(saved_rows, target);
}

void UndoRowsToRestore(int capacity, int start0, int size0, int saved_rows, std::vector<UndoRun>* runs) {
  runs->clear();
  if (capacity <= 0) return;
  Runs(capacity, start0, size0, capacity - size0, saved_rows, runs);
}

}  // namespace trams::engine
