// One blocking Score or Generate call on the generated stub, with an optional disturbance (a cancel at a
// random time, after some responses or before the half-close, or a short deadline), and everything the
// call streamed back. Used by the workload and by the replay. No ground truth here: see soak_session.h.
#pragma once

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "bench/soak/cancel_timer.h"
#include "trams/v1/trams.grpc.pb.h"

namespace trams::soak {

namespace v1 = ::trams::v1;

struct Disturbance {
  enum class Kind {
    kNone,                 // only the safety deadline
    kCancelTimer,          // TryCancel `after` the call starts
    kCancelAfterResponses, // TryCancel once `responses` messages have arrived
    kCancelBeforeHalfClose,// Score: TryCancel after writing the input, instead of half-closing
    kDeadline,             // deadline `after` the call starts
  };
  Kind kind = Kind::kNone;
  std::chrono::microseconds after{0};
  int responses = 1;

  bool cancels() const { return kind == Kind::kCancelTimer || kind == Kind::kCancelAfterResponses ||
                                kind == Kind::kCancelBeforeHalfClose; }
  bool deadline() const { return kind == Kind::kDeadline; }
};
const char* DisturbanceName(Disturbance::Kind kind);

// A token as the server streamed it.
struct SeenToken {
  int32_t id = 0;
  int64_t position = 0;
  bool has_logprob = false;
  float logprob = 0;
  std::string text;
};

struct CallResult {
  grpc::Status status;
  std::vector<SeenToken> tokens;  // arrival order
  int64_t last_position = -1;     // `position` of the last response (-1: none)
  int responses = 0;
  v1::FinishReason finish = v1::FINISH_REASON_UNSPECIFIED;
  double seconds = 0;
};

struct CallContext {
  v1::TramsService::Stub* stub = nullptr;
  CancelTimer* timer = nullptr;
  std::chrono::seconds safety_deadline{120};  // every call: a hang fails instead of blocking the run
};

// `messages[0]` must carry the session id (and expected position / options); the session id also goes
// into the `x-session-id` metadata. An empty `messages` sends nothing and half-closes at once.
CallResult RunScore(const CallContext& cc, const std::string& session_id, const std::vector<v1::ScoreRequest>& messages,
                    const Disturbance& disturbance);
CallResult RunGenerate(const CallContext& cc, const v1::GenerateRequest& request, const Disturbance& disturbance);

}  // namespace trams::soak
