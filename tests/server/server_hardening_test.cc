// Regression tests for crashes, data loss and wrong state found by trying the server as a new user and
// as an attacker (the hardening issue). Each test names the item it pins down; each failed on the server
// before its fix. Real gRPC over loopback against an in-process ServerApp, as in server_test.cc.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <grpcpp/generic/generic_stub.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <cstring>
#include <future>
#include <map>
#include <random>
#include <limits>

#include "engine/cuda/host_emulation.h"
#include "tests/server/server_test_util.h"
#include "tests/testing/status_matchers.h"

namespace trams::server::test {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using ::trams::status_matchers::StatusIs;

constexpr int kM = 24, kTopk = 4, kRemain = 8, kN = 8;
const char kModel[] = "adaptive_samelen";  // byte tokenizer, vocab 260, 3 layers, 3 heads

std::unique_ptr<TestServer> Start(ServerOptions options) {
  options.requests.max_generate_tokens = 1 << 30;  // so a Generate outlives whatever the test does
  return StartServer(options);
}

// A Generate that runs until cancelled, with its first answer read (so it holds its session).
struct RunningGenerate {
  grpc::ClientContext ctx;
  std::unique_ptr<grpc::ClientReader<v1::GenerateResponse>> reader;
  bool started = false;

  RunningGenerate(v1::TramsService::Stub* stub, const std::string& session) {
    SetDeadline(&ctx);
    v1::GenerateRequest g = MakeGenerate(session, 1 << 29, 0.8f);
    g.set_seed(5);
    reader = stub->Generate(&ctx, g);
    v1::GenerateResponse r;
    started = reader->Read(&r);
  }
  grpc::Status CancelAndFinish() {
    ctx.TryCancel();
    v1::GenerateResponse r;
    while (reader->Read(&r)) {
    }
    return reader->Finish();
  }
};

// grpc.health.v1.Health/Check over the wire, hand-encoded (the tests link no health stubs):
// 1 SERVING, 2 NOT_SERVING, -1 when the call failed.
int HealthStatus(const std::shared_ptr<grpc::Channel>& channel, const std::string& service) {
  grpc::GenericStub stub(channel);
  std::string request = std::string(1, '\x0a') + static_cast<char>(service.size()) + service;
  grpc::Slice slice(request);
  grpc::ByteBuffer in(&slice, 1), out;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  std::promise<grpc::Status> done;
  stub.UnaryCall(&ctx, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &in, &out,
                 [&](grpc::Status s) { done.set_value(s); });
  if (!done.get_future().get().ok()) return -1;
  std::vector<grpc::Slice> slices;
  if (!out.Dump(&slices).ok()) return -1;
  std::string bytes;
  for (const auto& s : slices) bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  if (bytes.empty()) return 0;  // proto3 default: UNKNOWN
  return bytes.size() == 2 && bytes[0] == '\x08' ? bytes[1] : -1;
}

// A loopback TCP port held open (listening) for the test's lifetime.
struct BusyPort {
  int fd = -1;
  int port = 0;
  BusyPort() {
    fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
    listen(fd, 1);
    socklen_t len = sizeof addr;
    getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
    port = ntohs(addr.sin_port);
  }
  ~BusyPort() { close(fd); }
};

// ---------------------------------------------------------------------------------------------
// Item 1: topk + remain overflowed int and passed validation; the first Score then aborted the process.
TEST(HardeningTest, MemorySizesThatOverflowAreInvalidAndTheServerLives) {
  auto server = Start(TestOptions(kModel));
  ASSERT_NE(server, nullptr);
  auto* stub = server->stub.get();
  const int kMax = std::numeric_limits<int32_t>::max();
  const std::vector<std::array<int, 3>> bad = {{400, kMax, 1}, {400, 1 << 30, 1 << 30}, {kMax, kMax, kMax},
                                               {400, kMax, kMax}};
  for (const auto& [mem_len, topk, remain] : bad) {
    const grpc::Status s = CreateSession(stub, "", Trams(mem_len, topk, remain), kN);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
        << "mem_len " << mem_len << " topk " << topk << " remain " << remain << ": " << Describe(s);
  }
  EXPECT_EQ(ListCount(stub), 0);
  ASSERT_TRUE(CreateSession(stub, "alive", Trams(kM, kTopk, kRemain), kN).ok());
  EXPECT_TRUE(ScoreText(stub, "alive", Text(0, 40)).status.ok());
}

// Item 2: eviction read the session's id after erasing its last reference (heap use-after-free); in
// Release builds, evicted sessions with long ids were reported as never having existed.
TEST(HardeningTest, EvictedSessionsWithLongIdsAreReportedEvicted) {
  ServerOptions options = TestOptions(kModel);
  options.limits.max_sessions = 1;
  auto server = Start(options);
  ASSERT_NE(server, nullptr);
  auto* stub = server->stub.get();
  std::string previous;
  for (int i = 0; i < 5; ++i) {
    const std::string id = "a-session-id-well-over-fifteen-characters-" + std::to_string(i);
    ASSERT_TRUE(CreateSession(stub, id, Trams(kM, kTopk, kRemain), kN).ok());
    if (!previous.empty()) {
      v1::Session s;
      const grpc::Status get = GetSession(stub, previous, &s);
      EXPECT_THAT(get, StatusIs(grpc::StatusCode::NOT_FOUND,
                                AllOf(HasSubstr("evicted (least recently used)"),
                                      HasSubstr(previous)))) << Describe(get);
    }
    previous = id;
  }
}

// Item 3: every failed start crashed in ~ServerApp (a null service). Each must be an error, nothing else.
TEST(HardeningTest, FailedStartsAreErrorsNotCrashes) {
  BusyPort busy;
  ServerOptions metrics_busy = TestOptions(kModel);
  metrics_busy.metrics_listen = "127.0.0.1:" + std::to_string(busy.port);
  absl::StatusOr<std::unique_ptr<ServerApp>> app = ServerApp::Start(metrics_busy);
  EXPECT_FALSE(app.ok());
  EXPECT_TRUE(Contains(std::string(app.status().message()), metrics_busy.metrics_listen)) << app.status();

  ServerOptions no_model = TestOptions(kModel);
  no_model.model_dir = std::string(TRAMS_TEST_DATA_DIR) + "/no/such/model";
  app = ServerApp::Start(no_model);
  EXPECT_FALSE(app.ok());

  ServerOptions listen_busy = TestOptions(kModel);
  listen_busy.listen = "127.0.0.1:" + std::to_string(busy.port);
  app = ServerApp::Start(listen_busy);
  EXPECT_FALSE(app.ok());
  EXPECT_TRUE(Contains(std::string(app.status().message()), listen_busy.listen)) << app.status();
}

// Item 12: bad addresses were accepted (":99999" served on a random port), and SO_REUSEPORT let a second
// server share a port (one address, two session stores).
TEST(HardeningTest, BadListenAddressesAreRefused) {
  for (const char* bad : {":99999", "127.0.0.1:99999", "127.0.0.1:9999999", "127.0.0.1:", "127.0.0.1",
                                 ":50051", "localhost:12ab", "[::1:5000", "::1:5000"}) {
    ServerOptions listen = TestOptions(kModel);
    listen.listen = bad;
    absl::StatusOr<std::unique_ptr<ServerApp>> app = ServerApp::Start(listen);
    EXPECT_EQ(app.status().code(), absl::StatusCode::kInvalidArgument) << "--listen " << bad << ": " << app.status();
    ServerOptions metrics = TestOptions(kModel);
    metrics.metrics_listen = bad;
    app = ServerApp::Start(metrics);
    EXPECT_EQ(app.status().code(), absl::StatusCode::kInvalidArgument) << "--metrics_listen " << bad;
  }
}

TEST(HardeningTest, ASecondServerOnABusyPortFails) {
  auto first = Start(TestOptions(kModel));
  ASSERT_NE(first, nullptr);
  ServerOptions second = TestOptions(kModel);
  second.listen = first->address();
  absl::StatusOr<std::unique_ptr<ServerApp>> app = ServerApp::Start(second);
  EXPECT_FALSE(app.ok()) << "a second server started on " << second.listen;
}

// Item 7: a session that cannot fit even in an empty budget evicted every idle session, then failed.
TEST(HardeningTest, ARequestThatCannotFitEvictsNobody) {
  const int64_t pool = ReportedPoolBytes(TestOptions(kModel), Trams(kM, kTopk, kRemain), kN);
  ASSERT_GT(pool, 0);
  ServerOptions options = TestOptions(kModel);
  options.limits.memory_budget_bytes = 3 * pool;
  auto server = Start(options);
  ASSERT_NE(server, nullptr);
  auto* stub = server->stub.get();
  ASSERT_TRUE(CreateSession(stub, "keep-a", Trams(kM, kTopk, kRemain), kN).ok());
  ASSERT_TRUE(CreateSession(stub, "keep-b", Trams(kM, kTopk, kRemain), kN).ok());

  // Over the whole budget: refused, nobody evicted.
  const grpc::Status huge = CreateSession(stub, "huge", Trams(4000, 10, 10), kN);
  EXPECT_THAT(huge, StatusIs(grpc::StatusCode::RESOURCE_EXHAUSTED,
                             HasSubstr("more than the whole memory budget"))) << Describe(huge);
  // Fits the budget but not beside a busy session: evicting the idle one alone would not do.
  ASSERT_TRUE(ScoreText(stub, "keep-a", Text(0, 20)).status.ok());
  RunningGenerate running(stub, "keep-a");  // holds keep-a: its pool + its undo reservation (2 pools)
  ASSERT_TRUE(running.started);
  const grpc::Status big = CreateSession(stub, "big", Trams(3 * kM, kTopk, kRemain), kN);
  EXPECT_EQ(big.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << Describe(big);
  v1::Session s;
  EXPECT_TRUE(GetSession(stub, "keep-b", &s).ok()) << "keep-b was evicted for a request that could not fit";
  EXPECT_FALSE(running.CancelAndFinish().ok());
  EXPECT_TRUE(GetSession(stub, "keep-a", &s).ok());
}

// Item 9: Get and List on a busy session reported position 0 and empty counters.
TEST(HardeningTest, BusySessionsReportTheirLastCommittedState) {
  auto server = Start(TestOptions(kModel));
  ASSERT_NE(server, nullptr);
  auto* stub = server->stub.get();
  ASSERT_TRUE(CreateSession(stub, "busy", Trams(kM, kTopk, kRemain), kN).ok());
  ASSERT_TRUE(ScoreText(stub, "busy", Text(0, 50)).status.ok());
  const v1::Session idle = WaitIdle(stub, "busy");
  ASSERT_EQ(idle.position(), 50);

  RunningGenerate running(stub, "busy");
  ASSERT_TRUE(running.started);
  v1::Session s;
  ASSERT_TRUE(GetSession(stub, "busy", &s).ok());
  EXPECT_TRUE(s.busy());
  EXPECT_EQ(StateOf(s), StateOf(idle));
  grpc::ClientContext ctx;
  SetDeadline(&ctx);
  v1::ListSessionsResponse list;
  ASSERT_TRUE(stub->ListSessions(&ctx, v1::ListSessionsRequest(), &list).ok());
  ASSERT_EQ(list.sessions_size(), 1);
  EXPECT_EQ(StateOf(list.sessions(0)), StateOf(idle));
  EXPECT_FALSE(running.CancelAndFinish().ok());
  EXPECT_EQ(StateOf(stub, "busy"), StateOf(idle)) << "the cancelled call rolled back";
}

// Item 10: DeleteSession right after a client cancel answered FAILED_PRECONDITION (the call was still
// unwinding). It must wait for the cancelled call and delete.
TEST(HardeningTest, DeleteRightAfterACancelDeletes) {
  auto server = Start(TestOptions(kModel));
  ASSERT_NE(server, nullptr);
  auto* stub = server->stub.get();
  for (int round = 0; round < 20; ++round) {
    const std::string id = "cancel-delete-" + std::to_string(round);
    ASSERT_TRUE(CreateSession(stub, id, Trams(kM, kTopk, kRemain), kN).ok());
    ASSERT_TRUE(ScoreText(stub, id, Text(0, 20)).status.ok());
    RunningGenerate running(stub, id);
    ASSERT_TRUE(running.started);
    running.ctx.TryCancel();
    const grpc::Status deleted = DeleteSession(stub, id);
    EXPECT_TRUE(deleted.ok()) << "round " << round << ": " << Describe(deleted);
    v1::GenerateResponse r;
    while (running.reader->Read(&r)) {
    }
    running.reader->Finish();
    v1::Session s;
    EXPECT_EQ(GetSession(stub, id, &s).error_code(), grpc::StatusCode::NOT_FOUND);
  }
  // A live call still keeps its session.
  ASSERT_TRUE(CreateSession(stub, "live", Trams(kM, kTopk, kRemain), kN).ok());
  ASSERT_TRUE(ScoreText(stub, "live", Text(0, 20)).status.ok());
  RunningGenerate live(stub, "live");
  ASSERT_TRUE(live.started);
  EXPECT_EQ(DeleteSession(stub, "live").error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  live.CancelAndFinish();
}

// Item 23: ExplainSelection on an XL session said it had not run a segment yet.
TEST(HardeningTest, ExplainOnAnXlSessionSaysXlSelectsNothing) {
  auto server = Start(TestOptions(kModel));
  ASSERT_NE(server, nullptr);
  auto* stub = server->stub.get();
  v1::MemorySettings xl;
  xl.set_mode(v1::MEMORY_MODE_XL);
  xl.set_mem_len(kM);
  ASSERT_TRUE(CreateSession(stub, "xl", xl, kN).ok());
  ASSERT_TRUE(ScoreText(stub, "xl", Text(0, 60)).status.ok());
  v1::ExplainSelectionResponse resp;
  const grpc::Status s = Explain(stub, "xl", &resp);
  EXPECT_THAT(s, StatusIs(grpc::StatusCode::FAILED_PRECONDITION, HasSubstr("mode 'xl'"))) << Describe(s);
  EXPECT_EQ(s.error_message().find("has not run a segment"), std::string::npos) << Describe(s);
}

// Item 24: the budget's capacity is exported, and eviction counters exist from the start.
TEST(HardeningTest, MetricsExportBudgetCapacityAndEvictionsFromZero) {
  ServerOptions options = TestOptions(kModel);
  options.limits.memory_budget_bytes = 123456789;
  auto server = Start(options);
  ASSERT_NE(server, nullptr);
  const std::string text = server->app->metrics().Text();
  EXPECT_TRUE(Contains(text, "trams_memory_budget_bytes 123456789"));
  for (const char* reason : {"memory_budget", "max_sessions", "idle_ttl"}) {
    EXPECT_TRUE(Contains(text, std::string("trams_sessions_evicted_total{reason=\"") + reason + "\"} 0"));
  }
}

// Item 8: a drain must say NOT_SERVING while it still answers health checks, refuse new work with
// UNAVAILABLE, and let running calls finish (before, the listener closed at once and about 1 running
// Generate in 20 ended with "Connection reset by peer").
TEST(HardeningTest, DrainLetsRunningCallsFinishWhileHealthSaysNotServing) {
  auto server = Start(TestOptions(kModel));
  ASSERT_NE(server, nullptr);
  auto* stub = server->stub.get();
  EXPECT_EQ(HealthStatus(server->channel, "trams.v1.TramsService"), 1);
  constexpr int kCalls = 8, kTokens = 300;
  for (int i = 0; i < kCalls; ++i) {
    ASSERT_TRUE(CreateSession(stub, "drain-" + std::to_string(i), Trams(kM, kTopk, kRemain), kN).ok());
  }
  std::vector<std::future<GenerateResult>> calls;
  std::atomic<int> started{0};
  for (int i = 0; i < kCalls; ++i) {
    calls.push_back(std::async(std::launch::async, [&, i] {
      v1::GenerateRequest g = MakeGenerate("drain-" + std::to_string(i), kTokens, 0.8f);
      g.set_seed(i);
      g.set_prompt_text("The drain ");
      grpc::ClientContext ctx;
      SetDeadline(&ctx);
      GenerateResult result;
      auto reader = stub->Generate(&ctx, g);
      v1::GenerateResponse r;
      while (reader->Read(&r)) {
        if (result.ids.empty()) ++started;
        for (const auto& t : r.tokens()) result.ids.push_back(t.id());
      }
      result.status = reader->Finish();
      return result;
    }));
  }
  while (started.load() < kCalls) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  auto drain = std::async(std::launch::async, [&] {
    server->app->Shutdown(std::chrono::seconds(15), std::chrono::milliseconds(500));
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  EXPECT_EQ(HealthStatus(server->channel, "trams.v1.TramsService"), 2) << "NOT_SERVING during the grace period";
  EXPECT_EQ(HealthStatus(server->channel, ""), 2);
  const grpc::Status late = CreateSession(stub, "too-late", Trams(kM, kTopk, kRemain), kN);
  EXPECT_EQ(late.error_code(), grpc::StatusCode::UNAVAILABLE) << Describe(late);
  for (auto& call : calls) {
    const GenerateResult r = call.get();
    EXPECT_TRUE(r.status.ok()) << Describe(r.status);
    EXPECT_EQ(r.ids.size(), static_cast<size_t>(kTokens));
  }
  drain.get();
}

// Item 13: a 1 MB session id was echoed whole in the error; ids are checked where every RPC reads
// them, and what a message quotes from a request is capped and printable.
TEST(HardeningTest, ErrorsQuoteClientInputCappedAndPrintable) {
  auto server = Start(TestOptions(kModel));
  ASSERT_NE(server, nullptr);
  auto* stub = server->stub.get();
  const std::string huge(1 << 20, 'x');
  const std::string control = "id\x1b[31mred\n";
  for (const std::string& id : {huge, control}) {
    v1::Session s;
    const grpc::Status get = GetSession(stub, id, &s);
    EXPECT_EQ(get.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_LT(get.error_message().size(), 300u);
    const grpc::Status create = CreateSession(stub, id, Trams(kM, kTopk, kRemain), kN);
    EXPECT_EQ(create.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_LT(create.error_message().size(), 300u);
    const ScoreResult score = ScoreText(stub, id, "abc");
    EXPECT_EQ(score.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_LT(score.status.error_message().size(), 300u);
    for (const std::string& message : {get.error_message(), create.error_message(), score.status.error_message()}) {
      for (char c : message) EXPECT_TRUE(c >= 0x20 || (c & 0x80)) << "control byte in: " << message;
    }
  }
  v1::Session ignored;
  EXPECT_TRUE(Contains(GetSession(stub, huge, &ignored).error_message(), "(1048576 bytes)"));
}

// Per-position log-probs of a sequence of Score calls: a later answer for a position (a provisional
// token answered again) replaces the earlier one.
struct Document {
  std::map<int64_t, float> logprob;
  std::map<int64_t, bool> provisional;
  void Add(const ScoreResult& r) {
    for (const auto& t : r.tokens) {
      logprob[t.position()] = t.has_logprob() ? t.logprob() : std::nanf("");
      provisional[t.position()] = t.provisional();
    }
  }
};

// Item 15: every half-close ran the partial tail as a segment of its own, so segment boundaries, and
// log-probs (by up to 3 nats), changed with how a document was split into calls. Any split must give
// one uninterrupted call's log-probs, bit-identically, and the same session state.
TEST(HardeningTest, AnySplitOfADocumentGivesTheLogProbsOfOneCall) {
  auto server = Start(TestOptions(kModel));
  ASSERT_NE(server, nullptr);
  auto* stub = server->stub.get();
  const std::string doc = Text(0, 300);
  ASSERT_TRUE(CreateSession(stub, "whole", Trams(kM, kTopk, kRemain), kN).ok());
  const ScoreResult whole_call = ScoreText(stub, "whole", doc);
  ASSERT_TRUE(whole_call.status.ok()) << Describe(whole_call.status);
  Document whole;
  whole.Add(whole_call);
  // 300 = 37 * 8 + 4: the last 4 tokens are provisional, the rest final.
  for (int64_t p = 0; p < 300; ++p) EXPECT_EQ(whole.provisional[p], p >= 296) << "position " << p;
  const v1::Session whole_state = WaitIdle(stub, "whole");

  std::mt19937 rng(7);
  for (int split = 0; split < 6; ++split) {
    const std::string id = "split-" + std::to_string(split);
    ASSERT_TRUE(CreateSession(stub, id, Trams(kM, kTopk, kRemain), kN).ok());
    Document parts;
    for (size_t at = 0; at < doc.size();) {
      const size_t len = std::min<size_t>(doc.size() - at, 1 + rng() % 23);
      // Text or ids, in one message or several: neither may matter.
      const ScoreResult r = split % 2 ? ScoreIds(stub, id, Bytes(doc.substr(at, len)), 1 + rng() % 5)
                                      : ScoreText(stub, id, doc.substr(at, len), 1 + rng() % 7);
      ASSERT_TRUE(r.status.ok()) << Describe(r.status);
      ASSERT_EQ(r.end_position(), static_cast<int64_t>(at + len));
      parts.Add(r);
      at += len;
    }
    ASSERT_EQ(parts.logprob.size(), whole.logprob.size());
    int differ = 0;
    for (const auto& [p, lp] : whole.logprob) {
      const float other = parts.logprob[p];
      if (std::memcmp(&lp, &other, sizeof lp) != 0) ++differ;
      EXPECT_EQ(parts.provisional[p], whole.provisional[p]) << "split " << split << ", position " << p;
    }
    EXPECT_EQ(differ, 0) << "split " << split << ": log-probs not bit-identical to one call";
    const v1::Session s = WaitIdle(stub, id);
    EXPECT_EQ(s.position(), whole_state.position());
    EXPECT_EQ(s.pool_tokens(), whole_state.pool_tokens());
    EXPECT_EQ(s.tokens_scored(), whole_state.tokens_scored());
    EXPECT_NEAR(s.nll_sum(), whole_state.nll_sum(), 1e-9 * std::abs(whole_state.nll_sum()));

    // Generation continues from the same state: the same seeded continuation.
    v1::GenerateRequest g = MakeGenerate(id, 20, 0.9f);
    g.set_seed(11);
    v1::GenerateRequest g_whole = g;
    g_whole.set_session_id("whole-" + std::to_string(split));
    ASSERT_TRUE(CreateSession(stub, g_whole.session_id(), Trams(kM, kTopk, kRemain), kN).ok());
    ASSERT_TRUE(ScoreText(stub, g_whole.session_id(), doc).status.ok());
    const GenerateResult a = RunGenerate(stub, g), b = RunGenerate(stub, g_whole);
    ASSERT_TRUE(a.status.ok() && b.status.ok()) << Describe(a.status) << " / " << Describe(b.status);
    EXPECT_EQ(a.ids, b.ids) << "split " << split;
    EXPECT_EQ(a.positions.front(), 300);
  }
}

// A failed call keeps the earlier provisional tail as it was.
TEST(HardeningTest, AFailedCallKeepsTheProvisionalTail) {
  auto server = Start(TestOptions(kModel));
  ASSERT_NE(server, nullptr);
  auto* stub = server->stub.get();
  ASSERT_TRUE(CreateSession(stub, "t", Trams(kM, kTopk, kRemain), kN).ok());
  ASSERT_TRUE(CreateSession(stub, "twin", Trams(kM, kTopk, kRemain), kN).ok());
  ASSERT_TRUE(ScoreText(stub, "t", Text(0, 21)).status.ok());
  ASSERT_TRUE(ScoreText(stub, "twin", Text(0, 21)).status.ok());
  const SessionState before = StateOf(stub, "t");
  EXPECT_EQ(before.position, 21);
  EXPECT_EQ(before.pool_tokens, 16) << "the 5-token tail is not in the pool";
  // Bad ids midway: the call fails and changes nothing.
  std::vector<v1::ScoreRequest> reqs = TextRequests("t", Text(21, 30), 10);
  reqs.push_back(IdChunk({999999}));
  const ScoreResult bad = RunScore(stub, reqs);
  EXPECT_EQ(bad.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(StateOf(stub, "t"), before);
  const ScoreResult a = ScoreText(stub, "t", Text(21, 40)), b = ScoreText(stub, "twin", Text(21, 40));
  ASSERT_EQ(a.tokens.size(), b.tokens.size());
  for (size_t i = 0; i < a.tokens.size(); ++i) {
    EXPECT_EQ(a.tokens[i].position(), b.tokens[i].position());
    EXPECT_EQ(a.tokens[i].logprob(), b.tokens[i].logprob()) << "position " << a.tokens[i].position();
  }
}

// The value of an unlabelled counter or gauge in the exposition text (-1: absent).
double MetricValue(const std::string& text, const std::string& name) {
  const size_t at = text.find("\n" + name + " ");
  if (at == std::string::npos) return -1;
  return std::stod(text.substr(at + name.size() + 2));
}

// A copy of the test model with a word tokenizer (vocab.txt: one symbol per line, 260 of them).
std::string WordModelDir() {
  namespace fs = std::filesystem;
  const fs::path dir = fs::temp_directory_path() / ("trams-word-model-" + std::to_string(getpid()));
  fs::create_directories(dir);
  for (const char* f : {"config.json", "model.safetensors"}) {
    fs::copy_file(fs::path(ModelDir(kModel)) / f, dir / f, fs::copy_options::overwrite_existing);
  }
  std::ofstream(dir / "tokenizer.json") << R"({"type": "word", "vocab_file": "vocab.txt"})";
  std::ofstream vocab(dir / "vocab.txt");
  vocab << "<unk>\n<eos>\n";
  for (int i = 2; i < 260; ++i) vocab << "w" << i << "\n";
  return dir.string();
}

// Item 18: with a word tokenizer, text without whitespace was buffered without limit (160 MiB taken in
// one call). The buffer is capped, and all calls' input buffers share a budget of their own.
TEST(HardeningTest, TextWithoutWordBoundariesIsRefusedNotBuffered) {
  ServerOptions options = TestOptions(kModel);
  options.model_dir = WordModelDir();
  options.requests.max_pending_text_bytes = 1 << 16;
  auto server = Start(options);
  ASSERT_NE(server, nullptr);
  auto* stub = server->stub.get();
  ASSERT_TRUE(CreateSession(stub, "words", Trams(kM, kTopk, kRemain), kN).ok());
  const SessionState before = StateOf(stub, "words");
  const ScoreResult r = ScoreText(stub, "words", std::string(1 << 20, 'w'), 1 << 14);
  EXPECT_THAT(r.status, StatusIs(grpc::StatusCode::INVALID_ARGUMENT,
                                 HasSubstr("without a word boundary"))) << Describe(r.status);
  EXPECT_EQ(StateOf(stub, "words"), before);
  const ScoreResult fine = ScoreText(stub, "words", "w2 w3 w4 w5 w6 w7 w8 w9 w10 w11 ");
  EXPECT_TRUE(fine.status.ok()) << Describe(fine.status);
  EXPECT_EQ(fine.tokens.size(), 10u);
  std::filesystem::remove_all(options.model_dir);

  // The shared budget of input buffers: a call whose chunk does not fit is refused.
  ServerOptions tight = TestOptions(kModel);
  tight.requests.input_buffer_budget_bytes = 1000;
  auto small = Start(tight);
  ASSERT_NE(small, nullptr);
  ASSERT_TRUE(CreateSession(small->stub.get(), "b", Trams(kM, kTopk, kRemain), kN).ok());
  const ScoreResult big = ScoreText(small->stub.get(), "b", Text(0, 2000));
  EXPECT_EQ(big.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << Describe(big.status);
  EXPECT_TRUE(ScoreText(small->stub.get(), "b", Text(0, 100), 50).status.ok());
  // Released when the calls are gone (a moment after their clients saw them end).
  double left = -1;
  for (int i = 0; i < 200 && left != 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    left = MetricValue(small->app->metrics().Text(), "trams_input_buffer_bytes");
  }
  EXPECT_EQ(left, 0);
}

// Items 17 and 19: a client that never read its answers made the server compute and queue all of them
// (RSS grew without bound, and such streams starved everyone else). The server must stop computing
// once a couple of answers wait to be sent, and keep serving other clients meanwhile.
TEST(HardeningTest, AClientThatDoesNotReadStopsTheComputationNotTheServer) {
  auto server = Start(TestOptions(kModel));
  ASSERT_NE(server, nullptr);
  auto* stub = server->stub.get();
  // The stalled clients take at most 64 KiB per stream into their transport (no window growth), so what
  // the server computes beyond that would pile up in the server.
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_HTTP2_BDP_PROBE, 0);
  args.SetInt(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, 64 << 10);
  auto slow_channel = grpc::CreateCustomChannel(server->address(), grpc::InsecureChannelCredentials(), args);
  auto slow_stub = v1::TramsService::NewStub(slow_channel);
  constexpr int kStalled = 4, kIds = 20000;
  struct Stalled {
    grpc::ClientContext ctx;
    std::unique_ptr<grpc::ClientReaderWriter<v1::ScoreRequest, v1::ScoreResponse>> stream;
    std::thread writer;
  };
  std::vector<std::unique_ptr<Stalled>> stalled;
  for (int i = 0; i < kStalled; ++i) {
    const std::string id = "stalled-" + std::to_string(i);
    ASSERT_TRUE(CreateSession(stub, id, Trams(kM, kTopk, kRemain), kN).ok());
    auto c = std::make_unique<Stalled>();
    SetDeadline(&c->ctx);
    c->stream = slow_stub->Score(&c->ctx);
    c->writer = std::thread([raw = c.get(), id] {
      std::vector<int32_t> ids(kIds);
      for (int k = 0; k < kIds; ++k) ids[k] = (k * 31 + 7) % 250;
      std::vector<v1::ScoreRequest> reqs = IdRequests(id, ids, 100);
      reqs.front().mutable_options()->set_alternatives(20);
      for (const auto& r : reqs) {
        if (!raw->stream->Write(r)) return;  // blocks once the server stops reading: that is the point
      }
      raw->stream->WritesDone();
    });
    stalled.push_back(std::move(c));
  }
  std::this_thread::sleep_for(std::chrono::seconds(2));
  const double scored_while_stalled = MetricValue(server->app->metrics().Text(), "trams_tokens_scored_total");

  // A normal client is served meanwhile.
  ASSERT_TRUE(CreateSession(stub, "normal", Trams(kM, kTopk, kRemain), kN).ok());
  const ScoreResult normal = ScoreText(stub, "normal", Text(0, 200));
  EXPECT_TRUE(normal.status.ok()) << Describe(normal.status);
  EXPECT_EQ(normal.tokens.size(), 200u);

  std::this_thread::sleep_for(std::chrono::seconds(1));
  const double scored_later = MetricValue(server->app->metrics().Text(), "trams_tokens_scored_total");
  for (auto& c : stalled) {
    c->ctx.TryCancel();
    c->writer.join();
    c->stream->Finish();
  }
  EXPECT_GE(scored_while_stalled, 0);
  EXPECT_LT(scored_while_stalled, kStalled * kIds / 4) << "the server computed answers nobody read";
  EXPECT_LT(scored_later - scored_while_stalled, 200 + kStalled * 8 * 4) << "stalled streams kept computing";
  std::printf("tokens scored for 4 stalled clients after 2 s: %.0f of %d sent\n", scored_while_stalled, kStalled * kIds);
}

// A device error in the middle of a forward (some pool rows already overwritten) fails the calls of that
// batch with INTERNAL and leaves each session exactly as it was: what it scores next equals what its twin,
// which never saw the fault, scores. (The scheduler used to run each segment of a failed batch again on
// its own, on the half-written pools, and the session went on silently wrong.) Runs on the emulated
// backend, which can inject the fault, whatever device the suite is under.
TEST(HardeningTest, ADeviceErrorMidForwardLeavesTheSessionAsItWas) {
  ServerOptions options = TestOptions(kModel);
  options.device.device = "emulated";
  auto server = StartServer(options);
  ASSERT_NE(server, nullptr);
  auto* stub = server->stub.get();
  for (const char* id : {"faulty", "twin"}) {
    ASSERT_TRUE(CreateSession(stub, id, Trams(kM, kTopk, kRemain), kN).ok());
    const ScoreResult r = ScoreText(stub, id, Text(0, 5 * kN));
    ASSERT_TRUE(r.status.ok()) << Describe(r.status);
  }
  const SessionState before = StateOf(stub, "faulty");
  cuda::InjectEmulatedFault(1);  // past layer 0's pool append, the next matrix product fails
  const ScoreResult failed = ScoreText(stub, "faulty", Text(300, 2 * kN));
  cuda::InjectEmulatedFault(-1);
  EXPECT_EQ(failed.status.error_code(), grpc::StatusCode::INTERNAL) << Describe(failed.status);
  EXPECT_EQ(StateOf(stub, "faulty"), before);
  const ScoreResult after = ScoreText(stub, "faulty", Text(300, 3 * kN));
  const ScoreResult twin = ScoreText(stub, "twin", Text(300, 3 * kN));
  ASSERT_TRUE(after.status.ok()) << Describe(after.status);
  ASSERT_TRUE(twin.status.ok()) << Describe(twin.status);
  const std::vector<float> got = after.logprobs(), want = twin.logprobs();
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_TRUE(got[i] == want[i] || (std::isnan(got[i]) && std::isnan(want[i])))
        << "token " << i << ": " << got[i] << " vs the twin's " << want[i];
  }
}

// Idle sessions expire in every server, not only in trams-server's main(): the expiry runs in ServerApp
// (it used to be a thread of main.cc, so in-process servers (tests, trams-load) never expired anything).
TEST(HardeningTest, IdleSessionsExpireInAnInProcessServer) {
  ServerOptions options = TestOptions(kModel);
  options.limits.idle_ttl_seconds = 1;
  auto server = StartServer(options);
  ASSERT_NE(server, nullptr);
  auto* stub = server->stub.get();
  ASSERT_TRUE(CreateSession(stub, "idle", Trams(kM, kTopk, kRemain), kN).ok());
  v1::Session s;
  grpc::Status got = GetSession(stub, "idle", &s);
  ASSERT_TRUE(got.ok()) << Describe(got);
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (got.ok() && std::chrono::steady_clock::now() < give_up) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    got = GetSession(stub, "idle", &s);
  }
  EXPECT_THAT(got, StatusIs(grpc::StatusCode::NOT_FOUND, HasSubstr("expired after 1 s idle"))) << Describe(got);
}

}  // namespace
}  // namespace trams::server::test
