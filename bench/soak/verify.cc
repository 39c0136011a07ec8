// Replay of the recorded sessions and comparison of their log-probs (see verify.h).
#include "bench/soak/verify.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <mutex>
#include <random>
#include <thread>

#include "absl/strings/str_cat.h"
#include "bench/soak/soak_calls.h"

namespace trams::soak {
namespace {

using Clock = std::chrono::steady_clock;

// One replay call: `n` tokens from `start` as a Score call of ids, or (generate >= 0) the recorded
// Generate request again, whose sampled tokens must come out the same.
struct ReplayCall {
  int64_t start;
  int32_t n;
  int32_t generate = -1;
  int32_t prompt = 0;
};

// The calls that rebuild the session's segments: a Score call as it was; a Generate call as the same
// Generate request (same seed, same state: same tokens), or with `generate_as_score` as its prompt in
// one Score call and then each sampled token in a Score call of its own (how the server fed them).
// `whole`: every run of consecutive Score calls as one call (Generate calls as themselves).
std::vector<ReplayCall> Plan(const SessionTruth& s, bool whole, bool generate_as_score) {
  std::vector<ReplayCall> plan;
  for (const CallSplit& c : s.calls) {
    if (c.kind == CallKind::kScore) {
      ReplayCall* last = plan.empty() ? nullptr : &plan.back();
      if (whole && last != nullptr && last->generate < 0 && last->start + last->n == c.start) {
        last->n += c.n;  // one call for every run of Score calls
      } else {
        plan.push_back({c.start, c.n});
      }
    } else if (whole) {
      plan.push_back({c.start, c.n, c.generate, c.prompt});
    } else if (!generate_as_score) {
      plan.push_back({c.start, c.n, c.generate, c.prompt});
    } else {
      if (c.prompt > 0) plan.push_back({c.start, c.prompt});
      for (int32_t i = c.prompt; i < c.n; ++i) plan.push_back({c.start + i, 1});
    }
  }
  return plan;
}

bool BitEqual(float a, float b) { return std::memcmp(&a, &b, sizeof a) == 0; }

class Replayer {
 public:
  Replayer(std::shared_ptr<grpc::Channel> channel, Stats* stats, CancelTimer* timer, const VerifyOptions& o,
           uint64_t seed)
      : stub_(v1::TramsService::NewStub(std::move(channel))), stats_(stats), options_(o), rng_(seed) {
    cc_.stub = stub_.get();
    cc_.timer = timer;
    cc_.safety_deadline = o.call_timeout;
  }

  // Replays one session and merges what it found into `result` (under `mu`).
  void Run(const SessionTruth& s, std::mutex* mu, VerifyResult* result) {
    Local local;
    const std::string id = s.id + ".replay";
    if (!Create(s, id, &local)) return Merge(local, true, ModeName(s), mu, result);
    // The last value the replay reported for each position (a later call may answer a tail again).
    std::vector<SeenToken> got(s.tokens.size());
    std::vector<bool> answered(s.tokens.size(), false);
    bool complete = true;
    for (const ReplayCall& call : Plan(s, options_.replay_whole, options_.generate_as_score)) {
      if (!ReplayOne(s, id, call, &got, &answered, &local)) {
        complete = false;
        break;
      }
    }
    Delete(id);
    if (complete) Compare(s, got, answered, &local);
    if (local.corrupt) local.problems.push_back(History(s, local.first_bad));
    Merge(local, local.corrupt, ModeName(s), mu, result);
  }

 private:
  struct Local {
    bool corrupt = false;
    int64_t tokens = 0, compared = 0, exact = 0, over = 0;
    double max_diff = 0;
    std::string max_where;
    std::array<int64_t, 5> buckets{};
    std::vector<std::string> problems;
    int64_t first_bad = -1;  // position
    void Fail(std::string what, int64_t position) {
      if (!corrupt) first_bad = position;
      corrupt = true;
      if (problems.size() < 3) problems.push_back(std::move(what));
    }
  };

  bool Create(const SessionTruth& s, const std::string& id, Local* local) {
    v1::CreateSessionRequest req = s.create;
    req.set_session_id(id);
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + options_.call_timeout);
    ctx.AddMetadata("x-session-id", id);
    v1::Session resp;
    const auto t0 = Clock::now();
    grpc::Status st = stub_->CreateSession(&ctx, req, &resp);
    stats_->Record(Method::kCreateSession, st.error_code(), std::chrono::duration<double>(Clock::now() - t0).count(),
                   st.ok(), absl::StrCat(id, ": ", st.error_message()));
    if (!st.ok()) {
      local->Fail(absl::StrCat(s.id, ": cannot create the replay session: ", CodeName(st.error_code()), " ",
                               st.error_message()), 0);
      return false;
    }
    if (resp.memory().ShortDebugString() != s.effective.memory().ShortDebugString() ||
        resp.segment_len() != s.effective.segment_len()) {
      local->Fail(absl::StrCat(s.id, ": the same request now gives other settings: ", resp.ShortDebugString(),
                               " vs ", s.effective.ShortDebugString()), 0);
      return false;
    }
    return true;
  }

  void Delete(const std::string& id) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + options_.call_timeout);
    ctx.AddMetadata("x-session-id", id);
    v1::DeleteSessionRequest req;
    req.set_session_id(id);
    v1::DeleteSessionResponse resp;
    const auto t0 = Clock::now();
    grpc::Status st = stub_->DeleteSession(&ctx, req, &resp);
    stats_->Record(Method::kDeleteSession, st.error_code(), std::chrono::duration<double>(Clock::now() - t0).count(),
                   st.ok(), absl::StrCat(id, ": ", st.error_message()));
  }

  bool ReplayOne(const SessionTruth& s, const std::string& id, const ReplayCall& call, std::vector<SeenToken>* got,
                 std::vector<bool>* answered, Local* local) {
    CallResult r;
    int64_t first_own = call.start;  // where the call's own answered tokens begin
    if (call.generate >= 0) {
      v1::GenerateRequest req = s.generate_requests[static_cast<size_t>(call.generate)];
      req.set_session_id(id);
      req.set_expected_position(call.start);
      r = RunGenerate(cc_, req, Disturbance{});
      first_own = call.start + call.prompt;
    } else {
      std::vector<v1::ScoreRequest> messages(1);
      messages[0].set_session_id(id);
      messages[0].set_expected_position(call.start);
      for (int32_t at = 0; at < call.n;) {
        const int32_t len =
            std::min<int32_t>(call.n - at, std::uniform_int_distribution<int32_t>(1, options_.max_chunk)(rng_));
        v1::ScoreRequest* m = at == 0 ? &messages[0] : &messages.emplace_back();
        for (int32_t i = at; i < at + len; ++i) {
          m->mutable_ids()->add_ids(s.tokens[static_cast<size_t>(call.start + i)].id);
        }
        at += len;
      }
      r = RunScore(cc_, id, messages, Disturbance{});
    }
    stats_->Record(Method::kReplay, r.status.error_code(), r.seconds, r.status.ok(),
                   absl::StrCat(id, " at ", call.start, ": ", r.status.error_message()));
    const std::string where = absl::StrCat(s.id, " replay of ", call.generate >= 0 ? "Generate" : "Score", " at ",
                                           call.start, " (+", call.n, ")");
    if (!r.status.ok()) {
      local->Fail(absl::StrCat(where, ": ", CodeName(r.status.error_code()), " ", r.status.error_message()), call.start);
      return false;
    }
    const int64_t end = call.start + call.n;
    int64_t own = 0;
    for (size_t i = 0; i < r.tokens.size(); ++i) {
      const SeenToken& t = r.tokens[i];
      const int64_t expect_pos = r.tokens[0].position + static_cast<int64_t>(i);
      if (t.position != expect_pos || t.position < 0 || t.position >= end ||
          t.id != s.tokens[static_cast<size_t>(t.position)].id) {
        local->Fail(absl::StrCat(where, ": answer ", i, " is id ", t.id, " at ", t.position, ", recorded id ",
                                 t.position >= 0 && t.position < end ? s.tokens[static_cast<size_t>(t.position)].id : -1),
                    call.start);
        return false;
      }
      if (t.position >= first_own) ++own;
      (*got)[static_cast<size_t>(t.position)] = t;
      (*answered)[static_cast<size_t>(t.position)] = true;
    }
    if (own != end - first_own) {
      local->Fail(absl::StrCat(where, ": ", own, " tokens back, recorded ", end - first_own), call.start);
      return false;
    }
    local->tokens += call.n;
    return true;
  }

  // The replay's last answers against the recorded ones, for every position the run saw.
  void Compare(const SessionTruth& s, const std::vector<SeenToken>& got, const std::vector<bool>& answered,
               Local* local) {
    for (size_t pos = 0; pos < s.tokens.size(); ++pos) {
      const TruthToken& want = s.tokens[pos];
      if (want.state == LogProb::kUnknown) continue;
      if (!answered[pos] || (want.state == LogProb::kValue) != got[pos].has_logprob) {
        local->Fail(absl::StrCat(s.id, " position ", pos, ": ", answered[pos] ? "log-prob presence differs"
                                                                              : "not answered by the replay"),
                    static_cast<int64_t>(pos));
        continue;
      }
      if (!got[pos].has_logprob) continue;
      ++local->compared;
      const float g = got[pos].logprob;
      const double diff = std::fabs(static_cast<double>(g) - static_cast<double>(want.logprob));
      if (BitEqual(g, want.logprob)) ++local->exact;
      local->buckets[diff == 0 ? 0 : diff <= 1e-6 ? 1 : diff <= 1e-5 ? 2 : diff <= 1e-4 ? 3 : 4] += 1;
      if (diff > local->max_diff || std::isnan(diff)) {
        local->max_diff = std::isnan(diff) ? INFINITY : diff;
        local->max_where = absl::StrCat(s.id, " position ", pos, ": recorded ", want.logprob, ", replay ", g);
      }
      if (!(diff <= options_.tolerance)) {
        ++local->over;
        local->Fail(absl::StrCat(s.id, " position ", pos, ": log-prob ", want.logprob, " recorded, ", g,
                                 " on replay (|diff| ", diff, ")"),
                    static_cast<int64_t>(pos));
      }
    }
  }

  // The session's settings and its calls around `position`, for a report on a corrupted session.
  static std::string History(const SessionTruth& s, int64_t position) {
    std::string out = absl::StrCat(s.id, " settings {", s.effective.memory().ShortDebugString(), " segment_len ",
                                   s.effective.segment_len(), "}, calls around position ", position, ":");
    size_t last = 0;
    for (size_t i = 0; i < s.history.size(); ++i) {
      if (s.history[i].start <= position) last = i;
    }
    const size_t from = last >= 6 ? last - 6 : 0;
    for (size_t i = from; i < std::min(s.history.size(), last + 3); ++i) {
      const CallEvent& e = s.history[i];
      absl::StrAppend(&out, "\n    ", e.kind == CallKind::kScore ? "Score" : "Generate", " at ", e.start, " sent ",
                      e.sent, e.kind == CallKind::kScore ? "" : " prompt", " back ", e.back, " seen ", e.seen,
                      " responses ", e.responses, " ", CodeName(static_cast<grpc::StatusCode>(e.code)), " (",
                      e.disturbance, ") -> ", std::string(1, e.outcome));
    }
    return out;
  }

  static std::string ModeName(const SessionTruth& s) {
    switch (s.effective.memory().mode()) {
      case v1::MEMORY_MODE_TRAMS: return "trams";
      case v1::MEMORY_MODE_XL: return "xl";
      case v1::MEMORY_MODE_NONE: return "none";
      default: return "other";
    }
  }

  void Merge(const Local& l, bool corrupt, const std::string& mode, std::mutex* mu, VerifyResult* r) {
    std::lock_guard<std::mutex> lock(*mu);
    ++r->sessions;
    r->corrupted += corrupt ? 1 : 0;
    r->corrupted_by_mode[mode] += corrupt ? 1 : 0;
    double& mode_max = r->max_diff_by_mode[mode];
    mode_max = std::max(mode_max, l.max_diff);
    for (size_t i = 0; i < l.buckets.size(); ++i) r->diff_buckets[i] += l.buckets[i];
    r->tokens += l.tokens;
    r->compared += l.compared;
    r->bit_exact += l.exact;
    r->over_tolerance += l.over;
    if (l.max_diff > r->max_abs_diff) {
      r->max_abs_diff = l.max_diff;
      r->max_diff_where = l.max_where;
    }
    for (const std::string& p : l.problems) {
      if (r->first_problems.size() < 30) r->first_problems.push_back(p);
    }
  }

  std::unique_ptr<v1::TramsService::Stub> stub_;
  Stats* stats_;
  const VerifyOptions& options_;
  std::mt19937_64 rng_;
  CallContext cc_;
};

}  // namespace

nlohmann::json VerifyResult::ToJson() const {
  return {{"sessions", sessions},         {"corrupted", corrupted},
          {"tokens", tokens},             {"compared", compared},
          {"bit_exact", bit_exact},       {"over_tolerance", over_tolerance},
          {"max_abs_diff", max_abs_diff}, {"max_diff_where", max_diff_where},
          {"first_problems", first_problems}, {"seconds", seconds},
          {"diff_buckets", {{"0", diff_buckets[0]}, {"le_1e-6", diff_buckets[1]}, {"le_1e-5", diff_buckets[2]},
                            {"le_1e-4", diff_buckets[3]}, {"gt_1e-4", diff_buckets[4]}}},
          {"max_diff_by_mode", max_diff_by_mode}, {"corrupted_by_mode", corrupted_by_mode}};
}

VerifyResult Verify(const std::vector<SessionTruth*>& all, std::vector<std::shared_ptr<grpc::Channel>> channels,
                    Stats* stats, CancelTimer* timer, const VerifyOptions& options) {
  const auto t0 = Clock::now();
  std::vector<SessionTruth*> chosen = all;
  if (options.sample > 0 && options.sample < static_cast<int>(chosen.size())) {
    std::mt19937_64 rng(options.seed);
    std::shuffle(chosen.begin(), chosen.end(), rng);
    chosen.resize(static_cast<size_t>(options.sample));
  }
  VerifyResult result;
  std::mutex mu;
  std::atomic<size_t> next{0};
  std::vector<std::thread> threads;
  const int n = std::max(1, std::min<int>(options.threads, static_cast<int>(chosen.size())));
  for (int t = 0; t < n; ++t) {
    threads.emplace_back([&, t] {
      Replayer replayer(channels[static_cast<size_t>(t) % channels.size()], stats, timer, options,
                        options.seed * 7919u + static_cast<uint64_t>(t));
      for (size_t i; (i = next.fetch_add(1)) < chosen.size();) replayer.Run(*chosen[i], &mu, &result);
    });
  }
  for (std::thread& t : threads) t.join();
  result.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  return result;
}

}  // namespace trams::soak
