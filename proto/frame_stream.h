#pragma once
// Streaming a tensor frame as a sequence of chunk messages, with the coding
// of chunk k+1 overlapping the sending of chunk k.
#include <functional>

#include "core/status.h"
#include "proto/tensor_codec.h"

namespace tandem {

// Calls `send(chunk)` for chunks 0..n-1 in order. Frames of more than one
// chunk are encoded on a worker thread, at most two chunks ahead of `send`.
// `send` may take the chunk's payload (swap or move it out); the buffer is
// not reused afterwards. Stops at the first error from either side.
Status StreamChunks(const TensorEncoder& encoder,
                    const std::function<Status(v1::TensorChunk& chunk)>& send);

}  // namespace tandem
