// `tandem-bench comm`: what moving one activation tensor costs per shape,
// codec and transport (gRPC, the path the nodes use, and raw TCP through
// Boost.Asio as the baseline), in-process on loopback or against a remote
// Echo service (`--target`, or `--serve` on the far machine).
#include <csignal>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_split.h"
#include "bench/stats.h"
#include "core/cli.h"
#include "core/command.h"
#include "grpcpp/server.h"
#include "proto/activation_sample.h"
#include "proto/codec_selector.h"
#include "proto/echo_client.h"
#include "proto/echo_service.h"
#include "proto/grpc_channel.h"
#include "proto/hello.h"
#include "proto/tcp_echo.h"
#include "proto/tensor_codec.h"

namespace tandem {
namespace {

struct CommFlags {
  std::vector<std::string> shapes = {"1x8192", "4x8192", "16x8192", "32x8192", "64x8192", "512x4096"};
  std::string dtype = "bf16";
  std::vector<std::string> codecs = {"none",         "lz4",          "zlib", "zstd", "shuffle-lz4",
                                     "shuffle-zlib", "shuffle-zstd", "q8",   "auto"};
  std::vector<std::string> transports = {"grpc", "tcp"};
  std::string target;
  std::string serve;
  std::string token;
  int repeats = 10;
  int warmup = 2;
  int zlib_level = 1;
  int zstd_level = 1;
  int chunk_kib = 1024;
  bool json = false;
  bool csv = false;
  bool malloc_defaults = false;
};

struct Row {
  std::vector<int64_t> shape;
  std::string dtype, codec, chosen, transport;
  uint64_t raw_bytes = 0, wire_bytes = 0;
  double compress_ms = 0, transmit_ms = 0, decompress_ms = 0, total_ms = 0, throughput_mbps = 0;
  double rtt_ms = 0;  // median round trip of a tiny message between the repeats
};

double Seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
using bench::Median;

StatusOr<std::pair<std::string, int>> SplitHostPort(const std::string& s) {
  const size_t colon = s.rfind(':');
  int port = 0;
  if (colon == std::string::npos || colon == 0 ||
      !absl::SimpleAtoi(s.substr(colon + 1), &port) || port <= 0 || port > 65534) {
    return absl::InvalidArgumentError(absl::StrCat("expected HOST:PORT, got '", s, "'"));
  }
  return std::make_pair(s.substr(0, colon), port);
}

StatusOr<Shape> ParseShape(const std::string& s) {
  std::vector<int64_t> dims;
  for (absl::string_view part : absl::StrSplit(s, 'x')) {
    int64_t d = 0;
    if (!absl::SimpleAtoi(part, &d) || d <= 0) {
      return absl::InvalidArgumentError(absl::StrCat("bad shape '", s, "' (expected e.g. 16x8192)"));
    }
    dims.push_back(d);
  }
  if (dims.empty() || dims.size() > static_cast<size_t>(kMaxRank)) {
    return absl::InvalidArgumentError(absl::StrCat("bad shape '", s, "'"));
  }
  return Shape(std::span<const int64_t>(dims));
}

v1::Hello BenchHello(const CommFlags& f) {
  return MakeHello({.role = v1::ROLE_BENCH, .node_id = "tandem-bench", .model_fingerprint = "",
                    .cluster_token = f.token});
}

// One connection per transport, measured cell by cell.
class Bench {
 public:
  Bench(std::string transport, std::unique_ptr<EchoConnection> conn)
      : transport_(std::move(transport)), conn_(std::move(conn)) {}

  Status MeasureLatency() {
    std::vector<double> rtts;
    for (int i = 0; i < 20; ++i) {
      ASSIGN_OR_RETURN(double rtt, EchoPing(*conn_));
      rtts.push_back(rtt);
    }
    rtt_s_ = Median(rtts);
    return absl::OkStatus();
  }

  // Link bandwidth for codec auto: a 4 MiB uncompressed frame, acked.
  StatusOr<LinkModel> MeasureLink(const CodecOptions& base) {
    Tensor probe = MakeActivations(DType::kBF16, {512, 4096}, {.seed = 7});
    CodecOptions o = base;
    o.codec = Codec::kNone;
    ASSIGN_OR_RETURN(TensorEncoder enc, TensorEncoder::Create(probe.view(), o));
    ASSIGN_OR_RETURN(auto messages, EncodeChunkMessages(enc));
    std::vector<double> times;
    for (int i = 0; i < 3; ++i) {
      const double t0 = Seconds();
      RETURN_IF_ERROR(EchoEncoded(*conn_, enc.header(), messages, v1::ECHO_MODE_ACK).status());
      times.push_back(Seconds() - t0);
    }
    const double t = std::max(Median(times) - rtt_s_, 1e-6);
    // The same for a decode-sized frame, which may cross within a burst.
    Tensor small = MakeActivations(DType::kBF16, {1, 8192}, {.seed = 8});
    ASSIGN_OR_RETURN(TensorEncoder small_enc, TensorEncoder::Create(small.view(), o));
    ASSIGN_OR_RETURN(auto small_messages, EncodeChunkMessages(small_enc));
    std::vector<double> small_times;
    for (int i = 0; i < 9; ++i) {
      const double t0 = Seconds();
      RETURN_IF_ERROR(
          EchoEncoded(*conn_, small_enc.header(), small_messages, v1::ECHO_MODE_ACK).status());
      small_times.push_back(Seconds() - t0);
    }
    const double ts = std::max(Median(small_times) - rtt_s_, 1e-6);
    return LinkModel{.bytes_per_s = static_cast<double>(probe.NumBytes()) / t,
                     .per_message_s = 0.0,
                     .small_bytes_per_s = static_cast<double>(small.NumBytes()) / ts,
                     .small_frame_bytes = small.NumBytes(),
                     .large_frame_bytes = probe.NumBytes()};
  }

  // The samples of one cell, filled by Measure() one repeat at a time so
  // that the transports of a comparison take turns (same load, same heap).
  struct Cell {
    // transmit and total still include the ack's way back; Summarize takes
    // off half the median round trip of the pings sent between repeats, so
    // that both are measured under the same load as the frames.
    std::vector<double> compress, transmit, decompress, total, rtt;
    uint64_t wire = 0;
  };

  // One repeat of a cell: compress alone, transmit alone, decompress alone,
  // and the pipelined path. Appends to `cell` when `keep`.
  Status Measure(const TensorEncoder& enc, Tensor& dst, bool keep, Cell& cell) {
    // Compress alone.
    double t0 = Seconds();
    ASSIGN_OR_RETURN(auto messages, EncodeChunkMessages(enc));
    const double c = Seconds() - t0;
    uint64_t wire = 0;
    for (const auto& m : messages) wire += m.chunk().payload().size();
    // Transmission of the encoded chunks, until the last one has arrived
    // (with the ack's way back, taken off in Summarize).
    t0 = Seconds();
    ASSIGN_OR_RETURN(EchoFrameResult acked,
                     EchoEncoded(*conn_, enc.header(), messages, v1::ECHO_MODE_ACK));
    const double t = Seconds() - t0;
    if (acked.wire_bytes != wire) return absl::DataLossError("echo: wire byte count differs");
    // Decompress alone.
    t0 = Seconds();
    ASSIGN_OR_RETURN(TensorDecoder dec,
                     TensorDecoder::Create(enc.header(), {dst.As<uint8_t>(), dst.NumBytes()}));
    for (const auto& m : messages) RETURN_IF_ERROR(dec.DecodeChunk(m.chunk()));
    RETURN_IF_ERROR(dec.Finish());
    const double d = Seconds() - t0;
    // The real path: encode chunk k+1 while chunk k is on the wire, the
    // far side decoding each chunk as it arrives.
    t0 = Seconds();
    ASSIGN_OR_RETURN(EchoFrameResult piped, EchoFrame(*conn_, enc, v1::ECHO_MODE_DECODE));
    const double total_s = Seconds() - t0;
    (void)piped;
    ASSIGN_OR_RETURN(const double rtt, EchoPing(*conn_));
    if (keep) {
      cell.rtt.push_back(rtt);
      cell.compress.push_back(c);
      cell.transmit.push_back(t);
      cell.decompress.push_back(d);
      cell.total.push_back(total_s);
      cell.wire = wire;
    }
    return absl::OkStatus();
  }

  Row Summarize(const Tensor& src, Codec codec, Codec chosen, const Cell& cell) const {
    Row row;
    row.shape.assign(src.shape().dims().begin(), src.shape().dims().end());
    row.dtype = std::string(DTypeName(src.dtype()));
    row.codec = std::string(CodecName(codec));
    row.chosen = std::string(CodecName(chosen));
    row.transport = transport_;
    row.raw_bytes = src.NumBytes();
    row.wire_bytes = cell.wire;
    const double rtt = Median(cell.rtt);
    row.compress_ms = Median(cell.compress) * 1e3;
    row.transmit_ms = std::max(Median(cell.transmit) - rtt / 2, 0.0) * 1e3;
    row.decompress_ms = Median(cell.decompress) * 1e3;
    row.total_ms = std::max(Median(cell.total) - rtt / 2, 0.0) * 1e3;
    row.throughput_mbps = row.total_ms > 0 ? static_cast<double>(row.raw_bytes) / (row.total_ms * 1e3) : 0;
    row.rtt_ms = rtt * 1e3;
    return row;
  }

  double rtt_s() const { return rtt_s_; }
  const std::string& transport() const { return transport_; }
  Status Close() { return conn_->Close(); }

 private:
  std::string transport_;
  std::unique_ptr<EchoConnection> conn_;
  double rtt_s_ = 0;
};

std::string ShapeText(const std::vector<int64_t>& shape) {
  std::string s = "(";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? "," : "") + std::to_string(shape[i]);
  return s + ")";
}

void PrintRows(const std::vector<Row>& rows, const CommFlags& f) {
  if (f.json) {
    nlohmann::json out = nlohmann::json::array();
    for (const Row& r : rows) {
      nlohmann::json j = {{"shape", r.shape},
                          {"dtype", r.dtype},
                          {"codec", r.codec},
                          {"transport", r.transport},
                          {"raw_bytes", r.raw_bytes},
                          {"wire_bytes", r.wire_bytes},
                          {"compress_ms", r.compress_ms},
                          {"transmit_ms", r.transmit_ms},
                          {"decompress_ms", r.decompress_ms},
                          {"total_ms", r.total_ms},
                          {"throughput_mbps", r.throughput_mbps},
                          {"rtt_ms", r.rtt_ms}};
      if (r.codec == "auto") j["chosen_codec"] = r.chosen;
      out.push_back(j);
    }
    std::printf("%s\n", out.dump(2).c_str());
    return;
  }
  if (f.csv) {
    std::printf("shape,dtype,codec,chosen_codec,transport,raw_bytes,wire_bytes,compress_ms,transmit_ms,"
                "decompress_ms,total_ms,throughput_mbps,rtt_ms\n");
    for (const Row& r : rows) {
      std::string shape;
      for (size_t i = 0; i < r.shape.size(); ++i) shape += (i ? "x" : "") + std::to_string(r.shape[i]);
      std::printf("%s,%s,%s,%s,%s,%llu,%llu,%.4f,%.4f,%.4f,%.4f,%.2f,%.4f\n", shape.c_str(),
                  r.dtype.c_str(), r.codec.c_str(), r.chosen.c_str(), r.transport.c_str(),
                  static_cast<unsigned long long>(r.raw_bytes),
                  static_cast<unsigned long long>(r.wire_bytes), r.compress_ms, r.transmit_ms,
                  r.decompress_ms, r.total_ms, r.throughput_mbps, r.rtt_ms);
    }
    return;
  }
  std::printf(
      "| Matrix Shape | Codec | Transport | Raw bytes | Wire bytes | Ratio | Compress(ms) | "
      "Transmission(ms) | Decompress(ms) | Total(ms) | Throughput(MB/s) |\n"
      "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
  for (const Row& r : rows) {
    const std::string codec = r.codec == "auto" ? "auto→" + r.chosen : r.codec;
    std::printf("| %s %s | %s | %s | %llu | %llu | %.2f | %.3f | %.3f | %.3f | %.3f | %.1f |\n",
                ShapeText(r.shape).c_str(), r.dtype.c_str(), codec.c_str(), r.transport.c_str(),
                static_cast<unsigned long long>(r.raw_bytes),
                static_cast<unsigned long long>(r.wire_bytes),
                r.wire_bytes ? static_cast<double>(r.raw_bytes) / static_cast<double>(r.wire_bytes) : 0.0,
                r.compress_ms, r.transmit_ms, r.decompress_ms, r.total_ms, r.throughput_mbps);
  }
}

Status Serve(const CommFlags& f) {
  ASSIGN_OR_RETURN(auto hp, SplitHostPort(f.serve));
  const v1::Hello mine =
      MakeHello({.role = v1::ROLE_NODE, .node_id = "tandem-bench-echo", .model_fingerprint = "",
                 .cluster_token = f.token});
  // Block the stop signals before any thread starts, then wait for one.
  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGINT);
  sigaddset(&stop, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop, nullptr);
  ASSIGN_OR_RETURN(GrpcEchoServer grpc_server,
                   StartGrpcEchoServer(absl::StrCat(hp.first, ":", hp.second), mine));
  ASSIGN_OR_RETURN(auto tcp_server, TcpEchoServer::Start(hp.first, hp.second + 1, mine));
  std::fprintf(stderr, "tandem-bench comm: echo on %s:%d (gRPC) and %s:%d (TCP); Ctrl-C stops\n",
               hp.first.c_str(), grpc_server.port, hp.first.c_str(), tcp_server->port());
  int sig = 0;
  sigwait(&stop, &sig);
  grpc_server.Stop();
  return absl::OkStatus();
}

Status Run(const CommFlags& f) {
  if (f.repeats < 1 || f.warmup < 0) return absl::InvalidArgumentError("--repeats must be >= 1");
  if (f.chunk_kib < 1 || f.chunk_kib > 65536) {
    return absl::InvalidArgumentError("--chunk-kib must be in 1..65536");
  }
  // Large buffers stay mapped between frames (RetainLargeBufferMemory).
  if (!f.malloc_defaults) RetainLargeBufferMemory();
  if (!f.serve.empty()) return Serve(f);
  auto dtype = DTypeFromName(f.dtype);
  if (!dtype.has_value() || !(*dtype == DType::kBF16 || *dtype == DType::kF16 || *dtype == DType::kF32)) {
    return absl::InvalidArgumentError(absl::StrCat("--dtype must be bf16, f16 or f32, not '", f.dtype, "'"));
  }
  std::vector<Shape> shapes;
  for (const std::string& s : f.shapes) {
    ASSIGN_OR_RETURN(Shape shape, ParseShape(s));
    shapes.push_back(shape);
  }
  std::vector<Codec> codecs;
  for (const std::string& s : f.codecs) {
    ASSIGN_OR_RETURN(Codec c, ParseCodec(s));
    codecs.push_back(c);
  }
  for (const std::string& t : f.transports) {
    if (t != "grpc" && t != "tcp") {
      return absl::InvalidArgumentError(absl::StrCat("unknown transport '", t, "' (grpc or tcp)"));
    }
  }
  const CodecOptions base{.codec = Codec::kNone, .zlib_level = f.zlib_level,
                          .zstd_level = f.zstd_level,
                          .chunk_bytes = static_cast<size_t>(f.chunk_kib) << 10};
  std::optional<CodecSelector> selector;
  if (std::find(codecs.begin(), codecs.end(), Codec::kAuto) != codecs.end()) {
    ASSIGN_OR_RETURN(CodecSelector s,
                     CodecSelector::Calibrate({.dtype = *dtype, .codecs = {}, .options = base, .repeats = 3}));
    selector.emplace(std::move(s));
  }

  // Loopback: start our own servers on free ports.
  GrpcEchoServer local_grpc;
  std::unique_ptr<TcpEchoServer> local_tcp;
  std::string host;
  int grpc_port = 0, tcp_port = 0;
  const v1::Hello mine = BenchHello(f);
  if (f.target.empty()) {
    ASSIGN_OR_RETURN(local_grpc, StartGrpcEchoServer("127.0.0.1:0", mine));
    ASSIGN_OR_RETURN(local_tcp, TcpEchoServer::Start("127.0.0.1", 0, mine));
    host = "127.0.0.1";
    grpc_port = local_grpc.port;
    tcp_port = local_tcp->port();
  } else {
    ASSIGN_OR_RETURN(auto hp, SplitHostPort(f.target));
    host = hp.first;
    grpc_port = hp.second;
    tcp_port = hp.second + 1;
  }

  // Every transport's connection is open for the whole run, and each repeat
  // of a cell visits the transports in turn: a comparison then sees the same
  // machine load and the same warmed-up heap on both sides.
  std::vector<Bench> benches;
  std::vector<LinkModel> links;
  for (const std::string& transport : f.transports) {
    std::unique_ptr<EchoConnection> conn;
    if (transport == "grpc") {
      ASSIGN_OR_RETURN(conn, ConnectGrpcEcho(absl::StrCat(host, ":", grpc_port), mine));
    } else {
      ASSIGN_OR_RETURN(conn, ConnectTcpEcho(host, tcp_port, mine));
    }
    Bench& bench = benches.emplace_back(transport, std::move(conn));
    RETURN_IF_ERROR(bench.MeasureLatency());
    LinkModel link;
    if (selector.has_value()) {
      ASSIGN_OR_RETURN(link, bench.MeasureLink(base));
      std::fprintf(stderr, "%s link: %.1f MB/s, round trip %.3f ms\n", transport.c_str(),
                   link.bytes_per_s / 1e6, bench.rtt_s() * 1e3);
    }
    links.push_back(link);
  }
  std::vector<std::vector<Row>> rows(benches.size());
  uint64_t seed = 1;
  for (const Shape& shape : shapes) {
    Tensor src = MakeActivations(*dtype, shape, {.seed = seed++});
    Tensor dst(src.dtype(), src.shape());
    for (Codec codec : codecs) {
      std::vector<Codec> chosen;
      std::vector<std::optional<TensorEncoder>> encoders;
      for (size_t b = 0; b < benches.size(); ++b) {
        chosen.push_back(codec == Codec::kAuto ? selector->Choose(src.NumBytes(), links[b]) : codec);
        CodecOptions o = base;
        o.codec = chosen.back();
        ASSIGN_OR_RETURN(TensorEncoder enc, TensorEncoder::Create(src.view(), o));
        encoders.emplace_back(std::move(enc));
      }
      std::vector<Bench::Cell> cells(benches.size());
      for (int r = 0; r < f.warmup + f.repeats; ++r) {
        for (size_t b = 0; b < benches.size(); ++b) {
          RETURN_IF_ERROR(benches[b].Measure(*encoders[b], dst, r >= f.warmup, cells[b]));
        }
      }
      for (size_t b = 0; b < benches.size(); ++b) {
        rows[b].push_back(benches[b].Summarize(src, codec, chosen[b], cells[b]));
      }
    }
  }
  for (Bench& bench : benches) RETURN_IF_ERROR(bench.Close());
  local_grpc.Stop();
  std::vector<Row> all;
  for (auto& per_transport : rows) all.insert(all.end(), per_transport.begin(), per_transport.end());
  PrintRows(all, f);
  return absl::OkStatus();
}

std::function<int()> SetupComm(CLI::App& sub) {
  auto f = std::make_shared<CommFlags>();
  sub.add_option("--shapes", f->shapes, "tensor shapes, e.g. 1x8192 512x4096")->capture_default_str();
  sub.add_option("--dtype", f->dtype, "bf16, f16 or f32")->capture_default_str();
  sub.add_option("--codecs", f->codecs,
                 "none lz4 zlib zstd shuffle-lz4 shuffle-zlib shuffle-zstd q8 auto")
      ->capture_default_str();
  sub.add_option("--transports", f->transports, "grpc and/or tcp")->capture_default_str();
  sub.add_option("--target", f->target,
                 "HOST:PORT of a remote Echo service (gRPC on PORT, raw TCP on PORT+1); "
                 "default: in-process loopback servers");
  sub.add_option("--serve", f->serve,
                 "run a standalone Echo server on HOST:PORT (gRPC) and HOST:PORT+1 (TCP) until "
                 "interrupted");
  sub.add_option("--token", f->token, "cluster token sent in the hello");
  sub.add_option("--repeats", f->repeats, "measured runs per cell (median reported)")->capture_default_str();
  sub.add_option("--warmup", f->warmup, "unmeasured runs per cell first")->capture_default_str();
  sub.add_option("--zlib-level", f->zlib_level, "zlib level 0..9")->capture_default_str();
  sub.add_option("--zstd-level", f->zstd_level, "zstd level")->capture_default_str();
  sub.add_option("--chunk-kib", f->chunk_kib, "raw KiB per chunk")->capture_default_str();
  sub.add_flag("--malloc-defaults", f->malloc_defaults,
               "keep glibc's allocator thresholds (freed large buffers return to the kernel, "
               "so every frame faults its pages in again)");
  auto* json = sub.add_flag("--json", f->json, "print rows as a JSON array");
  sub.add_flag("--csv", f->csv, "print rows as CSV")->excludes(json);
  return [f]() {
    Status st = Run(*f);
    if (!st.ok()) return ReportError("tandem-bench comm", st);
    return 0;
  };
}

const bool kRegistered = RegisterCommand(
    {.name = "comm", .summary = "per-shape cost of sending activations (codecs, gRPC vs TCP)",
     .setup = &SetupComm});

}  // namespace
}  // namespace tandem
