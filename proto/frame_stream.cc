#include "proto/frame_stream.h"

#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>

namespace tandem {

Status StreamChunks(const TensorEncoder& encoder,
                    const std::function<Status(v1::TensorChunk& chunk)>& send) {
  const uint32_t n = encoder.num_chunks();
  if (n <= 1) {
    for (uint32_t i = 0; i < n; ++i) {
      v1::TensorChunk chunk;
      RETURN_IF_ERROR(encoder.EncodeChunk(i, &chunk));
      RETURN_IF_ERROR(send(chunk));
    }
    return absl::OkStatus();
  }
  constexpr size_t kAhead = 2;
  std::mutex mu;
  std::condition_variable cv;
  std::deque<v1::TensorChunk> ready;
  Status encode_status;
  bool stop = false;
  bool done = false;
  std::thread worker([&] {
    for (uint32_t i = 0; i < n; ++i) {
      {
        std::unique_lock lock(mu);
        cv.wait(lock, [&] { return stop || ready.size() < kAhead; });
        if (stop) break;
      }
      v1::TensorChunk chunk;
      Status st = encoder.EncodeChunk(i, &chunk);
      std::lock_guard lock(mu);
      if (!st.ok()) {
        encode_status = st;
        break;
      }
      ready.push_back(std::move(chunk));
      cv.notify_all();
    }
    std::lock_guard lock(mu);
    done = true;
    cv.notify_all();
  });
  Status send_status;
  for (uint32_t i = 0; i < n; ++i) {
    v1::TensorChunk chunk;
    {
      std::unique_lock lock(mu);
      cv.wait(lock, [&] { return !ready.empty() || done; });
      if (ready.empty()) break;  // the encoder failed
      chunk = std::move(ready.front());
      ready.pop_front();
      cv.notify_all();
    }
    send_status = send(chunk);
    if (!send_status.ok()) break;
  }
  {
    std::lock_guard lock(mu);
    stop = true;
    cv.notify_all();
  }
  worker.join();
  RETURN_IF_ERROR(encode_status);
  return send_status;
}

}  // namespace tandem
