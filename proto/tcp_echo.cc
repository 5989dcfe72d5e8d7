#include "proto/tcp_echo.h"

#include <sys/socket.h>

#include <array>
#include <boost/asio.hpp>
#include <list>
#include <mutex>

#include "proto/echo_session.h"
#include "proto/hello.h"

namespace tandem {
namespace {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;

void Put32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}
uint32_t Get32(const uint8_t* p) {
  return static_cast<uint32_t>(p[0]) | static_cast<uint32_t>(p[1]) << 8 |
         static_cast<uint32_t>(p[2]) << 16 | static_cast<uint32_t>(p[3]) << 24;
}

// Writes the bytes in `*held` (messages held back to go out with this one;
// cleared), then `meta` and `payload` (which may be null) framed, in one go.
Status WriteParts(tcp::socket& socket, const std::string& meta, const std::string* payload,
                  std::string* held = nullptr) {
  const size_t payload_bytes = payload ? payload->size() : 0;
  if (payload_bytes > kMaxTcpPayloadBytes) {
    return absl::InvalidArgumentError(absl::StrCat("tcp echo: payload of ", payload_bytes,
                                                   " bytes exceeds ", kMaxTcpPayloadBytes));
  }
  uint8_t prefix[8];
  Put32(prefix, static_cast<uint32_t>(meta.size()));
  Put32(prefix + 4, static_cast<uint32_t>(payload_bytes));
  std::array<asio::const_buffer, 4> buffers = {
      asio::buffer(held ? held->data() : nullptr, held ? held->size() : 0), asio::buffer(prefix),
      asio::buffer(meta), asio::buffer(payload ? payload->data() : nullptr, payload_bytes)};
  boost::system::error_code ec;
  asio::write(socket, buffers, ec);
  if (held) held->clear();
  if (ec) return absl::UnavailableError(absl::StrCat("tcp echo: write failed: ", ec.message()));
  return absl::OkStatus();
}

// A chunk message: the payload goes from its own buffer.
Status WriteChunkMessage(tcp::socket& socket, const v1::TensorChunk& chunk,
                         std::string* held = nullptr) {
  v1::EchoMessage head;
  head.mutable_chunk()->set_index(chunk.index());
  head.mutable_chunk()->set_checksum(chunk.checksum());
  return WriteParts(socket, head.SerializeAsString(), &chunk.payload(), held);
}

Status WriteMessage(tcp::socket& socket, const v1::EchoMessage& m, std::string* held = nullptr) {
  if (m.kind_case() == v1::EchoMessage::kChunk) return WriteChunkMessage(socket, m.chunk(), held);
  return WriteParts(socket, m.SerializeAsString(), nullptr, held);
}

Status ReadMessage(tcp::socket& socket, v1::EchoMessage* m) {
  uint8_t prefix[8];
  boost::system::error_code ec;
  asio::read(socket, asio::buffer(prefix), ec);
  if (ec == asio::error::eof) return absl::CancelledError("tcp echo: peer closed the connection");
  if (ec) return absl::UnavailableError(absl::StrCat("tcp echo: read failed: ", ec.message()));
  const uint32_t meta_bytes = Get32(prefix);
  const uint32_t payload_bytes = Get32(prefix + 4);
  if (meta_bytes > kMaxTcpMetaBytes || payload_bytes > kMaxTcpPayloadBytes) {
    return absl::DataLossError(absl::StrCat("tcp echo: message of ", meta_bytes, " + ",
                                            payload_bytes, " bytes exceeds the limits"));
  }
  std::string meta(meta_bytes, '\0');
  asio::read(socket, asio::buffer(meta), ec);
  if (ec) return absl::UnavailableError(absl::StrCat("tcp echo: read failed: ", ec.message()));
  if (!m->ParseFromString(meta)) return absl::DataLossError("tcp echo: malformed message");
  if (payload_bytes > 0) {
    if (m->kind_case() != v1::EchoMessage::kChunk) {
      return absl::DataLossError("tcp echo: payload on a message that is not a chunk");
    }
    std::string* payload = m->mutable_chunk()->mutable_payload();
    payload->resize(payload_bytes);
    asio::read(socket, asio::buffer(payload->data(), payload_bytes), ec);
    if (ec) return absl::UnavailableError(absl::StrCat("tcp echo: read failed: ", ec.message()));
  }
  return absl::OkStatus();
}

// Owns its io_context: a connection outlives any caller's context.
class TcpEchoConnection final : public EchoConnection {
 public:
  TcpEchoConnection() : socket_(io_) {}
  Status Write(const v1::EchoMessage& m) override { return WriteMessage(socket_, m, &held_); }
  Status WriteHead(const v1::EchoMessage& m) override {
    if (m.kind_case() == v1::EchoMessage::kChunk) return Write(m);
    const std::string meta = m.SerializeAsString();
    uint8_t prefix[8];
    Put32(prefix, static_cast<uint32_t>(meta.size()));
    Put32(prefix + 4, 0);
    held_.append(reinterpret_cast<const char*>(prefix), sizeof(prefix));
    held_.append(meta);
    return absl::OkStatus();
  }
  Status WriteChunk(v1::TensorChunk&& chunk) override {
    return WriteChunkMessage(socket_, chunk, &held_);
  }
  Status WriteBorrowedChunk(const v1::TensorChunk& chunk) override {
    return WriteChunkMessage(socket_, chunk, &held_);
  }
  // Held messages wait for the next write, as WriteHead's contract says; a
  // reader thread must not touch them.
  Status Read(v1::EchoMessage* m) override { return ReadMessage(socket_, m); }
  Status Close() override {
    RETURN_IF_ERROR(Flush());
    boost::system::error_code ec;
    socket_.shutdown(tcp::socket::shutdown_send, ec);
    return absl::OkStatus();
  }
  void Cancel() override { ::shutdown(socket_.native_handle(), SHUT_RDWR); }
  tcp::socket& socket() { return socket_; }
  void set_peer(const v1::Hello& h) { peer_ = h; }

 private:
  Status Flush() {
    if (held_.empty()) return absl::OkStatus();
    boost::system::error_code ec;
    asio::write(socket_, asio::buffer(held_), ec);
    held_.clear();
    if (ec) return absl::UnavailableError(absl::StrCat("tcp echo: write failed: ", ec.message()));
    return absl::OkStatus();
  }

  asio::io_context io_;
  tcp::socket socket_;
  std::string held_;  // framed messages that go out with the next write
};

}  // namespace

struct TcpEchoServer::Impl {
  asio::io_context io;
  tcp::acceptor acceptor{io};
  v1::Hello mine;
  DecodeLimits limits;
  std::thread accept_thread;
  std::mutex mu;
  bool stopping = false;
  std::list<tcp::socket> sockets;
  std::list<std::thread> threads;

  void AcceptLoop() {
    while (true) {
      tcp::socket socket(io);
      boost::system::error_code ec;
      acceptor.accept(socket, ec);
      std::lock_guard lock(mu);
      if (stopping) return;
      if (ec) continue;
      socket.set_option(tcp::no_delay(true), ec);
      sockets.push_back(std::move(socket));
      tcp::socket* s = &sockets.back();
      threads.emplace_back([this, s] { Serve(*s); });
    }
  }

  void Serve(tcp::socket& socket) {
    EchoSession session(mine, limits);
    Status write_status;
    auto reply = [&](v1::EchoMessage&& m) {
      if (write_status.ok()) write_status = WriteMessage(socket, m);
    };
    v1::EchoMessage in;
    while (true) {
      if (!ReadMessage(socket, &in).ok()) break;
      Status st = session.Handle(std::move(in), reply);
      in.Clear();
      if (!st.ok()) {
        // No trailing status on raw TCP: report the refusal in an ack.
        v1::EchoMessage refusal;
        refusal.mutable_ack()->set_error(std::string(st.message()));
        (void)WriteMessage(socket, refusal);
        break;
      }
      if (!write_status.ok()) break;
    }
    ::shutdown(socket.native_handle(), SHUT_RDWR);
  }
};

StatusOr<std::unique_ptr<TcpEchoServer>> TcpEchoServer::Start(const std::string& host, int port,
                                                               const v1::Hello& mine,
                                                               const DecodeLimits& limits) {
  std::unique_ptr<TcpEchoServer> server(new TcpEchoServer());
  server->impl_ = std::make_unique<Impl>();
  Impl& impl = *server->impl_;
  impl.mine = mine;
  impl.limits = limits;
  boost::system::error_code ec;
  const auto address = asio::ip::make_address(host, ec);
  if (ec) return absl::InvalidArgumentError(absl::StrCat("tcp echo: bad address '", host, "'"));
  const tcp::endpoint endpoint(address, static_cast<uint16_t>(port));
  impl.acceptor.open(endpoint.protocol(), ec);
  if (!ec) impl.acceptor.set_option(tcp::acceptor::reuse_address(true), ec);
  if (!ec) impl.acceptor.bind(endpoint, ec);
  if (!ec) impl.acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) {
    return absl::UnavailableError(
        absl::StrCat("tcp echo: cannot listen on ", host, ":", port, ": ", ec.message()));
  }
  server->port_ = impl.acceptor.local_endpoint().port();
  impl.accept_thread = std::thread([&impl] { impl.AcceptLoop(); });
  return server;
}

TcpEchoServer::~TcpEchoServer() {
  if (!impl_) return;
  {
    std::lock_guard lock(impl_->mu);
    impl_->stopping = true;
    ::shutdown(impl_->acceptor.native_handle(), SHUT_RDWR);
    for (tcp::socket& s : impl_->sockets) ::shutdown(s.native_handle(), SHUT_RDWR);
  }
  impl_->accept_thread.join();
  for (std::thread& t : impl_->threads) t.join();
}

StatusOr<std::unique_ptr<EchoConnection>> ConnectTcpEcho(const std::string& host, int port,
                                                         const v1::Hello& mine) {
  auto owning = std::make_unique<TcpEchoConnection>();
  tcp::socket& socket = owning->socket();
  boost::system::error_code ec;
  tcp::resolver resolver(socket.get_executor());
  auto endpoints = resolver.resolve(host, std::to_string(port), ec);
  if (!ec) asio::connect(socket, endpoints, ec);
  if (ec) {
    return absl::UnavailableError(
        absl::StrCat("tcp echo: cannot connect to ", host, ":", port, ": ", ec.message()));
  }
  socket.set_option(tcp::no_delay(true), ec);
  v1::EchoMessage m;
  *m.mutable_hello() = mine;
  RETURN_IF_ERROR(owning->Write(m));
  RETURN_IF_ERROR(owning->Read(&m));
  if (m.kind_case() == v1::EchoMessage::kAck && !m.ack().error().empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat("echo server at ", host, ":", port, " refused: ", m.ack().error()));
  }
  if (m.kind_case() != v1::EchoMessage::kHello) {
    return absl::DataLossError(
        absl::StrCat("echo server at ", host, ":", port, " did not answer with a hello"));
  }
  RETURN_IF_ERROR(CheckHello(mine, m.hello()));
  owning->set_peer(m.hello());
  return std::unique_ptr<EchoConnection>(std::move(owning));
}

}  // namespace tandem
