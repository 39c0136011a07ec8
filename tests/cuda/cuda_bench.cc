// trams-cuda-bench: tokens/s of the CUDA backend on the paper's two model shapes (random weights,
// engine/random_weights.h), XL (m = 200) against TRAMS (M = 400, topk 50 + remain 150), batch 1, 10 and 64,
// segments of 64 tokens (Zipf-distributed ids, so the adaptive softmax's clusters are hit as in text).
// XL and TRAMS segments alternate so that clock changes hit both; the ratio is TRAMS time / XL time per token.
// Also: device memory per session at M = 400 (its pools in the arena plus its share of the batch-64
// workspace) and how many such sessions fit in what the device has left; and generation's decode step
// (one token per session, next-token distribution to the host) with 1, 64 and 512 sessions. Without a GPU
// it says so and exits 0; --emulated runs a tiny model on the host emulation (a smoke run of this code).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "engine/cuda/cuda_engine.h"
#include "engine/cuda/cuda_loader.h"
#include "engine/cuda/host_emulation.h"
#include "engine/random_weights.h"

namespace trams::cuda {
namespace {

using Clock = std::chrono::steady_clock;

// Zipf(1) over the vocabulary: id 0 most frequent, as word frequencies in text.
class Zipf {
 public:
  explicit Zipf(int64_t n) : cdf_(static_cast<size_t>(n)) {
    double s = 0;
    for (int64_t i = 0; i < n; ++i) cdf_[i] = (s += 1.0 / static_cast<double>(i + 1));
    for (double& c : cdf_) c /= s;
  }
  int32_t Sample(std::mt19937& rng) {
    const double u = std::uniform_real_distribution<double>(0.0, 1.0)(rng);
    return static_cast<int32_t>(std::lower_bound(cdf_.begin(), cdf_.end(), u) - cdf_.begin());
  }

 private:
  std::vector<double> cdf_;
};

struct Run {
  double seconds = 0, device_ms = 0;
  int64_t tokens = 0;
  int segments = 0;
};

class Workload {
 public:
  Workload(CudaEngine& engine, const engine::TramsSettings& settings, int batch, int tgt_len, Zipf& zipf)
      : engine_(engine), zipf_(zipf), ids_(batch, std::vector<int32_t>(tgt_len)) {
    for (int b = 0; b < batch; ++b) {
      auto s = engine.NewStream(settings);
      if (!s.ok()) {
        std::fprintf(stderr, "stream: %s\n", std::string(s.status().message()).c_str());
        std::exit(1);
      }
      streams_.push_back(std::move(*s));
    }
  }
  int warmup() const { return (streams_[0]->settings().mem_len + 63) / 64 + 1; }
  void Step(std::mt19937& rng, bool timed) {
    std::vector<engine::SegmentInput> in;
    for (size_t b = 0; b < streams_.size(); ++b) {
      for (auto& t : ids_[b]) t = zipf_.Sample(rng);
      in.push_back({streams_[b].get(), ids_[b], {}});
    }
    const auto t0 = Clock::now();
    const absl::Status st = engine_.Forward(in, &out_);
    const double s = std::chrono::duration<double>(Clock::now() - t0).count();
    if (!st.ok()) {
      std::fprintf(stderr, "forward: %s\n", std::string(st.message()).c_str());
      std::exit(1);
    }
    if (!timed) return;
    run_.seconds += s;
    run_.tokens += static_cast<int64_t>(in.size() * ids_[0].size());
    run_.device_ms += engine_.DeviceInfo()->last_forward_ms;
    ++run_.segments;
  }
  const Run& run() const { return run_; }

 private:
  CudaEngine& engine_;
  Zipf& zipf_;
  std::vector<std::unique_ptr<engine::EngineStream>> streams_;
  std::vector<std::vector<int32_t>> ids_;
  std::vector<engine::SegmentOutput> out_;
  Run run_;
};

// Generation's decode step as the server runs it: every session feeds its one newest token and asks for the
// next-token distribution (copied back to the host, where the sampler runs). Returns ms per step.
std::vector<int> ParseList(const std::string& list) {
  std::vector<int> out;
  for (size_t p = 0; p < list.size();) {
    const size_t q = list.find(',', p);
    out.push_back(std::max(1, std::atoi(list.substr(p, q - p).c_str())));
    p = q == std::string::npos ? list.size() : q + 1;
  }
  return out;
}

double DecodeMsPerStep(CudaEngine& engine, const engine::TramsSettings& settings, int sessions, int steps, Zipf& zipf,
                       std::mt19937& rng, bool* fitted) {
  std::vector<std::unique_ptr<engine::EngineStream>> streams;
  for (int b = 0; b < sessions; ++b) {
    auto s = engine.NewStream(settings);
    if (!s.ok()) {
      *fitted = false;  // the arena is full: report how many fitted instead of a time
      return static_cast<double>(b);
    }
    streams.push_back(std::move(*s));
  }
  *fitted = true;
  // A filled pool first (the steady state of a long generation): segments of 64, 16 sessions at a time,
  // so the fill's workspace stays small.
  std::vector<std::vector<int32_t>> prompt(sessions, std::vector<int32_t>(settings.mem_len + 1));
  for (auto& p : prompt) {
    for (auto& t : p) t = zipf.Sample(rng);
  }
  std::vector<engine::SegmentInput> in;
  std::vector<engine::SegmentOutput> out;
  const int64_t len = static_cast<int64_t>(prompt[0].size());
  for (int g = 0; g < sessions; g += 16) {
    for (int64_t pos = 0; pos < len; pos += 64) {
      in.clear();
      for (int b = g; b < std::min(sessions, g + 16); ++b) {
        in.push_back({streams[b].get(), absl::MakeConstSpan(prompt[b]).subspan(pos, std::min<int64_t>(64, len - pos)), {}});
      }
      if (!engine.Forward(in, &out).ok()) return -1;
    }
  }
  std::vector<int32_t> next(sessions);
  engine::OutputOptions o;
  o.next_distribution = true;
  double seconds = 0;
  for (int step = 0; step <= steps; ++step) {
    in.clear();
    for (int b = 0; b < sessions; ++b) {
      next[b] = zipf.Sample(rng);
      in.push_back({streams[b].get(), absl::MakeConstSpan(&next[b], 1), o});
    }
    const auto t0 = Clock::now();
    if (!engine.Forward(in, &out).ok()) return -1;
    if (step > 0) seconds += std::chrono::duration<double>(Clock::now() - t0).count();  // step 0 warms up
  }
  return 1000.0 * seconds / steps;
}

int Main(int argc, char** argv) {
  std::string module_path, dtype_name = "f32";
  int segments = 8;
  bool only_enwik8 = false, tf32 = false, emulated = false;
  std::vector<int> batches = {1, 10, 64}, decode_sessions = {1, 64, 512};
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg.rfind("--module=", 0) == 0) {
      module_path = arg.substr(9);
    } else if (arg.rfind("--dtype=", 0) == 0) {
      dtype_name = arg.substr(8);
    } else if (std::sscanf(argv[i], "--segments=%d", &segments) == 1) {
    } else if (arg == "--tf32") {
      tf32 = true;
    } else if (arg == "--emulated") {
      emulated = true;
    } else if (arg == "--enwik8-only") {
      only_enwik8 = true;
    } else if (arg.rfind("--batches=", 0) == 0) {
      batches = ParseList(arg.substr(10));
    } else if (arg.rfind("--decode_sessions=", 0) == 0) {
      decode_sessions = ParseList(arg.substr(18));
    } else {
      std::fprintf(stderr,
                   "usage: trams-cuda-bench [--module=PATH] [--dtype=f32|f16|bf16] [--tf32] [--segments=N] "
                   "[--batches=1,10,64] [--decode_sessions=1,64,512] [--enwik8-only] [--emulated (a tiny model on the host emulation: a smoke run)]\n");
      return 2;
    }
  }
  const CudaAvailability probe = emulated ? CudaAvailability{} : ProbeCuda(module_path);
  const trams_cuda_api* api = emulated ? EmulatedApi() : probe.available() ? api : nullptr;
  std::printf("%s\n", emulated ? "host emulation (smoke run: the numbers mean nothing)" : probe.message.c_str());
  if (api == nullptr) {
    std::printf("trams-cuda-bench: no GPU, nothing to measure\n");
    return 0;
  }
  trams_cuda_dtype dtype = TRAMS_CUDA_F32;
  if (dtype_name == "f16") dtype = TRAMS_CUDA_F16;
  if (dtype_name == "bf16") dtype = TRAMS_CUDA_BF16;

  struct Shape {
    const char* name;
    engine::ModelConfig config;
  };
  std::vector<Shape> shapes;
  if (emulated) {
    engine::ModelConfig tiny = engine::Enwik8Config();
    tiny.n_layer = 2;
    tiny.d_model = tiny.d_embed = 32;
    tiny.n_head = 2;
    tiny.d_head = 16;
    tiny.d_inner = 64;
    shapes.push_back({"tiny", tiny});
  } else {
    if (!only_enwik8) shapes.push_back({"wikitext103", engine::WikiText103Config()});
    shapes.push_back({"enwik8", engine::Enwik8Config()});
  }
  const engine::TramsSettings xl = emulated ? engine::TramsSettings::Xl(12) : engine::TramsSettings::Xl(200);
  const engine::TramsSettings tr = emulated ? engine::TramsSettings::Trams(24, 4, 8) : engine::TramsSettings::Trams(400, 50, 150);
  const int tgt_len = 64, max_batch = *std::max_element(batches.begin(), batches.end());
  std::mt19937 rng(1234);
  for (const Shape& shape : shapes) {
    const engine::ModelWeights weights = engine::RandomModelWeights(shape.config, 7);
    // Size the arena for the largest batch of both settings, from a probe context.
    int64_t xl_bytes = 0, tr_bytes = 0;
    {
      CudaEngineOptions small;
      small.arena_bytes = 0;
      small.weight_dtype = dtype;
      auto probe_engine = CudaEngine::Create(api, weights, small);
      if (!probe_engine.ok()) {
        std::fprintf(stderr, "%s: %s\n", shape.name, std::string(probe_engine.status().message()).c_str());
        return 1;
      }
      xl_bytes = *(*probe_engine)->StreamBytes(xl);
      tr_bytes = *(*probe_engine)->StreamBytes(tr);
    }
    CudaEngineOptions options;
    options.weight_dtype = dtype;
    options.allow_tf32 = tf32;
    options.arena_bytes = static_cast<int64_t>(max_batch) * (xl_bytes + tr_bytes) + (int64_t{64} << 20);
    auto engine = CudaEngine::Create(api, weights, options);
    if (!engine.ok()) {
      std::fprintf(stderr, "%s: %s\n", shape.name, std::string(engine.status().message()).c_str());
      return 1;
    }
    const trams_cuda_device_info start = *(*engine)->DeviceInfo();
    std::printf("\n%s on %s (sm_%d%d), weights %s: %.1f MiB on the device\n", shape.name, start.name, start.cc_major,
                start.cc_minor, dtype_name.c_str(), start.weights_bytes / 1048576.0);
    std::printf("%5s %12s %12s %9s %11s %11s %12s\n", "batch", "XL tok/s", "TRAMS tok/s", "TRAMS/XL", "XL ms/seg",
                "TRAMS ms/seg", "workspace MiB");
    Zipf zipf(shape.config.vocab_size);
    int64_t peak_workspace_max_batch = 0;
    for (int batch : batches) {
      Workload xl_load(**engine, xl, batch, tgt_len, zipf), tr_load(**engine, tr, batch, tgt_len, zipf);
      for (int i = 0; i < std::max(xl_load.warmup(), tr_load.warmup()); ++i) {
        xl_load.Step(rng, false);
        tr_load.Step(rng, false);
      }
      for (int i = 0; i < segments; ++i) {
        xl_load.Step(rng, true);
        tr_load.Step(rng, true);
      }
      const Run& x = xl_load.run();
      const Run& t = tr_load.run();
      const double xl_tps = x.tokens / x.seconds, tr_tps = t.tokens / t.seconds;
      const trams_cuda_device_info info = *(*engine)->DeviceInfo();
      if (batch == max_batch) peak_workspace_max_batch = info.workspace_peak;
      std::printf("%5d %12.0f %12.0f %9.3f %11.2f %11.2f %12.1f\n", batch, xl_tps, tr_tps, xl_tps / tr_tps,
                  x.device_ms / x.segments, t.device_ms / t.segments, info.workspace_peak / 1048576.0);
      std::fflush(stdout);
    }
    // Decode: one token per session per step, TRAMS, in an arena sized for the most sessions.
    {
      const int most = *std::max_element(decode_sessions.begin(), decode_sessions.end());
      CudaEngineOptions decode_options = options;
      decode_options.arena_bytes = static_cast<int64_t>(most) * tr_bytes + (int64_t{64} << 20);
      engine->reset();  // one context at a time: its arena and workspace go back first
      auto decoder = CudaEngine::Create(api, weights, decode_options);
      if (!decoder.ok()) {
        std::printf("decode: %s\n", std::string(decoder.status().message()).c_str());
      } else {
        std::printf("%9s %12s %12s   (decode, TRAMS, next-token distribution to the host)\n", "sessions",
                    "ms/step", "tokens/s");
        for (int n : decode_sessions) {
          bool fitted = false;
          const double ms = DecodeMsPerStep(**decoder, tr, n, segments, zipf, rng, &fitted);
          if (!fitted) {
            std::printf("%9d   only %.0f sessions fit in the %.0f MiB arena\n", n, ms,
                        decode_options.arena_bytes / 1048576.0);
          } else {
            std::printf("%9d %12.2f %12.0f\n", n, ms, ms > 0 ? n * 1000.0 / ms : 0.0);
          }
          std::fflush(stdout);
        }
      }
      if (decoder.ok()) decoder->reset();
      engine = CudaEngine::Create(api, weights, options);
      if (!engine.ok()) return 1;
    }
    const trams_cuda_device_info end = *(*engine)->DeviceInfo();
    const double per_session = tr_bytes + static_cast<double>(peak_workspace_max_batch) / max_batch;
    // Room for sessions: free device memory plus the arena not held by streams (the workloads' streams are
    // gone by now). The workspace is already allocated at its peak, so it is not counted again.
    const int64_t room = end.memory_free + (end.arena_total - end.arena_used);
    std::printf("TRAMS M=%d session: %.2f MiB of pools (XL m=%d: %.2f MiB); %.2f MiB with its share of the "
                "batch-%d workspace (%.1f MiB)\n",
                tr.mem_len, tr_bytes / 1048576.0, xl.mem_len, xl_bytes / 1048576.0, per_session / 1048576.0, max_batch,
                peak_workspace_max_batch / 1048576.0);
    std::printf("device memory: %.0f MiB total, %.0f MiB free + %.0f MiB arena not in use -> %lld TRAMS sessions "
                "fit (%lld counting each one's workspace share)\n",
                end.memory_total / 1048576.0, end.memory_free / 1048576.0,
                (end.arena_total - end.arena_used) / 1048576.0, static_cast<long long>(room / tr_bytes),
                static_cast<long long>(room / per_session));
  }
  std::printf("\nTRAMS/XL is time per token (lower is better; the paper's code: 1.49 on a 2080Ti). ms/seg is device "
              "time per forward (cudaEvents).\n");
  return 0;
}

}  // namespace
}  // namespace trams::cuda

int main(int argc, char** argv) { return trams::cuda::Main(argc, argv); }
