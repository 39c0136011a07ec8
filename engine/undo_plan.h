// A transaction's undo log, the part both backends share (plain C++, no absl: compiled into trams_engine
// and trams_cuda_core): which ring rows appending tokens overwrites that were live when the transaction
// began, in what order, where each sits in the log, and what rollback restores. The storage of the saved
// rows stays the backend's (host vectors in StreamState; host copies of device rows in the CUDA stream).
//
// With the cursor at the start (size0 tokens from ring row start0, capacity m), overwrite index k (the k-th
// token appended since the start) lands on ring row (start0 + size0 + k) % m. It held a live token at the
// start iff m - size0 <= k < m (indices past m repeat rows already saved), and it is log row k - (m - size0).
#pragma once

#include <cstdint>
#include <vector>

namespace trams::engine {

// Ring rows [ring_row, ring_row + count) <-> log rows [log_row, log_row + count).
struct UndoRun {
  int ring_row = 0;
  int count = 0;
  int log_row = 0;
};

// Before appending `n` tokens, with `appended` tokens appended since the start and overwrite indices
// [0, saved_rows) handled (saved, or never live): the live rows to save now, in overwrite order, as
// contiguous runs (appended to the log in this order, they land at their log rows). Returns the new
// saved_rows. Nothing to do for m == 0.
int UndoRowsToSave(int capacity, int start0, int size0, int64_t appended, int saved_rows, int n,
                   std::vector<UndoRun>* runs);

// Rollback: every saved row back to its ring row (after which the cursor is start0, size0 and the
// position and last hidden state as at the start).
void UndoRowsToRestore(int capacity, int start0, int size0, int saved_rows, std::vector<UndoRun>* runs);

}  // namespace trams::engine
