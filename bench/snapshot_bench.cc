// trams-snapshot-bench: what writing and reading one session snapshot costs, next to the physical limits
// measured in the same run on the same bytes: memcpy of the blob, and a write + fsync of that many bytes
// to the same directory (bench/README.md, "Snapshots").
//
// Per model shape and compression: snapshot = ExportStream + encode + DiskStore::Put (temp, fsync, rename,
// fsync of the directory); restore = DiskStore::Get + decode (every checksum) + ImportStream. Each session
// is first fed real tokens through the engine until its pool is full, so the pool holds real keys and
// values (a zero-filled pool would compress to nothing).
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

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "engine/random_weights.h"
#include "engine/stream_image.h"
#include "engine/transformer_xl.h"
#include "server/disk_store.h"
#include "server/session_snapshot.h"

ABSL_FLAG(std::string, dir, "/tmp/trams-snapshot-bench", "directory for the store (removed afterwards)");
ABSL_FLAG(std::string, model, "", "also the bundled model's directory (models/trams-byte-books)");
ABSL_FLAG(int, rounds, 5, "repetitions of each measurement (the median is printed)");
ABSL_FLAG(bool, wikitext_only, false, "only the WikiText-103 shape");

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
  std::uniform_int_distribution<int32_t> id(0, static_cast<int32_t>(std::min<int64_t>(model->config().vocab_size, 20000)) - 1);
  for (int seg = 0; seg < 7; ++seg) {  // 448 tokens: the pool of 400 is full and has wrapped
    std::vector<int32_t> tokens(64);
    for (int32_t& t : tokens) t = id(rng);
    engine::SegmentInput in{stream.get(), tokens, {}};
    std::vector<engine::SegmentOutput> out;
    if (!model->Forward({&in, 1}, &out).ok()) std::exit(1);
  }
  absl::StatusOr<std::unique_ptr<server::DiskStore>> store = server::DiskStore::Open(dir);
  if (!store.ok()) std::exit(1);
  const server::SnapshotIdentity identity{model->model_fingerprint(), "none"};
  server::SessionRecord record;
  record.id = "bench";
  record.segment_len = 64;
  record.recent_ids_kept = 464;
  record.recent_ids.assign(448, 1);

  for (engine::SnapshotCompression c : {engine::SnapshotCompression::kNone, engine::SnapshotCompression::kZstd}) {
    const char* cname = c == engine::SnapshotCompression::kNone ? "none" : "zstd";
    std::string blob;
    const double snap_ms = MedianMs(rounds, [&] {
      engine::StreamImage image = *model->ExportStream(*stream);
      blob = *server::EncodeSessionSnapshot(record, std::move(image), identity, c);
      if (!(*store)->Put("bench", blob).ok()) std::exit(1);
    });
    const double encode_ms = MedianMs(rounds, [&] {
      engine::StreamImage image = *model->ExportStream(*stream);
      blob = *server::EncodeSessionSnapshot(record, std::move(image), identity, c);
    });
    std::unique_ptr<engine::EngineStream> restored;
    const double restore_ms = MedianMs(rounds, [&] {
      std::string read = *(*store)->Get("bench");
      server::SessionImage image = *server::DecodeSessionSnapshot(read, model->config(), identity, uint64_t{1} << 32);
      restored = *model->ImportStream(image.image);
    });
    // The limits, on the same byte counts: the raw session bytes in memory, the blob on disk.
    const int64_t raw = stream->bytes();
    std::string src(static_cast<size_t>(raw), 'x'), dst(static_cast<size_t>(raw), 'y');
    for (size_t i = 0; i < src.size(); i += 4096) src[i] = static_cast<char>(rng());
    const double memcpy_ms = MedianMs(rounds, [&] { std::memcpy(dst.data(), src.data(), src.size()); });
    std::string disk_bytes = blob;
    const double disk_ms = MedianMs(rounds, [&] { RawWrite(dir, disk_bytes); });
    const double limit_ms = memcpy_ms + disk_ms;
    std::printf("%-12s %-5s %10lld %10zu %8.2f %8.2f %8.2f %8.2f %8.2f %7.2f %9.1f %9.1f\n", shape.name.c_str(), cname,
                static_cast<long long>(raw), blob.size(), encode_ms, snap_ms, restore_ms, memcpy_ms, disk_ms,
                snap_ms / limit_ms, raw / 1e3 / snap_ms, raw / 1e3 / restore_ms);
  }
  std::filesystem::remove_all(dir);
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
  std::printf("%-12s %-5s %10s %10s %8s %8s %8s %8s %8s %7s %9s %9s\n", "model", "codec", "session B", "blob B",
              "enc ms", "snap ms", "rest ms", "memcpy", "disk ms", "vs lim", "snap MB/s", "rest MB/s");
  for (const Shape& s : shapes) trams::bench::Run(s, absl::GetFlag(FLAGS_dir), absl::GetFlag(FLAGS_rounds));
  return 0;
}
