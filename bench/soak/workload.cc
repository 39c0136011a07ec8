// The soak workload (see workload.h): per-worker loop, the calls, their checks and the resolution of
// cancelled calls against the ground truth.
#include "bench/soak/workload.h"

#include <cmath>
#include <thread>

#include "absl/strings/str_cat.h"

namespace trams::soak {
namespace {

using Clock = std::chrono::steady_clock;

double Since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

void PrepareUnary(grpc::ClientContext* ctx, const std::string& session_id, std::chrono::seconds timeout) {
  ctx->set_deadline(std::chrono::system_clock::now() + timeout);
  if (!session_id.empty()) ctx->AddMetadata("x-session-id", session_id);
}

std::string Describe(const grpc::Status& st) {
  return absl::StrCat(CodeName(st.error_code()), " \"", st.error_message(), "\"");
}

// Checks what a call starting at `start` streamed: positions without gaps from a first one in
// [start - max_back, start] (a server may answer again an earlier call's provisional tail, shorter than a
// segment), log-probs present exactly after position 0, finite and <= 0, ids in the vocabulary. Sets
// `*back` to the number of such earlier tokens. Returns "" or the first violation.
std::string CheckStreamed(const std::vector<SeenToken>& tokens, int64_t start, int64_t max_back, int64_t vocab,
                          size_t* back) {
  *back = 0;
  if (tokens.empty()) return "";
  const int64_t first = tokens[0].position;
  if (first > start || first < start - max_back) {
    return absl::StrCat("first token at position ", first, ", the call starts at ", start);
  }
  *back = static_cast<size_t>(start - first);
  for (size_t i = 0; i < tokens.size(); ++i) {
    const SeenToken& t = tokens[i];
    const int64_t want = first + static_cast<int64_t>(i);
    if (t.position != want) return absl::StrCat("token ", i, " at position ", t.position, ", expected ", want);
    if (t.id < 0 || t.id >= vocab) return absl::StrCat("token id ", t.id, " outside the vocabulary");
    if (t.has_logprob != (t.position > 0)) {
      return absl::StrCat("position ", t.position, (t.has_logprob ? " has" : " lacks"), " a log-prob");
    }
    if (t.has_logprob && !(std::isfinite(t.logprob) && t.logprob <= 1e-6f)) {
      return absl::StrCat("position ", t.position, ": log-prob ", t.logprob);
    }
  }
  return "";
}

// Re-answered tokens of the session's tail must be the tokens the tool recorded there.
std::string CheckReanswered(const std::vector<SeenToken>& tokens, size_t back, const SessionTruth& s) {
  for (size_t i = 0; i < back; ++i) {
    const int64_t pos = tokens[i].position;
    if (tokens[i].id != s.tokens[static_cast<size_t>(pos)].id) {
      return absl::StrCat("position ", pos, " answered again as id ", tokens[i].id, ", recorded ",
                          s.tokens[static_cast<size_t>(pos)].id);
    }
  }
  return "";
}

// Records what a committed call streamed: the first `back` tokens replace the values of the session's
// tail (the later answer is the one that stands), the rest are appended.
void Append(const std::vector<SeenToken>& seen, size_t back, SessionTruth* s) {
  for (size_t i = 0; i < seen.size(); ++i) {
    const SeenToken& t = seen[i];
    const TruthToken v{t.id, t.logprob, t.has_logprob ? LogProb::kValue : LogProb::kAbsent};
    if (i < back) {
      s->tokens[static_cast<size_t>(t.position)] = v;
    } else {
      s->tokens.push_back(v);
    }
  }
}

}  // namespace

struct Workload::Worker {
  int index = 0;
  std::unique_ptr<v1::TramsService::Stub> stub;
  CallContext cc;
  std::mt19937_64 rng;
  std::vector<int> slots;

  double Uniform() { return std::uniform_real_distribution<double>(0, 1)(rng); }
  int Int(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); }
  bool Coin(double p) { return Uniform() < p; }
};

Workload::Workload(const WorkloadOptions& options, const Corpus& corpus,
                   std::vector<std::shared_ptr<grpc::Channel>> channels, Stats* stats, CancelTimer* timer)
    : options_(options), corpus_(corpus), channels_(std::move(channels)), stats_(stats), timer_(timer) {
  if (options_.threads <= 0 || options_.threads > options_.sessions) options_.threads = options_.sessions;
  slots_.assign(static_cast<size_t>(options_.sessions), nullptr);
  for (int w = 0; w < options_.threads; ++w) {
    auto wk = std::make_unique<Worker>();
    wk->index = w;
    wk->stub = v1::TramsService::NewStub(channels_[static_cast<size_t>(w) % channels_.size()]);
    wk->cc.stub = wk->stub.get();
    wk->cc.timer = timer_;
    wk->cc.safety_deadline = options_.call_timeout;
    wk->rng.seed(options_.seed * 1000003u + static_cast<uint64_t>(w));
    workers_.push_back(std::move(wk));
  }
  for (int slot = 0; slot < options_.sessions; ++slot) {
    workers_[static_cast<size_t>(slot % options_.threads)]->slots.push_back(slot);
  }
}

Workload::~Workload() = default;

v1::CreateSessionRequest Workload::RandomSettings(std::mt19937_64& rng) const {
  v1::CreateSessionRequest req;
  if (!options_.mixed_settings) return req;  // the server's defaults
  auto pick = [&](std::initializer_list<int> v) {
    return *(v.begin() + std::uniform_int_distribution<size_t>(0, v.size() - 1)(rng));
  };
  const double u = std::uniform_real_distribution<double>(0, 1)(rng);
  v1::MemorySettings* m = req.mutable_memory();
  const int mem = pick({64, 128, 256, 400});
  if (u < 0.5) {  // TRAMS with the paper's proportions (400 / 50 / 150)
    m->set_mode(v1::MEMORY_MODE_TRAMS);
    m->set_mem_len(mem);
    m->set_topk(mem / 8);
    m->set_remain(mem * 3 / 8);
    if (pick({0, 1, 2, 3}) == 0) {
      m->add_layers(0);
      m->add_layers(2);
    }
    if (pick({0, 1, 2}) == 0) m->set_metric(v1::SELECTION_METRIC_PAPER);
  } else if (u < 0.8) {
    m->set_mode(v1::MEMORY_MODE_XL);
    m->set_mem_len(mem);
  } else {
    m->set_mode(v1::MEMORY_MODE_NONE);
  }
  req.set_segment_len(pick({16, 32, 64}));
  return req;
}

absl::Status Workload::CreateInSlot(Worker& wk, int slot) {
  int64_t seq;
  {
    std::lock_guard<std::mutex> lock(mu_);
    seq = ++create_seq_;
  }
  v1::CreateSessionRequest req = RandomSettings(wk.rng);
  req.set_session_id(absl::StrCat(options_.prefix, "-", slot, "-", seq));
  grpc::ClientContext ctx;
  PrepareUnary(&ctx, req.session_id(), options_.call_timeout);
  v1::Session resp;
  const auto t0 = Clock::now();
  grpc::Status st = wk.stub->CreateSession(&ctx, req, &resp);
  stats_->Record(Method::kCreateSession, st.error_code(), Since(t0), st.ok(),
                 absl::StrCat(req.session_id(), ": ", Describe(st)));
  if (!st.ok()) return absl::UnavailableError(Describe(st));
  if (resp.position() != 0 || resp.busy() || resp.session_id() != req.session_id()) {
    stats_->Problem(absl::StrCat("CreateSession ", req.session_id(), " answered ", resp.ShortDebugString()));
  }
  auto truth = std::make_unique<SessionTruth>();
  truth->id = req.session_id();
  truth->create = req;
  truth->effective = resp;
  truth->text_pos = std::uniform_int_distribution<size_t>(0, corpus_.text.empty() ? 0 : corpus_.text.size() - 1)(wk.rng);
  truth->ids_pos = std::uniform_int_distribution<size_t>(0, corpus_.ids.size() - 1)(wk.rng);
  stats_->Count("sessions_created");
  std::lock_guard<std::mutex> lock(mu_);
  slots_[static_cast<size_t>(slot)] = truth.get();
  live_[truth->id] = seq;
  all_.push_back(std::move(truth));
  return absl::OkStatus();
}

absl::Status Workload::CreateSessions() {
  for (auto& wk : workers_) {
    for (int slot : wk->slots) {
      absl::Status s = CreateInSlot(*wk, slot);
      if (!s.ok()) return absl::Status(s.code(), absl::StrCat("creating session ", slot, ": ", s.message()));
    }
  }
  return absl::OkStatus();
}

void Workload::Run(const std::atomic<bool>& stop) {
  const auto end = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                      std::chrono::duration<double>(options_.duration_s));
  std::vector<std::thread> threads;
  for (int w = 0; w < options_.threads; ++w) threads.emplace_back([&, w] { WorkerLoop(w, end, stop); });
  for (std::thread& t : threads) t.join();
}

void Workload::WorkerLoop(int w, Clock::time_point end, const std::atomic<bool>& stop) {
  Worker& wk = *workers_[static_cast<size_t>(w)];
  while (!stop.load() && Clock::now() < end) {
    const int slot = wk.slots[static_cast<size_t>(wk.Int(0, static_cast<int>(wk.slots.size()) - 1))];
    SessionTruth* s = slots_[static_cast<size_t>(slot)];  // written only by this worker
    if (s == nullptr || s->retired) {  // its replacement could not be created: try again, slowly
      if (!CreateInSlot(wk, slot).ok()) std::this_thread::sleep_for(std::chrono::milliseconds(200));
      continue;
    }
    if (wk.Coin(options_.churn_fraction)) {
      DoChurn(wk, slot);
      continue;
    }
    // Weights: scoring and generation dominate; the unary calls check the server's view of the state.
    const double u = wk.Uniform();
    if (u < 0.45) {
      DoScore(wk, *s);
    } else if (u < 0.80) {
      DoGenerate(wk, *s);
    } else if (u < 0.90) {
      DoGetSession(wk, *s);
    } else if (u < 0.93) {
      DoListSessions(wk);
    } else {
      DoExplain(wk, *s);
    }
    if (s->retired) {
      // The slot carries on with a fresh session; the retired one is still verified up to where it was known.
      DeleteOnServer(wk, *s, /*must_exist=*/false);
      CreateInSlot(wk, slot).IgnoreError();
    }
  }
}

Disturbance Workload::PickDisturbance(std::mt19937_64& rng, Method m, bool score) const {
  Disturbance d;
  std::uniform_real_distribution<double> unit(0, 1);
  const double u = unit(rng);
  // Delays scale with what calls of this method take now, so cancels land before, during and right
  // at the end of calls whatever the load.
  const double median = stats_->MedianSeconds(m, 0.05);
  auto delay = [&](double lo, double hi) {
    const double s = median * (lo + (hi - lo) * unit(rng));
    return std::chrono::microseconds(std::max<int64_t>(100, static_cast<int64_t>(s * 1e6)));
  };
  if (u < options_.cancel_fraction) {
    const double k = unit(rng);
    if (k < 0.6) {
      d.kind = Disturbance::Kind::kCancelTimer;
      d.after = delay(0, 1.5);
    } else if (k < 0.85 || !score) {
      d.kind = Disturbance::Kind::kCancelAfterResponses;
      d.responses = std::uniform_int_distribution<int>(1, 3)(rng);
    } else {
      d.kind = Disturbance::Kind::kCancelBeforeHalfClose;
    }
  } else if (u < options_.cancel_fraction + options_.deadline_fraction) {
    d.kind = Disturbance::Kind::kDeadline;
    d.after = delay(0.05, 1.5);
  }
  return d;
}

bool Workload::ExpectedCode(const Disturbance& d, grpc::StatusCode code) const {
  if (code == grpc::StatusCode::OK) return true;
  if (code == grpc::StatusCode::CANCELLED && d.cancels()) return true;
  if (code == grpc::StatusCode::DEADLINE_EXCEEDED && d.deadline()) return true;
  return options_.allowed_codes.count(static_cast<int>(code)) > 0;
}

int64_t Workload::SettledPosition(Worker& wk, SessionTruth& s) {
  const auto give_up = Clock::now() + std::chrono::seconds(30);
  for (int attempt = 0;; ++attempt) {
    grpc::ClientContext ctx;
    PrepareUnary(&ctx, s.id, std::chrono::seconds(10));
    v1::GetSessionRequest req;
    req.set_session_id(s.id);
    v1::Session resp;
    const auto t0 = Clock::now();
    grpc::Status st = wk.stub->GetSession(&ctx, req, &resp);
    const bool allowed = st.ok() || options_.allowed_codes.count(static_cast<int>(st.error_code())) > 0;
    stats_->Record(Method::kGetSession, st.error_code(), Since(t0), allowed, absl::StrCat(s.id, ": ", Describe(st)));
    if (!st.ok()) return -1;
    if (!resp.busy()) return resp.position();
    if (Clock::now() > give_up) {
      stats_->Problem(absl::StrCat("session ", s.id, " still busy 30 s after its only call ended"));
      return -1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(attempt < 10 ? 1 : 10));
  }
}

void Workload::Retire(SessionTruth& s, const std::string& why) {
  s.retired = true;
  s.retired_why = why;
  {
    std::lock_guard<std::mutex> lock(mu_);
    live_.erase(s.id);
  }
  stats_->Count("sessions_retired");
}

void Workload::DoScore(Worker& wk, SessionTruth& s) {
  const int64_t start = s.position();
  const bool text = corpus_.has_text && wk.Coin(0.55);
  const int n = wk.Coin(0.01) ? 0 : wk.Int(1, options_.max_score_tokens);  // 0: a call with no input
  std::string input_text;
  std::vector<int32_t> input_ids;
  for (int i = 0; i < n; ++i) {
    if (text) {
      input_text += corpus_.text[s.text_pos];
      s.text_pos = (s.text_pos + 1) % corpus_.text.size();
    } else {
      input_ids.push_back(corpus_.ids[s.ids_pos]);
      s.ids_pos = (s.ids_pos + 1) % corpus_.ids.size();
    }
  }
  // The ids the call must commit, when the tool can know them in advance.
  std::vector<int32_t> known;
  bool known_all = !text || corpus_.byte_tokenizer;
  if (!text) known = input_ids;
  if (text && corpus_.byte_tokenizer) {
    for (unsigned char c : input_text) known.push_back(c);
  }

  std::vector<v1::ScoreRequest> messages(1);
  v1::ScoreRequest& head = messages[0];
  head.set_session_id(s.id);
  head.set_expected_position(start);
  if (wk.Coin(0.15)) head.mutable_options()->set_alternatives(wk.Int(1, 5));
  if (wk.Coin(0.15)) head.mutable_options()->set_entropy(true);
  bool in_head = wk.Coin(0.5);
  for (int at = 0; at < n;) {
    const int len = std::min(n - at, wk.Int(1, options_.max_chunk));
    v1::ScoreRequest* m = in_head ? &messages[0] : &messages.emplace_back();
    in_head = false;
    if (text) {
      m->set_text(input_text.substr(static_cast<size_t>(at), static_cast<size_t>(len)));
    } else {
      m->mutable_ids()->mutable_ids()->Add(input_ids.begin() + at, input_ids.begin() + at + len);
    }
    at += len;
  }

  const Disturbance d = PickDisturbance(wk.rng, Method::kScore, true);
  CallResult r = RunScore(wk.cc, s.id, messages, d);
  const grpc::StatusCode code = r.status.error_code();
  const bool expected = ExpectedCode(d, code);
  stats_->Record(Method::kScore, code, r.seconds, expected,
                 absl::StrCat(s.id, " at ", start, " (", DisturbanceName(d.kind), "): ", Describe(r.status)));
  const std::string where = absl::StrCat("Score on ", s.id, " at ", start, ": ");
  size_t back = 0;
  std::string bad = CheckStreamed(r.tokens, start, s.effective.segment_len() - 1, corpus_.vocab, &back);
  if (bad.empty()) bad = CheckReanswered(r.tokens, back, s);
  for (size_t i = back; bad.empty() && i < r.tokens.size() && known_all; ++i) {
    if (i - back >= known.size() || r.tokens[i].id != known[i - back]) {
      bad = absl::StrCat("token ", i, " is id ", r.tokens[i].id);
    }
  }
  if (back > 0) stats_->Count("tokens_answered_again", static_cast<int64_t>(back));
  if (!bad.empty()) {
    stats_->Problem(where + bad);
    return Retire(s, "its stream broke an invariant");
  }

  const int64_t seen = static_cast<int64_t>(r.tokens.size() - back);  // of the call's own tokens
  s.history.push_back({CallKind::kScore, start, n, static_cast<int32_t>(back), static_cast<int32_t>(seen),
                       r.responses, static_cast<int>(code), DisturbanceName(d.kind)});
  CallEvent& event = s.history.back();
  if (r.status.ok()) {
    const int64_t count = seen;
    if ((known_all && count != static_cast<int64_t>(known.size())) ||
        (r.responses > 0 && r.last_position != start + count)) {
      stats_->Problem(absl::StrCat(where, "OK with ", count, " tokens (sent ", known.size(), "), last position ",
                                   r.last_position));
      return Retire(s, "token count mismatch");
    }
    event.outcome = 'C';
    Append(r.tokens, back, &s);
    if (count > 0) s.calls.push_back({CallKind::kScore, start, 0, static_cast<int32_t>(count)});
    stats_->Count("tokens_committed", count);
    if (d.kind != Disturbance::Kind::kNone) stats_->Count("disturbed_calls_ok");
    return;
  }

  const int64_t settled = SettledPosition(wk, s);
  if (settled < 0) return Retire(s, "its position could not be read after a failed call");
  const int64_t advanced = settled - start;
  event.outcome = 'X';
  if (advanced == 0) {
    event.outcome = 'R';
    stats_->Count("calls_rolled_back");
    return;
  }
  if (!expected || !(d.cancels() || d.deadline())) {
    stats_->Problem(absl::StrCat(where, Describe(r.status), " yet the session advanced by ", advanced));
    return Retire(s, "a failed call changed it");
  }
  // The server committed before the cancel or deadline reached it (the client saw the call end late).
  if (known_all ? advanced == static_cast<int64_t>(known.size()) : advanced == seen) {
    event.outcome = 'c';
    Append(r.tokens, back, &s);
    for (int64_t i = seen; i < advanced; ++i) s.tokens.push_back({known[static_cast<size_t>(i)], 0, LogProb::kUnknown});
    s.calls.push_back({CallKind::kScore, start, 0, static_cast<int32_t>(advanced)});
    stats_->Count("tokens_committed", advanced);
    stats_->Count(seen == advanced ? "race_committed_all_seen" : "race_committed_partly_seen");
    return;
  }
  if (known_all) {
    stats_->Problem(absl::StrCat(where, Describe(r.status), ": the session advanced by ", advanced, " of the ",
                                 known.size(), " tokens sent (a partial commit)"));
    return Retire(s, "partial commit");
  }
  stats_->Count("race_unresolved");
  Retire(s, "a cancelled text call committed tokens the tool did not see");
}

void Workload::DoGenerate(Worker& wk, SessionTruth& s) {
  const int64_t start = s.position();
  v1::GenerateRequest req;
  req.set_session_id(s.id);
  req.set_expected_position(start);
  std::vector<int32_t> prompt;
  if (start == 0 || wk.Coin(0.3)) {
    const int len = wk.Int(1, options_.max_prompt);
    for (int i = 0; i < len; ++i) {
      prompt.push_back(corpus_.ids[s.ids_pos]);
      s.ids_pos = (s.ids_pos + 1) % corpus_.ids.size();
    }
    req.mutable_prompt_ids()->mutable_ids()->Add(prompt.begin(), prompt.end());
  }
  const int max_tokens = wk.Int(1, options_.max_gen_tokens);
  req.set_max_tokens(max_tokens);
  const double t = wk.Uniform();
  req.set_temperature(t < 0.25 ? 0.0f : t < 0.6 ? 0.7f : 1.0f);
  if (wk.Coin(0.3)) req.set_top_k(20);
  if (wk.Coin(0.3)) req.set_top_p(0.9f);
  req.set_seed(wk.rng());
  if (corpus_.has_text && wk.Coin(0.1)) req.add_stop(std::string(1, corpus_.text[s.text_pos]));

  const Disturbance d = PickDisturbance(wk.rng, Method::kGenerate, false);
  CallResult r = RunGenerate(wk.cc, req, d);
  const grpc::StatusCode code = r.status.error_code();
  const bool expected = ExpectedCode(d, code);
  stats_->Record(Method::kGenerate, code, r.seconds, expected,
                 absl::StrCat(s.id, " at ", start, " (", DisturbanceName(d.kind), "): ", Describe(r.status)));
  const std::string where = absl::StrCat("Generate on ", s.id, " at ", start, ": ");
  const int64_t p = static_cast<int64_t>(prompt.size());
  const int64_t seen = static_cast<int64_t>(r.tokens.size());
  size_t back = 0;
  std::string bad = CheckStreamed(r.tokens, start + p, 0, corpus_.vocab, &back);
  s.history.push_back({CallKind::kGenerate, start, static_cast<int32_t>(p), 0, static_cast<int32_t>(seen),
                       r.responses, static_cast<int>(code), DisturbanceName(d.kind)});
  const size_t event = s.history.size() - 1;  // commit() appends to s, not to the history
  if (bad.empty() && seen > max_tokens) bad = absl::StrCat(seen, " tokens for max_tokens ", max_tokens);
  if (!bad.empty()) {
    stats_->Problem(where + bad);
    return Retire(s, "its stream broke an invariant");
  }
  auto commit = [&](const char* counter) {
    s.history[event].outcome = r.status.ok() ? 'C' : 'c';
    for (int32_t id : prompt) s.tokens.push_back({id, 0, LogProb::kUnknown});
    Append(r.tokens, 0, &s);
    s.calls.push_back({CallKind::kGenerate, start, static_cast<int32_t>(p), static_cast<int32_t>(p + seen),
                       static_cast<int32_t>(s.generate_requests.size())});
    s.generate_requests.push_back(req);
    stats_->Count("tokens_committed", p + seen);
    stats_->Count("tokens_generated", seen);
    if (counter != nullptr) stats_->Count(counter);
  };

  if (r.status.ok()) {
    std::string why;
    if (seen < 1) why = "no token";
    if (r.finish == v1::FINISH_REASON_UNSPECIFIED) why = "no finish reason";
    if (r.finish == v1::FINISH_REASON_LENGTH && seen != max_tokens) why = "FINISH_REASON_LENGTH before max_tokens";
    if (r.last_position != start + p + seen) why = absl::StrCat("last position ", r.last_position);
    if (!why.empty()) {
      stats_->Problem(absl::StrCat(where, "OK with ", seen, " tokens: ", why));
      return Retire(s, "generate outcome inconsistent");
    }
    commit(d.kind != Disturbance::Kind::kNone ? "disturbed_calls_ok" : nullptr);
    return;
  }

  const int64_t settled = SettledPosition(wk, s);
  if (settled < 0) return Retire(s, "its position could not be read after a failed call");
  const int64_t advanced = settled - start;
  s.history[event].outcome = 'X';
  if (advanced == 0) {
    s.history[event].outcome = 'R';
    stats_->Count("calls_rolled_back");
    return;
  }
  if (!expected || !(d.cancels() || d.deadline())) {
    stats_->Problem(absl::StrCat(where, Describe(r.status), " yet the session advanced by ", advanced));
    return Retire(s, "a failed call changed it");
  }
  if (advanced == p + seen && seen > 0) return commit("race_committed_all_seen");
  if (advanced > p + seen && advanced <= p + max_tokens) {
    stats_->Count("race_unresolved");
    return Retire(s, "a cancelled Generate committed tokens the tool did not see");
  }
  stats_->Problem(absl::StrCat(where, Describe(r.status), ": the session advanced by ", advanced, " (prompt ", p,
                               ", seen ", seen, ", max_tokens ", max_tokens, ")"));
  Retire(s, "partial commit");
}

void Workload::DoGetSession(Worker& wk, SessionTruth& s) {
  grpc::ClientContext ctx;
  PrepareUnary(&ctx, s.id, options_.call_timeout);
  v1::GetSessionRequest req;
  req.set_session_id(s.id);
  v1::Session resp;
  const auto t0 = Clock::now();
  grpc::Status st = wk.stub->GetSession(&ctx, req, &resp);
  stats_->Record(Method::kGetSession, st.error_code(), Since(t0), st.ok(), absl::StrCat(s.id, ": ", Describe(st)));
  if (!st.ok()) return Retire(s, "GetSession failed");
  if (resp.position() != s.position() || resp.busy() || resp.segment_len() != s.effective.segment_len() ||
      resp.memory().mode() != s.effective.memory().mode() || resp.pool_tokens() > std::max(0, resp.memory().mem_len())) {
    stats_->Problem(absl::StrCat("GetSession ", s.id, ": the tool holds ", s.position(), " tokens, the server says ",
                                 resp.ShortDebugString()));
    Retire(s, "GetSession disagrees");
  }
}

void Workload::DoListSessions(Worker& wk) {
  std::map<std::string, int64_t> before;
  {
    std::lock_guard<std::mutex> lock(mu_);
    before = live_;
  }
  grpc::ClientContext ctx;
  PrepareUnary(&ctx, "", options_.call_timeout);
  v1::ListSessionsResponse resp;
  const auto t0 = Clock::now();
  grpc::Status st = wk.stub->ListSessions(&ctx, v1::ListSessionsRequest(), &resp);
  stats_->Record(Method::kListSessions, st.error_code(), Since(t0), st.ok(), Describe(st));
  if (!st.ok()) return;
  std::set<std::string> listed;
  for (const v1::Session& session : resp.sessions()) listed.insert(session.session_id());
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& [id, seq] : before) {
    auto still = live_.find(id);
    if (still != live_.end() && still->second == seq && listed.count(id) == 0) {
      if (stats_->problems() < 50) stats_->Problem(absl::StrCat("ListSessions lacks live session ", id));
    }
  }
}

void Workload::DoExplain(Worker& wk, SessionTruth& s) {
  if (!s.trams() || s.position() == 0) return DoGetSession(wk, s);
  grpc::ClientContext ctx;
  PrepareUnary(&ctx, s.id, options_.call_timeout);
  v1::ExplainSelectionRequest req;
  req.set_session_id(s.id);
  v1::ExplainSelectionResponse resp;
  const auto t0 = Clock::now();
  grpc::Status st = wk.stub->ExplainSelection(&ctx, req, &resp);
  // FAILED_PRECONDITION: no segment has selected yet (documented).
  const bool expected = st.ok() || st.error_code() == grpc::StatusCode::FAILED_PRECONDITION;
  stats_->Record(Method::kExplainSelection, st.error_code(), Since(t0), expected, absl::StrCat(s.id, ": ", Describe(st)));
  if (st.ok() && (resp.segment_start() < 0 || resp.segment_start() + resp.segment_len() > s.position())) {
    stats_->Problem(absl::StrCat("ExplainSelection ", s.id, " at ", s.position(), ": segment ", resp.segment_start(),
                                 " + ", resp.segment_len()));
  }
}

void Workload::DeleteOnServer(Worker& wk, const SessionTruth& s, bool must_exist) {
  grpc::ClientContext ctx;
  PrepareUnary(&ctx, s.id, options_.call_timeout);
  v1::DeleteSessionRequest req;
  req.set_session_id(s.id);
  v1::DeleteSessionResponse resp;
  const auto t0 = Clock::now();
  grpc::Status st = wk.stub->DeleteSession(&ctx, req, &resp);
  const bool expected = st.ok() || (!must_exist && st.error_code() == grpc::StatusCode::NOT_FOUND);
  stats_->Record(Method::kDeleteSession, st.error_code(), Since(t0), expected, absl::StrCat(s.id, ": ", Describe(st)));
}

void Workload::DoChurn(Worker& wk, int slot) {
  SessionTruth& s = *slots_[static_cast<size_t>(slot)];
  Retire(s, "deleted by the workload (churn)");
  stats_->Count("sessions_churned");
  DeleteOnServer(wk, s, /*must_exist=*/true);
  CreateInSlot(wk, slot).IgnoreError();  // a failure is counted; the loop retries the slot
}

void Workload::FinalCheck() {
  Worker& wk = *workers_[0];
  for (SessionTruth* s : sessions()) {
    if (s->retired) continue;
    grpc::ClientContext ctx;
    PrepareUnary(&ctx, s->id, options_.call_timeout);
    v1::GetSessionRequest req;
    req.set_session_id(s->id);
    v1::Session resp;
    const auto t0 = Clock::now();
    grpc::Status st = wk.stub->GetSession(&ctx, req, &resp);
    stats_->Record(Method::kGetSession, st.error_code(), Since(t0), st.ok(), absl::StrCat(s->id, ": ", Describe(st)));
    if (st.ok() && (resp.position() != s->position() || resp.busy())) {
      stats_->Problem(absl::StrCat("final GetSession ", s->id, ": the tool holds ", s->position(),
                                   " tokens, the server says ", resp.ShortDebugString()));
    }
  }
}

absl::Status Workload::DeleteAll() {
  Worker& wk = *workers_[0];
  absl::Status result;
  for (SessionTruth* s : sessions()) {
    if (s->retired) continue;
    grpc::ClientContext ctx;
    PrepareUnary(&ctx, s->id, options_.call_timeout);
    v1::DeleteSessionRequest req;
    req.set_session_id(s->id);
    v1::DeleteSessionResponse resp;
    grpc::Status st = wk.stub->DeleteSession(&ctx, req, &resp);
    if (!st.ok() && result.ok()) result = absl::InternalError(absl::StrCat("delete ", s->id, ": ", Describe(st)));
  }
  return result;
}

int Workload::live_sessions() const {
  std::lock_guard<std::mutex> lock(mu_);
  return static_cast<int>(live_.size());
}

std::vector<SessionTruth*> Workload::sessions() {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<SessionTruth*> out;
  for (auto& s : all_) out.push_back(s.get());
  return out;
}

}  // namespace trams::soak
