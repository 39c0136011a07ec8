// Options of trams-server, grouped; defaults inline. Filled from flags in main.cc.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "engine/open_engine.h"
#include "engine/trams_settings.h"

namespace trams::server {

enum class EvictionPolicy {
  kLeastRecentlyUsed,  // make room by evicting idle sessions, oldest use first (the next caller is told)
  kRefuse,             // answer RESOURCE_EXHAUSTED
};

struct SessionLimits {
  int max_sessions = 1024;
  int64_t memory_budget_bytes = int64_t{4} << 30;  // pools + undo logs of running calls
  EvictionPolicy eviction = EvictionPolicy::kLeastRecentlyUsed;
  int idle_ttl_seconds = 3600;  // 0: never expire
  int max_mem_len = 4096;
  int max_segment_len = 512;
};

struct SessionDefaults {
  engine::TramsSettings memory = engine::TramsSettings::Trams(400, 50, 150);
  int segment_len = 64;
  // M of a session that asks for XL without a size, when the default mode attends nothing (otherwise XL
  // attends as many tokens as the default mode: its m).
  int xl_mem_len = 200;
};

struct SchedulerOptions {
  int max_batch = 64;      // segments (one per session) per engine forward
  int max_queue = 1024;    // queued segments before new work is refused
  int batch_wait_us = 300; // how long the worker waits for more ready sessions to join a batch
};

struct RequestLimits {
  int max_alternatives = 20;
  int default_generate_tokens = 64;  // a Generate call without max_tokens
  int max_generate_tokens = 4096;
  int64_t max_chunk_bytes = 4 << 20;
  int64_t max_pending_text_bytes = 1 << 20;  // text buffered while it ends inside a word
  // All calls' input buffers together (text and ids received, not yet run): a budget of their own, so
  // that the session budget stays byte-exact over pools and undo logs.
  int64_t input_buffer_budget_bytes = int64_t{256} << 20;
  int max_stop_strings = 16;
};

// Connections: half-open and idle ones are closed, so they hold no server resources.
struct ConnectionLimits {
  int max_idle_seconds = 1800;  // no call for this long: the server closes the connection (0: never)
  int max_age_seconds = 0;      // close (gracefully: running calls get max_age_grace) after this long (0: never)
  int max_age_grace_seconds = 600;
  int keepalive_seconds = 120;  // ping a connection this often; one that does not answer within 20 s is dropped
};

// TLS on the gRPC port (server/README.md, "Security").
struct TlsOptions {
  std::string cert;       // PEM certificate chain; with `key`, the port speaks only TLS
  std::string key;        // PEM private key
  std::string client_ca;  // PEM CA bundle: clients must present a certificate it signed (mTLS)
  int reload_seconds = 60;  // how often the files are checked for new contents (rotation without a restart)
  // With client_ca: a call without an API key is the tenant its certificate's subject CN names.
  bool client_tenants = false;
  bool enabled() const { return !cert.empty() || !key.empty(); }
};

// Snapshots and the state store (server/README.md, "Persistence").
struct PersistenceOptions {
  std::string state_dir;               // local directory store; empty: sessions live in memory only
  std::string state_store;             // redis://HOST:PORT[/DB]: shared by replicas (exclusive with state_dir)
  int lease_seconds = 10;              // a replica's claim on a session in a shared store, renewed every second
  std::string replica_id;              // in the lease keys; empty: <hostname>-<pid>-<random>
  std::string state_store_password_file;  // Redis AUTH password, from a file (never argv: `ps` shows argv)
  int snapshot_interval_seconds = 0;   // > 0: changed sessions are written this often (SIGKILL loses at most that)
  std::string snapshot_compression = "none";  // none | zstd (bench/README.md, "Snapshots")
};

struct ServerOptions {
  std::string model_dir;
  // Loopback by default: serving other machines is a choice (there is no authentication yet).
  std::string listen = "127.0.0.1:50051";
  std::string metrics_listen = "127.0.0.1:9464";  // empty: no metrics endpoint
  std::optional<bool> reflection;                   // grpc.reflection.v1alpha; unset: on unless auth_keys
  std::string auth_keys;                            // API keys file (auth_keys.h); empty: no authentication
  std::string port_file;                          // written after start: "<grpc port> <metrics port>"
  engine::DeviceChoice device;                            // where the pools live and the math runs; threads
  int drain_seconds = 10;                         // graceful shutdown deadline
  int memory_share_every = 50;                    // sample the TRAMS attention statistic every N segments (0: off)
  SessionLimits limits;
  SessionDefaults defaults;
  SchedulerOptions scheduler;
  RequestLimits requests;
  ConnectionLimits connections;
  PersistenceOptions persistence;
  TlsOptions tls;
};

}  // namespace trams::server
