// Blocking Score / Generate calls with their disturbances (see soak_calls.h).
#include "bench/soak/soak_calls.h"

#include <optional>

namespace trams::soak {
namespace {

using Clock = std::chrono::steady_clock;

// The context's deadline and metadata, and the timed cancel if any; Finish() unregisters the cancel.
class DisturbedContext {
 public:
  DisturbedContext(const CallContext& cc, const std::string& session_id, const Disturbance& d)
      : timer_(cc.timer), start_(Clock::now()) {
    const auto now = std::chrono::system_clock::now();
    ctx_.set_deadline(d.deadline() ? now + d.after : now + cc.safety_deadline);
    ctx_.AddMetadata("x-session-id", session_id);
    if (d.kind == Disturbance::Kind::kCancelTimer) timer_id_ = timer_->Schedule(&ctx_, start_ + d.after);
  }
  ~DisturbedContext() { Unregister(); }
  void Unregister() {
    if (timer_id_.has_value()) timer_->Done(*timer_id_);
    timer_id_.reset();
  }
  grpc::ClientContext* get() { return &ctx_; }
  double seconds() const { return std::chrono::duration<double>(Clock::now() - start_).count(); }

 private:
  grpc::ClientContext ctx_;
  CancelTimer* timer_;
  Clock::time_point start_;
  std::optional<uint64_t> timer_id_;
};

void Collect(const google::protobuf::RepeatedPtrField<v1::TokenScore>& tokens, CallResult* r) {
  for (const v1::TokenScore& t : tokens) {
    SeenToken s;
    s.id = t.id();
    s.position = t.position();
    s.has_logprob = t.has_logprob();
    s.logprob = t.logprob();
    s.text = t.text();
    r->tokens.push_back(std::move(s));
  }
}

}  // namespace

const char* DisturbanceName(Disturbance::Kind kind) {
  switch (kind) {
    case Disturbance::Kind::kNone: return "none";
    case Disturbance::Kind::kCancelTimer: return "cancel_timer";
    case Disturbance::Kind::kCancelAfterResponses: return "cancel_after_responses";
    case Disturbance::Kind::kCancelBeforeHalfClose: return "cancel_before_half_close";
    case Disturbance::Kind::kDeadline: return "deadline";
  }
  return "?";
}

CallResult RunScore(const CallContext& cc, const std::string& session_id, const std::vector<v1::ScoreRequest>& messages,
                    const Disturbance& d) {
  DisturbedContext ctx(cc, session_id, d);
  CallResult r;
  auto stream = cc.stub->Score(ctx.get());
  // The input is small (a few KB at most), so writing all of it before reading cannot fill the flow-control
  // windows of both directions; the server answers while it reads.
  bool writing = true;
  for (const v1::ScoreRequest& m : messages) {
    if (!stream->Write(m)) {
      writing = false;  // the call is over; Finish() says why
      break;
    }
  }
  if (writing) {
    if (d.kind == Disturbance::Kind::kCancelBeforeHalfClose) {
      ctx.get()->TryCancel();
    } else {
      stream->WritesDone();
    }
  }
  v1::ScoreResponse resp;
  while (stream->Read(&resp)) {
    ++r.responses;
    r.last_position = resp.position();
    Collect(resp.tokens(), &r);
    if (d.kind == Disturbance::Kind::kCancelAfterResponses && r.responses == d.responses) ctx.get()->TryCancel();
  }
  r.status = stream->Finish();
  ctx.Unregister();
  r.seconds = ctx.seconds();
  return r;
}

CallResult RunGenerate(const CallContext& cc, const v1::GenerateRequest& request, const Disturbance& d) {
  DisturbedContext ctx(cc, request.session_id(), d);
  CallResult r;
  auto reader = cc.stub->Generate(ctx.get(), request);
  v1::GenerateResponse resp;
  while (reader->Read(&resp)) {
    ++r.responses;
    r.last_position = resp.position();
    if (resp.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) r.finish = resp.finish_reason();
    Collect(resp.tokens(), &r);
    if ((d.kind == Disturbance::Kind::kCancelAfterResponses || d.kind == Disturbance::Kind::kCancelBeforeHalfClose) &&
        r.responses == d.responses) {
      ctx.get()->TryCancel();
    }
  }
  r.status = reader->Finish();
  ctx.Unregister();
  r.seconds = ctx.seconds();
  return r;
}

}  // namespace trams::soak
