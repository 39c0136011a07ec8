// Prometheus metrics of trams-server: families built once, typed record methods, pull exposer on its
// own port. Names are trams_* with unit suffixes.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <map>

namespace prometheus {
class Exposer;
class Registry;
class Counter;
class Gauge;
class Histogram;
template <typename T>
class Family;
}  // namespace prometheus

namespace trams::engine {
struct EngineMemory;
}

namespace trams::server {

class Metrics {
 public:
  Metrics();
  ~Metrics();

  // Serves /metrics on `address` ("host:port"; port 0 picks one). Returns the bound port.
  int Serve(const std::string& address);

  void RequestDone(const std::string& method, const std::string& code, double seconds);
  void QueueWait(double seconds);
  void QueueLength(int64_t n);
  // The --max_queue limit (trams_queue_capacity), so that alerts can say "near full".
  void SetQueueCapacity(int64_t n);
  // 1 while grpc.health.v1 answers SERVING, 0 from the start of a drain (trams_health_serving).
  void SetServing(bool serving);
  void BatchSize(int64_t n);
  void ForwardSeconds(double seconds);
  void TokensScored(int64_t n);
  void TokensGenerated(int64_t n);
  void TimeToFirstToken(double seconds);
  void InterTokenLatency(double seconds);
  void SessionCreated();
  void SessionEvicted(const std::string& reason);
  void SetSessions(int64_t count, int64_t bytes_in_use);
  void SetMemoryBudget(int64_t bytes);
  void SetInputBufferBytes(int64_t bytes);
  void SetPoolBytes(const std::string& device, int64_t bytes);
  // Sessions whose pools live on `device` (trams_sessions_resident{device}).
  void SetSessionsResident(const std::string& device, int64_t count);
  // Where the pools live and how full it is, labelled device=m.device: trams_gpu_memory_{used,total}_bytes
  // only when m.has_device_memory, trams_pool_arena_{used,capacity,largest_free}_bytes only when m.has_arena
  // (on the host backend those series never appear: absent, not zero); trams_model_weights_bytes always.
  void SetEngineMemory(const engine::EngineMemory& m);
  // The exposition text /metrics would serve (for tests and diagnostics).
  std::string Text() const;
  // Sampled TRAMS statistics: attention probability on the attended memory tokens, and the share
  // plain XL's most recent m tokens would have received, both over the full pool.
  void SelectionShare(double selected_share, double recent_share);
  // Snapshots (server/snapshot_writer.h): `trigger` interval | drain | spill | export; failures by reason
  // (store | encode); restores by where from (store | pending | import) and their failures by reason.
  void SnapshotWritten(const std::string& trigger, int64_t bytes, double seconds);
  void SnapshotFailed(const std::string& reason);
  void SessionRestored(const std::string& source, double seconds);
  void RestoreFailed(const std::string& reason);
  void SessionSpilled();
  // Tenant quotas (--auth_keys): refusals by tenant and quota, and seconds calls were held back by the
  // tokens_per_second bucket.
  void QuotaRefused(const std::string& tenant, const std::string& quota);
  void Throttled(const std::string& tenant, double seconds);

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  std::unique_ptr<prometheus::Exposer> exposer_;
  prometheus::Family<prometheus::Histogram>* request_latency_;
  prometheus::Histogram* queue_wait_;
  prometheus::Gauge* queue_length_;
  prometheus::Gauge* queue_capacity_;
  prometheus::Gauge* health_serving_;
  prometheus::Histogram* batch_size_;
  prometheus::Histogram* forward_seconds_;
  prometheus::Counter* tokens_scored_;
  prometheus::Counter* tokens_generated_;
  prometheus::Histogram* ttft_;
  prometheus::Histogram* inter_token_;
  prometheus::Gauge* sessions_active_;
  prometheus::Counter* sessions_created_;
  prometheus::Family<prometheus::Counter>* sessions_evicted_;
  prometheus::Gauge* memory_in_use_;
  prometheus::Gauge* memory_budget_;
  prometheus::Gauge* input_buffer_bytes_;
  prometheus::Family<prometheus::Gauge>* pool_bytes_;
  prometheus::Family<prometheus::Gauge>* sessions_resident_;
  prometheus::Family<prometheus::Gauge>* gpu_memory_used_;
  prometheus::Family<prometheus::Gauge>* gpu_memory_total_;
  prometheus::Family<prometheus::Gauge>* arena_used_;
  prometheus::Family<prometheus::Gauge>* arena_capacity_;
  prometheus::Family<prometheus::Gauge>* arena_largest_free_;
  prometheus::Family<prometheus::Gauge>* weights_bytes_;
  prometheus::Histogram* selected_share_;
  prometheus::Histogram* recent_share_;
  prometheus::Family<prometheus::Counter>* snapshots_written_;
  prometheus::Family<prometheus::Counter>* snapshots_failed_;
  prometheus::Family<prometheus::Counter>* sessions_restored_;
  prometheus::Family<prometheus::Counter>* restores_failed_;
  prometheus::Counter* sessions_spilled_;
  prometheus::Family<prometheus::Counter>* quota_refusals_;
  prometheus::Family<prometheus::Counter>* throttled_seconds_;
  prometheus::Histogram* snapshot_bytes_;
  prometheus::Histogram* snapshot_seconds_;
  prometheus::Histogram* restore_seconds_;
  std::mutex mu_;  // guards the label caches below
  std::map<std::pair<std::string, std::string>, prometheus::Histogram*> request_children_;
};

}  // namespace trams::server
