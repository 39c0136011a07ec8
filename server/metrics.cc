#include "server/metrics.h"

#include <prometheus/counter.h>
#include <prometheus/exposer.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

#include "engine/engine.h"

namespace trams::server {
namespace {

prometheus::Histogram::BucketBoundaries LatencyBuckets() {
  return {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300};
}

}  // namespace

Metrics::Metrics() : registry_(std::make_shared<prometheus::Registry>()) {
  using namespace prometheus;
  request_latency_ = &BuildHistogram()
                          .Name("trams_request_duration_seconds")
                          .Help("RPC latency from call start to finish, by method and gRPC status code")
                          .Register(*registry_);
  queue_wait_ = &BuildHistogram()
                     .Name("trams_queue_wait_seconds")
                     .Help("Time a segment waits in the scheduler queue before its forward starts")
                     .Register(*registry_)
                     .Add({}, LatencyBuckets());
  queue_length_ = &BuildGauge()
                       .Name("trams_queue_length")
                       .Help("Segments waiting for the engine")
                       .Register(*registry_)
                       .Add({});
  queue_capacity_ = &BuildGauge()
                         .Name("trams_queue_capacity")
                         .Help("Most segments the engine queue holds before new work is refused (--max_queue)")
                         .Register(*registry_)
                         .Add({});
  health_serving_ = &BuildGauge()
                         .Name("trams_health_serving")
                         .Help("1 while grpc.health.v1 answers SERVING, 0 before serving and while draining")
                         .Register(*registry_)
                         .Add({});
  batch_size_ = &BuildHistogram()
                     .Name("trams_batch_size")
                     .Help("Segments (sessions) per engine forward")
                     .Register(*registry_)
                     .Add({}, Histogram::BucketBoundaries{1, 2, 4, 8, 16, 32, 64, 128});
  forward_seconds_ = &BuildHistogram()
                          .Name("trams_forward_seconds")
                          .Help("Wall time of one batched engine forward")
                          .Register(*registry_)
                          .Add({}, LatencyBuckets());
  tokens_scored_ = &BuildCounter()
                        .Name("trams_tokens_scored_total")
                        .Help("Tokens given a log-probability by Score")
                        .Register(*registry_)
                        .Add({});
  tokens_generated_ = &BuildCounter()
                           .Name("trams_tokens_generated_total")
                           .Help("Tokens sampled by Generate")
                           .Register(*registry_)
                           .Add({});
  ttft_ = &BuildHistogram()
               .Name("trams_generate_time_to_first_token_seconds")
               .Help("Generate: call start to the first token written")
               .Register(*registry_)
               .Add({}, LatencyBuckets());
  inter_token_ = &BuildHistogram()
                      .Name("trams_generate_inter_token_seconds")
                      .Help("Generate: time between consecutive tokens")
                      .Register(*registry_)
                      .Add({}, LatencyBuckets());
  sessions_active_ = &BuildGauge().Name("trams_sessions_active").Help("Sessions held").Register(*registry_).Add({});
  sessions_created_ = &BuildCounter()
                           .Name("trams_sessions_created_total")
                           .Help("Sessions created")
                           .Register(*registry_)
                           .Add({});
  sessions_evicted_ = &BuildCounter()
                           .Name("trams_sessions_evicted_total")
                           .Help("Sessions removed by the server, by reason (memory_budget, max_sessions, idle_ttl)")
                           .Register(*registry_);
  for (const char* reason : {"memory_budget", "max_sessions", "idle_ttl"}) {
    sessions_evicted_->Add({{"reason", reason}});  // exported from zero, so rate() and increase() work at once
  }
  snapshots_written_ = &BuildCounter()
                            .Name("trams_snapshots_written_total")
                            .Help("Session snapshots written to the store, by trigger (interval, drain, spill)")
                            .Register(*registry_);
  for (const char* trigger : {"interval", "drain", "spill"}) snapshots_written_->Add({{"trigger", trigger}});
  snapshots_failed_ = &BuildCounter()
                           .Name("trams_snapshots_failed_total")
                           .Help("Session snapshots not written, by reason (store, encode)")
                           .Register(*registry_);
  for (const char* reason : {"store", "encode"}) snapshots_failed_->Add({{"reason", reason}});
  sessions_restored_ = &BuildCounter()
                            .Name("trams_sessions_restored_total")
                            .Help("Sessions restored, by source (store, pending: not yet written, import)")
                            .Register(*registry_);
  for (const char* source : {"store", "pending", "import"}) sessions_restored_->Add({{"source", source}});
  restores_failed_ = &BuildCounter()
                          .Name("trams_restores_failed_total")
                          .Help("Restores refused, by reason (data_loss, wrong_model, store, no_room)")
                          .Register(*registry_);
  for (const char* reason : {"data_loss", "wrong_model", "store", "no_room"}) restores_failed_->Add({{"reason", reason}});
  sessions_spilled_ = &BuildCounter()
                           .Name("trams_sessions_spilled_total")
                           .Help("Idle sessions moved from memory to the store to make room (restored on next use)")
                           .Register(*registry_)
                           .Add({});
  quota_refusals_ = &BuildCounter()
                        .Name("trams_quota_refusals_total")
                        .Help("Requests refused by a tenant quota of --auth_keys, by tenant and quota")
                        .Register(*registry_);
  throttled_seconds_ = &BuildCounter()
                           .Name("trams_throttled_seconds_total")
                           .Help("Seconds segments waited for their tenant's tokens_per_second quota, by tenant")
                           .Register(*registry_);
  snapshot_bytes_ = &BuildHistogram()
                         .Name("trams_snapshot_bytes")
                         .Help("Size of one written session snapshot")
                         .Register(*registry_)
                         .Add({}, Histogram::BucketBoundaries{1e4, 1e5, 1e6, 4e6, 1.6e7, 6.4e7, 2.56e8, 1e9});
  snapshot_seconds_ = &BuildHistogram()
                           .Name("trams_snapshot_seconds")
                           .Help("Time to encode and write one session snapshot")
                           .Register(*registry_)
                           .Add({}, LatencyBuckets());
  restore_seconds_ = &BuildHistogram()
                          .Name("trams_restore_seconds")
                          .Help("Time to read, check and import one session (a caller waits for it)")
                          .Register(*registry_)
                          .Add({}, LatencyBuckets());
  memory_budget_ = &BuildGauge()
                        .Name("trams_memory_budget_bytes")
                        .Help("Capacity of the session memory budget (--memory_budget_mb), in bytes")
                        .Register(*registry_)
                        .Add({});
  input_buffer_bytes_ = &BuildGauge()
                             .Name("trams_input_buffer_bytes")
                             .Help("Input received by running calls and not yet run (text and ids), in bytes")
                             .Register(*registry_)
                             .Add({});
  memory_in_use_ = &BuildGauge()
                        .Name("trams_memory_budget_used_bytes")
                        .Help("Bytes counted against the session memory budget (pools + undo reservations)")
                        .Register(*registry_)
                        .Add({});
  pool_bytes_ = &BuildGauge()
                     .Name("trams_pool_bytes")
                     .Help("Bytes of session memory pools, by device")
                     .Register(*registry_);
  sessions_resident_ = &BuildGauge()
                            .Name("trams_sessions_resident")
                            .Help("Sessions whose memory pools live on the device")
                            .Register(*registry_);
  // Device and arena families are registered empty: a child (series) appears only once an engine that has
  // that memory reports it, so the host backend exports none of them.
  gpu_memory_used_ = &BuildGauge()
                          .Name("trams_gpu_memory_used_bytes")
                          .Help("Device memory in use on the whole device, every process (total - free of "
                                "cudaMemGetInfo); absent on the host backend")
                          .Register(*registry_);
  gpu_memory_total_ = &BuildGauge()
                           .Name("trams_gpu_memory_total_bytes")
                           .Help("Device memory of the device (cudaMemGetInfo total); absent on the host backend")
                           .Register(*registry_);
  arena_used_ = &BuildGauge()
                     .Name("trams_pool_arena_used_bytes")
                     .Help("Bytes of the session-pool arena held by session pools; absent on the host backend")
                     .Register(*registry_);
  arena_capacity_ = &BuildGauge()
                         .Name("trams_pool_arena_capacity_bytes")
                         .Help("Capacity of the session-pool arena (--gpu_pool_bytes or --gpu_memory_fraction); "
                               "absent on the host backend")
                         .Register(*registry_);
  arena_largest_free_ = &BuildGauge()
                             .Name("trams_pool_arena_largest_free_bytes")
                             .Help("Largest free block of the session-pool arena (the largest pool that still fits); "
                                   "absent on the host backend")
                             .Register(*registry_);
  weights_bytes_ = &BuildGauge()
                        .Name("trams_model_weights_bytes")
                        .Help("Bytes of model weights and precomputed tables where the math runs, by device")
                        .Register(*registry_);
  auto& share = BuildHistogram()
                    .Name("trams_attention_memory_share_ratio")
                    .Help("Sampled: attention probability on m memory tokens over the full pool; "
                          "selection=trams is what TRAMS attends, selection=recent is XL's newest m")
                    .Register(*registry_);
  Histogram::BucketBoundaries ratio{0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0};
  selected_share_ = &share.Add({{"selection", "trams"}}, ratio);
  recent_share_ = &share.Add({{"selection", "recent"}}, ratio);
}

Metrics::~Metrics() = default;

int Metrics::Serve(const std::string& address) {
  exposer_ = std::make_unique<prometheus::Exposer>(address);
  exposer_->RegisterCollectable(registry_);
  const auto ports = exposer_->GetListeningPorts();
  return ports.empty() ? 0 : ports.front();
}

void Metrics::RequestDone(const std::string& method, const std::string& code, double seconds) {
  prometheus::Histogram* h;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto& slot = request_children_[{method, code}];
    if (slot == nullptr) slot = &request_latency_->Add({{"method", method}, {"code", code}}, LatencyBuckets());
    h = slot;
  }
  h->Observe(seconds);
}

void Metrics::QueueWait(double seconds) { queue_wait_->Observe(seconds); }
void Metrics::QueueLength(int64_t n) { queue_length_->Set(static_cast<double>(n)); }
void Metrics::SetQueueCapacity(int64_t n) { queue_capacity_->Set(static_cast<double>(n)); }
void Metrics::SetServing(bool serving) { health_serving_->Set(serving ? 1.0 : 0.0); }
void Metrics::BatchSize(int64_t n) { batch_size_->Observe(static_cast<double>(n)); }
void Metrics::ForwardSeconds(double seconds) { forward_seconds_->Observe(seconds); }
void Metrics::TokensScored(int64_t n) { tokens_scored_->Increment(static_cast<double>(n)); }
void Metrics::TokensGenerated(int64_t n) { tokens_generated_->Increment(static_cast<double>(n)); }
void Metrics::TimeToFirstToken(double seconds) { ttft_->Observe(seconds); }
void Metrics::InterTokenLatency(double seconds) { inter_token_->Observe(seconds); }
void Metrics::SessionCreated() { sessions_created_->Increment(); }
void Metrics::SessionEvicted(const std::string& reason) { sessions_evicted_->Add({{"reason", reason}}).Increment(); }
void Metrics::SetSessions(int64_t count, int64_t bytes_in_use) {
  sessions_active_->Set(static_cast<double>(count));
  memory_in_use_->Set(static_cast<double>(bytes_in_use));
}
void Metrics::SetMemoryBudget(int64_t bytes) { memory_budget_->Set(static_cast<double>(bytes)); }
void Metrics::SetInputBufferBytes(int64_t bytes) { input_buffer_bytes_->Set(static_cast<double>(bytes)); }
std::string Metrics::Text() const { return prometheus::TextSerializer().Serialize(registry_->Collect()); }
void Metrics::SetPoolBytes(const std::string& device, int64_t bytes) {
  pool_bytes_->Add({{"device", device}}).Set(static_cast<double>(bytes));
}
void Metrics::SetSessionsResident(const std::string& device, int64_t count) {
  sessions_resident_->Add({{"device", device}}).Set(static_cast<double>(count));
}
void Metrics::SetEngineMemory(const engine::EngineMemory& m) {
  // Family::Add returns the existing child for known labels, so this only adds series the first time.
  const prometheus::Labels device{{"device", m.device}};
  auto set = [&](prometheus::Family<prometheus::Gauge>* family, int64_t bytes) {
    family->Add(device).Set(static_cast<double>(bytes));
  };
  if (m.has_device_memory) {
    set(gpu_memory_used_, m.device_used_bytes);
    set(gpu_memory_total_, m.device_total_bytes);
  }
  if (m.has_arena) {
    set(arena_used_, m.arena_used_bytes);
    set(arena_capacity_, m.arena_capacity_bytes);
    set(arena_largest_free_, m.arena_largest_free_bytes);
  }
  set(weights_bytes_, m.weights_bytes);
}
void Metrics::SnapshotWritten(const std::string& trigger, int64_t bytes, double seconds) {
  snapshots_written_->Add({{"trigger", trigger}}).Increment();
  snapshot_bytes_->Observe(static_cast<double>(bytes));
  snapshot_seconds_->Observe(seconds);
}
void Metrics::SnapshotFailed(const std::string& reason) { snapshots_failed_->Add({{"reason", reason}}).Increment(); }
void Metrics::SessionRestored(const std::string& source, double seconds) {
  sessions_restored_->Add({{"source", source}}).Increment();
  restore_seconds_->Observe(seconds);
}
void Metrics::RestoreFailed(const std::string& reason) { restores_failed_->Add({{"reason", reason}}).Increment(); }
void Metrics::SessionSpilled() { sessions_spilled_->Increment(); }
void Metrics::QuotaRefused(const std::string& tenant, const std::string& quota) {
  quota_refusals_->Add({{"tenant", tenant}, {"quota", quota}}).Increment();
}
void Metrics::Throttled(const std::string& tenant, double seconds) {
  throttled_seconds_->Add({{"tenant", tenant}}).Increment(seconds);
}
void Metrics::SelectionShare(double selected_share, double recent_share) {
  selected_share_->Observe(selected_share);
  recent_share_->Observe(recent_share);
}

}  // namespace trams::server
