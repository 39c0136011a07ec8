// The mixed soak workload: worker threads, each owning a fixed share of the session slots, loop over
// Score (text or ids, random chunking and options), Generate (seeded sampling, optional prompt and stop
// string), GetSession, ListSessions, ExplainSelection and session churn (delete + create), disturbing a
// fraction of the streaming calls with cancels and short deadlines. Every call's outcome is checked
// against the ground truth (status code, positions, token counts) and, when it commits, extends it. A call
// the tool cancelled or timed out is resolved afterwards with GetSession: rolled back, committed (the
// server finished first), or unknown (then the session is retired and a fresh one takes its slot).
#pragma once

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "bench/soak/cancel_timer.h"
#include "bench/soak/soak_calls.h"
#include "bench/soak/soak_session.h"
#include "bench/soak/soak_stats.h"

namespace trams::soak {

struct WorkloadOptions {
  int sessions = 256;
  int threads = 0;                 // 0: one per session
  double duration_s = 180;
  uint64_t seed = 1;
  double cancel_fraction = 0.1;    // of Score/Generate calls
  double deadline_fraction = 0.1;  // of Score/Generate calls
  double churn_fraction = 0.005;   // of iterations: delete a session and create a fresh one in its slot
  int max_score_tokens = 256;      // per Score call (tokens or bytes)
  int max_chunk = 64;              // per Score message
  int max_gen_tokens = 32;
  int max_prompt = 48;
  bool mixed_settings = true;      // random mode / M / m / segment_len per session; else server defaults
  std::chrono::seconds call_timeout{120};
  std::set<int> allowed_codes;     // extra codes counted as expected (e.g. RESOURCE_EXHAUSTED on a full server)
  std::string prefix = "soak";
};

// The text and token ids the calls draw their input from.
struct Corpus {
  std::string text;
  std::vector<int32_t> ids;   // the text as the server tokenized it (random ids for an ids-only model)
  bool has_text = true;       // the model has a tokenizer
  bool byte_tokenizer = true; // ids of a text are its bytes (lets the tool resolve text calls it lost)
  int64_t vocab = 256;
};

class Workload {
 public:
  Workload(const WorkloadOptions& options, const Corpus& corpus, std::vector<std::shared_ptr<grpc::Channel>> channels,
           Stats* stats, CancelTimer* timer);
  ~Workload();

  absl::Status CreateSessions();  // the initial sessions (one per slot)
  void Run(const std::atomic<bool>& stop);  // blocks until duration_s passed (or stop) and all workers ended
  void FinalCheck();              // every live session: GetSession position == ground truth, not busy
  absl::Status DeleteAll();       // deletes the live sessions (an external server is left clean)

  int live_sessions() const;
  // All sessions ever used (retired ones included); valid after Run().
  std::vector<SessionTruth*> sessions();

 private:
  struct Worker;
  void WorkerLoop(int w, std::chrono::steady_clock::time_point end, const std::atomic<bool>& stop);
  absl::Status CreateInSlot(Worker& wk, int slot);
  v1::CreateSessionRequest RandomSettings(std::mt19937_64& rng) const;

  void DoScore(Worker& wk, SessionTruth& s);
  void DoGenerate(Worker& wk, SessionTruth& s);
  void DoGetSession(Worker& wk, SessionTruth& s);
  void DoListSessions(Worker& wk);
  void DoExplain(Worker& wk, SessionTruth& s);
  void DoChurn(Worker& wk, int slot);
  void DeleteOnServer(Worker& wk, const SessionTruth& s, bool must_exist);

  Disturbance PickDisturbance(std::mt19937_64& rng, Method m, bool score) const;
  bool ExpectedCode(const Disturbance& d, grpc::StatusCode code) const;
  // After a call that did not end OK: waits until the session is idle and returns its committed position
  // (-1 if it is gone or stays busy; then the session is retired).
  int64_t SettledPosition(Worker& wk, SessionTruth& s);
  void Retire(SessionTruth& s, const std::string& why);

  WorkloadOptions options_;
  const Corpus& corpus_;
  std::vector<std::shared_ptr<grpc::Channel>> channels_;
  Stats* stats_;
  CancelTimer* timer_;

  mutable std::mutex mu_;
  std::vector<std::unique_ptr<SessionTruth>> all_;  // every session ever created, never shrinks
  std::vector<SessionTruth*> slots_;                // slot -> current session (its worker's only)
  std::map<std::string, int64_t> live_;             // id -> creation sequence (for the ListSessions check)
  int64_t create_seq_ = 0;
  std::vector<std::unique_ptr<Worker>> workers_;
};

}  // namespace trams::soak
