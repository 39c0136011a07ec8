// The tool's ground truth of one session: the tokens every committed call appended, the last log-prob the
// server reported for each (a later call may answer an earlier call's provisional tail again), and how
// the calls split the stream (the replay repeats the same calls). Touched by one thread at a time: the
// worker that owns the session during the run, one replay thread afterwards.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "trams/v1/trams.pb.h"

namespace trams::soak {

enum class LogProb : uint8_t {
  kAbsent,   // the server reported none (the session's first token)
  kValue,    // reported: `logprob`
  kUnknown,  // committed but never seen by the tool (a Generate prompt; responses lost to a cancel race)
};

struct TruthToken {
  int32_t id = 0;
  float logprob = 0;
  LogProb state = LogProb::kUnknown;
};

enum class CallKind : uint8_t { kScore, kGenerate };

// One committed call: tokens [start, start + n); a Generate call's first `prompt` of them were its prompt,
// the rest were sampled, and `generate` indexes its request in SessionTruth::generate_requests.
struct CallSplit {
  CallKind kind = CallKind::kScore;
  int64_t start = 0;
  int32_t prompt = 0;
  int32_t n = 0;
  int32_t generate = -1;
};

// Every Score / Generate call the workload made on the session, for explaining a corrupted one.
struct CallEvent {
  CallKind kind = CallKind::kScore;
  int64_t start = 0;
  int32_t sent = 0;       // tokens (or bytes) sent; Generate: prompt tokens
  int32_t back = 0;       // earlier tail positions answered again
  int32_t seen = 0;       // own tokens streamed back
  int32_t responses = 0;
  int code = 0;           // grpc::StatusCode
  const char* disturbance = "";
  char outcome = '?';     // C committed, R rolled back, c committed despite cancel/deadline, X retired
};

struct SessionTruth {
  std::string id;
  v1::CreateSessionRequest create;  // as the tool asked for it (session_id: `id`); the replay asks the same
  v1::Session effective;            // what CreateSession answered (effective settings)
  std::vector<TruthToken> tokens;
  std::vector<CallSplit> calls;
  std::vector<v1::GenerateRequest> generate_requests;  // of the committed Generate calls, as sent
  std::vector<CallEvent> history;
  bool retired = false;             // no longer used by the workload (deleted, or its state became unknown)
  std::string retired_why;
  // Workload cursors into the corpus.
  size_t text_pos = 0;
  size_t ids_pos = 0;

  int64_t position() const { return static_cast<int64_t>(tokens.size()); }
  bool trams() const { return create.memory().mode() == v1::MEMORY_MODE_TRAMS; }
};

}  // namespace trams::soak
