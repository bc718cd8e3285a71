"""Compare the C++ `classify` with the Python runtime on real CIFAR-10 test images.

Writes the first N test images as a CIFAR-10 binary file, runs `classify MODEL FILE --tsv --top 5`,
runs rtk.runtime.load(MODEL).predict on the same uint8 images (an ONNX file on OpenVINO, as the C++
runs it; both with the same threads and batches), and compares per image: the top-5 classes in
order (a swap counts only between classes whose probabilities differ by more than --tie) and the
top-5 probabilities (within --atol). Prints the result; exit 0 if they agree, 1 if not, 2 if a
dependency (TensorRT, cuda-python, OpenVINO) is missing. Run by scripts/gpu_check_cpp.sh; its
functions serve tests/test_cpp.py.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from rtk.data import load_test_set
from rtk.errors import RtkError

TOP = 5
BATCH = 500  # images per inference call, the same on both sides


def write_cifar_binary(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """Records of a label byte and the image channel-planar (R, G, B planes of 32x32)."""
    planar = images.transpose(0, 3, 1, 2).reshape(len(images), -1)  # [N, 3072]
    path.write_bytes(np.concatenate([labels.astype(np.uint8)[:, None], planar], axis=1).tobytes())


def classify_tsv(classify: Path, model: Path, images_file: Path,
                 threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(top-5 class indices [N, 5], their probabilities [N, 5]) as the C++ program prints them."""
    extra = ["--threads", str(threads)] if threads else []
    result = subprocess.run([str(classify), str(model), str(images_file), "--tsv", "--top", str(TOP),
                             "--batch", str(BATCH), *extra], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RtkError(f"classify failed: {result.stderr.strip()}")
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    indices = np.array([[int(i) for i in row[2].split(",")] for row in rows])
    probs = np.array([[float(p) for p in row[3].split(",")] for row in rows])
    return indices, probs


def python_probs(model: Path, images: np.ndarray, threads: int | None = None) -> np.ndarray:
    """rtk.runtime's probabilities [N, 10], run as the C++ runs `model`: an ONNX file on OpenVINO."""
    import rtk.runtime

    backend = "openvino" if model.suffix == ".onnx" else "auto"
    with rtk.runtime.load(model, backend=backend, threads=threads) as loaded:
        return loaded.predict(images, batch_sizes=[BATCH]).probs


def compare(cpp_top: np.ndarray, cpp_probs: np.ndarray, py_probs: np.ndarray, tie: float,
            atol: float) -> dict[str, float]:
    rows = np.arange(len(py_probs))[:, None]
    py_top = np.argsort(-py_probs, axis=1, kind="stable")[:, :TOP]
    # A different class at a rank is a disagreement unless Python sees the two as a near-tie.
    swapped = np.abs(py_probs[rows, cpp_top] - py_probs[rows, py_top]) > tie
    return {
        "images": len(py_probs),
        "top1_agreement": float(np.mean(cpp_top[:, 0] == py_top[:, 0])),
        "top5_identical": float(np.mean((cpp_top == py_top).all(axis=1))),
        "top5_disagreements": int(swapped.any(axis=1).sum()),
        "max_prob_diff": float(np.abs(cpp_probs - py_probs[rows, cpp_top]).max()),
        "atol": atol,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="a TensorRT engine or an rtk ONNX file")
    parser.add_argument("--classify", type=Path, required=True, help="the built C++ classify program")
    parser.add_argument("--num-images", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads of OpenVINO, on both sides")
    parser.add_argument("--data-dir", default=None, help="CIFAR-10 [default: RTK_DATA_DIR]")
    parser.add_argument("--tie", type=float, default=1e-4, help="probabilities this close may swap ranks")
    parser.add_argument("--atol", type=float, default=1e-4, help="largest allowed probability difference")
    args = parser.parse_args()
    try:
        if not args.model.is_file():
            raise RtkError(f"model not found: {args.model} (make it with `rtk build` or `rtk quantize`)")
        images, labels = load_test_set(args.data_dir)
        images, labels = images[:args.num_images], labels[:args.num_images]
        with tempfile.TemporaryDirectory() as tmp:
            images_file = Path(tmp) / "test_images.bin"
            write_cifar_binary(images_file, images, labels)
            cpp_top, cpp_probs = classify_tsv(args.classify, args.model, images_file, args.threads)
        py_probs = python_probs(args.model, images, args.threads)
    except RtkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    result = compare(cpp_top, cpp_probs, py_probs, args.tie, args.atol)
    result["cpp_accuracy"] = float(np.mean(cpp_top[:, 0] == labels))
    result["python_accuracy"] = float(np.mean(py_probs.argmax(axis=1) == labels))
    print(f"C++ classify vs rtk.runtime on {args.model}: " + ", ".join(f"{k}={v}" for k, v in result.items()))
    agree = result["top5_disagreements"] == 0 and result["max_prob_diff"] <= args.atol
    print("AGREE" if agree else "DISAGREE")
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
