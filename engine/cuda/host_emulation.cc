#include "engine/cuda/host_emulation.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <vector>

#include "engine/cuda/api_table.h"
#include "engine/cuda/elementwise.cuh"
#include "engine/cuda/log_softmax.cuh"
#include "engine/cuda/rel_attention.cuh"
#include "engine/cuda/trams.cuh"

namespace trams::cuda {
namespace {

// InjectEmulatedFault's state: -1 disarmed, else the PoolAppend calls still to pass before a Gemm fails.
std::atomic<int> fault_after_appends{-1};

Status MaybeInjectedFault() {
  int expected = 0;
  if (fault_after_appends.compare_exchange_strong(expected, -1)) {
    return Internal("injected fault (InjectEmulatedFault): a device error in the middle of a forward");
  }
  return Status::Ok();
}

class EmulatedOps final : public DeviceOps {
 public:
  const char* backend() const override { return "emulated"; }
  Status Activate() override { return Status::Ok(); }
  Status Describe(DeviceDescription* out) override {
    out->name = "host emulation";
    out->device = 0;
    out->cc_major = 0;
    out->cc_minor = 0;
    out->memory_total = int64_t{1} << 40;
    out->memory_free = out->memory_total - allocated_;
    return Status::Ok();
  }

  Status Malloc(size_t bytes, void** ptr) override {
    const size_t rounded = std::max<size_t>(256, (bytes + 255) / 256 * 256);
    *ptr = std::aligned_alloc(256, rounded);
    if (*ptr == nullptr) return ResourceExhausted("host emulation: out of memory allocating " + std::to_string(bytes));
    // Fresh device memory is garbage: make it NaN so reads of unwritten memory show up in tests.
    std::memset(*ptr, 0xff, rounded);
    allocated_ += static_cast<int64_t>(rounded);
    sizes_.push_back({*ptr, rounded});
    return Status::Ok();
  }
  void Free(void* ptr) override {
    if (ptr == nullptr) return;
    for (size_t i = 0; i < sizes_.size(); ++i) {
      if (sizes_[i].first == ptr) {
        allocated_ -= static_cast<int64_t>(sizes_[i].second);
        sizes_.erase(sizes_.begin() + static_cast<std::ptrdiff_t>(i));
        break;
      }
    }
    std::free(ptr);
  }
  Status Upload(void* dst, const void* src, size_t bytes) override {
    if (bytes > 0) std::memcpy(dst, src, bytes);
    return Status::Ok();
  }
  Status Download(void* dst, const void* src, size_t bytes) override {
    if (bytes > 0) std::memcpy(dst, src, bytes);
    return Status::Ok();
  }
  Status CopyOnDevice(void* dst, const void* src, size_t bytes) override {
    if (bytes > 0) std::memmove(dst, src, bytes);
    return Status::Ok();
  }
  Status Copy2D(void* dst, size_t dst_pitch, const void* src, size_t src_pitch, size_t width, size_t rows) override {
    for (size_t r = 0; r < rows; ++r) {
      std::memcpy(static_cast<char*>(dst) + r * dst_pitch, static_cast<const char*>(src) + r * src_pitch, width);
    }
    return Status::Ok();
  }
  Status Zero(void* dst, size_t bytes) override {
    if (bytes > 0) std::memset(dst, 0, bytes);
    return Status::Ok();
  }
  Status Synchronize() override { return Status::Ok(); }
  Status StartTimer() override {
    t0_ = std::chrono::steady_clock::now();
    return Status::Ok();
  }
  Status StopTimer() override {
    t1_ = std::chrono::steady_clock::now();
    return Status::Ok();
  }
  Status ElapsedMs(float* ms) override {
    *ms = std::chrono::duration<float, std::milli>(t1_ - t0_).count();
    return Status::Ok();
  }

  Status Gemm(const GemmArgs& g) override {
    TRAMS_CUDA_RETURN_IF_ERROR(MaybeInjectedFault());
    for (int item = 0; item < g.batch; ++item) {
      const int64_t a0 = item * g.stride_a, b0 = item * g.stride_b;
      float* c = g.c + item * g.stride_c;
      for (int i = 0; i < g.m; ++i) {
        for (int j = 0; j < g.n; ++j) {
          double acc = 0;
          for (int k = 0; k < g.k; ++k) {
            const float av = LoadF32(g.a, g.type, a0 + i * g.lda + k);
            const float bv = LoadF32(g.b, g.type, b0 + (g.trans_b ? j * g.ldb + k : k * g.ldb + j));
            acc += static_cast<double>(av) * bv;
          }
          float& out = c[i * g.ldc + j];
          // As cuBLAS: C is not read when beta == 0 (it may hold garbage).
          out = g.beta == 0.0f ? static_cast<float>(g.alpha * acc)
                               : static_cast<float>(g.alpha * acc + static_cast<double>(g.beta) * out);
        }
      }
    }
    return Status::Ok();
  }

  Status Convert(const ConvertArgs& a) override {
    for (int64_t i = 0; i < a.count; ++i) StoreAs(a.dst, a.type, i, a.src[i]);
    return Status::Ok();
  }

  Status Gather(const GatherArgs& a) override {
    for (int r = 0; r < a.rows; ++r) {
      float* dst = a.dst + GatherDstRow(a, r) * a.dst_ld;
      for (int c = 0; c < a.width; ++c) dst[c] = GatherValue(a, r, c);
    }
    return Status::Ok();
  }

  Status GatherPtrs(const GatherPtrArgs& a) override {
    for (int r = 0; r < a.rows; ++r) std::memcpy(a.dst + static_cast<int64_t>(r) * a.width, a.src_rows[r], sizeof(float) * a.width);
    return Status::Ok();
  }

  Status LayerNorm(const LayerNormArgs& a) override {
    for (int64_t r = 0; r < a.rows; ++r) {
      float* out = a.out + r * a.d;
      if (a.gamma == nullptr) {
        for (int c = 0; c < a.d; ++c) out[c] = ResidualSum(a, r, c);
        continue;
      }
      double sum = 0;
      for (int c = 0; c < a.d; ++c) sum += ResidualSum(a, r, c);
      const double mean = sum / a.d;
      double var = 0;
      for (int c = 0; c < a.d; ++c) {
        const double dv = ResidualSum(a, r, c) - mean;
        var += dv * dv;
      }
      const float rstd = LayerNormRstd(var / a.d, a.eps);
      const float m = static_cast<float>(mean);
      for (int c = 0; c < a.d; ++c) out[c] = LayerNormValue(ResidualSum(a, r, c), m, rstd, a.gamma[c], a.beta[c]);
    }
    return Status::Ok();
  }

  Status BiasRelu(const BiasReluArgs& a) override {
    for (int64_t r = 0; r < a.rows; ++r) {
      for (int c = 0; c < a.d; ++c) a.x[r * a.d + c] = trams::cuda::BiasRelu(a.x[r * a.d + c], a.bias[c]);
    }
    return Status::Ok();
  }

  Status AttnGather(const AttnArgs& g) override {
    for (int h = 0; h < g.n_head; ++h) {
      for (int b = 0; b < g.batch; ++b) {
        for (int i = 0; i < g.n_max; ++i) {
          for (int c = 0; c < g.d_head; ++c) {
            const int64_t o = HeadBatchOffset(h, b, i, g.batch, g.n_max, g.d_head) + c;
            g.q_w[o] = AttnQuery(g, b, h, i, c, false);
            g.q_r[o] = AttnQuery(g, b, h, i, c, true);
          }
        }
        for (int j = 0; j < g.klen_max; ++j) {
          for (int c = 0; c < g.d_head; ++c) {
            const int64_t o = HeadBatchOffset(h, b, j, g.batch, g.klen_max, g.d_head) + c;
            g.k[o] = AttnKeyValue(g, b, h, j, c, false);
            g.v[o] = AttnKeyValue(g, b, h, j, c, true);
          }
        }
      }
    }
    return Status::Ok();
  }

  Status AttnSoftmax(const AttnArgs& g) override {
    std::vector<float> logits(static_cast<size_t>(g.klen_max));
    for (int h = 0; h < g.n_head; ++h) {
      for (int b = 0; b < g.batch; ++b) {
        const StreamLayerMeta& s = g.streams[b];
        for (int i = 0; i < s.n; ++i) {
          const int64_t o = HeadBatchOffset(h, b, i, g.batch, g.n_max, g.klen_max);
          float* row = g.ac + o;
          const float* pos = g.bd + o;
          const VisibleRange vis = AttnVisible(s.a, i, g.same_length, s.window);
          float mx = -std::numeric_limits<float>::infinity();
          for (int j = vis.lo; j <= vis.hi; ++j) {
            logits[j] = AttnLogit(row[j], pos[RelDistance(s.a, i, j)], g.scale);
            mx = std::max(mx, logits[j]);
          }
          float sum = 0;
          for (int j = vis.lo; j <= vis.hi; ++j) {
            logits[j] = expf(logits[j] - mx);
            sum += logits[j];
          }
          const float inv = 1.0f / sum;
          for (int j = 0; j < g.klen_max; ++j) row[j] = (j >= vis.lo && j <= vis.hi) ? logits[j] * inv : 0.0f;
        }
      }
    }
    return Status::Ok();
  }

  Status AttnScatter(const AttnArgs& g) override {
    const int w = g.n_head * g.d_head;
    for (int h = 0; h < g.n_head; ++h) {
      for (int b = 0; b < g.batch; ++b) {
        const StreamLayerMeta& s = g.streams[b];
        for (int i = 0; i < s.n; ++i) {
          const float* src = g.o + HeadBatchOffset(h, b, i, g.batch, g.n_max, g.d_head);
          float* dst = g.attn_vec + (static_cast<int64_t>(s.offset) + i) * w + h * g.d_head;
          std::memcpy(dst, src, sizeof(float) * g.d_head);
        }
      }
    }
    return Status::Ok();
  }

  Status TramsSelect(const SelectArgs& g) override {
    std::vector<float> cand;
    for (int b = 0; b < g.batch; ++b) {
      const StreamLayerMeta& s = g.streams[b];
      for (int h = 0; h < g.n_head; ++h) {
        const int64_t bh = static_cast<int64_t>(b) * g.n_head + h;
        int32_t* rows = g.att_rows + bh * g.a_max;
        if (g.counts != nullptr) g.counts[bh] = 0;
        if (!s.selects) {
          for (int slot = 0; slot < s.a; ++slot) {
            rows[slot] = RingRow(s.start, NewestPoolIndex(s.size, s.a, slot), s.mem_len);
          }
          continue;
        }
        const int candidates = s.size - s.remain;
        cand.resize(static_cast<size_t>(candidates));
        for (int j = 0; j < candidates; ++j) cand[j] = s.scores[RingRow(s.start, j, s.mem_len) * g.n_head + h];
        // The k-th best (rank topk - 1 in the strict total order of TramsBetter: exactly one candidate,
        // NaN scores ranking as -inf), then the near-tie band around it.
        float kth = 0.0f;
        for (int j = 0; j < candidates; ++j) {
          int rank = 0;
          for (int i = 0; i < candidates; ++i) rank += TramsBetter(cand[i], i, cand[j], j) ? 1 : 0;
          if (rank == s.topk - 1) kth = cand[j];
        }
        const TieBand band = TramsTieBand(kth);
        int above = 0;
        for (int j = 0; j < candidates; ++j) above += TramsTieClass(cand[j], band) == 2 ? 1 : 0;
        const int needed = s.topk - above;
        int taken = 0, tied = 0;
        for (int j = 0; j < candidates; ++j) {
          const int cls = TramsTieClass(cand[j], band);
          const bool keep = cls == 2 || (cls == 1 && tied < needed);
          if (cls == 1) ++tied;
          if (!keep) continue;
          rows[taken] = RingRow(s.start, j, s.mem_len);
          if (g.selected != nullptr) g.selected[bh * g.topk_max + taken] = j;
          if (g.selected_scores != nullptr) g.selected_scores[bh * g.topk_max + taken] = cand[j];
          ++taken;
        }
        for (int r = 0; r < s.remain; ++r) rows[taken + r] = RingRow(s.start, candidates + r, s.mem_len);
        if (g.counts != nullptr) g.counts[bh] = taken;
      }
    }
    return Status::Ok();
  }

  Status PoolAppend(const AppendArgs& g) override {
    if (int left = fault_after_appends.load(); left > 0) fault_after_appends.compare_exchange_strong(left, left - 1);
    const int w = g.n_head * g.d_head;
    for (int t = 0; t < g.n_items; ++t) {
      const AppendItem& it = g.items[t];
      const StreamLayerMeta& s = g.streams[it.stream];
      const float* row = g.qkv + static_cast<int64_t>(it.src_row) * 3 * w;
      if (s.pool_dtype == DType::kF32) {
        std::memcpy(s.keys + static_cast<int64_t>(it.dst_row) * w, row + w, sizeof(float) * w);
        std::memcpy(s.values + static_cast<int64_t>(it.dst_row) * w, row + 2 * w, sizeof(float) * w);
      } else {  // PoolAppendKernel's rounding
        for (int c = 0; c < w; ++c) {
          StoreAs(s.keys, s.pool_dtype, static_cast<int64_t>(it.dst_row) * w + c, row[w + c]);
          StoreAs(s.values, s.pool_dtype, static_cast<int64_t>(it.dst_row) * w + c, row[2 * w + c]);
        }
      }
      if (s.scores == nullptr) continue;
      for (int h = 0; h < g.n_head; ++h) {
        s.scores[static_cast<int64_t>(it.dst_row) * g.n_head + h] =
            TramsScore(row + w + h * g.d_head, g.gram + static_cast<int64_t>(h) * g.d_head * g.d_head,
                       g.row_sum + h * g.d_head, g.d_head, s.metric, g.inv_sqrt_d_model);
      }
    }
    return Status::Ok();
  }

  Status LogSoftmax(const LogSoftmaxArgs& a) override {
    for (int r = 0; r < a.rows; ++r) {
      float mx = -std::numeric_limits<float>::infinity();
      for (int c = 0; c < a.n; ++c) mx = std::max(mx, LogitAt(a.x, a.ld, a.bias, r, c));
      double sum = 0;
      for (int c = 0; c < a.n; ++c) sum += SoftmaxTerm(LogitAt(a.x, a.ld, a.bias, r, c), mx);
      const double lse = LogSumExp(mx, sum);
      const float add = a.add != nullptr ? a.add[r * a.add_ld] : 0.0f;
      for (int c = 0; c < a.n_out; ++c) a.out[r * a.out_ld + c] = LogProb(LogitAt(a.x, a.ld, a.bias, r, c), lse, add);
    }
    return Status::Ok();
  }

  Status Targets(const TargetArgs& a) override {
    for (int t = 0; t < a.n_items; ++t) {
      const TargetItem& it = a.items[t];
      double lse = 0;
      if (a.normalize) {
        float mx = -std::numeric_limits<float>::infinity();
        for (int c = 0; c < a.n; ++c) mx = std::max(mx, LogitAt(a.x, a.ld, a.bias, it.logit_row, c));
        double sum = 0;
        for (int c = 0; c < a.n; ++c) sum += SoftmaxTerm(LogitAt(a.x, a.ld, a.bias, it.logit_row, c), mx);
        lse = LogSumExp(mx, sum);
      }
      const float add = a.add != nullptr ? a.add[static_cast<int64_t>(it.add_row) * a.add_ld] : 0.0f;
      a.out[it.out] = LogProb(LogitAt(a.x, a.ld, a.bias, it.logit_row, it.col), lse, add);
    }
    return Status::Ok();
  }

 private:
  int64_t allocated_ = 0;
  std::vector<std::pair<void*, size_t>> sizes_;
  std::chrono::steady_clock::time_point t0_, t1_;
};

trams_cuda_code EmulatedDeviceCount(int32_t* count) {
  *count = 1;
  return TRAMS_CUDA_OK;
}

Status EmulatedFactory(int32_t /*device*/, std::unique_ptr<DeviceOps>* ops) {
  *ops = MakeEmulatedOps();
  return Status::Ok();
}

trams_cuda_code EmulatedCreate(const trams_cuda_model* model, const trams_cuda_options* options,
                               trams_cuda_context** out) {
  return CreateContextWithOps(model, options, &EmulatedFactory, out);
}

}  // namespace

std::unique_ptr<DeviceOps> MakeEmulatedOps() { return std::make_unique<EmulatedOps>(); }

const trams_cuda_api* EmulatedApi() {
  static const trams_cuda_api api = MakeApiTable("emulated", &EmulatedDeviceCount, &EmulatedCreate);
  return &api;
}

void InjectEmulatedFault(int after_pool_appends) { fault_after_appends.store(after_pool_appends < 0 ? -1 : after_pool_appends); }

}  // namespace trams::cuda
