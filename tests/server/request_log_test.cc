// Request ids and the request log (issue 12) over real gRPC: every call gets an id in its initial
// metadata (the client's x-request-id when usable), every error message ends in it, and the server writes
// one JSON line per call with the method, tenant, session, code, tokens and duration. The log is read
// from the process's own stderr, redirected to a file for the test.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>
#include <thread>
#include <string>
#include <vector>

#include "server/auth_keys.h"
#include "server/log.h"
#include "server/request_record.h"
#include "tests/server/keyed_channel.h"
#include "tests/server/server_fixture.h"

namespace trams::server::test {
namespace {

namespace fs = std::filesystem;

TEST(LogLevelTest, ParsesNamesAndFiltersBelowTheMinimum) {
  EXPECT_EQ(ParseLogLevel("debug"), LogLevel::kDebug);
  EXPECT_EQ(ParseLogLevel("warning"), LogLevel::kWarning);
  EXPECT_EQ(ParseLogLevel("off"), LogLevel::kOff);
  EXPECT_EQ(ParseLogLevel("INFO"), std::nullopt);
  EXPECT_EQ(ParseLogLevel("warn"), std::nullopt);
  SetMinLogLevel(LogLevel::kWarning);
  EXPECT_FALSE(LogEnabled(LogLevel::kInfo));
  EXPECT_TRUE(LogEnabled(LogLevel::kError));
  EXPECT_FALSE(LogEnabled(LogLevel::kOff)) << "off is never a line's level";
  SetMinLogLevel(LogLevel::kInfo);
  EXPECT_TRUE(LogEnabled(LogLevel::kInfo));
  EXPECT_FALSE(LogEnabled(LogLevel::kDebug));
}

TEST(RequestIdTest, OnlyShortPlainTokensAreKept) {
  EXPECT_TRUE(IsUsableRequestId("0123456789abcdef"));
  EXPECT_TRUE(IsUsableRequestId("trace-42.a:b_C"));
  EXPECT_TRUE(IsUsableRequestId(std::string(64, 'x')));
  for (const std::string& bad : {std::string(), std::string(65, 'x'), std::string("has space"),
                                 std::string("quote\""), std::string("new\nline"), std::string("caf\xc3\xa9")}) {
    EXPECT_FALSE(IsUsableRequestId(bad)) << bad;
  }
}

// stderr into a file while alive; Lines() are the JSON objects written so far.
class StderrCapture {
 public:
  StderrCapture() : path_(fs::temp_directory_path() / ("trams-request-log-" + std::to_string(::getpid()))) {
    std::fflush(stderr);
    saved_ = ::dup(2);
    FILE* f = std::fopen(path_.c_str(), "w");
    ::dup2(::fileno(f), 2);
    std::fclose(f);
  }
  ~StderrCapture() {
    std::fflush(stderr);
    ::dup2(saved_, 2);
    ::close(saved_);
    fs::remove(path_);
  }
  std::vector<nlohmann::json> Lines() const {
    std::fflush(stderr);
    std::vector<nlohmann::json> out;
    std::ifstream in(path_);
    for (std::string line; std::getline(in, line);) {
      nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
      EXPECT_FALSE(j.is_discarded()) << "not one JSON object: " << line;
      if (!j.is_discarded()) out.push_back(j);
    }
    return out;
  }
  // The request line with this id; null when there is none (yet: a streaming call logs as it finishes,
  // which may be just after the client saw the status).
  nlohmann::json RequestLine(const std::string& id) const {
    for (int attempt = 0; attempt < 200; ++attempt) {
      for (const nlohmann::json& j : Lines()) {
        if (j.value("msg", "") == "request" && j.value("request_id", "") == id) return j;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return nullptr;
  }

 private:
  const fs::path path_;
  int saved_ = -1;
};

std::string ServerRequestId(const grpc::ClientContext& ctx) {
  const auto& md = ctx.GetServerInitialMetadata();
  auto it = md.find(kRequestIdMetadata);
  return it == md.end() ? "" : std::string(it->second.data(), it->second.size());
}

const std::regex kServerPickedId("[0-9a-f]{16}");

class RequestLogTest : public ServerTest {
 protected:
  void TearDown() override {
    SetRequestLogLevel(LogLevel::kInfo);
    SetMinLogLevel(LogLevel::kInfo);
  }
  // GetSession of an id that does not exist, sending `sent` as x-request-id unless empty.
  static grpc::Status MissingSession(const std::string& sent, std::string* id) {
    grpc::ClientContext ctx;
    SetDeadline(&ctx);
    if (!sent.empty()) ctx.AddMetadata(kRequestIdMetadata, sent);
    v1::GetSessionRequest req;
    req.set_session_id("no-such-session");
    v1::Session out;
    const grpc::Status st = stub()->GetSession(&ctx, req, &out);
    *id = ServerRequestId(ctx);
    return st;
  }
};

TEST_F(RequestLogTest, EveryCallHasAnIdThatItsErrorMessageNames) {
  grpc::ClientContext ctx;
  SetDeadline(&ctx);
  v1::ModelInfo info;
  ASSERT_TRUE(stub()->GetModelInfo(&ctx, v1::GetModelInfoRequest(), &info).ok());
  const std::string ok_id = ServerRequestId(ctx);
  EXPECT_TRUE(std::regex_match(ok_id, kServerPickedId)) << "'" << ok_id << "'";

  std::string id;
  const grpc::Status st = MissingSession("", &id);
  ASSERT_EQ(st.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_TRUE(std::regex_match(id, kServerPickedId)) << "'" << id << "'";
  EXPECT_NE(id, ok_id) << "two calls, one id";
  EXPECT_EQ(st.error_message(), "session 'no-such-session' does not exist [request " + id + "]");

  // A streaming call's failure names its id too (Score of a session that does not exist).
  grpc::ClientContext score_ctx;
  SetDeadline(&score_ctx);
  auto stream = stub()->Score(&score_ctx);
  v1::ScoreRequest req;
  req.set_session_id("no-such-session");
  req.set_text("abc");
  stream->Write(req);
  stream->WritesDone();
  v1::ScoreResponse resp;
  while (stream->Read(&resp)) {
  }
  const grpc::Status score = stream->Finish();
  EXPECT_EQ(score.error_code(), grpc::StatusCode::NOT_FOUND);
  const std::string score_id = ServerRequestId(score_ctx);
  EXPECT_TRUE(std::regex_match(score_id, kServerPickedId)) << "'" << score_id << "'";
  EXPECT_EQ(WithoutRequestId(score.error_message()) + " [request " + score_id + "]", score.error_message());
}

TEST_F(RequestLogTest, KeepsAUsableClientIdAndReplacesAnyOther) {
  std::string id;
  EXPECT_TRUE(Contains(MissingSession("trace-42.a:b_C", &id).error_message(), "[request trace-42.a:b_C]"));
  EXPECT_EQ(id, "trace-42.a:b_C");
  for (const std::string& bad : {std::string(65, 'x'), std::string("two words"), std::string("a,b")}) {
    const grpc::Status st = MissingSession(bad, &id);
    EXPECT_TRUE(std::regex_match(id, kServerPickedId)) << bad << " -> '" << id << "'";
    EXPECT_TRUE(Contains(st.error_message(), "[request " + id + "]")) << st.error_message();
  }
}

TEST_F(RequestLogTest, WritesOneLinePerCallWithItsFields) {
  StderrCapture log;
  grpc::ClientContext create_ctx;
  SetDeadline(&create_ctx);
  v1::CreateSessionRequest create;
  create.set_session_id("logged");
  *create.mutable_memory() = Trams(kM, kTopk, kRemain);
  create.set_segment_len(kN);
  v1::Session session;
  ASSERT_TRUE(stub()->CreateSession(&create_ctx, create, &session).ok());

  grpc::ClientContext score_ctx;
  SetDeadline(&score_ctx);
  score_ctx.AddMetadata(kRequestIdMetadata, "score-call-1");
  auto stream = stub()->Score(&score_ctx);
  v1::ScoreRequest req;
  req.set_session_id("logged");
  req.set_text(Text(0, 40));
  stream->Write(req);
  stream->WritesDone();
  v1::ScoreResponse resp;
  while (stream->Read(&resp)) {
  }
  ASSERT_TRUE(stream->Finish().ok());

  std::string missing_id;
  MissingSession("", &missing_id);

  const nlohmann::json created = log.RequestLine(ServerRequestId(create_ctx));
  ASSERT_FALSE(created.is_null()) << "no line for CreateSession";
  EXPECT_EQ(created["method"], "CreateSession");
  EXPECT_EQ(created["code"], "OK");
  EXPECT_EQ(created["session"], "logged");
  EXPECT_EQ(created["level"], "info");
  EXPECT_TRUE(created["duration_ms"].is_number()) << created;
  EXPECT_TRUE(Contains(created.value("peer", ""), "127.0.0.1")) << created;
  EXPECT_FALSE(created.contains("tenant")) << "no tenants without --auth_keys";
  EXPECT_FALSE(created.contains("error"));

  const nlohmann::json scored = log.RequestLine("score-call-1");
  ASSERT_FALSE(scored.is_null()) << "no line for Score";
  EXPECT_EQ(scored["method"], "Score");
  EXPECT_EQ(scored["tokens"], 39) << "40 bytes: every one but the first, which nothing predicts";
  EXPECT_EQ(scored["session"], "logged");

  const nlohmann::json missing = log.RequestLine(missing_id);
  ASSERT_FALSE(missing.is_null()) << "no line for the failed GetSession";
  EXPECT_EQ(missing["code"], "NOT_FOUND");
  EXPECT_EQ(missing["error"], "session 'no-such-session' does not exist");

  int lines = 0;
  for (const nlohmann::json& j : log.Lines()) lines += j.value("msg", "") == "request";
  EXPECT_EQ(lines, 3) << "one line per call";
}

TEST_F(RequestLogTest, TheRequestLevelDecidesWhetherLinesAreWritten) {
  StderrCapture log;
  std::string id;
  SetRequestLogLevel(LogLevel::kOff);
  MissingSession("level-off", &id);
  SetRequestLogLevel(LogLevel::kDebug);  // below the minimum (info)
  MissingSession("level-debug", &id);
  SetMinLogLevel(LogLevel::kDebug);
  MissingSession("level-debug-shown", &id);
  SetRequestLogLevel(LogLevel::kWarning);
  SetMinLogLevel(LogLevel::kError);
  MissingSession("level-warning-hidden", &id);
  const nlohmann::json shown = log.RequestLine("level-debug-shown");
  ASSERT_FALSE(shown.is_null());
  EXPECT_EQ(shown["level"], "debug");
  for (const nlohmann::json& j : log.Lines()) {
    const std::string rid = j.value("request_id", "");
    EXPECT_TRUE(rid.empty() || rid == "level-debug-shown") << "written: " << j;
  }
}

TEST(RequestLogTenantTest, NamesTheTenantAndTheIdItsClientKnows) {
  const std::string key = "alice-0123456789abcdef";
  const fs::path keys = fs::temp_directory_path() / ("trams-request-log-keys-" + std::to_string(::getpid()));
  std::ofstream(keys) << "alice sha256:" << AuthKeys::Sha256Hex(key) << "\n";
  ServerOptions options = TestOptions(kModel);
  options.auth_keys = keys.string();
  std::unique_ptr<TestServer> server = StartServer(options);
  ASSERT_NE(server, nullptr);
  auto alice = KeyedStub(server->address(), key);
  StderrCapture log;
  grpc::ClientContext ctx;
  SetDeadline(&ctx);
  ctx.AddMetadata(kRequestIdMetadata, "alice-create");
  v1::CreateSessionRequest req;
  req.set_session_id("doc");
  v1::Session s;
  ASSERT_TRUE(alice->CreateSession(&ctx, req, &s).ok());
  const nlohmann::json line = log.RequestLine("alice-create");
  ASSERT_FALSE(line.is_null());
  EXPECT_EQ(line["tenant"], "alice");
  EXPECT_EQ(line["session"], "doc") << "the id alice knows, not the server's scoped one";
  fs::remove(keys);
}

// A message may quote what a client sent: control bytes, quotes and bytes that are not UTF-8 must still make
// one line that parses, with valid UTF-8 kept as it is and every invalid byte as U+FFFD.
TEST(LogLineTest, EveryLineIsOneJsonObjectWhateverTheBytes) {
  StderrCapture log;
  const std::string nasty = std::string("a\"b\\c\nd\r\x01e caf\xc3\xa9 \xff\xc3 \xed\xa0\x80 \xf4\x90\x80\x80 ") + '\0' + "z";
  LogInfo("escape-check", {{"text", nasty}, {"n", 42}, {"x", 0.5}});
  const std::vector<nlohmann::json> lines = log.Lines();
  ASSERT_EQ(lines.size(), 1u) << "the newline inside must not split the line";
  const nlohmann::json& j = lines[0];
  EXPECT_EQ(j["msg"], "escape-check");
  EXPECT_EQ(j["text"], std::string("a\"b\\c\nd\r\x01e caf\xc3\xa9 \xef\xbf\xbd\xef\xbf\xbd ") +
                           "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd \xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd " +
                           std::string(1, '\0') + "z");
  EXPECT_EQ(j["n"], 42) << "integers are JSON numbers";
  EXPECT_EQ(j["x"], 0.5);
}

// Every eviction and every spill is a line of its own, naming the session and the reason.
TEST(EvictionLogTest, EvictionsAndSpillsAreLoggedWithTheirReason) {
  for (const bool with_store : {false, true}) {
    SCOPED_TRACE(with_store ? "spill to a store" : "evict");
    const fs::path dir = fs::temp_directory_path() / ("trams-eviction-log-" + std::to_string(::getpid()));
    ServerOptions options = TestOptions(kModel);
    options.limits.max_sessions = 1;
    if (with_store) options.persistence.state_dir = dir.string();
    std::unique_ptr<TestServer> server = StartServer(options);
    ASSERT_NE(server, nullptr);
    StderrCapture log;
    ASSERT_TRUE(CreateSession(server->stub.get(), "first", Trams(kM, kTopk, kRemain), kN).ok());
    ASSERT_TRUE(CreateSession(server->stub.get(), "second", Trams(kM, kTopk, kRemain), kN).ok());
    const std::string expected = with_store ? "spilled a session to the store" : "evicted a session";
    int found = 0;
    for (const nlohmann::json& j : log.Lines()) {
      if (j.value("msg", "") != expected) continue;
      ++found;
      EXPECT_EQ(j.value("session", ""), "first");
      EXPECT_EQ(j.value("reason", ""), "max_sessions");
    }
    EXPECT_EQ(found, 1) << "one '" << expected << "' line";
    server.reset();
    fs::remove_all(dir);
  }
}

}  // namespace
}  // namespace trams::server::test
