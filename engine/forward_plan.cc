#include "engine/forward_plan.h"

#include <algorithm>

#include "engine/ring_cursor.h"

namespace trams::engine {

ForwardPlan PlanForward(const std::vector<PlanStream>& streams, int n_layer) {
  ForwardPlan p;
  p.batch = static_cast<int>(streams.size());
  p.n_layer = n_layer;
  p.selects.assign(static_cast<size_t>(n_layer) * p.batch, 0);
  p.append_begin.push_back(0);
  for (int b = 0; b < p.batch; ++b) {
    const PlanStream& s = streams[b];
    const int64_t offset = p.rows;
    p.offset.push_back(offset);
    p.rows += s.n;
    const int a = std::min(s.size, s.attend_len);
    p.attended.push_back(a);
    p.n_max = std::max(p.n_max, s.n);
    p.a_max = std::max(p.a_max, a);
    p.klen_max = std::max(p.klen_max, a + s.n);
    p.topk_max = std::max(p.topk_max, s.topk);
    // TRAMS selects only once the pool holds more than it attends; before that every pool token is attended.
    for (int l = 0; l < n_layer; ++l) {
      const bool on = l < static_cast<int>(s.selects_on_layer.size()) && s.selects_on_layer[l];
      p.selects[static_cast<size_t>(l) * p.batch + b] = on && s.size > s.topk + s.remain ? 1 : 0;
    }
    int start = s.start, size = s.size;
    if (s.commit && s.capacity > 0) {
      for (int i = std::max(0, s.n - s.capacity); i < s.n; ++i) {
        p.append.push_back({b, offset + i, (s.start + s.size + i) % s.capacity});
      }
      AdvanceRing(s.capacity, s.n, &start, &size);
    }
    p.append_begin.push_back(static_cast<int>(p.append.size()));
    for (int i = 0; i < s.n; ++i) {
      if (i == 0 && s.position == 0) continue;  // the first token of a stream has no context
      p.scored.push_back({b, i, i == 0 ? -1 : offset + i - 1});
    }
    p.tokens_scored.push_back(s.n - (s.position == 0 ? 1 : 0));
    p.new_start.push_back(start);
    p.new_size.push_back(size);
    p.new_position.push_back(s.commit ? s.position + s.n : s.position);
  }
  return p;
}

}  // namespace trams::engine
