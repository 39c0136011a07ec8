// The pure planning of one forward, shared by the host engine (TransformerXL::Forward) and the CUDA
// backend (Context::Forward): where each stream's segment sits in the packed rows, how many memory tokens
// each stream attends, which (layer, stream) pairs run TRAMS selection, which segment rows enter which ring
// rows, which tokens are scored from which hidden state, and the cursors afterwards. No math, no absl:
// compiled into trams_engine and trams_cuda_core, unit-tested on its own (tests/engine/forward_plan_test.cc).
// Semantics: engine/DESIGN.md (memory pool and TRAMS, scoring).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace trams::engine {

// One batch entry as the plan sees it: the stream's ring cursor before the segment, its settings, and the
// segment's length.
struct PlanStream {
  int start = 0, size = 0, capacity = 0;  // ring cursor: `size` tokens from ring row `start`, of `capacity`
  int64_t position = 0;                   // tokens consumed so far
  int attend_len = 0;                     // m (TramsSettings::attend_len)
  int topk = 0, remain = 0;
  std::vector<bool> selects_on_layer;     // TramsSettings::SelectsOnLayer, per layer (missing = false)
  int n = 0;                              // segment tokens (>= 1)
  bool commit = true;                     // false: provisional, nothing enters the pool, the cursor stays
};

// Segment row `src_row` (packed over the batch) enters ring row `ring_row` of stream `stream`'s pools.
struct PlanAppend {
  int stream = 0;
  int64_t src_row = 0;
  int ring_row = 0;
};

// Token `token` of stream `stream` is scored from the hidden state of packed row `pred_row` (the previous
// token's final state), or from the stream's last hidden state when pred_row < 0 (token 0).
struct PlanScore {
  int stream = 0;
  int token = 0;
  int64_t pred_row = -1;
};

struct ForwardPlan {
  int batch = 0, n_layer = 0;
  int64_t rows = 0;               // packed rows (sum of segment lengths)
  std::vector<int64_t> offset;    // [stream] first packed row of its segment
  std::vector<int> attended;      // [stream] memory tokens attended: min(size, attend_len), every layer
  std::vector<char> selects;      // [layer * batch + stream] 1: TRAMS top-k runs (size > topk + remain)
  int n_max = 0, a_max = 0, klen_max = 0, topk_max = 0;  // largest n, attended, attended + n, topk
  // Pool appends, by stream then token: only the last min(n, capacity) tokens of a committing segment (the
  // earlier ones would be dropped at once); entries append_begin[s] .. append_begin[s + 1] are stream s's,
  // with consecutive src rows.
  std::vector<PlanAppend> append;
  std::vector<int> append_begin;  // [batch + 1]
  // Scored tokens, by stream then token: every token but token 0 of a stream at position 0.
  std::vector<PlanScore> scored;
  std::vector<int64_t> tokens_scored;  // [stream]
  // Cursors after the segment (as before for provisional segments).
  std::vector<int> new_start, new_size;
  std::vector<int64_t> new_position;

  bool Selects(int layer, int stream) const { return selects[static_cast<size_t>(layer) * batch + stream] != 0; }
};

ForwardPlan PlanForward(const std::vector<PlanStream>& streams, int n_layer);

}  // namespace trams::engine
