// The streaming calls: Score (bidi) and Generate (server streaming). See session_call.h for the
// lifecycle and lm_service.h for the transaction contract.
#include <cmath>

#include "absl/strings/str_cat.h"
#include "engine/echo.h"
#include "engine/sampler.h"
#include "server/lm_service.h"
#include "server/request_checks.h"
#include "server/session_call.h"

namespace trams::server {
namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// Totals and bookkeeping of one call, applied to the session only when the call commits.
struct CallLedger {
  int64_t tokens_scored = 0;  // over the tokens this call sent
  double nll_sum = 0;
  // Tokens of the session's earlier provisional tail, answered again: their new values minus the old.
  int64_t rescored_count = 0;
  double rescored_nll = 0;
  std::vector<int32_t> consumed;  // the tokens this call sent
  std::vector<int32_t> tail;      // the session's provisional tail once the call commits
  std::vector<float> tail_logprobs;
  SelectionRecord selection;
  bool has_selection = false;

  void Apply(Session& s, const LmService& svc) {
    s.tokens_scored += tokens_scored + rescored_count;
    s.nll_sum += nll_sum + rescored_nll;
    svc.RecordConsumed(&s, consumed);
    s.tail = std::move(tail);
    s.tail_logprobs = std::move(tail_logprobs);
    if (has_selection) s.last_selection = std::move(selection);
  }
};

// Where a call stands against its session's provisional tail (fixed when the call takes the session).
struct CallOrigin {
  int64_t boundary = 0;     // the pool's position: the tail's first position
  int64_t call_start = 0;   // the first position this call sends (boundary + tail size)
  std::vector<float> tail_logprobs;  // what was reported for the tail
};

// Fills token scores for one segment and the ledger; `start` is the segment's first position.
void AddTokenScores(const LmService& svc, absl::Span<const int32_t> ids, const engine::SegmentOutput& out, int64_t start,
                    const CallOrigin& origin, bool provisional, CallLedger* ledger,
                    google::protobuf::RepeatedPtrField<v1::TokenScore>* tokens) {
  for (size_t i = 0; i < ids.size(); ++i) {
    const int64_t position = start + static_cast<int64_t>(i);
    const float lp = out.logprob[i];
    v1::TokenScore* t = tokens->Add();
    t->set_id(ids[i]);
    t->set_text(svc.TokenText(ids[i]));
    t->set_position(position);
    t->set_provisional(provisional);
    if (!std::isnan(lp)) t->set_logprob(lp);
    if (position < origin.call_start) {  // an earlier call's provisional token, answered again
      const float old = origin.tail_logprobs[static_cast<size_t>(position - origin.boundary)];
      if (!std::isnan(old)) {
        ledger->rescored_count -= 1;
        ledger->rescored_nll += old;
      }
      if (!std::isnan(lp)) {
        ledger->rescored_count += 1;
        ledger->rescored_nll -= lp;
      }
    } else {
      if (!std::isnan(lp)) {
        ledger->tokens_scored += 1;
        ledger->nll_sum -= lp;
      }
      ledger->consumed.push_back(ids[i]);
    }
    if (provisional) {
      ledger->tail.push_back(ids[i]);
      ledger->tail_logprobs.push_back(lp);
    }
    if (!out.entropy.empty() && !std::isnan(out.entropy[i])) t->set_entropy(out.entropy[i]);
    if (!out.alternatives.empty()) {
      for (const engine::TokenAlternative& alt : out.alternatives[i]) {
        v1::Alternative* a = t->add_alternatives();
        a->set_id(alt.id);
        a->set_text(svc.TokenText(alt.id));
        a->set_logprob(alt.logprob);
      }
    }
  }
}

// Takes the session's provisional tail into a call: its tokens go before the call's own.
CallOrigin TakeTail(const Session& session, std::vector<int32_t>* tokens) {
  CallOrigin origin{session.stream->position(), session.position(), session.tail_logprobs};
  tokens->insert(tokens->begin(), session.tail.begin(), session.tail.end());
  return origin;
}

// What a segment attended, in stream positions (for ExplainSelection).
void RecordSelection(const engine::EngineStream& stream, int64_t start, int pool_before, int n, const engine::SegmentOutput& out,
                     CallLedger* ledger) {
  if (out.selections.empty()) return;
  const engine::TramsSettings& s = stream.settings();
  SelectionRecord& rec = ledger->selection;
  rec.segment_start = start;
  rec.segment_len = n;
  const bool selected = pool_before > s.topk + s.remain;
  rec.recent_from = start - (selected ? s.remain : std::min(pool_before, s.attend_len()));
  rec.selected.assign(out.selections.size(), {});
  rec.scores = out.selection_scores;
  for (size_t l = 0; l < out.selections.size(); ++l) {
    rec.selected[l].resize(out.selections[l].size());
    for (size_t h = 0; h < out.selections[l].size(); ++h) {
      for (int idx : out.selections[l][h]) rec.selected[l][h].push_back(start - pool_before + idx);
    }
  }
  ledger->has_selection = true;
}

// ---------------------------------------------------------------------------------------------
class ScoreCall final : public SessionCall<grpc::ServerBidiReactor<v1::ScoreRequest, v1::ScoreResponse>,
                                           v1::ScoreResponse> {
 public:
  ~ScoreCall() override { svc_->sessions()->ChargeBuffers(-charged_).IgnoreError(); }

  ScoreCall(LmService* svc, grpc::CallbackServerContext* ctx) : SessionCall(svc, ctx, "Score") {
    Actions a;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (svc_->draining()) {
        EndWith(absl::UnavailableError("the server is shutting down; retry on another replica"));
        MaybeFinish(a);
      } else {
        reading_ = true;
        a.read = true;
      }
      BeginPerform();
    }
    Perform(a);
  }

  void OnReadDone(bool ok) override {
    Actions a;
    {
      std::lock_guard<std::mutex> lock(mu_);
      reading_ = false;
      if (!ending()) {
        if (!ok && ctx_->IsCancelled()) {
          EndWith(absl::CancelledError("the call was cancelled; the session is unchanged"));
        } else if (!ok && !started_) {
          // No message at all: nothing to score. Fine if the metadata names a session, else an error.
          absl::StatusOr<std::string> id = svc_->SessionIdOf(ctx_, "");
          EndWith(id.ok() ? absl::OkStatus() : id.status());
        } else if (!ok) {
          input_closed_ = true;  // the client half-closed: run what is left
          Absorb(svc_->Encode(&text_, /*final=*/true, &pending_));
        } else {
          if (!started_) First(a);
          if (!ending()) AbsorbInput();
        }
      }
      AfterEvent(a);
      BeginPerform();
    }
    Perform(a);
  }

 private:
  void StartReadHook() override { StartRead(&req_); }

  void Absorb(const absl::Status& s) {
    if (!s.ok()) EndWith(s);
  }

  void First(Actions& a) {
    started_ = true;
    absl::StatusOr<std::string> id = svc_->SessionIdOf(ctx_, req_.session_id());
    if (!id.ok()) return EndWith(id.status());
    const int max_alt = svc_->options().requests.max_alternatives;
    if (req_.options().alternatives() < 0 || req_.options().alternatives() > max_alt) {
      return EndWith(absl::InvalidArgumentError(
          absl::StrCat("options.alternatives must be in [0, ", max_alt, "], got ", req_.options().alternatives())));
    }
    options_.alternatives = req_.options().alternatives();
    options_.entropy = req_.options().entropy();
    if (req_.has_expected_position()) expected_position_ = req_.expected_position();
    session_id_ = *id;
    StartAcquire(*id, a);
  }

  void AbsorbInput() {
    if (!req_.session_id().empty() && req_.session_id() != session_id_) {
      return EndWith(absl::InvalidArgumentError(absl::StrCat("a Score call stays on one session: '", engine::EchoForError(req_.session_id()),
                                                             "' after '", session_id_, "'")));
    }
    switch (req_.input_case()) {
      case v1::ScoreRequest::kText:
        if (static_cast<int64_t>(req_.text().size()) > svc_->options().requests.max_chunk_bytes) {
          return EndWith(absl::InvalidArgumentError(absl::StrCat("text chunk of ", req_.text().size(),
                                                                 " bytes is over the limit of ",
                                                                 svc_->options().requests.max_chunk_bytes)));
        }
        text_ += req_.text();
        Absorb(svc_->Encode(&text_, /*final=*/false, &pending_));
        if (!ending() && static_cast<int64_t>(text_.size()) > svc_->options().requests.max_pending_text_bytes) {
          return EndWith(absl::InvalidArgumentError(absl::StrCat(
              "the text holds ", text_.size(), " bytes without a word boundary; this model's tokenizer ",
              "buffers at most ", svc_->options().requests.max_pending_text_bytes,
              " (a word cannot be that long): the input is not text for this tokenizer")));
        }
        return ChargeBuffers();
      case v1::ScoreRequest::kIds: {
        const auto& ids = req_.ids().ids();
        absl::Status s = svc_->CheckIds(absl::MakeConstSpan(ids.data(), ids.size()));
        if (!s.ok()) return EndWith(s);
        if (!text_.empty()) {
          return EndWith(absl::InvalidArgumentError("ids cannot follow text that ends inside a word"));
        }
        pending_.insert(pending_.end(), ids.begin(), ids.end());
        return ChargeBuffers();
      }
      default:
        return;
    }
  }

  void OnSessionTaken(Actions&) override { origin_ = TakeTail(*session_, &pending_); }

  // Keeps the budget's count of this call's input buffers current (they shrink as segments run).
  void ChargeBuffers() {
    const int64_t bytes =
        static_cast<int64_t>(text_.size() + pending_.size() * sizeof(int32_t) + segment_.size() * sizeof(int32_t));
    absl::Status s = svc_->sessions()->ChargeBuffers(bytes - charged_);
    if (!s.ok()) return EndWith(s);
    charged_ = bytes;
  }

  void AfterEvent(Actions& a) override {
    if (ending()) return MaybeFinish(a);
    if (session_ && !job_in_flight_ && can_write_more()) {
      const size_t n = static_cast<size_t>(session_->segment_len);
      if (pending_.size() >= n || (input_closed_ && !pending_.empty())) {
        const size_t take = std::min(n, pending_.size());
        segment_.assign(pending_.begin(), pending_.begin() + static_cast<std::ptrdiff_t>(take));
        pending_.erase(pending_.begin(), pending_.begin() + static_cast<std::ptrdiff_t>(take));
        ChargeBuffers();  // pending_ shrank (never fails: fewer bytes)
        segment_start_ = session_->stream->position();
        pool_before_ = session_->stream->size();
        // An incomplete last segment runs provisionally: the next call runs it again as a whole one.
        provisional_ = take < n;
        engine::OutputOptions o = options_;
        o.selections = session_->stream->settings().mode == engine::MemoryMode::kTrams;
        o.memory_share = o.selections && svc_->SampleMemoryShare();
        Submit(segment_, o, a, /*commit=*/!provisional_);
      } else if (input_closed_ && pending_.empty()) {
        EndWith(absl::OkStatus());
        return MaybeFinish(a);
      }
    }
    // Read ahead while less than two segments are buffered (backpressure on fast clients).
    const size_t n = session_ ? static_cast<size_t>(session_->segment_len) : 1024;
    if (!input_closed_ && !reading_ && pending_.size() < 2 * n) {
      reading_ = true;
      a.read = true;
    }
  }

  void OnJobDone(engine::SegmentOutput out, Actions& a) override {
    v1::ScoreResponse resp;
    svc_->RecordMemoryShare(out);
    AddTokenScores(*svc_, segment_, out, segment_start_, origin_, provisional_, &ledger_, resp.mutable_tokens());
    RecordSelection(*session_->stream, segment_start_, pool_before_, static_cast<int>(segment_.size()), out, &ledger_);
    resp.set_position(segment_start_ + static_cast<int64_t>(segment_.size()));
    resp.set_first_position(origin_.call_start);
    resp.set_tokens_scored(ledger_.tokens_scored);
    resp.set_nll_sum(ledger_.nll_sum);
    if (ledger_.tokens_scored > 0) {
      const double mean = ledger_.nll_sum / static_cast<double>(ledger_.tokens_scored);
      resp.set_ppl(std::exp(mean));
      resp.set_bits_per_token(mean / std::log(2.0));
    }
    if (svc_->metrics()) {
      int64_t scored = 0;
      for (float lp : out.logprob) scored += std::isnan(lp) ? 0 : 1;
      svc_->metrics()->TokensScored(scored);
    }
    Write(std::move(resp), a);
  }

  void OnCommit(Session& session) override { ledger_.Apply(session, *svc_); }

  v1::ScoreRequest req_;
  std::string session_id_;
  engine::OutputOptions options_;
  int64_t charged_ = 0;  // bytes of text_, pending_ and segment_ counted in the budget
  bool started_ = false;
  bool reading_ = false;
  bool input_closed_ = false;
  std::string text_;              // text not yet encoded (may end inside a word or character)
  std::vector<int32_t> pending_;  // encoded, not yet run
  std::vector<int32_t> segment_;  // the segment in flight
  int64_t segment_start_ = 0;
  int pool_before_ = 0;
  bool provisional_ = false;  // the segment in flight is the incomplete last one
  CallOrigin origin_;
  CallLedger ledger_;
};

// ---------------------------------------------------------------------------------------------
class GenerateCall final : public SessionCall<grpc::ServerWriteReactor<v1::GenerateResponse>, v1::GenerateResponse> {
 public:
  ~GenerateCall() override { svc_->sessions()->ChargeBuffers(-charged_).IgnoreError(); }

  GenerateCall(LmService* svc, grpc::CallbackServerContext* ctx, const v1::GenerateRequest* req)
      : SessionCall(svc, ctx, "Generate"), req_(*req) {
    Actions a;
    {
      std::lock_guard<std::mutex> lock(mu_);
      absl::Status s = Prepare(ctx);
      if (!s.ok()) {
        EndWith(s);
        MaybeFinish(a);
      } else {
        StartAcquire(session_id_, a);
      }
      BeginPerform();
    }
    Perform(a);
  }

 private:
  absl::Status Prepare(grpc::CallbackServerContext* ctx) {
    if (svc_->draining()) return absl::UnavailableError("the server is shutting down; retry on another replica");
    absl::StatusOr<std::string> id = svc_->SessionIdOf(ctx, req_.session_id());
    if (!id.ok()) return id.status();
    session_id_ = *id;
    absl::StatusOr<GenerateSpec> spec =
        GenerateSpecFrom(req_, svc_->options().requests, /*fallback_seed=*/std::random_device{}());
    if (!spec.ok()) return spec.status();
    max_tokens_ = spec->max_tokens;
    params_ = spec->sampling;
    if (req_.has_prompt_text()) {
      std::string text = req_.prompt_text();
      absl::Status s = svc_->Encode(&text, /*final=*/true, &prompt_);
      if (!s.ok()) return s;
    } else if (req_.has_prompt_ids()) {
      prompt_.assign(req_.prompt_ids().ids().begin(), req_.prompt_ids().ids().end());
      absl::Status s = svc_->CheckIds(prompt_);
      if (!s.ok()) return s;
    }
    // The prompt is input held for the whole call: it counts in the input-buffer budget.
    const int64_t prompt_bytes = static_cast<int64_t>(prompt_.size() * sizeof(int32_t));
    absl::Status charged = svc_->sessions()->ChargeBuffers(prompt_bytes);
    if (!charged.ok()) return charged;
    charged_ = prompt_bytes;
    if (req_.has_expected_position()) expected_position_ = req_.expected_position();
    sampler_ = std::make_unique<engine::Sampler>(params_);
    return absl::OkStatus();
  }

  void OnSessionTaken(Actions& a) override {
    // A provisional tail is fed (committed) first; generated tokens then enter one by one, so segment
    // boundaries count from the end of this call afterwards.
    origin_ = TakeTail(*session_, &prompt_);
    if (prompt_.empty() && session_->stream->position() == 0) {
      return EndWith(absl::FailedPreconditionError(
          absl::StrCat("session '", session_->id, "' is empty: give a prompt to start from")));
    }
    Step(a);
  }

  // Feeds the next prompt chunk, or asks for the distribution after what the session holds.
  void Step(Actions& a) {
    engine::OutputOptions o;
    o.next_distribution = true;
    const size_t n = static_cast<size_t>(session_->segment_len);
    if (fed_ < prompt_.size()) {
      const size_t take = std::min(n, prompt_.size() - fed_);
      feeding_.assign(prompt_.begin() + static_cast<std::ptrdiff_t>(fed_),
                      prompt_.begin() + static_cast<std::ptrdiff_t>(fed_ + take));
      fed_ += take;
      o.next_distribution = fed_ == prompt_.size();
    } else {
      feeding_.clear();
    }
    feed_start_ = session_->stream->position();
    pool_before_ = session_->stream->size();
    o.selections = session_->stream->settings().mode == engine::MemoryMode::kTrams && !feeding_.empty();
    o.memory_share = o.selections && svc_->SampleMemoryShare();
    Submit(feeding_, o, a);
  }

  void OnJobDone(engine::SegmentOutput out, Actions& a) override {
    svc_->RecordMemoryShare(out);
    if (!feeding_.empty()) {
      v1::GenerateResponse ignored;  // prompt/generated tokens: count them in the session's totals
      AddTokenScores(*svc_, feeding_, out, feed_start_, origin_, /*provisional=*/false, &ledger_,
                     ignored.mutable_tokens());
      RecordSelection(*session_->stream, feed_start_, pool_before_, static_cast<int>(feeding_.size()), out, &ledger_);
    }
    if (final_feed_) {
      v1::GenerateResponse last;
      last.set_position(session_->stream->position());
      last.set_finish_reason(finish_reason_);
      Write(std::move(last), a);
      return EndWith(absl::OkStatus());
    }
    if (out.next_logprobs.empty()) return Step(a);  // more prompt to feed

    const int32_t token = sampler_->Sample(out.next_logprobs);
    ++generated_;
    v1::GenerateResponse resp;
    v1::TokenScore* t = resp.add_tokens();
    t->set_id(token);
    const std::string text = svc_->TokenText(token);
    t->set_text(text);
    t->set_position(session_->stream->position());
    t->set_logprob(out.next_logprobs[token]);
    resp.set_position(session_->stream->position() + 1);
    const auto now = Clock::now();
    if (svc_->metrics()) {
      svc_->metrics()->TokensGenerated(1);
      if (generated_ == 1) {
        svc_->metrics()->TimeToFirstToken(std::chrono::duration<double>(now - start_).count());
      } else {
        svc_->metrics()->InterTokenLatency(std::chrono::duration<double>(now - last_token_).count());
      }
    }
    last_token_ = now;
    Write(std::move(resp), a);

    generated_text_ += text;
    for (const std::string& stop : req_.stop()) {
      if (generated_text_.size() >= stop.size() &&
          generated_text_.compare(generated_text_.size() - stop.size(), stop.size(), stop) == 0) {
        finish_reason_ = v1::FINISH_REASON_STOP;
      }
    }
    if (finish_reason_ == v1::FINISH_REASON_UNSPECIFIED && generated_ >= max_tokens_) {
      finish_reason_ = v1::FINISH_REASON_LENGTH;
    }
    // Every generated token becomes part of the session: feed it (with the next distribution unless
    // done), once the client keeps up with the answers (AfterEvent).
    final_feed_ = finish_reason_ != v1::FINISH_REASON_UNSPECIFIED;
    feeding_.assign(1, token);
    feed_pending_ = true;
  }

  void AfterEvent(Actions& a) override {
    if (ending()) return MaybeFinish(a);
    if (feed_pending_ && !job_in_flight_ && can_write_more()) {
      feed_pending_ = false;
      engine::OutputOptions o;
      o.next_distribution = !final_feed_;
      feed_start_ = session_->stream->position();
      pool_before_ = session_->stream->size();
      o.selections = session_->stream->settings().mode == engine::MemoryMode::kTrams;
      o.memory_share = o.selections && svc_->SampleMemoryShare();
      Submit(feeding_, o, a);
    }
  }

  void OnCommit(Session& session) override { ledger_.Apply(session, *svc_); }

  v1::GenerateRequest req_;
  std::string session_id_;
  int64_t charged_ = 0;  // prompt bytes counted in the input-buffer budget
  int max_tokens_ = 64;
  engine::SamplingParams params_;
  std::unique_ptr<engine::Sampler> sampler_;
  std::vector<int32_t> prompt_;
  size_t fed_ = 0;
  std::vector<int32_t> feeding_;
  int64_t feed_start_ = 0;
  int pool_before_ = 0;
  int generated_ = 0;
  std::string generated_text_;
  bool final_feed_ = false;
  bool feed_pending_ = false;  // feeding_ holds a sampled token waiting for the client to catch up
  v1::FinishReason finish_reason_ = v1::FINISH_REASON_UNSPECIFIED;
  Clock::time_point last_token_;
  CallOrigin origin_;
  CallLedger ledger_;
};

}  // namespace

grpc::ServerBidiReactor<v1::ScoreRequest, v1::ScoreResponse>* LmService::Score(grpc::CallbackServerContext* ctx) {
  return new ScoreCall(this, ctx);
}

grpc::ServerWriteReactor<v1::GenerateResponse>* LmService::Generate(grpc::CallbackServerContext* ctx,
                                                                   const v1::GenerateRequest* req) {
  return new GenerateCall(this, ctx, req);
}

}  // namespace trams::server
