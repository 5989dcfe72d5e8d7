// tandem-delay-relay: listens on one TCP address and forwards every
// connection to another, holding each chunk of bytes for a fixed delay in
// each direction. The kernel here has no netem qdisc; together with `tc tbf`
// for bandwidth this emulates a link with latency (scripts/netem-link).
// Queued bytes per direction are bounded, so a slow receiver pushes back on
// the sender as on a real link.
#include <sys/socket.h>

#include <utility>  // before Asio: Boost 1.74 uses std::exchange without it

#include <boost/asio.hpp>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "core/cli.h"
#include "core/logging.h"
#include "core/status.h"

namespace tandem {
namespace {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using Clock = std::chrono::steady_clock;

struct Flags {
  std::string listen;
  std::string to;
  double delay_ms = 0;
  int max_buffer_kib = 16384;
};

StatusOr<tcp::endpoint> ParseEndpoint(const std::string& s) {
  const size_t colon = s.rfind(':');
  int port = 0;
  if (colon == std::string::npos || !absl::SimpleAtoi(s.substr(colon + 1), &port) || port <= 0 ||
      port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("expected HOST:PORT, got '", s, "'"));
  }
  boost::system::error_code ec;
  auto address = asio::ip::make_address(s.substr(0, colon), ec);
  if (ec) return absl::InvalidArgumentError(absl::StrCat("bad address in '", s, "' (use an IP)"));
  return tcp::endpoint(address, static_cast<uint16_t>(port));
}

// One direction of one connection: a reader stamps chunks with their release
// time; a writer sends each when it is due.
class DelayedPipe {
 public:
  DelayedPipe(tcp::socket& from, tcp::socket& to, Clock::duration delay, size_t max_bytes)
      : from_(from), to_(to), delay_(delay), max_bytes_(max_bytes) {}

  void Run() {
    std::thread writer([this] { WriteLoop(); });
    ReadLoop();
    writer.join();
  }

 private:
  struct Chunk {
    Clock::time_point due;
    std::vector<char> bytes;  // empty: end of stream
  };

  void ReadLoop() {
    std::vector<char> buf(64 << 10);
    while (true) {
      boost::system::error_code ec;
      const size_t n = from_.read_some(asio::buffer(buf), ec);
      std::unique_lock lock(mu_);
      if (ec || n == 0) {
        queue_.push_back({Clock::now() + delay_, {}});
        cv_.notify_all();
        return;
      }
      cv_.wait(lock, [&] { return queued_ + n <= max_bytes_ || queue_.empty() || failed_; });
      if (failed_) return;
      queue_.push_back({Clock::now() + delay_, std::vector<char>(buf.begin(), buf.begin() + static_cast<long>(n))});
      queued_ += n;
      cv_.notify_all();
    }
  }

  void WriteLoop() {
    while (true) {
      Chunk chunk;
      {
        std::unique_lock lock(mu_);
        cv_.wait(lock, [&] { return !queue_.empty(); });
        chunk = std::move(queue_.front());
        queue_.pop_front();
      }
      std::this_thread::sleep_until(chunk.due);
      if (chunk.bytes.empty()) {
        ::shutdown(to_.native_handle(), SHUT_WR);
        return;
      }
      boost::system::error_code ec;
      asio::write(to_, asio::buffer(chunk.bytes), ec);
      std::lock_guard lock(mu_);
      queued_ -= chunk.bytes.size();
      cv_.notify_all();
      if (ec) {
        failed_ = true;
        ::shutdown(from_.native_handle(), SHUT_RDWR);
        return;
      }
    }
  }

  tcp::socket& from_;
  tcp::socket& to_;
  Clock::duration delay_;
  size_t max_bytes_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Chunk> queue_;
  size_t queued_ = 0;
  bool failed_ = false;
};

void Serve(tcp::socket client, tcp::endpoint upstream_at, Clock::duration delay, size_t max_bytes) {
  tcp::socket upstream(client.get_executor());
  boost::system::error_code ec;
  upstream.connect(upstream_at, ec);
  if (ec) {
    spdlog::warn("delay relay: cannot connect to upstream: {}", ec.message());
    return;
  }
  upstream.set_option(tcp::no_delay(true), ec);
  client.set_option(tcp::no_delay(true), ec);
  DelayedPipe up(client, upstream, delay, max_bytes);
  DelayedPipe down(upstream, client, delay, max_bytes);
  std::thread t([&] { up.Run(); });
  down.Run();
  t.join();
}

Status Run(const Flags& f) {
  if (f.delay_ms < 0 || f.delay_ms > 10000) {
    return absl::InvalidArgumentError("--delay-ms must be in 0..10000");
  }
  if (f.max_buffer_kib < 64) return absl::InvalidArgumentError("--max-buffer-kib must be >= 64");
  ASSIGN_OR_RETURN(tcp::endpoint listen_at, ParseEndpoint(f.listen));
  ASSIGN_OR_RETURN(tcp::endpoint upstream_at, ParseEndpoint(f.to));
  asio::io_context io;
  tcp::acceptor acceptor(io);
  boost::system::error_code ec;
  acceptor.open(listen_at.protocol(), ec);
  if (!ec) acceptor.set_option(tcp::acceptor::reuse_address(true), ec);
  if (!ec) acceptor.bind(listen_at, ec);
  if (!ec) acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) return absl::UnavailableError(absl::StrCat("cannot listen on ", f.listen, ": ", ec.message()));
  const auto delay = std::chrono::duration_cast<Clock::duration>(
      std::chrono::duration<double, std::milli>(f.delay_ms));
  const size_t max_bytes = static_cast<size_t>(f.max_buffer_kib) << 10;
  std::fprintf(stderr, "tandem-delay-relay: %s -> %s, %.3f ms each way\n", f.listen.c_str(),
               f.to.c_str(), f.delay_ms);
  while (true) {
    tcp::socket client(io);
    acceptor.accept(client, ec);
    if (ec) continue;
    std::thread(Serve, std::move(client), upstream_at, delay, max_bytes).detach();
  }
}

}  // namespace
}  // namespace tandem

int main(int argc, char** argv) {
  CLI::App app("tandem-delay-relay: forward a TCP port, delaying every chunk", "tandem-delay-relay");
  std::string log_level = "warn";
  tandem::AddCommonFlags(app, &log_level);
  tandem::Flags f;
  app.add_option("--listen", f.listen, "IP:PORT to accept connections on")->required();
  app.add_option("--to", f.to, "IP:PORT to forward each connection to")->required();
  app.add_option("--delay-ms", f.delay_ms, "delay added to each direction")->capture_default_str();
  app.add_option("--max-buffer-kib", f.max_buffer_kib, "bytes held per direction before pushing back")
      ->capture_default_str();
  int code = tandem::ParseArgs(app, argc, argv);
  if (code >= 0) return code;
  tandem::InitLogging(log_level);
  tandem::Status st = tandem::Run(f);
  return st.ok() ? 0 : tandem::ReportError("tandem-delay-relay", st);
}
