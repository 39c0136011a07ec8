#include "server/transfer_calls.h"

#include <chrono>
#include <mutex>
#include <string>

#include "absl/strings/str_cat.h"
#include "server/metrics.h"
#include "server/proto_convert.h"
#include "server/request_record.h"
#include "server/session_id.h"
#include "server/session_manager.h"

namespace trams::server {
namespace {

using Clock = std::chrono::steady_clock;

// The tenant's running-call slot (max_concurrent_calls) for the life of a transfer call.
struct CallSlot {
  CallSlot(const CallEnv* call_env, const std::string& caller) : env(call_env), tenant(caller) {
    if (env->tenants != nullptr) status = env->tenants->StartCall(tenant);
  }
  ~CallSlot() {
    if (env->tenants != nullptr && status.ok()) env->tenants->EndCall(tenant);
  }
  CallSlot(const CallSlot&) = delete;
  CallSlot& operator=(const CallSlot&) = delete;
  const CallEnv* env;
  const std::string tenant;
  absl::Status status;
};

class ExportCall final : public grpc::ServerWriteReactor<v1::SessionChunk> {
 public:
  ExportCall(const CallEnv* env, grpc::CallbackServerContext* ctx, const v1::ExportSessionRequest* req,
             const std::string& tenant)
      : env_(env), slot_(env, tenant), record_(ctx, "ExportSession", env->metrics) {
    record_.set_tenant(tenant);
    env_->calls->Started();
    if (!slot_.status.ok()) {
      End(slot_.status);
      return;
    }
    absl::StatusOr<std::string> id = SessionIdOf(ctx, req->session_id(), tenant);
    if (!id.ok()) {
      End(id.status());
      return;
    }
    record_.set_session(*id);
    env_->sessions->ExportImage(*id, [this](absl::StatusOr<SessionImage> image) {
      if (!image.ok()) return End(image.status());
      image->record.id = std::string(BareSessionId(image->record.id));  // the blob names no tenant
      absl::StatusOr<std::string> blob = env_->sessions->EncodeImage(*image);
      if (!blob.ok()) return End(blob.status());
      blob_ = *std::move(blob);
      WriteNext();
    });
  }
  ~ExportCall() override { env_->calls->Ended(); }

  void OnWriteDone(bool ok) override {
    if (!ok) return End(absl::CancelledError("the client stopped reading the snapshot"));
    WriteNext();
  }
  void OnDone() override { delete this; }

 private:
  void WriteNext() {
    if (sent_ >= blob_.size() && sent_ > 0) return End(absl::OkStatus());
    const size_t n = std::min(kSnapshotChunkBytes, blob_.size() - sent_);
    chunk_.set_data(blob_.substr(sent_, n));
    chunk_.set_total_bytes(static_cast<int64_t>(blob_.size()));
    sent_ += n;
    StartWrite(&chunk_);
  }
  void End(const absl::Status& s) { Finish(record_.Finish(s)); }

  const CallEnv* env_;
  const CallSlot slot_;
  RequestRecord record_;
  std::string blob_;
  size_t sent_ = 0;
  v1::SessionChunk chunk_;
};

class ImportCall final : public grpc::ServerReadReactor<v1::ImportSessionRequest> {
 public:
  ImportCall(const CallEnv* env, grpc::CallbackServerContext* ctx, v1::Session* resp, std::string tenant)
      : env_(env), ctx_(ctx), resp_(resp), tenant_(std::move(tenant)), slot_(env, tenant_), start_(Clock::now()),
        record_(ctx, "ImportSession", env->metrics),
        max_bytes_(static_cast<size_t>(env->options->limits.memory_budget_bytes) + (size_t{64} << 20)) {
    record_.set_tenant(tenant_);
    env_->calls->Started();
    if (env_->calls->draining()) {
      End(absl::UnavailableError("the server is shutting down"));
      return;
    }
    if (!slot_.status.ok()) {
      End(slot_.status);
      return;
    }
    StartRead(&req_);
  }
  ~ImportCall() override { env_->calls->Ended(); }

  void OnReadDone(bool ok) override {
    if (!ok) return Import();  // the client half-closed: the snapshot is complete
    if (first_) {
      first_ = false;
      id_ = req_.session_id().empty() ? SessionIdHeader(ctx_) : req_.session_id();
      if (!id_.empty() && !IsValidSessionId(id_)) return End(InvalidSessionId(id_));
      replace_ = req_.replace();
    } else if (!req_.session_id().empty() || req_.replace()) {
      return End(absl::InvalidArgumentError("session_id and replace belong in the first message only"));
    }
    if (req_.data().size() > max_bytes_ - blob_.size()) {
      return End(absl::ResourceExhaustedError(absl::StrCat(
          "the snapshot exceeds ", max_bytes_, " bytes, more than this server's memory budget could hold")));
    }
    blob_.append(req_.data());
    StartRead(&req_);
  }
  void OnDone() override { delete this; }

 private:
  void Import() {
    if (blob_.empty()) return End(absl::InvalidArgumentError("no snapshot bytes were sent"));
    absl::StatusOr<SessionImage> image = env_->sessions->DecodeImage(blob_);
    blob_.clear();
    if (!image.ok()) return End(image.status());
    // Into the caller's tenant, whoever exported it: under the id asked for, else the snapshot's own.
    const std::string id = ScopedSessionId(tenant_, id_.empty() ? BareSessionId(image->record.id) : id_);
    record_.set_session(id);
    absl::StatusOr<SessionSnapshot> s = env_->sessions->Insert(*std::move(image), id, replace_);
    if (!s.ok()) return End(s.status());
    if (env_->metrics) env_->metrics->SessionRestored("import", std::chrono::duration<double>(Clock::now() - start_).count());
    ToProto(*s, resp_);
    End(absl::OkStatus());
  }
  void End(const absl::Status& s) { Finish(record_.Finish(s)); }

  const CallEnv* env_;
  grpc::CallbackServerContext* ctx_;
  v1::Session* resp_;
  const std::string tenant_;
  const CallSlot slot_;
  Clock::time_point start_;
  RequestRecord record_;
  const size_t max_bytes_;
  v1::ImportSessionRequest req_;
  bool first_ = true;
  std::string id_;
  bool replace_ = false;
  std::string blob_;
};

}  // namespace

grpc::ServerWriteReactor<v1::SessionChunk>* StartExportCall(const CallEnv* env, grpc::CallbackServerContext* ctx,
                                                            const v1::ExportSessionRequest* req, std::string tenant) {
  return new ExportCall(env, ctx, req, tenant);
}

grpc::ServerReadReactor<v1::ImportSessionRequest>* StartImportCall(const CallEnv* env, grpc::CallbackServerContext* ctx,
                                                                   v1::Session* resp, std::string tenant) {
  return new ImportCall(env, ctx, resp, std::move(tenant));
}

}  // namespace trams::server
