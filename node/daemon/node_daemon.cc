#include "node/daemon/node_daemon.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "core/logging.h"
#include "grpcpp/grpcpp.h"
#include "model/checkpoint.h"
#include "node/cuda_backend.h"
#include "proto/grpc_channel.h"
#include "proto/hello.h"
#include "tandem/v1/coordinator.grpc.pb.h"

namespace tandem {

namespace {

constexpr int kKvBlockTokens = 16;

// A /proc/meminfo field ("MemAvailable:", "MemTotal:") in bytes; 0 if absent.
uint64_t MemInfoBytes(std::string_view field) {
  std::ifstream meminfo("/proc/meminfo");
  std::string key, unit;
  uint64_t kb = 0;
  while (meminfo >> key >> kb >> unit) {
    if (key == field) return kb * 1024;
  }
  return 0;
}

uint64_t MemAvailableBytes() { return MemInfoBytes("MemAvailable:"); }
uint64_t MemTotalBytes() { return MemInfoBytes("MemTotal:"); }

std::string HostName() {
  char buf[256] = {};
  if (gethostname(buf, sizeof buf - 1) != 0) return "localhost";
  return buf;
}

DType WeightDType(const NodeConfig& config, const ModelSpec& spec) {
  if (config.quantize == Quantize::kInt8) return DType::kI8;
  if (config.quantize == Quantize::kInt4) return DType::kI4;
  if (spec.torch_dtype == DType::kF16 || spec.torch_dtype == DType::kBF16) return spec.torch_dtype;
  return DType::kF32;
}

WeightQuantization ToWeightQuantization(Quantize q) {
  switch (q) {
    case Quantize::kInt8: return WeightQuantization::kInt8;
    case Quantize::kInt4: return WeightQuantization::kInt4;
    case Quantize::kNone: break;
  }
  return WeightQuantization::kNone;
}

// "host:port" to advertise: the configured one, or the listen address with
// a wildcard host replaced by this machine's name and port 0 by the bound port.
std::string AdvertisedAddress(const NodeConfig& config, int bound_port) {
  if (!config.advertise.empty()) return config.advertise;
  std::string host = config.listen.substr(0, config.listen.rfind(':'));
  if (host == "0.0.0.0" || host == "[::]" || host == "::" || host.empty()) host = HostName();
  return absl::StrCat(host, ":", bound_port);
}

}  // namespace

StatusOr<std::unique_ptr<NodeDaemon>> NodeDaemon::Start(const NodeConfig& config) {
  std::unique_ptr<NodeDaemon> d(new NodeDaemon());
  d->config_ = config;
  if (d->config_.name.empty()) d->config_.name = HostName();
  if (config.model.empty()) return absl::InvalidArgumentError("no model folder (--model)");
  // The CPU, or the node's GPUs with tensor parallelism across them
  // (config/ has refused mixing the CPU with GPUs, and repeats).
  d->cuda_devices_ = CudaOrdinals(config.devices);
  const CudaBackend* cuda = nullptr;
  if (!d->cuda_devices_.empty()) {
    StatusOr<const CudaBackend*> loaded = LoadCudaBackend();
    if (!loaded.ok()) {
      return Status(loaded.status().code(),
                    absl::StrCat("--devices ", DevicesToString(config.devices), ": ",
                                 loaded.status().message(), " (--devices cpu needs no GPU)"));
    }
    cuda = *loaded;
  }
  ASSIGN_OR_RETURN(d->spec_, LoadModelSpec(config.model));

  spdlog::info("node '{}': {} (calibrating on {})", d->config_.name, d->spec_.ToString(),
               d->cuda_devices_.empty() ? "the CPU" : DevicesToString(config.devices));
  uint64_t device_memory = MemAvailableBytes();
  if (cuda != nullptr) {
    const std::vector<cuda::DeviceInfo> gpus = cuda->list_devices();
    device_memory = 0;
    for (int device : d->cuda_devices_) {
      auto gpu = std::find_if(gpus.begin(), gpus.end(),
                              [&](const cuda::DeviceInfo& g) { return g.index == device; });
      if (gpu == gpus.end()) {
        return absl::NotFoundError(absl::StrCat("--devices ", DevicesToString(config.devices),
                                                ": no GPU ", device, " (this machine has ",
                                                gpus.size(), ")"));
      }
      device_memory += gpu->free_memory_bytes;
      d->gpus_.push_back(*gpu);
    }
    // Timed on the first GPU. With N GPUs each streams 1/N of every layer
    // at once, so a layer takes about 1/N of the time (the all-reduces,
    // microseconds over NVLink, are left out) at N times the bandwidth.
    ASSIGN_OR_RETURN(d->calibration_, CalibrateCudaNode(*cuda, d->spec_,
                                                        WeightDType(config, d->spec_),
                                                        d->cuda_devices_[0]));
    const double n = static_cast<double>(d->cuda_devices_.size());
    d->calibration_.decode_layer_ms /= n;
    d->calibration_.prefill_layer_ms /= n;
    d->calibration_.head_ms /= n;
    d->calibration_.memory_bandwidth_gbps *= n;
  } else {
    d->calibration_ = CalibrateNode(d->spec_, WeightDType(config, d->spec_), config.threads);
  }
  d->memory_budget_ = config.memory_budget ? config.memory_budget : device_memory / 10 * 9;
  d->kv_budget_ = config.kv_budget ? config.kv_budget
                                   : std::min<uint64_t>(uint64_t{512} << 20, d->memory_budget_ / 4);
  spdlog::info("node '{}': decode layer {:.3f} ms, prefill layer ({} tokens) {:.3f} ms, "
               "memory bandwidth {:.1f} GB/s",
               d->config_.name, d->calibration_.decode_layer_ms, d->calibration_.prefill_tokens,
               d->calibration_.prefill_layer_ms, d->calibration_.memory_bandwidth_gbps);

  d->hello_ = MakeHello({.role = v1::ROLE_NODE,
                         .node_id = d->config_.name,
                         .model_fingerprint = d->spec_.Fingerprint(),
                         .cluster_token = config.cluster_token});
  NodeDaemon* self = d.get();
  d->service_ = std::make_unique<NodeService>(
      d->hello_, [self](const v1::ShardAssignment& a) { return self->Load(a); });

  grpc::ServerBuilder builder;
  ConfigureServerBuilder(builder);
  int port = 0;
  builder.AddListeningPort(config.listen, grpc::InsecureServerCredentials(), &port);
  d->service_->AddTo(builder);
  d->server_ = builder.BuildAndStart();
  if (!d->server_ || port == 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen on ", config.listen));
  }
  d->service_->StartServing();
  d->address_ = AdvertisedAddress(config, port);
  spdlog::info("node '{}': serving on {} (advertised as {})", d->config_.name, config.listen,
               d->address_);
  return d;
}

NodeDaemon::~NodeDaemon() {
  Stop();
  if (server_) {
    service_->StopServing(*server_, std::chrono::system_clock::now() + std::chrono::seconds(2));
  }
  if (service_) service_->set_runtime(nullptr);
  server_.reset();  // after StopServing (node_server.h)
}

void NodeDaemon::Stop() {
  std::lock_guard lock(mutex_);
  stopping_ = true;
  if (control_) control_->TryCancel();
  cv_.notify_all();
}

v1::LoadShardResponse NodeDaemon::Load(const v1::ShardAssignment& a) {
  std::lock_guard lock(load_mutex_);
  v1::LoadShardResponse response;
  auto fail = [&](const std::string& message) {
    spdlog::error("node '{}': cannot load layers [{}, {}): {}", config_.name, a.first_layer(),
                  a.last_layer(), message);
    response.set_error(message);
    return response;
  };
  if (a.model_fingerprint() != spec_.Fingerprint()) {
    return fail(absl::StrCat("the assignment is for model ", a.model_fingerprint(),
                             " but this node has model ", spec_.Fingerprint()));
  }
  if (a.first_layer() >= a.last_layer() ||
      a.last_layer() > static_cast<uint32_t>(spec_.num_layers)) {
    return fail(absl::StrCat("layers [", a.first_layer(), ", ", a.last_layer(),
                             ") are not a range of the model's ", spec_.num_layers, " layers"));
  }
  const bool last = a.last_layer() == static_cast<uint32_t>(spec_.num_layers);
  if (!last && a.next_stage().empty()) return fail("no next stage for a stage that is not last");

  auto current = service_->runtime();
  if (current && loaded_.SerializeAsString() == a.SerializeAsString()) {
    spdlog::info("node '{}': layers [{}, {}) already loaded", config_.name, a.first_layer(),
                 a.last_layer());
  } else {
    service_->set_runtime(nullptr);  // free the old stage first
    loaded_.Clear();
    auto checkpoint = Checkpoint::Open(config_.model);
    if (!checkpoint.ok()) return fail(std::string(checkpoint.status().message()));
    StageOptions options;
    options.range = {static_cast<int>(a.first_layer()), static_cast<int>(a.last_layer())};
    // A GPU node's ranks are its GPUs, whatever the plan's default.
    auto ranks = StageRanks(a.tensor_parallel() > 0 ? static_cast<int>(a.tensor_parallel()) : 1,
                            cuda_devices_);
    if (!ranks.ok()) return fail(absl::StrCat("the assignment asks for ", ranks.status().message()));
    options.tp = *ranks;
    options.threads = config_.threads;
    if (a.max_batch_tokens() > 0) options.max_batch_tokens = static_cast<int>(a.max_batch_tokens());
    if (a.max_batch_sequences() > 0) {
      options.max_batch_sequences = static_cast<int>(a.max_batch_sequences());
    }
    options.kv_budget_bytes = a.kv_budget_bytes() > 0 ? a.kv_budget_bytes() : kv_budget_;
    options.quantize = ToWeightQuantization(config_.quantize);
    std::unique_ptr<NextStageLink> next;
    if (!last) {
      auto codec = CodecFromProto(a.link_codec());
      if (!codec.ok()) return fail(std::string(codec.status().message()));
      next = std::make_unique<NextStageLink>(a.next_stage(), hello_, CodecOptions{.codec = *codec});
    }
    auto t0 = std::chrono::steady_clock::now();
    auto runtime = StageRuntime::Create(
        spec_, std::make_shared<const Checkpoint>(std::move(*checkpoint)), options,
        std::move(next), cuda_devices_);
    if (!runtime.ok()) return fail(std::string(runtime.status().message()));
    service_->set_runtime(std::move(*runtime));
    loaded_ = a;
    spdlog::info("node '{}': loaded layers [{}, {}) in {:.1f} s{}", config_.name, a.first_layer(),
                 a.last_layer(),
                 std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(),
                 last ? " (last stage)" : absl::StrCat(", next stage ", a.next_stage()));
  }
  auto runtime = service_->runtime();
  const PagedKvCache& kv = runtime->executor().kv_cache();
  response.set_kv_cache_bytes(kv.allocated_bytes());
  response.set_kv_capacity_tokens(static_cast<uint64_t>(kv.num_blocks()) * kKvBlockTokens);
  response.set_max_tokens(static_cast<uint32_t>(runtime->executor().options().max_batch_tokens));
  DType wt = WeightDType(config_, spec_);
  uint64_t bytes = spec_.LayerWeightBytes(wt) * (a.last_layer() - a.first_layer());
  if (a.first_layer() == 0) bytes += spec_.EmbeddingBytes(wt);
  if (last) bytes += spec_.HeadBytes(wt);
  response.set_weight_bytes(bytes);
  return response;
}

v1::RegisterNodeRequest NodeDaemon::Registration() const {
  v1::RegisterNodeRequest r;
  *r.mutable_hello() = hello_;
  r.set_address(address_);
  v1::DeviceInfo* cpu = r.add_devices();
  cpu->set_kind("cpu");
  cpu->set_name(absl::StrCat(std::thread::hardware_concurrency(), " cores"));
  cpu->set_memory_bytes(MemTotalBytes());
  cpu->set_memory_bandwidth_gbps(calibration_.memory_bandwidth_gbps);
  for (const cuda::DeviceInfo& gpu : gpus_) {
    v1::DeviceInfo* d = r.add_devices();
    d->set_kind("cuda");
    d->set_name(absl::StrCat("cuda:", gpu.index, " ", gpu.name));
    d->set_memory_bytes(gpu.total_memory_bytes);
  }
  r.set_free_memory_bytes(MemAvailableBytes());
  v1::NodeCalibration* c = r.mutable_calibration();
  c->set_decode_layer_ms(calibration_.decode_layer_ms);
  c->set_prefill_layer_ms(calibration_.prefill_layer_ms);
  c->set_prefill_tokens(static_cast<uint32_t>(calibration_.prefill_tokens));
  c->set_head_ms(calibration_.head_ms);
  c->set_memory_bandwidth_gbps(calibration_.memory_bandwidth_gbps);
  c->set_memory_budget_bytes(memory_budget_);
  c->set_kv_budget_bytes(kv_budget_);
  c->set_threads(static_cast<uint32_t>(calibration_.threads));
  c->set_cpu_cores(std::thread::hardware_concurrency());
  c->set_total_memory_bytes(MemTotalBytes());
  return r;
}

Status NodeDaemon::Session(bool* refused) {
  *refused = false;
  auto stub = v1::Coordinator::NewStub(MakeChannel(config_.coordinator));
  v1::RegisterNodeResponse registered;
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    grpc::Status s = stub->RegisterNode(&ctx, Registration(), &registered);
    if (s.error_code() == grpc::StatusCode::UNAVAILABLE ||
        s.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED) {
      return absl::UnavailableError(absl::StrCat("coordinator at ", config_.coordinator,
                                                 " is unreachable: ", s.error_message()));
    }
    if (!s.ok()) {
      *refused = true;
      return absl::FailedPreconditionError(absl::StrCat(
          "the coordinator at ", config_.coordinator, " refused this node: ", s.error_message()));
    }
  }
  if (Status s = CheckHello(hello_, registered.hello()); !s.ok()) {
    *refused = true;
    return s;
  }
  spdlog::info("node '{}': registered with the coordinator at {}", config_.name,
               config_.coordinator);

  grpc::ClientContext ctx;
  {
    std::lock_guard lock(mutex_);
    if (stopping_) return absl::OkStatus();
    control_ = &ctx;
  }
  auto rw = stub->Control(&ctx);
  std::mutex write_mutex;  // one Write at a time on a sync stream
  auto write = [&](const v1::NodeToCoordinator& m) {
    std::lock_guard lock(write_mutex);
    return rw->Write(m);
  };
  v1::NodeToCoordinator hello;
  *hello.mutable_hello() = hello_;
  write(hello);

  const auto interval =
      std::chrono::milliseconds(std::max<uint32_t>(100, registered.heartbeat_interval_ms()));
  std::atomic<bool> session_over{false};
  std::thread heartbeats([&] {
    uint64_t sequence = 0;
    auto last_time = std::chrono::steady_clock::now();
    double last_compute = 0;
    while (!session_over) {
      {
        std::unique_lock lock(mutex_);
        cv_.wait_for(lock, interval, [&] { return stopping_ || session_over.load(); });
        if (stopping_ || session_over) return;
      }
      v1::NodeToCoordinator m;
      v1::Heartbeat* hb = m.mutable_heartbeat();
      hb->set_session_id(registered.session_id());
      hb->set_sequence(++sequence);
      if (auto runtime = service_->runtime()) {
        StageStats st = runtime->stats();
        auto now = std::chrono::steady_clock::now();
        double wall = std::chrono::duration<double, std::milli>(now - last_time).count();
        hb->set_busy_fraction(wall > 0 ? std::min(1.0, (st.compute_ms_total - last_compute) / wall)
                                       : 0);
        last_time = now;
        last_compute = st.compute_ms_total;
        hb->set_kv_total_blocks(static_cast<uint64_t>(st.kv_total_blocks));
        hb->set_kv_free_blocks(static_cast<uint64_t>(st.kv_free_blocks));
        hb->set_steps(st.steps);
        hb->set_compute_ms_total(st.compute_ms_total);
        hb->set_link_raw_bytes(st.link_raw_bytes);
        hb->set_link_wire_bytes(st.link_wire_bytes);
        hb->set_link_codec(st.link_codec);
      }
      if (!write(m)) return;
    }
  });

  Status result = absl::OkStatus();
  v1::CoordinatorToNode command;
  while (rw->Read(&command)) {
    if (command.has_hello()) {
      if (Status s = CheckHello(hello_, command.hello()); !s.ok()) {
        *refused = true;
        result = s;
        ctx.TryCancel();
        break;
      }
    } else if (command.has_assign()) {
      v1::NodeToCoordinator reply;
      *reply.mutable_shard_loaded() = Load(command.assign());
      write(reply);
    } else if (command.has_release()) {
      if (auto runtime = service_->runtime()) {
        runtime->Release({command.release().sequence_ids().begin(),
                          command.release().sequence_ids().end()});
      }
    } else if (command.has_shutdown()) {
      spdlog::info("node '{}': shutdown requested by the coordinator", config_.name);
      Stop();
      break;
    }
  }
  session_over = true;
  cv_.notify_all();
  heartbeats.join();
  {
    std::lock_guard lock(write_mutex);
    rw->WritesDone();
  }
  grpc::Status finish = rw->Finish();
  {
    std::lock_guard lock(mutex_);
    control_ = nullptr;
  }
  if (result.ok() && !finish.ok() && finish.error_code() != grpc::StatusCode::CANCELLED) {
    // The coordinator ended the stream with a reason: a refusal is final.
    if (finish.error_code() == grpc::StatusCode::FAILED_PRECONDITION ||
        finish.error_code() == grpc::StatusCode::PERMISSION_DENIED ||
        finish.error_code() == grpc::StatusCode::ALREADY_EXISTS) {
      *refused = true;
    }
    result = absl::UnavailableError(absl::StrCat("control stream ended: ", finish.error_message()));
  }
  return result;
}

Status NodeDaemon::Run() {
  while (true) {
    {
      std::lock_guard lock(mutex_);
      if (stopping_) return absl::OkStatus();
    }
    bool refused = false;
    Status s = Session(&refused);
    if (refused) return s;
    {
      std::unique_lock lock(mutex_);
      if (stopping_) return absl::OkStatus();
      spdlog::warn("node '{}': {}; retrying in 1 s", config_.name,
                   s.ok() ? std::string("the coordinator went away") : std::string(s.message()));
      cv_.wait_for(lock, std::chrono::seconds(1), [&] { return stopping_; });
    }
  }
}

}  // namespace tandem
