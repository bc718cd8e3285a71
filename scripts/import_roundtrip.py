"""`rtk import` against rtk's own pipeline (issue 13, done-when 2), on the real CIFAR-10.

The shipped rtk/weights/resnet<depth>.pt is rewritten as a foreign checkpoint, the way
akamaster/pytorch_resnet_cifar10 saves one ({"state_dict": {"module.layer1.0.conv1.weight", ...,
"module.linear.weight"}, "best_prec1": ...}, every storage tagged as saved on "cuda:0"), imported with
`rtk import`, and taken through `rtk export --checkpoint`, `rtk quantize` and `rtk bench --checkpoint`.
The same commands run on the shipped checkpoint itself. Then every figure is compared: the ONNX and
INT8 graphs (bytes of the network, metadata aside), the INT8 test-set validation, and each bench row's
accuracy. Timings are printed side by side, not compared (two runs on a shared machine).

    RTK_DATA_DIR=/path/to/cifar-10-batches-py python scripts/import_roundtrip.py [OUT] [--depth 20] \\
        [--bench-args "--duration 1"] [--compare-only]

Writes OUT/{own,imported}/resnet<depth>/..., OUT/calib/, OUT/*.txt (each command's output);
exit status 1 when any compared figure differs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def foreign_copy(shipped: Path, out: Path) -> Path:
    """The shipped weights in akamaster's layout and wrapper, storages tagged as on a GPU."""
    import torch

    state = torch.load(shipped, map_location="cpu", weights_only=True)["state_dict"]
    renamed = {"module." + re.sub(r"^fc\.", "linear.", re.sub(r"^stage(\d)\.", r"layer\1.", key)): value
               for key, value in state.items()}
    tag = torch.serialization.location_tag
    torch.serialization.location_tag = lambda storage: "cuda:0"  # torch.save asks it for each storage
    try:
        torch.save({"epoch": 200, "state_dict": renamed, "best_prec1": 0.0}, out)
    finally:
        torch.serialization.location_tag = tag
    return out


def run(args: list[str], log: Path) -> None:
    """`rtk ARGS`, its stdout and stderr kept in `log`; stops the script when it fails."""
    print("$ rtk " + shlex.join(args), flush=True)
    with open(log, "w") as f:
        proc = subprocess.run([sys.executable, "-m", "rtk", *args], stdout=f, stderr=subprocess.STDOUT, check=False)
    if proc.returncode:
        sys.exit(f"rtk {args[0]} failed (exit {proc.returncode}); see {log}")


def network_bytes(path: Path) -> bytes:
    import onnx

    return onnx.load(path).graph.SerializeToString()


def figures(runs: Path, export_log: Path) -> dict[str, object]:
    """Everything that must not depend on where the weights came from."""
    # rtk export's validation table (ONNX vs torch on real test images), row by row
    rows = [line for line in export_log.read_text().splitlines() if line.startswith("│")]
    found: dict[str, object] = {f"export validation: {row.split('│')[1].strip()}": row.split("│")[2].strip()
                                for row in rows}
    for name in ("model.onnx", "model.int8.tensorrt.onnx", "model.int8.cpu.onnx"):
        found[f"{name}: graph"] = network_bytes(runs / name)
    for name in ("model.int8.tensorrt.onnx", "model.int8.cpu.onnx"):
        report = json.loads((runs / f"{name}.json").read_text())
        for key in ("accuracy_pct", "reference_accuracy_pct", "delta_pct", "top1_agreement_pct", "test_images"):
            found[f"{name}: {key}"] = report[key]
    bench = json.loads((runs / "bench.json").read_text())
    for row in bench["rows"]:
        for key in ("top1", "images", "delta_vs_baseline", "agreement_vs_baseline"):
            found[f"bench {row['name']}: {key}"] = row["accuracy"][key]
    return found


def throughputs(runs: Path) -> dict[str, float]:
    bench = json.loads((runs / "bench.json").read_text())
    return {f"{row['name']} batch {t['batch_size']}": t["throughput"]
            for row in bench["rows"] for kind in row["timings"].values() for t in kind}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", type=Path, default=Path("runs/import-roundtrip"))
    parser.add_argument("--depth", type=int, default=20)
    parser.add_argument("--bench-args", default="", help="extra rtk bench options, e.g. '--duration 1'")
    parser.add_argument("--compare-only", action="store_true", help="compare the files of an earlier run in OUT")
    args = parser.parse_args()
    if not os.environ.get("RTK_DATA_DIR"):
        sys.exit("set RTK_DATA_DIR to the cifar-10-batches-py folder")
    out, depth = args.out, str(args.depth)
    out.mkdir(parents=True, exist_ok=True)
    os.environ["RTK_CALIB_DIR"] = str(out / "calib")  # manifests are named by checkpoint sha256: one each
    shipped = ROOT / "rtk" / "weights" / f"resnet{depth}.pt"
    source = out / f"resnet{depth}-akamaster.th"
    if not args.compare_only:
        foreign_copy(shipped, source)
    imported = out / "imported" / f"resnet{depth}" / "checkpoint.pt"
    bench = ["--precision", "int8", *shlex.split(args.bench_args)]

    sides = () if args.compare_only else (("own", shipped), ("imported", imported))
    for side, checkpoint in sides:
        runs = str(out / side)
        if side == "imported":
            run(["import", str(source), "--depth", depth, "--runs-dir", runs, "--force"], out / "imported-import.txt")
        run(["export", "--checkpoint", str(checkpoint), "--runs-dir", runs], out / f"{side}-export.txt")
        run(["quantize", "--depth", depth, "--runs-dir", runs], out / f"{side}-quantize.txt")
        run(["bench", "--checkpoint", str(checkpoint), "--depth", depth, "--runs-dir", runs, *bench],
            out / f"{side}-bench.txt")

    own, theirs = (figures(out / side / f"resnet{depth}", out / f"{side}-export.txt") for side in ("own", "imported"))
    differ = [key for key in own if own[key] != theirs.get(key)]
    print(f"\n{'figure':62} {'own':>10} {'imported':>10}")
    for key in own:
        a, b = own[key], theirs.get(key)
        shown = ("same bytes" if a == b else "DIFFERENT") if isinstance(a, bytes) else f"{a!s:>10} {b!s:>10}"
        print(f"{key:62} {shown}" + ("" if a == b else "   <- differs"))
    print(f"\n{'throughput (img/s; not compared)':62} {'own':>10} {'imported':>10}")
    own_speed, their_speed = (throughputs(out / side / f"resnet{depth}") for side in ("own", "imported"))
    for key, value in own_speed.items():
        print(f"{key:62} {value:10.0f} {their_speed.get(key, float('nan')):10.0f}")
    print(f"\n{len(own) - len(differ)} of {len(own)} figures the same" + (f"; differ: {differ}" if differ else ""))
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
