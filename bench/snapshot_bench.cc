// trams-snapshot-bench: what writing and reading one session snapshot costs, next to the physical limits
// measured in the same run on the same bytes: memcpy of the blob, and a write + fsync of that many bytes
// to the same directory (bench/README.md, "Snapshots").
//
// Per model shape and compression: snapshot = ExportStream + encode + DiskStore::Put (temp, fsync, rename,
// fsync of the directory); restore = DiskStore::Get + decode (every checksum) + ImportStream. With --redis
// the same through RedisStore, whose limit is the SET of the encoded blob alone ("raw ms"). Each session
// is first fed real tokens through the engine until its pool is full, so the pool holds real keys and
// values (a zero-filled pool would compress to nothing).
//
// --spill: serving under spill (needs --model): an in-process server over gRPC, --spill_sessions sessions
// scored round robin one segment per call by --spill_workers concurrent clients, with a memory budget that
// holds --spill_fit of them (the rest spilled to a --state_dir store and restored on their next call),
// against the same work with a budget that holds them all, in the same run.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "engine/random_weights.h"
#include "engine/stream_image.h"
#include "engine/transformer_xl.h"
#include "server/disk_store.h"
#include "server/redis_store.h"
#include "server/server_app.h"
#include "server/session_snapshot.h"
#include "trams/v1/trams.grpc.pb.h"

ABSL_FLAG(std::string, dir, "/tmp/trams-snapshot-bench", "directory for the store (removed afterwards)");
ABSL_FLAG(std::string, model, "", "also the bundled model's directory (models/trams-byte-books)");
ABSL_FLAG(int, rounds, 5, "repetitions of each measurement (the median is printed)");
ABSL_FLAG(bool, wikitext_only, false, "only the WikiText-103 shape");
ABSL_FLAG(std::string, redis, "", "also Redis: a running redis-server's redis://HOST:PORT (its keys trams:v1:*:bench)");
ABSL_FLAG(bool, spill, false, "also serving under spill (needs --model)");
ABSL_FLAG(int, spill_sessions, 256, "--spill: sessions");
ABSL_FLAG(int, spill_fit, 32, "--spill: sessions the small budget holds");
ABSL_FLAG(int, spill_workers, 8, "--spill: concurrent clients");
ABSL_FLAG(int, spill_rounds, 4, "--spill: calls per session");

namespace trams::bench {
namespace {

using Clock = std::chrono::steady_clock;

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

template <class Fn>
double MedianMs(int rounds, Fn&& fn) {
  std::vector<double> ms;
  for (int r = 0; r < rounds; ++r) {
    const auto t = Clock::now();
    fn();
    ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t).count());
  }
  return Median(ms);
}

// Write + fsync of `bytes` into a new file in `dir`, then the directory's fsync: the disk's limit.
void RawWrite(const std::string& dir, const std::string& bytes) {
  const std::string path = dir + "/raw.bin";
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  if (fd < 0 || ::write(fd, bytes.data(), bytes.size()) != static_cast<ssize_t>(bytes.size()) || ::fsync(fd) != 0) {
    std::perror("raw write");
    std::exit(1);
  }
  ::close(fd);
  const int d = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  ::fsync(d);
  ::close(d);
}

struct Shape {
  std::string name;
  engine::ModelConfig config;
  std::string model_dir;  // empty: random weights of `config`
};

void Run(const Shape& shape, const std::string& dir, int rounds) {
  std::unique_ptr<engine::TransformerXL> model;
  if (shape.model_dir.empty()) {
    model = engine::TransformerXL::FromWeights(engine::RandomModelWeights(shape.config, 7));
  } else {
    absl::StatusOr<std::unique_ptr<engine::TransformerXL>> loaded = engine::TransformerXL::Load(shape.model_dir);
    if (!loaded.ok()) {
      std::fprintf(stderr, "%s: %s\n", shape.model_dir.c_str(), std::string(loaded.status().message()).c_str());
      std::exit(1);
    }
    model = *std::move(loaded);
  }
  const engine::TramsSettings settings = engine::TramsSettings::Trams(400, 50, 150);
  std::unique_ptr<engine::EngineStream> stream = *model->NewStream(settings);
  std::mt19937 rng(1);
  const int64_t ids = std::min<int64_t>(model->config().vocab_size, 20000);
  std::uniform_int_distribution<int32_t> id(0, static_cast<int32_t>(ids) - 1);
  for (int seg = 0; seg < 7; ++seg) {  // 448 tokens: the pool of 400 is full and has wrapped
    std::vector<int32_t> tokens(64);
    for (int32_t& t : tokens) t = id(rng);
    engine::SegmentInput in{stream.get(), tokens, {}};
    std::vector<engine::SegmentOutput> out;
    if (!model->Forward({&in, 1}, &out).ok()) std::exit(1);
  }
  struct Target {
    const char* name;
    std::unique_ptr<server::SessionStore> store;
  };
  std::vector<Target> targets;
  targets.push_back({"disk", *server::DiskStore::Open(dir)});
  if (const std::string url = absl::GetFlag(FLAGS_redis); !url.empty()) {
    absl::StatusOr<std::unique_ptr<server::RedisStore>> redis =
        server::RedisStore::Open(url, "bench", std::chrono::minutes(5));
    if (!redis.ok() || !(*redis)->Claim("bench").ok()) {
      std::fprintf(stderr, "--redis %s: %s\n", url.c_str(), std::string(redis.status().message()).c_str());
      std::exit(1);
    }
    targets.push_back({"redis", *std::move(redis)});
  }
  const server::SnapshotIdentity identity{model->model_fingerprint(), "none"};
  server::SessionRecord record;
  record.id = "bench";
  record.segment_len = 64;
  record.recent_ids_kept = 464;
  record.recent_ids.assign(448, 1);

  for (Target& target : targets) {
    for (engine::SnapshotCompression c : {engine::SnapshotCompression::kNone, engine::SnapshotCompression::kZstd}) {
      server::SessionStore* store = target.store.get();
      const char* cname = c == engine::SnapshotCompression::kNone ? "none" : "zstd";
      std::string blob;
      const double snap_ms = MedianMs(rounds, [&] {
        engine::StreamImage image = *model->ExportStream(*stream);
        blob = *server::EncodeSessionSnapshot(record, std::move(image), identity, c);
        if (!store->Put("bench", blob).ok()) std::exit(1);
      });
      const double encode_ms = MedianMs(rounds, [&] {
        engine::StreamImage image = *model->ExportStream(*stream);
        blob = *server::EncodeSessionSnapshot(record, std::move(image), identity, c);
      });
      std::unique_ptr<engine::EngineStream> restored;
      const double restore_ms = MedianMs(rounds, [&] {
        std::string read = *store->Get("bench");
        server::SessionImage image = *server::DecodeSessionSnapshot(read, model->config(), identity, uint64_t{1} << 32);
        restored = *model->ImportStream(image.image);
      });
      // The limits, on the same byte counts: the raw session bytes in memory, the blob on disk.
      const int64_t raw = stream->bytes();
      std::string src(static_cast<size_t>(raw), 'x'), dst(static_cast<size_t>(raw), 'y');
      for (size_t i = 0; i < src.size(); i += 4096) src[i] = static_cast<char>(rng());
      const double memcpy_ms = MedianMs(rounds, [&] { std::memcpy(dst.data(), src.data(), src.size()); });
      // The store's own limit: disk, a write + fsync of the blob's bytes; Redis, the SET of the encoded blob.
      std::string disk_bytes = blob;
      const double disk_ms = std::string(target.name) == "disk"
                                 ? MedianMs(rounds, [&] { RawWrite(dir, disk_bytes); })
                                 : MedianMs(rounds, [&] { store->Put("bench", disk_bytes).IgnoreError(); });
      const double limit_ms = memcpy_ms + disk_ms;
      std::printf("%-12s %-5s %-5s %10lld %10zu %8.2f %8.2f %8.2f %8.2f %8.2f %7.2f %9.1f %9.1f\n", shape.name.c_str(),
                  target.name, cname,
                  static_cast<long long>(raw), blob.size(), encode_ms, snap_ms, restore_ms, memcpy_ms, disk_ms,
                  snap_ms / limit_ms, raw / 1e3 / snap_ms, raw / 1e3 / restore_ms);
    }
  }
  std::filesystem::remove_all(dir);
}

// Tokens/s of `rounds` one-segment Score calls per session over `sessions` sessions, `workers` at a time,
// on a server whose budget holds `fit` sessions (all of them when fit >= sessions; a store otherwise).
struct SpillResult {
  double tokens_per_s = 0;
  std::string metrics;
};

SpillResult SpillRun(const std::string& model, int sessions, int fit, int workers, int rounds, const std::string& dir) {
  namespace v1 = ::trams::v1;
  server::ServerOptions o;
  o.model_dir = model;
  o.listen = "127.0.0.1:0";
  o.metrics_listen = "";
  o.limits.idle_ttl_seconds = 0;
  o.limits.max_sessions = sessions + 1;
  o.defaults.memory = engine::TramsSettings::Trams(400, 50, 150);
  o.defaults.segment_len = 64;
  absl::StatusOr<std::unique_ptr<engine::TransformerXL>> probe = engine::TransformerXL::Load(model);
  if (!probe.ok()) std::exit(1);
  const int64_t pool = *(*probe)->StreamBytes(o.defaults.memory);
  probe->reset();
  // The small budget: `fit` pools, of which the running calls' undo logs take their share.
  o.limits.memory_budget_bytes = fit >= sessions ? (pool * 2) * (sessions + workers) : pool * fit;
  if (fit < sessions) o.persistence.state_dir = dir;
  absl::StatusOr<std::unique_ptr<server::ServerApp>> app = server::ServerApp::Start(o);
  if (!app.ok()) {
    std::fprintf(stderr, "server: %s\n", std::string(app.status().message()).c_str());
    std::exit(1);
  }
  auto channel =
      grpc::CreateChannel(absl::StrCat("127.0.0.1:", (*app)->grpc_port()), grpc::InsecureChannelCredentials());
  auto stub = v1::TramsService::NewStub(channel);
  for (int i = 0; i < sessions; ++i) {
    grpc::ClientContext ctx;
    v1::CreateSessionRequest req;
    req.set_session_id("s" + std::to_string(i));
    v1::Session out;
    if (!stub->CreateSession(&ctx, req, &out).ok()) std::exit(1);
  }
  std::atomic<int64_t> tokens{0}, failures{0};
  const auto start = Clock::now();
  std::vector<std::thread> threads;
  for (int w = 0; w < workers; ++w) {
    threads.emplace_back([&, w] {
      std::mt19937 rng(static_cast<uint32_t>(w));
      for (int r = 0; r < rounds; ++r) {
        for (int i = w; i < sessions; i += workers) {
          grpc::ClientContext ctx;
          auto stream = stub->Score(&ctx);
          v1::ScoreRequest req;
          req.set_session_id("s" + std::to_string(i));
          for (int t = 0; t < 64; ++t) req.mutable_ids()->add_ids(static_cast<int32_t>(rng() % 256));
          stream->Write(req);
          stream->WritesDone();
          v1::ScoreResponse resp;
          while (stream->Read(&resp)) tokens += resp.tokens_size();
          if (!stream->Finish().ok()) ++failures;
        }
      }
    });
  }
  for (std::thread& t : threads) t.join();
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  if (failures > 0) std::fprintf(stderr, "%lld calls failed\n", static_cast<long long>(failures.load()));
  SpillResult r;
  r.tokens_per_s = static_cast<double>(tokens.load()) / seconds;
  r.metrics = (*app)->metrics().Text();
  (*app)->Shutdown(std::chrono::milliseconds(0));
  std::filesystem::remove_all(dir);
  return r;
}

double MetricValue(const std::string& text, const std::string& series) {
  const size_t at = text.find("\n" + series + " ");
  return at == std::string::npos ? 0 : std::atof(text.c_str() + at + series.size() + 2);
}

void RunSpill(const std::string& model, const std::string& dir) {
  const int sessions = absl::GetFlag(FLAGS_spill_sessions), fit = absl::GetFlag(FLAGS_spill_fit);
  const int workers = absl::GetFlag(FLAGS_spill_workers), rounds = absl::GetFlag(FLAGS_spill_rounds);
  std::printf("\nserving under spill: %d sessions (bundled model, TRAMS M = 400, n = 64, one segment per call), "
              "%d concurrent clients, %d calls per session\n", sessions, workers, rounds);
  std::printf("%-28s %10s %10s %10s\n", "budget", "tok/s", "vs all", "spills");
  const SpillResult all = SpillRun(model, sessions, sessions, workers, rounds, dir);
  const SpillResult some = SpillRun(model, sessions, fit, workers, rounds, dir);
  std::printf("%-28s %10.1f %10.3f %10.0f\n", ("holds all " + std::to_string(sessions)).c_str(), all.tokens_per_s, 1.0,
              MetricValue(all.metrics, "trams_sessions_spilled_total"));
  std::printf("%-28s %10.1f %10.3f %10.0f\n", ("holds " + std::to_string(fit) + ", store on disk").c_str(),
              some.tokens_per_s, some.tokens_per_s / all.tokens_per_s,
              MetricValue(some.metrics, "trams_sessions_spilled_total"));
}

}  // namespace
}  // namespace trams::bench

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("trams-snapshot-bench: session snapshot and restore against memcpy and disk writes");
  absl::ParseCommandLine(argc, argv);
  using trams::bench::Shape;
  std::vector<Shape> shapes;
  if (!absl::GetFlag(FLAGS_model).empty() && !absl::GetFlag(FLAGS_wikitext_only)) {
    shapes.push_back({"bundled", {}, absl::GetFlag(FLAGS_model)});
  }
  shapes.push_back({"wikitext103", trams::engine::WikiText103Config(), ""});
  std::printf("TRAMS M = 400 (topk 50 + remain 150), pool f32, pool full; medians of %d; store: %s\n",
              absl::GetFlag(FLAGS_rounds), absl::GetFlag(FLAGS_dir).c_str());
  std::printf("%-12s %-5s %-5s %10s %10s %8s %8s %8s %8s %8s %7s %9s %9s\n", "model", "store", "codec", "session B",
              "blob B", "enc ms", "snap ms", "rest ms", "memcpy", "raw ms", "vs lim", "snap MB/s", "rest MB/s");
  for (const Shape& s : shapes) trams::bench::Run(s, absl::GetFlag(FLAGS_dir), absl::GetFlag(FLAGS_rounds));
  if (absl::GetFlag(FLAGS_spill)) {
    if (absl::GetFlag(FLAGS_model).empty()) {
      std::fprintf(stderr, "--spill needs --model\n");
      return 2;
    }
    trams::bench::RunSpill(absl::GetFlag(FLAGS_model), absl::GetFlag(FLAGS_dir));
  }
  return 0;
}
