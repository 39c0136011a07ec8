// trams-load: serving throughput and latency over real gRPC against the in-process engine.
//
// For 1, 4, 16 and 64 concurrent sessions (--sessions), and for each mode (--modes):
//   score:    every session streams random byte text (--score_segments segments of --segment_len
//             tokens, one message per segment) in one Score call; latency = gap between successive
//             segment responses of a call (the first one measured from the call's start is reported
//             apart, as "first").
//   generate: every session runs one Generate call: a --prompt_len token prompt, then --gen_tokens
//             sampled tokens; latency = gap between successive tokens ("first" = time to first token).
// Each gRPC run is paired with the in-process baseline on the same model object: Engine::Forward
// at batch = sessions, on fresh streams with the same memory settings and the same work (score: the
// same segments; generate: the prompt, then one token per stream per forward with the next-token
// distribution, sampled like the server does). Tokens/s on both sides count the same tokens.
//
// The server is a ServerApp on 127.0.0.1 in this process (gRPC and the scheduler as deployed), or
// --server HOST:PORT (then --metrics HOST:PORT gives the server-side columns, and the baseline runs on
// --model or on random weights of the --n_layer ... shape, which should match the server's model).
// The mean batch size, the forward count and the mean forward time inside the server come from its
// trams_batch_size and trams_forward_seconds histograms, scraped from /metrics before and after each run.
//
// Defaults keep a full run short on a small busy machine; scale with --score_segments, --gen_tokens,
// --rounds (best of N, runs alternate gRPC / in-process), --mem_len/--topk/--remain.
#include <arpa/inet.h>
#include <netdb.h>
#include <sys/socket.h>
#include <unistd.h>

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <mutex>
#include <numeric>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "bench/percentile.h"
#include "engine/cli/flag_usage.h"
#include "engine/random_weights.h"
#include "engine/sampler.h"
#include "engine/open_engine.h"
#include "engine/transformer_xl.h"
#include "server/proto_convert.h"
#include "server/server_app.h"
#include "trams/v1/trams.grpc.pb.h"

ABSL_FLAG(std::string, server, "", "load an external server at HOST:PORT (empty: an in-process ServerApp)");
ABSL_FLAG(std::string, metrics, "", "with --server: its /metrics HOST:PORT (batch size and forward time columns)");
ABSL_FLAG(std::string, model, "", "model directory (empty: random weights of the shape below)");
ABSL_FLAG(int, n_layer, 4, "random model: layers");
ABSL_FLAG(int, d_model, 256, "random model: width");
ABSL_FLAG(int, n_head, 4, "random model: heads");
ABSL_FLAG(int, d_head, 64, "random model: head width");
ABSL_FLAG(int, d_inner, 1024, "random model: feed-forward width");
ABSL_FLAG(int, vocab, 256, "random model: vocabulary (byte tokenizer when 256)");
ABSL_FLAG(std::string, sessions, "1,4,16,64", "concurrent session counts, comma separated");
ABSL_FLAG(std::string, modes, "score,generate", "score and/or generate");
ABSL_FLAG(int, segment_len, 64, "tokens per segment (n)");
ABSL_FLAG(int, score_segments, 8, "score: segments each session streams");
ABSL_FLAG(int, gen_tokens, 32, "generate: tokens each session samples");
ABSL_FLAG(int, prompt_len, 16, "generate: prompt tokens");
ABSL_FLAG(std::string, mode, "trams", "memory mode of the sessions: trams | xl | none");
ABSL_FLAG(int, mem_len, 128, "memory pool tokens (M)");
ABSL_FLAG(int, topk, 16, "TRAMS selected tokens");
ABSL_FLAG(int, remain, 48, "TRAMS newest tokens");
ABSL_FLAG(int, threads, 0, "engine threads (0: one per core)");
ABSL_FLAG(std::string, device, "cpu", "in-process server and baseline: cpu | cuda | cuda:N | emulated | auto");
ABSL_FLAG(int, batch_wait_us, 300, "in-process server: scheduler batch wait");
ABSL_FLAG(int, channels, 4, "gRPC channels (connections) the sessions are spread over");
ABSL_FLAG(int, rounds, 3, "runs per cell (alternating gRPC / in-process); the best tokens/s is kept");
ABSL_FLAG(uint64_t, seed, 1, "data and sampling seed");
ABSL_FLAG(int, deadline_s, 600, "deadline of every Score/Generate call, seconds");

namespace trams::bench {
namespace {

using Clock = std::chrono::steady_clock;
double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

struct RunResult {
  double seconds = 0;
  int64_t tokens = 0;
  std::vector<double> first;  // seconds: first response / first token, per session (gRPC) or forward
  std::vector<double> steps;  // seconds: later responses / tokens
  double tokens_per_s() const { return seconds > 0 ? static_cast<double>(tokens) / seconds : 0; }
};

// ---------------------------------------------------------------------------------------------
// /metrics scraping (trams_batch_size and trams_forward_seconds: sums and counts).

struct ServerStats {
  double batch_sum = 0, batch_count = 0;      // trams_batch_size
  double forward_sum = 0, forward_count = 0;  // trams_forward_seconds
};

std::optional<ServerStats> ScrapeServerStats(const std::string& hostport) {
  if (hostport.empty()) return std::nullopt;
  const size_t colon = hostport.rfind(':');
  if (colon == std::string::npos) return std::nullopt;
  const std::string host = hostport.substr(0, colon), port = hostport.substr(colon + 1);
  addrinfo hints{}, *res = nullptr;
  hints.ai_socktype = SOCK_STREAM;
  if (getaddrinfo(host.c_str(), port.c_str(), &hints, &res) != 0 || res == nullptr) return std::nullopt;
  const int fd = socket(res->ai_family, res->ai_socktype, res->ai_protocol);
  std::string body;
  if (fd >= 0 && connect(fd, res->ai_addr, res->ai_addrlen) == 0) {
    const std::string req = "GET /metrics HTTP/1.0\r\nHost: " + hostport + "\r\n\r\n";
    if (write(fd, req.data(), req.size()) == static_cast<ssize_t>(req.size())) {
      char buf[16384];
      for (ssize_t n; (n = read(fd, buf, sizeof buf)) > 0;) body.append(buf, static_cast<size_t>(n));
    }
  }
  if (fd >= 0) close(fd);
  freeaddrinfo(res);
  ServerStats s;
  int found = 0;
  std::istringstream lines(body);
  for (std::string line; std::getline(lines, line);) {
    std::vector<std::string> parts = absl::StrSplit(line, ' ', absl::SkipEmpty());
    if (parts.size() < 2) continue;
    double* field = parts[0] == "trams_batch_size_sum"        ? &s.batch_sum
                    : parts[0] == "trams_batch_size_count"    ? &s.batch_count
                    : parts[0] == "trams_forward_seconds_sum"   ? &s.forward_sum
                    : parts[0] == "trams_forward_seconds_count" ? &s.forward_count
                                                                : nullptr;
    if (field != nullptr && absl::SimpleAtod(parts[1], field)) ++found;
  }
  if (found != 4) return std::nullopt;
  return s;
}

// ---------------------------------------------------------------------------------------------
// gRPC side: callback reactors, no thread per session.

class Countdown {
 public:
  explicit Countdown(int n) : left_(n) {}
  void Done() {
    std::lock_guard<std::mutex> lock(mu_);
    if (--left_ == 0) cv_.notify_all();
  }
  void Wait() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return left_ == 0; });
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  int left_;
};

// Response/tokens timing shared by both reactors (only touched from the reactor's own callbacks,
// which gRPC serializes per call).
struct CallTiming {
  Clock::time_point start, last, end;
  std::vector<double> gaps;  // gaps[0]: start -> first arrival
  int64_t tokens = 0;
  grpc::Status status;
  void Arrived(int n) {
    const auto now = Clock::now();
    gaps.push_back(Seconds(now - last));
    last = now;
    tokens += n;
  }
};

class ScoreReactor final : public grpc::ClientBidiReactor<v1::ScoreRequest, v1::ScoreResponse> {
 public:
  ScoreReactor(v1::TramsService::Stub* stub, const std::string& session, std::vector<v1::ScoreRequest> messages,
               Countdown* done)
      : messages_(std::move(messages)), done_(done) {
    ctx_.AddMetadata("x-session-id", session);
    ctx_.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(absl::GetFlag(FLAGS_deadline_s)));
    stub->async()->Score(&ctx_, this);
  }
  void Go() {
    timing.start = timing.last = Clock::now();
    StartRead(&resp_);
    if (messages_.empty()) {
      StartWritesDone();
    } else {
      StartWrite(&messages_[0]);
    }
    StartCall();
  }
  void OnWriteDone(bool ok) override {
    if (!ok) return;
    if (++next_ < messages_.size()) {
      StartWrite(&messages_[next_]);
    } else {
      StartWritesDone();
    }
  }
  void OnReadDone(bool ok) override {
    if (!ok) return;
    timing.Arrived(resp_.tokens_size());
    StartRead(&resp_);
  }
  void OnDone(const grpc::Status& s) override {
    timing.status = s;
    timing.end = Clock::now();
    done_->Done();
  }
  CallTiming timing;

 private:
  grpc::ClientContext ctx_;
  std::vector<v1::ScoreRequest> messages_;
  size_t next_ = 0;
  v1::ScoreResponse resp_;
  Countdown* done_;
};

class GenerateReactor final : public grpc::ClientReadReactor<v1::GenerateResponse> {
 public:
  GenerateReactor(v1::TramsService::Stub* stub, const v1::GenerateRequest& req, Countdown* done)
      : req_(req), done_(done) {
    ctx_.AddMetadata("x-session-id", req.session_id());
    ctx_.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(absl::GetFlag(FLAGS_deadline_s)));
    stub->async()->Generate(&ctx_, &req_, this);
  }
  void Go() {
    timing.start = timing.last = Clock::now();
    StartRead(&resp_);
    StartCall();
  }
  void OnReadDone(bool ok) override {
    if (!ok) return;
    if (resp_.tokens_size() > 0) timing.Arrived(resp_.tokens_size());
    StartRead(&resp_);
  }
  void OnDone(const grpc::Status& s) override {
    timing.status = s;
    timing.end = Clock::now();
    done_->Done();
  }
  CallTiming timing;

 private:
  grpc::ClientContext ctx_;
  v1::GenerateRequest req_;
  v1::GenerateResponse resp_;
  Countdown* done_;
};

// ---------------------------------------------------------------------------------------------

struct Workload {
  engine::TramsSettings settings;
  v1::MemorySettings memory_proto;
  int segment_len = 64;
  int score_segments = 4;
  int gen_tokens = 16;
  int prompt_len = 16;
  bool text = true;  // byte tokenizer: send text; otherwise token ids
  int64_t vocab = 256;
};

// Per-session token data: score input, or the generate prompt.
std::vector<std::vector<int32_t>> RandomData(int sessions, int len, int64_t vocab, std::mt19937_64& rng) {
  std::uniform_int_distribution<int32_t> id(0, static_cast<int32_t>(std::min<int64_t>(vocab, 256) - 1));
  std::vector<std::vector<int32_t>> data(sessions, std::vector<int32_t>(len));
  for (auto& d : data) {
    for (auto& t : d) t = id(rng);
  }
  return data;
}

std::string BytesOf(absl::Span<const int32_t> ids) {
  std::string s(ids.size(), '\0');
  for (size_t i = 0; i < ids.size(); ++i) s[i] = static_cast<char>(ids[i]);
  return s;
}

class Load {
 public:
  Load(const std::string& target, int channels) {
    for (int c = 0; c < std::max(1, channels); ++c) {
      grpc::ChannelArguments args;
      args.SetInt("trams.load.channel", c);  // distinct args: one connection per channel
      stubs_.push_back(v1::TramsService::NewStub(
          grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args)));
    }
  }
  v1::TramsService::Stub* stub(int i) { return stubs_[static_cast<size_t>(i) % stubs_.size()].get(); }

  absl::StatusOr<v1::ModelInfo> Info() {
    grpc::ClientContext ctx;
    v1::ModelInfo info;
    grpc::Status s = stubs_[0]->GetModelInfo(&ctx, {}, &info);
    if (!s.ok()) return absl::UnavailableError(s.error_message());
    return info;
  }

  absl::Status CreateSessions(const std::vector<std::string>& ids, const Workload& w) {
    for (size_t i = 0; i < ids.size(); ++i) {
      grpc::ClientContext ctx;
      v1::CreateSessionRequest req;
      req.set_session_id(ids[i]);
      *req.mutable_memory() = w.memory_proto;
      req.set_segment_len(w.segment_len);
      v1::Session resp;
      grpc::Status s = stub(static_cast<int>(i))->CreateSession(&ctx, req, &resp);
      if (!s.ok()) return absl::InternalError(absl::StrCat("CreateSession ", ids[i], ": ", s.error_message()));
    }
    return absl::OkStatus();
  }
  void DeleteSessions(const std::vector<std::string>& ids) {
    for (size_t i = 0; i < ids.size(); ++i) {
      grpc::ClientContext ctx;
      v1::DeleteSessionRequest req;
      req.set_session_id(ids[i]);
      v1::DeleteSessionResponse resp;
      (void)stub(static_cast<int>(i))->DeleteSession(&ctx, req, &resp);
    }
  }

  template <class Reactor>
  absl::StatusOr<RunResult> Collect(std::vector<std::unique_ptr<Reactor>>& calls, Countdown& done) {
    const auto t0 = Clock::now();
    for (auto& c : calls) c->Go();
    done.Wait();
    RunResult r;
    Clock::time_point end = t0;
    for (auto& c : calls) {
      if (!c->timing.status.ok()) {
        return absl::InternalError(absl::StrCat("call failed: ", c->timing.status.error_message()));
      }
      end = std::max(end, c->timing.end);
      r.tokens += c->timing.tokens;
      for (size_t i = 0; i < c->timing.gaps.size(); ++i) (i == 0 ? r.first : r.steps).push_back(c->timing.gaps[i]);
    }
    r.seconds = Seconds(end - t0);
    return r;
  }

  absl::StatusOr<RunResult> Score(const std::vector<std::string>& ids, const std::vector<std::vector<int32_t>>& data,
                                  const Workload& w) {
    Countdown done(static_cast<int>(ids.size()));
    std::vector<std::unique_ptr<ScoreReactor>> calls;
    for (size_t i = 0; i < ids.size(); ++i) {
      std::vector<v1::ScoreRequest> messages;
      for (size_t at = 0; at < data[i].size(); at += static_cast<size_t>(w.segment_len)) {
        const auto chunk = absl::MakeConstSpan(data[i]).subspan(at, static_cast<size_t>(w.segment_len));
        v1::ScoreRequest m;
        if (at == 0) m.set_session_id(ids[i]);
        if (w.text) {
          m.set_text(BytesOf(chunk));
        } else {
          m.mutable_ids()->mutable_ids()->Add(chunk.begin(), chunk.end());
        }
        messages.push_back(std::move(m));
      }
      calls.push_back(std::make_unique<ScoreReactor>(stub(static_cast<int>(i)), ids[i], std::move(messages), &done));
    }
    return Collect(calls, done);
  }

  absl::StatusOr<RunResult> Generate(const std::vector<std::string>& ids,
                                     const std::vector<std::vector<int32_t>>& prompts, const Workload& w,
                                     uint64_t seed) {
    Countdown done(static_cast<int>(ids.size()));
    std::vector<std::unique_ptr<GenerateReactor>> calls;
    for (size_t i = 0; i < ids.size(); ++i) {
      v1::GenerateRequest req;
      req.set_session_id(ids[i]);
      if (w.text) {
        req.set_prompt_text(BytesOf(prompts[i]));
      } else {
        req.mutable_prompt_ids()->mutable_ids()->Add(prompts[i].begin(), prompts[i].end());
      }
      req.set_max_tokens(w.gen_tokens);
      req.set_temperature(1.0f);
      req.set_seed(seed + i);
      calls.push_back(std::make_unique<GenerateReactor>(stub(static_cast<int>(i)), req, &done));
    }
    return Collect(calls, done);
  }

 private:
  std::vector<std::unique_ptr<v1::TramsService::Stub>> stubs_;
};

// ---------------------------------------------------------------------------------------------
// In-process baseline: the same work straight on Engine::Forward.

absl::StatusOr<RunResult> EngineScore(engine::Engine& model, const std::vector<std::vector<int32_t>>& data,
                                      const Workload& w) {
  std::vector<std::unique_ptr<engine::EngineStream>> streams;
  for (size_t i = 0; i < data.size(); ++i) {
    auto s = model.NewStream(w.settings);
    if (!s.ok()) return s.status();
    streams.push_back(std::move(*s));
  }
  engine::OutputOptions o;
  o.selections = w.settings.mode == engine::MemoryMode::kTrams;  // as the server asks
  RunResult r;
  std::vector<engine::SegmentOutput> out;
  const auto t0 = Clock::now();
  for (int seg = 0; seg < w.score_segments; ++seg) {
    std::vector<engine::SegmentInput> in;
    for (size_t i = 0; i < data.size(); ++i) {
      in.push_back({streams[i].get(),
                    absl::MakeConstSpan(data[i]).subspan(static_cast<size_t>(seg * w.segment_len),
                                                         static_cast<size_t>(w.segment_len)),
                    o});
    }
    const auto s0 = Clock::now();
    absl::Status st = model.Forward(in, &out);
    if (!st.ok()) return st;
    (seg == 0 ? r.first : r.steps).push_back(Seconds(Clock::now() - s0));
    r.tokens += static_cast<int64_t>(data.size()) * w.segment_len;
  }
  r.seconds = Seconds(Clock::now() - t0);
  return r;
}

absl::StatusOr<RunResult> EngineGenerate(engine::Engine& model, const std::vector<std::vector<int32_t>>& prompts,
                                         const Workload& w, uint64_t seed) {
  const size_t n = prompts.size();
  std::vector<std::unique_ptr<engine::EngineStream>> streams;
  std::vector<engine::Sampler> samplers;
  for (size_t i = 0; i < n; ++i) {
    auto s = model.NewStream(w.settings);
    if (!s.ok()) return s.status();
    streams.push_back(std::move(*s));
    engine::SamplingParams p;
    p.temperature = 1.0f;
    p.seed = seed + i;
    samplers.emplace_back(p);
  }
  const bool trams = w.settings.mode == engine::MemoryMode::kTrams;
  RunResult r;
  std::vector<engine::SegmentOutput> out;
  const auto t0 = Clock::now();
  // The prompt, in segments; the next-token distribution after its last one.
  const size_t plen = prompts[0].size();
  for (size_t at = 0; at < plen; at += static_cast<size_t>(w.segment_len)) {
    const size_t take = std::min(plen - at, static_cast<size_t>(w.segment_len));
    std::vector<engine::SegmentInput> in;
    for (size_t i = 0; i < n; ++i) {
      engine::OutputOptions o;
      o.selections = trams;
      o.next_distribution = at + take == plen;
      in.push_back({streams[i].get(), absl::MakeConstSpan(prompts[i]).subspan(at, take), o});
    }
    absl::Status st = model.Forward(in, &out);
    if (!st.ok()) return st;
  }
  r.first.push_back(Seconds(Clock::now() - t0));
  // Each token: sample it, then feed it (with the next distribution unless it was the last).
  std::vector<std::vector<int32_t>> tokens(n, std::vector<int32_t>(1));
  for (int t = 0; t < w.gen_tokens; ++t) {
    const auto s0 = Clock::now();
    std::vector<engine::SegmentInput> in;
    for (size_t i = 0; i < n; ++i) {
      tokens[i][0] = samplers[i].Sample(out[i].next_logprobs);
      engine::OutputOptions o;
      o.selections = trams;
      o.next_distribution = t + 1 < w.gen_tokens;
      in.push_back({streams[i].get(), tokens[i], o});
    }
    absl::Status st = model.Forward(in, &out);
    if (!st.ok()) return st;
    if (t > 0) r.steps.push_back(Seconds(Clock::now() - s0));
    r.tokens += static_cast<int64_t>(n);
  }
  r.seconds = Seconds(Clock::now() - t0);
  return r;
}

// ---------------------------------------------------------------------------------------------

struct Row {
  int sessions = 0;
  std::string mode;
  RunResult grpc, engine;
  double mean_batch = std::nan("");
  double forwards = std::nan("");
  double server_forward_s = std::nan("");  // mean wall time of one engine forward inside the server
};

int Main() {
  const std::string server_flag = absl::GetFlag(FLAGS_server);
  const std::string model_dir = absl::GetFlag(FLAGS_model);
  engine::DeviceChoice choice;
  choice.device = absl::GetFlag(FLAGS_device);
  choice.threads = absl::GetFlag(FLAGS_threads);

  // The model (shared by the in-process server and the baseline), on the chosen device.
  engine::OpenedEngine opened;
  std::string tokenizer_dir = model_dir;
  std::filesystem::path temp_dir;
  if (!model_dir.empty()) {
    auto m = engine::OpenEngine(model_dir, choice);
    if (!m.ok()) {
      std::fprintf(stderr, "cannot load %s: %s\n", model_dir.c_str(), std::string(m.status().message()).c_str());
      return 1;
    }
    opened = std::move(*m);
  } else {
    engine::ModelConfig c;
    c.n_layer = absl::GetFlag(FLAGS_n_layer);
    c.d_model = c.d_embed = absl::GetFlag(FLAGS_d_model);
    c.n_head = absl::GetFlag(FLAGS_n_head);
    c.d_head = absl::GetFlag(FLAGS_d_head);
    c.d_inner = absl::GetFlag(FLAGS_d_inner);
    c.vocab_size = absl::GetFlag(FLAGS_vocab);
    c.div_val = 1;
    c.tie_projs = {false};
    c.untie_r = true;
    c.same_length = true;
    c.clamp_len = -1;
    if (absl::Status s = c.Validate(); !s.ok()) {
      std::fprintf(stderr, "bad random model shape: %s\n", std::string(s.message()).c_str());
      return 2;
    }
    auto m = engine::OpenEngine(engine::RandomModelWeights(c, absl::GetFlag(FLAGS_seed)), choice);
    if (!m.ok()) {
      std::fprintf(stderr, "cannot open the engine: %s\n", std::string(m.status().message()).c_str());
      return 1;
    }
    opened = std::move(*m);
    if (c.vocab_size == 256) {
      // A byte tokenizer so that the sessions take text, like the bundled byte model will.
      temp_dir = std::filesystem::temp_directory_path() / absl::StrCat("trams-load-", getpid());
      std::filesystem::create_directories(temp_dir);
      std::ofstream(temp_dir / "tokenizer.json") << "{\"type\": \"byte\"}\n";
      tokenizer_dir = temp_dir.string();
    }
  }
  engine::Engine* model = opened.engine.get();
  const engine::ModelConfig& config = model->config();

  Workload w;
  w.segment_len = absl::GetFlag(FLAGS_segment_len);
  w.score_segments = absl::GetFlag(FLAGS_score_segments);
  w.gen_tokens = absl::GetFlag(FLAGS_gen_tokens);
  w.prompt_len = absl::GetFlag(FLAGS_prompt_len);
  w.vocab = config.vocab_size;
  auto settings = engine::MakeTramsSettings(absl::GetFlag(FLAGS_mode), absl::GetFlag(FLAGS_mem_len), -1,
                                    absl::GetFlag(FLAGS_topk), absl::GetFlag(FLAGS_remain), {}, "code", config);
  if (!settings.ok()) {
    std::fprintf(stderr, "bad memory settings: %s\n", std::string(settings.status().message()).c_str());
    return 2;
  }
  w.settings = *settings;
  server::ToProto(w.settings, &w.memory_proto);
  if (w.segment_len < 1 || w.score_segments < 1 || w.gen_tokens < 1 || w.prompt_len < 1) {
    std::fprintf(stderr, "--segment_len, --score_segments, --gen_tokens and --prompt_len must be >= 1\n");
    return 2;
  }

  // The server.
  std::unique_ptr<server::ServerApp> app;
  std::string target = server_flag, metrics = absl::GetFlag(FLAGS_metrics);
  if (server_flag.empty()) {
    server::ServerOptions o;
    o.model_dir = tokenizer_dir;
    o.listen = "127.0.0.1:0";
    o.metrics_listen = "127.0.0.1:0";
    o.defaults.memory = w.settings;
    o.defaults.segment_len = w.segment_len;
    o.scheduler.batch_wait_us = absl::GetFlag(FLAGS_batch_wait_us);
    auto started = server::ServerApp::Start(o, std::move(opened.engine));  // `model` stays valid: the app owns it
    if (!started.ok()) {
      std::fprintf(stderr, "cannot start the server: %s\n", std::string(started.status().message()).c_str());
      return 1;
    }
    app = std::move(*started);
    target = absl::StrCat("127.0.0.1:", app->grpc_port());
    metrics = absl::StrCat("127.0.0.1:", app->metrics_port());
  }
  Load load(target, absl::GetFlag(FLAGS_channels));
  auto info = load.Info();
  if (!info.ok()) {
    std::fprintf(stderr, "GetModelInfo on %s: %s\n", target.c_str(), std::string(info.status().message()).c_str());
    return 1;
  }
  w.text = info->tokenizer() == "byte";
  if (info->n_layer() != config.n_layer || info->d_model() != config.d_model || info->vocab_size() != config.vocab_size) {
    std::fprintf(stderr, "warning: the server's model (%d layers, d %d, vocab %lld) differs from the baseline's\n",
                 info->n_layer(), info->d_model(), static_cast<long long>(info->vocab_size()));
  }

  std::vector<int> session_counts;
  for (absl::string_view p : absl::StrSplit(absl::GetFlag(FLAGS_sessions), ',', absl::SkipEmpty())) {
    int n;
    if (!absl::SimpleAtoi(p, &n) || n < 1) {
      std::fprintf(stderr, "--sessions: bad '%s'\n", std::string(p).c_str());
      return 2;
    }
    session_counts.push_back(n);
  }
  std::vector<std::string> modes = absl::StrSplit(absl::GetFlag(FLAGS_modes), ',', absl::SkipEmpty());
  const int rounds = std::max(1, absl::GetFlag(FLAGS_rounds));

  std::printf("trams-load: %s server at %s; model %s (%d layers, d %d, %dx%d heads, d_inner %d, vocab %lld), "
              "device %s, engine threads %d\n",
              server_flag.empty() ? "in-process" : "external", target.c_str(),
              model_dir.empty() ? "random weights" : model_dir.c_str(), config.n_layer, config.d_model,
              config.n_head, config.d_head, config.d_inner, static_cast<long long>(config.vocab_size),
              model->device().c_str(), choice.threads);
  std::printf("memory %s M=%d topk=%d remain=%d; n=%d; score %d segments/session; generate %d-token prompt + %d "
              "tokens/session; %s input; %d channel(s); best of %d round(s)\n\n",
              std::string(engine::MemoryModeName(w.settings.mode)).c_str(), w.settings.mem_len, w.settings.topk,
              w.settings.remain, w.segment_len, w.score_segments, w.prompt_len, w.gen_tokens,
              w.text ? "text" : "token-id", absl::GetFlag(FLAGS_channels), rounds);
  std::fflush(stdout);

  std::mt19937_64 rng(absl::GetFlag(FLAGS_seed));
  int run_id = 0;
  auto one_run = [&](int n, const std::string& mode, Row* row) -> absl::Status {
    std::vector<std::string> ids;
    for (int i = 0; i < n; ++i) ids.push_back(absl::StrCat("load-", run_id, "-", i));
    ++run_id;
    const bool score = mode == "score";
    const auto data = RandomData(n, score ? w.score_segments * w.segment_len : w.prompt_len, w.vocab, rng);
    const uint64_t seed = rng();
    // gRPC.
    if (absl::Status s = load.CreateSessions(ids, w); !s.ok()) return s;
    const auto before = ScrapeServerStats(metrics);
    auto g = score ? load.Score(ids, data, w) : load.Generate(ids, data, w, seed);
    const auto after = ScrapeServerStats(metrics);
    load.DeleteSessions(ids);
    if (!g.ok()) return g.status();
    // In-process.
    auto e = score ? EngineScore(*model, data, w) : EngineGenerate(*model, data, w, seed);
    if (!e.ok()) return e.status();
    if (g->tokens_per_s() > row->grpc.tokens_per_s()) {
      row->grpc = std::move(*g);
      if (before && after && after->batch_count > before->batch_count) {
        row->forwards = after->batch_count - before->batch_count;
        row->mean_batch = (after->batch_sum - before->batch_sum) / row->forwards;
        row->server_forward_s = (after->forward_sum - before->forward_sum) / row->forwards;
      }
    }
    if (e->tokens_per_s() > row->engine.tokens_per_s()) row->engine = std::move(*e);
    return absl::OkStatus();
  };

  // Warm-up (not reported): threads, allocations, connections.
  {
    Row warm;
    for (const std::string& mode : modes) {
      if (absl::Status s = one_run(std::min(4, session_counts.empty() ? 1 : session_counts.front()), mode, &warm);
          !s.ok()) {
        std::fprintf(stderr, "warm-up %s: %s\n", mode.c_str(), std::string(s.message()).c_str());
        return 1;
      }
    }
  }

  std::printf("%8s %-8s %11s %12s %6s %8s %8s %8s %9s %9s %6s %8s\n", "sessions", "mode", "gRPC tok/s",
              "engine tok/s", "ratio", "p50 ms", "p99 ms", "first ms", "engine ms", "srv fwd ms", "batch", "forwards");
  std::vector<Row> rows;
  for (int n : session_counts) {
    for (const std::string& mode : modes) {
      if (mode != "score" && mode != "generate") {
        std::fprintf(stderr, "--modes: unknown '%s'\n", mode.c_str());
        return 2;
      }
      Row row;
      row.sessions = n;
      row.mode = mode;
      for (int r = 0; r < rounds; ++r) {
        if (absl::Status s = one_run(n, mode, &row); !s.ok()) {
          std::fprintf(stderr, "%d sessions %s: %s\n", n, mode.c_str(), std::string(s.message()).c_str());
          return 1;
        }
      }
      const double ratio = row.engine.tokens_per_s() > 0 ? row.grpc.tokens_per_s() / row.engine.tokens_per_s() : 0;
      std::printf("%8d %-8s %11.0f %12.0f %6.2f %8.2f %8.2f %8.2f %9.2f %10.2f %6.1f %8.0f\n", n, mode.c_str(),
                  row.grpc.tokens_per_s(), row.engine.tokens_per_s(), ratio, 1e3 * Percentile(row.grpc.steps, 0.5),
                  1e3 * Percentile(row.grpc.steps, 0.99), 1e3 * Percentile(row.grpc.first, 0.5),
                  1e3 * Percentile(row.engine.steps, 0.5), 1e3 * row.server_forward_s, row.mean_batch, row.forwards);
      std::fflush(stdout);
      rows.push_back(std::move(row));
    }
  }

  auto find = [&](int n, const std::string& mode) -> const Row* {
    for (const Row& r : rows) {
      if (r.sessions == n && r.mode == mode) return &r;
    }
    return nullptr;
  };
  std::printf("\n");
  if (const Row *g1 = find(1, "generate"), *g16 = find(16, "generate"); g1 && g16 && g1->grpc.tokens_per_s() > 0) {
    const double x = g16->grpc.tokens_per_s() / g1->grpc.tokens_per_s();
    const double e = g1->engine.tokens_per_s() > 0 ? g16->engine.tokens_per_s() / g1->engine.tokens_per_s() : 0;
    std::printf("generation, 16 sessions / 1 session over gRPC: %.2fx (target >= 4x): %s "
                "[in-process engine, batch 16 / batch 1: %.2fx]\n",
                x, x >= 4 ? "met" : "NOT met", e);
  }
  if (const Row* s16 = find(16, "score"); s16 && s16->engine.tokens_per_s() > 0) {
    const double x = s16->grpc.tokens_per_s() / s16->engine.tokens_per_s();
    std::printf("scoring, 16 sessions over gRPC / in-process batch 16: %.2f (target >= 0.9): %s\n", x,
                x >= 0.9 ? "met" : "NOT met");
  }

  if (app) app->Shutdown(std::chrono::milliseconds(0));
  if (!temp_dir.empty()) std::filesystem::remove_all(temp_dir);
  return 0;
}

}  // namespace
}  // namespace trams::bench

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "trams-load [--server HOST:PORT] [--model DIR] [--sessions 1,4,16,64] [--modes score,generate] ...\n"
      "Tokens/s and latency over gRPC with concurrent sessions, against Engine::Forward in-process.");
  trams::engine::SetFlagsUsageForMainFile(__FILE__);
  absl::ParseCommandLine(argc, argv);
  return trams::bench::Main();
}
