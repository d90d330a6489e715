#include "tests/testing/generic_call.h"

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cstdlib>

namespace cardvault::testing {

grpc::Status CallGeneric(grpc::GenericStub* stub, absl::string_view method,
                         const std::string& request, bool stop_after_first,
                         int* responses) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() +
                       std::chrono::seconds(10));
  grpc::CompletionQueue cq;
  const auto next = [&cq](intptr_t tag) {
    void* got = nullptr;
    bool ok = false;
    if (!cq.Next(&got, &ok) || got != reinterpret_cast<void*>(tag)) {
      std::abort();
    }
    return ok;
  };
  const auto tag = [](intptr_t t) { return reinterpret_cast<void*>(t); };
  std::unique_ptr<grpc::GenericClientAsyncReaderWriter> call =
      stub->PrepareCall(&context, std::string(method), &cq);
  call->StartCall(tag(1));
  bool ok = next(1);
  if (ok) {
    grpc::Slice slice(request);
    grpc::ByteBuffer buffer(&slice, 1);
    call->WriteLast(buffer, grpc::WriteOptions(), tag(2));
    ok = next(2);
  }
  int read = 0;
  while (ok) {
    grpc::ByteBuffer response;
    call->Read(&response, tag(3));
    if (!next(3)) break;
    ++read;
    if (stop_after_first) context.TryCancel();
  }
  if (responses != nullptr) *responses = read;
  grpc::Status status;
  call->Finish(&status, tag(4));
  next(4);
  cq.Shutdown();
  void* ignored_tag;
  bool ignored_ok;
  while (cq.Next(&ignored_tag, &ignored_ok)) {
  }
  return status;
}

}  // namespace cardvault::testing
