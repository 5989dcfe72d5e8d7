#include "proto/echo_session.h"

#include "proto/hello.h"

namespace tandem {

Status EchoSession::Handle(v1::EchoMessage&& in, const Reply& reply) {
  if (!greeted_) {
    if (in.kind_case() != v1::EchoMessage::kHello) {
      return absl::FailedPreconditionError("echo stream must start with a hello");
    }
    RETURN_IF_ERROR(CheckHello(mine_, in.hello()));
    greeted_ = true;
    v1::EchoMessage out;
    *out.mutable_hello() = mine_;
    reply(std::move(out));
    return absl::OkStatus();
  }
  switch (in.kind_case()) {
    case v1::EchoMessage::kPing: {
      reply(std::move(in));
      return absl::OkStatus();
    }
    case v1::EchoMessage::kBegin: {
      if (in_frame_) return absl::FailedPreconditionError("echo: frame begun inside a frame");
      const v1::TensorHeader& h = in.begin().tensor();
      in_frame_ = true;
      mode_ = in.begin().mode();
      expected_chunks_ = 0;
      received_chunks_ = 0;
      wire_bytes_ = 0;
      decode_s_ = 0;
      error_.clear();
      decoder_.reset();
      Status valid = ValidateHeader(h, limits_);
      if (!valid.ok()) {
        error_ = std::string(valid.message());
        FinishFrame(reply);
        return absl::OkStatus();
      }
      expected_chunks_ = h.num_chunks();
      if (mode_ == v1::ECHO_MODE_DECODE) {
        buffer_.resize(h.raw_bytes());
        auto dec = TensorDecoder::Create(h, buffer_, limits_);
        if (!dec.ok()) {
          error_ = std::string(dec.status().message());
        } else {
          decoder_.emplace(std::move(dec).value());
        }
      }
      if (mode_ == v1::ECHO_MODE_ECHO) reply(std::move(in));
      if (expected_chunks_ == 0) FinishFrame(reply);
      return absl::OkStatus();
    }
    case v1::EchoMessage::kChunk: {
      const std::string& payload = in.chunk().payload();
      ChunkView view{.index = in.chunk().index(), .checksum = in.chunk().checksum(), .payload = {}};
      view.payload.emplace_back(reinterpret_cast<const uint8_t*>(payload.data()), payload.size());
      return HandleChunk(view, [&] { reply(std::move(in)); }, reply);
    }
    default:
      return absl::FailedPreconditionError("echo: unexpected message");
  }
}

Status EchoSession::HandleChunk(const ChunkView& chunk, const std::function<void()>& echo,
                                const Reply& reply) {
  if (!greeted_) return absl::FailedPreconditionError("echo stream must start with a hello");
  if (!in_frame_) return absl::FailedPreconditionError("echo: chunk outside a frame");
  ++received_chunks_;
  wire_bytes_ += chunk.payload_bytes();
  if (mode_ == v1::ECHO_MODE_DECODE && decoder_.has_value() && error_.empty()) {
    const auto t0 = std::chrono::steady_clock::now();
    Status st = decoder_->DecodeChunk(chunk);
    decode_s_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (!st.ok()) error_ = std::string(st.message());
  } else if (mode_ == v1::ECHO_MODE_ECHO) {
    echo();
  }
  if (received_chunks_ == expected_chunks_) FinishFrame(reply);
  return absl::OkStatus();
}

void EchoSession::FinishFrame(const Reply& reply) {
  if (decoder_.has_value() && error_.empty()) {
    Status st = decoder_->Finish();
    if (!st.ok()) error_ = std::string(st.message());
  }
  v1::EchoMessage out;
  v1::EchoAck* ack = out.mutable_ack();
  ack->set_wire_bytes(wire_bytes_);
  ack->set_decode_ms(decode_s_ * 1e3);
  ack->set_error(error_);
  reply(std::move(out));
  in_frame_ = false;
  decoder_.reset();
}

}  // namespace tandem
