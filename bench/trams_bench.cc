// trams-bench: tokens/s of the host engine on the paper's two model shapes (random weights, Zipf-distributed
// token ids),
// XL (m = 200) against TRAMS (M = 400, topk 50 + remain 150), batch 1 and 10, n = 64.
// XL and TRAMS runs alternate so that machine noise hits both; the ratio is from the same run.
// Also prints per-stream pool bytes and the forward's GFLOP/s next to plain sgemm GFLOP/s, and then, for the
// pool storage dtypes (f32, f16, bf16: --pool_dtype), TRAMS M = 400 bytes per session and tokens/s against the
// f32 pool in the same run (the three engines alternate segment by segment).
#include <cblas.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "engine/random_weights.h"
#include "engine/transformer_xl.h"

namespace trams::bench {
namespace {

using Clock = std::chrono::steady_clock;

struct Shape {
  std::string name;
  engine::ModelConfig config;
};

// Forward FLOPs per token of the layers (projections, attention products, feed-forward), plus the
// adaptive/plain softmax head; tail clusters are data dependent and left out.
double FlopsPerToken(const engine::ModelConfig& c, int klen) {
  const double d = c.d_model, w = c.attn_width(), di = c.d_inner;
  const double layer = 2 * d * 3 * w + 2 * w * d + 4 * d * di + 3 * 2 * klen * w;
  const double head = 2.0 * c.d_embed * ((c.cutoffs.empty() ? c.vocab_size : c.cutoffs[0]) + c.n_clusters());
  return c.n_layer * layer + head;
}

double SgemmGflops(int threads) {
  // The shape of the feed-forward product at batch 10 x 64 tokens, enwik8 width.
  const int m = 640, n = 2048, k = 512;
  std::vector<float> a(m * k, 0.5f), b(n * k, 0.25f), c(m * n);
  engine::ThreadPool pool(threads);
  double best = 0;
  for (int rep = 0; rep < 10; ++rep) {
    const auto t0 = Clock::now();
    engine::LinearNT(&pool, a.data(), k, b.data(), k, c.data(), n, m, n, k);
    const double s = std::chrono::duration<double>(Clock::now() - t0).count();
    best = std::max(best, 2.0 * m * n * k / s / 1e9);
  }
  return best;
}

// Token ids drawn like words of real text: id = frequency rank (WikiText-103's vocabulary is sorted by
// frequency), P(id) ~ 1 / (id + 1). With uniform ids most targets would fall in the largest tail
// clusters of the adaptive softmax, which real text rarely hits.
class Zipf {
 public:
  explicit Zipf(int64_t vocab) : cdf_(static_cast<size_t>(vocab)) {
    double total = 0;
    for (int64_t i = 0; i < vocab; ++i) cdf_[i] = (total += 1.0 / static_cast<double>(i + 1));
    for (double& c : cdf_) c /= total;
  }
  int32_t Sample(std::mt19937& rng) {
    const double u = std::uniform_real_distribution<double>(0.0, 1.0)(rng);
    return static_cast<int32_t>(std::lower_bound(cdf_.begin(), cdf_.end(), u) - cdf_.begin());
  }

 private:
  std::vector<double> cdf_;
};

struct Run {
  double seconds = 0;
  int64_t tokens = 0;
  int64_t pool_bytes = 0;
};

// Streams of one memory setting, fed random tokens one segment at a time.
class Workload {
 public:
  Workload(engine::Engine& model, const engine::TramsSettings& settings, int batch, int tgt_len)
      : model_(model), zipf_(model.config().vocab_size), ids_(batch, std::vector<int32_t>(tgt_len)) {
    for (int b = 0; b < batch; ++b) streams_.push_back(*model.NewStream(settings));
    run_.pool_bytes = streams_[0]->bytes();
  }
  // Segments needed before the pool is full (steady state).
  int warmup() const {
    return (streams_[0]->capacity() + static_cast<int>(ids_[0].size()) - 1) / static_cast<int>(ids_[0].size()) + 1;
  }
  // Both settings get the same tokens (the adaptive softmax's cost depends on which clusters they hit).
  void Step(uint32_t seed, bool timed) {
    std::mt19937 rng(seed);
    std::vector<engine::SegmentInput> in;
    for (size_t b = 0; b < streams_.size(); ++b) {
      for (auto& t : ids_[b]) t = zipf_.Sample(rng);
      in.push_back({streams_[b].get(), ids_[b], {}});
    }
    const auto t0 = Clock::now();
    if (!model_.Forward(in, &out_).ok()) std::abort();
    if (timed) {
      run_.seconds += std::chrono::duration<double>(Clock::now() - t0).count();
      run_.tokens += static_cast<int64_t>(in.size() * ids_[0].size());
    }
  }
  const Run& run() const { return run_; }

 private:
  engine::Engine& model_;
  Zipf zipf_;
  std::vector<std::unique_ptr<engine::EngineStream>> streams_;
  std::vector<std::vector<int32_t>> ids_;
  std::vector<engine::SegmentOutput> out_;
  Run run_;
};

int Main(int argc, char** argv) {
  int threads = 0, segments = 6, rounds = 2;
  bool only_enwik8 = false, help = false, pool_dtypes = true;
  const char* kUsage =
      "usage: trams-bench [--threads=N] [--segments=N] [--rounds=N] [--enwik8-only] [--no-pool-dtypes] [--help]\n";
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--help") == 0) {
      help = true;  // after the other flags are checked, so `CMD --help` tells whether CMD's flags exist
      continue;
    }
    if (std::sscanf(argv[i], "--threads=%d", &threads) == 1) continue;
    if (std::sscanf(argv[i], "--segments=%d", &segments) == 1) continue;
    if (std::sscanf(argv[i], "--rounds=%d", &rounds) == 1) continue;
    if (std::strcmp(argv[i], "--no-pool-dtypes") == 0) {
      pool_dtypes = false;
      continue;
    }
    if (std::strcmp(argv[i], "--enwik8-only") == 0) {
      only_enwik8 = true;
      continue;
    }
    std::fprintf(stderr, "trams-bench: unknown argument '%s'\n%s", argv[i], kUsage);
    return 2;
  }
  if (help) {
    std::printf("%s", kUsage);
    return 0;
  }
  const int tgt_len = 64;
  const double sgemm = SgemmGflops(threads);
  std::printf("sgemm (640x2048x512, same thread pool): %.1f GFLOP/s\n\n", sgemm);
  std::printf("%-12s %5s %7s %12s %12s %9s %10s %10s %14s %14s\n", "model", "batch", "threads", "XL tok/s",
              "TRAMS tok/s", "TRAMS/XL", "XL GF/s", "TRAMS GF/s", "XL pool B", "TRAMS pool B");
  std::vector<Shape> shapes;
  if (!only_enwik8) shapes.push_back({"wikitext103", engine::WikiText103Config()});
  shapes.push_back({"enwik8", engine::Enwik8Config()});
  std::mt19937 rng(1234);
  const int pool_threads = engine::ThreadPool(threads).size();
  for (const Shape& shape : shapes) {
    engine::EngineOptions options;
    options.threads = threads;
    auto model = engine::TransformerXL::FromWeights(engine::RandomModelWeights(shape.config, 7), options);
    const engine::TramsSettings xl = engine::TramsSettings::Xl(200), tr = engine::TramsSettings::Trams(400, 50, 150);
    for (int batch : {1, 10}) {
      // XL and TRAMS segments alternate one by one, so machine noise hits both alike.
      Workload xl_load(*model, xl, batch, tgt_len), tr_load(*model, tr, batch, tgt_len);
      for (int i = 0; i < std::max(xl_load.warmup(), tr_load.warmup()); ++i) {
        const uint32_t seed = static_cast<uint32_t>(rng());
        xl_load.Step(seed, false);
        tr_load.Step(seed, false);
      }
      for (int i = 0; i < segments * rounds; ++i) {
        const uint32_t seed = static_cast<uint32_t>(rng());
        xl_load.Step(seed, true);
        tr_load.Step(seed, true);
      }
      const Run& xl_run = xl_load.run();
      const Run& tr_run = tr_load.run();
      const int64_t xl_bytes = xl_run.pool_bytes, tr_bytes = tr_run.pool_bytes;
      const double xl_tps = xl_run.tokens / xl_run.seconds, tr_tps = tr_run.tokens / tr_run.seconds;
      const double flops = FlopsPerToken(shape.config, 200 + tgt_len);
      std::printf("%-12s %5d %7d %12.1f %12.1f %9.3f %10.1f %10.1f %14lld %14lld\n", shape.name.c_str(), batch,
                  pool_threads, xl_tps, tr_tps, xl_tps / tr_tps,
                  xl_tps * flops / 1e9, tr_tps * flops / 1e9, static_cast<long long>(xl_bytes),
                  static_cast<long long>(tr_bytes));
      std::fflush(stdout);
    }
  }
  std::printf("\nTRAMS/XL is time per token (lower is better; the paper's code: 1.49 on a 2080Ti).\n"
              "GF/s counts layer and head FLOPs only (tail clusters of the adaptive softmax are data dependent).\n");
  if (!pool_dtypes) return 0;

  // Pool storage dtype: one engine per dtype over the same weights, TRAMS M = 400 (topk 50 + remain 150),
  // batch 10; the three alternate segment by segment with the same tokens.
  std::printf("\npool dtype (TRAMS M=400, batch 10, n=%d)\n%-12s %6s %16s %12s %12s %12s\n", tgt_len, "model",
              "pool", "bytes/session", "vs f32", "tok/s", "tok/s vs f32");
  for (const Shape& shape : shapes) {
    const engine::ModelWeights weights = engine::RandomModelWeights(shape.config, 7);
    const engine::PoolDType dtypes[] = {engine::PoolDType::kF32, engine::PoolDType::kF16, engine::PoolDType::kBF16};
    std::vector<std::unique_ptr<engine::TransformerXL>> models;
    std::vector<std::unique_ptr<Workload>> loads;
    const engine::TramsSettings tr = engine::TramsSettings::Trams(400, 50, 150);
    for (engine::PoolDType t : dtypes) {
      engine::EngineOptions options;
      options.threads = threads;
      options.pool_dtype = t;
      models.push_back(engine::TransformerXL::FromWeights(weights, options));
      loads.push_back(std::make_unique<Workload>(*models.back(), tr, 10, tgt_len));
    }
    for (int i = 0; i < loads[0]->warmup(); ++i) {
      const uint32_t seed = static_cast<uint32_t>(rng());
      for (auto& load : loads) load->Step(seed, false);
    }
    for (int i = 0; i < segments * rounds; ++i) {
      const uint32_t seed = static_cast<uint32_t>(rng());
      for (auto& load : loads) load->Step(seed, true);
    }
    const Run& base = loads[0]->run();
    const double base_tps = base.tokens / base.seconds;
    for (size_t k = 0; k < loads.size(); ++k) {
      const Run& r = loads[k]->run();
      const double tps = r.tokens / r.seconds;
      std::printf("%-12s %6s %16lld %12.3f %12.1f %12.3f\n", shape.name.c_str(), engine::PoolDTypeName(dtypes[k]),
                  static_cast<long long>(r.pool_bytes), static_cast<double>(r.pool_bytes) / base.pool_bytes, tps,
                  tps / base_tps);
      std::fflush(stdout);
    }
  }
  std::printf("\nbytes/session: keys + values at the pool dtype, TRAMS scores and the hidden state in f32.\n");
  return 0;
}

}  // namespace
}  // namespace trams::bench

int main(int argc, char** argv) { return trams::bench::Main(argc, argv); }
