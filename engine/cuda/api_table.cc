#include "engine/cuda/api_table.h"

#include <exception>
#include <new>
#include <string>

#include "engine/cuda/context.h"

namespace trams::cuda {
namespace {

thread_local std::string last_error;

Context* Ctx(trams_cuda_context* c) { return reinterpret_cast<Context*>(c); }
Stream* Str(trams_cuda_stream* s) { return reinterpret_cast<Stream*>(s); }
const Stream* Str(const trams_cuda_stream* s) { return reinterpret_cast<const Stream*>(s); }

// Runs `fn` (returning Status) with exceptions (bad_alloc from host vectors) turned into codes: nothing
// may unwind through the C ABI.
template <class Fn>
trams_cuda_code Guard(Fn&& fn) {
  try {
    return SetLastError(fn());
  } catch (const std::bad_alloc&) {
    return SetLastError(ResourceExhausted("host memory exhausted"));
  } catch (const std::exception& e) {
    return SetLastError(Internal(std::string("unexpected exception: ") + e.what()));
  }
}


void Destroy(trams_cuda_context* ctx) { delete Ctx(ctx); }

trams_cuda_code DeviceInfo(trams_cuda_context* ctx, trams_cuda_device_info* out) {
  return Guard([&] {
    if (ctx == nullptr || out == nullptr) return InvalidArgument("device_info: null argument");
    return Ctx(ctx)->GetDeviceInfo(out);
  });
}

trams_cuda_code StreamBytes(trams_cuda_context* ctx, const trams_cuda_stream_settings* settings, int64_t* bytes) {
  return Guard([&] {
    if (ctx == nullptr || settings == nullptr || bytes == nullptr) return InvalidArgument("stream_bytes: null argument");
    return Ctx(ctx)->StreamBytes(*settings, bytes);
  });
}

trams_cuda_code StreamCreate(trams_cuda_context* ctx, const trams_cuda_stream_settings* settings,
                             trams_cuda_stream** out) {
  return Guard([&] {
    if (ctx == nullptr || settings == nullptr || out == nullptr) {
      return InvalidArgument("stream_create: null argument");
    }
    Stream* s = nullptr;
    Status st = Ctx(ctx)->CreateStream(*settings, &s);
    if (st.ok()) *out = reinterpret_cast<trams_cuda_stream*>(s);
    return st;
  });
}

void StreamDestroy(trams_cuda_context* ctx, trams_cuda_stream* stream) {
  if (ctx != nullptr) Ctx(ctx)->DestroyStream(Str(stream));
}

trams_cuda_code StreamFillZero(trams_cuda_context* ctx, trams_cuda_stream* stream) {
  return Guard([&] {
    if (ctx == nullptr) return InvalidArgument("stream_fill_zero: null context");
    return Ctx(ctx)->FillZero(Str(stream));
  });
}

trams_cuda_code StreamInfo(trams_cuda_context* ctx, const trams_cuda_stream* stream, trams_cuda_stream_info* out) {
  return Guard([&] {
    if (ctx == nullptr || out == nullptr) return InvalidArgument("stream_info: null argument");
    return Ctx(ctx)->GetStreamInfo(Str(stream), out);
  });
}

trams_cuda_code Forward(trams_cuda_context* ctx, const trams_cuda_segment* segments, int32_t n) {
  return Guard([&] {
    if (ctx == nullptr) return InvalidArgument("forward: null context");
    return Ctx(ctx)->Forward(segments, n);
  });
}

trams_cuda_code NextLogProbs(trams_cuda_context* ctx, const trams_cuda_stream* stream, float* out) {
  return Guard([&] {
    if (ctx == nullptr) return InvalidArgument("next_logprobs: null context");
    return Ctx(ctx)->NextLogProbs(Str(stream), out);
  });
}

trams_cuda_code StreamRead(trams_cuda_context* ctx, const trams_cuda_stream* stream, const trams_cuda_stream_image* image) {
  return Guard([&] {
    if (ctx == nullptr || image == nullptr) return InvalidArgument("stream_read: null argument");
    return Ctx(ctx)->ReadStream(Str(stream), *image);
  });
}

trams_cuda_code StreamWrite(trams_cuda_context* ctx, trams_cuda_stream* stream, const trams_cuda_stream_image* image) {
  return Guard([&] {
    if (ctx == nullptr || image == nullptr) return InvalidArgument("stream_write: null argument");
    return Ctx(ctx)->WriteStream(Str(stream), *image);
  });
}

template <Status (Context::*method)(Stream*)>
trams_cuda_code StreamCall(trams_cuda_context* ctx, trams_cuda_stream* stream) {
  return Guard([&] {
    if (ctx == nullptr) return InvalidArgument("null context");
    return (Ctx(ctx)->*method)(Str(stream));
  });
}

}  // namespace

const char* LastErrorMessage() { return last_error.c_str(); }

trams_cuda_code SetLastError(const Status& s) {
  last_error = s.message();
  return s.code();
}

trams_cuda_code CreateContextWithOps(const trams_cuda_model* model, const trams_cuda_options* options,
                                     OpsFactory factory, trams_cuda_context** out) {
  return Guard([&] {
    if (model == nullptr || options == nullptr || out == nullptr) return InvalidArgument("create: null argument");
    std::unique_ptr<DeviceOps> ops;
    TRAMS_CUDA_RETURN_IF_ERROR(factory(options->device, &ops));
    std::unique_ptr<Context> ctx;
    TRAMS_CUDA_RETURN_IF_ERROR(Context::Create(*model, *options, std::move(ops), &ctx));
    *out = reinterpret_cast<trams_cuda_context*>(ctx.release());
    return Status::Ok();
  });
}

trams_cuda_api MakeApiTable(const char* backend, DeviceCountFn device_count, CreateFn create) {
  trams_cuda_api api{};
  api.version = TRAMS_CUDA_API_VERSION;
  api.struct_size = static_cast<int32_t>(sizeof(trams_cuda_api));
  api.backend = backend;
  api.last_error = &LastErrorMessage;
  api.device_count = device_count;
  api.create = create;
  api.destroy = &Destroy;
  api.device_info = &DeviceInfo;
  api.stream_bytes = &StreamBytes;
  api.stream_create = &StreamCreate;
  api.stream_destroy = &StreamDestroy;
  api.stream_fill_zero = &StreamFillZero;
  api.stream_info = &StreamInfo;
  api.forward = &Forward;
  api.next_logprobs = &NextLogProbs;
  api.stream_begin_transaction = &StreamCall<&Context::BeginTransaction>;
  api.stream_commit = &StreamCall<&Context::CommitTransaction>;
  api.stream_rollback = &StreamCall<&Context::RollbackTransaction>;
  api.stream_read = &StreamRead;
  api.stream_write = &StreamWrite;
  return api;
}

}  // namespace trams::cuda
