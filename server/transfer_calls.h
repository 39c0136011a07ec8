// The streaming RPCs that move a whole session: ExportSession (the snapshot out, in chunks) and
// ImportSession (a snapshot in, in chunks). Both run off the engine thread; the session manager takes
// the session like a call (export) or adds it whole (import), so neither can see or leave a half state.
#pragma once

#include <grpcpp/grpcpp.h>

#include <string>

#include "server/call_env.h"
#include "trams/v1/trams.grpc.pb.h"

namespace trams::server {

// The chunk size of an export (well under gRPC's default 4 MiB message limit).
inline constexpr size_t kSnapshotChunkBytes = size_t{1} << 20;

grpc::ServerWriteReactor<v1::SessionChunk>* StartExportCall(const CallEnv* env, grpc::CallbackServerContext* ctx,
                                                            const v1::ExportSessionRequest* req, std::string tenant);
grpc::ServerReadReactor<v1::ImportSessionRequest>* StartImportCall(const CallEnv* env, grpc::CallbackServerContext* ctx,
                                                                   v1::Session* resp, std::string tenant);

}  // namespace trams::server
