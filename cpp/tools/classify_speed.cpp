// classify_speed: how long rtk::Classifier::classify takes, from uint8 pixels to top-5, for one
// batch of images over and over. Prints one latency in seconds per call, for
// scripts/bench_cpp.py to set beside rtk.runtime's on the same file and machine.
#include <chrono>
#include <cstdio>

#include "rtk/classifier.h"
#include "tool_main.h"

namespace {

const char* kUsage =
    "usage: classify_speed MODEL IMAGES --batch B [--threads T] [--warmup S] [--seconds S] [--device D]\n"
    "\n"
    "Classifies the first B images of IMAGES (a CIFAR-10 binary file) with MODEL, again and again:\n"
    "--warmup seconds untimed (default 1; at least one call), then --seconds timed (default 3; at\n"
    "least 5 calls). Prints each timed call's wall-clock seconds, one per line.\n";

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

int run(int argc, char** argv) {
  rtk::tools::Args args = rtk::tools::parse_args(
      argc, argv, {"--batch", "--threads", "--warmup", "--seconds", "--device"}, {}, 2);
  std::optional<long> batch = args.bounded("--batch", 1, 1 << 16);
  if (!batch) throw rtk::Error("--batch is required");
  rtk::Options options;
  options.threads = static_cast<int>(args.bounded("--threads", 0, 1024).value_or(0));
  options.cuda_device = static_cast<int>(args.bounded("--device", 0, 1024).value_or(0));
  const double warmup = static_cast<double>(args.bounded("--warmup", 0, 600).value_or(1));
  const double duration = static_cast<double>(args.bounded("--seconds", 1, 3600).value_or(3));

  std::vector<rtk::Image> images = rtk::read_images(args.positional[1]);
  if (images.size() < static_cast<std::size_t>(*batch)) {
    throw rtk::Error(args.positional[1] + " holds " + std::to_string(images.size()) + " images, fewer than --batch " +
                     std::to_string(*batch));
  }
  images.resize(static_cast<std::size_t>(*batch));
  rtk::Classifier model(args.positional[0], options);

  Clock::time_point start = Clock::now();
  do {
    model.classify(images, 5);
  } while (seconds_since(start) < warmup);
  std::vector<double> latencies;
  start = Clock::now();
  while (latencies.size() < 5 || seconds_since(start) < duration) {
    Clock::time_point call = Clock::now();
    model.classify(images, 5);
    latencies.push_back(seconds_since(call));
  }
  for (double s : latencies) std::printf("%.9f\n", s);
  return 0;
}

}  // namespace

int main(int argc, char** argv) { return rtk::tools::tool_main(argc, argv, kUsage, run); }
