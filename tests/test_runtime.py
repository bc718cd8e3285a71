"""rtk.runtime: input checks and their errors, batch splitting, every CPU backend on real ONNX files,
thread safety, the same top-1 as `rtk bench`, and an import that leaves torch out."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
import warnings
from typing import Any

import numpy as np
import pytest
from conftest import write_fake_engine

import rtk.runtime
from rtk.errors import MissingDependency, RtkError
from rtk.preprocess import CLASSES, normalization_metadata, normalize_uint8_nhwc
from rtk.runtime.base import INPUT_NAME, OUTPUT_NAME, Runner, device_work_input
from rtk.runtime.model import Model, network_input, softmax

NORMALIZATION = normalization_metadata()


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


# ---------------------------------------------------------------- input checks (numpy only)


def test_uint8_nhwc_is_normalized_like_training():
    x = images(4)
    np.testing.assert_array_equal(network_input(x, NORMALIZATION), normalize_uint8_nhwc(x))
    np.testing.assert_array_equal(network_input(x[0], NORMALIZATION), normalize_uint8_nhwc(x[:1]))


def test_normalized_float_nchw_passes_through():
    x = normalize_uint8_nhwc(images(3))
    np.testing.assert_array_equal(network_input(x, NORMALIZATION), x)
    assert network_input(x[0], NORMALIZATION).shape == (1, 3, 32, 32)


@pytest.mark.parametrize("bad, message", [
    (np.zeros((2, 3, 32, 32), np.uint8), "channels-first"),
    (np.zeros((2, 32, 32, 4), np.uint8), "drop the alpha channel"),
    (np.zeros((2, 32, 32, 1), np.uint8), "3 channels"),
    (np.zeros((2, 28, 28, 3), np.uint8), "32x32"),
    (np.zeros((32, 32), np.uint8), r"\[N, 32, 32, 3\]"),
    (np.zeros((0, 32, 32, 3), np.uint8), "empty"),
    (np.zeros((2, 32, 32, 3), np.float64), "got dtype float64"),
    (np.zeros((2, 32, 32, 3), np.int32), "got dtype int32"),
    (np.zeros((2, 32, 32, 3), np.float32), "channels-last"),
    (np.zeros((2, 3, 16, 16), np.float32), r"got shape \(2, 3, 16, 16\)"),
    (np.full((2, 3, 32, 32), 200.0, np.float32), "looks like raw pixels"),
    (np.full((2, 3, 32, 32), np.nan, np.float32), "NaN"),
])
def test_bad_inputs_get_a_clear_error(bad, message):
    with pytest.raises(RtkError, match=message):
        network_input(bad, NORMALIZATION)


def test_range_check_allows_every_normalized_pixel():
    extremes = np.stack([np.zeros((32, 32, 3), np.uint8), np.full((32, 32, 3), 255, np.uint8)])
    network_input(normalize_uint8_nhwc(extremes), NORMALIZATION)  # no error at the range ends


def test_softmax_rows_sum_to_one_for_large_logits():
    probs = softmax(np.array([[1000.0, 0.0, -1000.0], [1.0, 1.0, 1.0]], np.float32))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(probs[1], 1 / 3, rtol=1e-6)


# ---------------------------------------------------------------- Model over a fake runner


class FakeRunner(Runner):
    """logits[:, c] = mean of input channel c % 3, times (c + 1): a pure function of the input."""

    backend = "fake"

    def __init__(self, max_batch: int | None = None, metadata: dict[str, Any] | None = None):
        super().__init__("fake.model")
        self._max_batch = max_batch
        self._metadata = {"normalization": NORMALIZATION, "classes": list(CLASSES)} if metadata is None else metadata
        self.batches: list[int] = []

    @property
    def max_batch(self) -> int | None:
        return self._max_batch

    @property
    def metadata(self) -> dict[str, Any]:
        return self._metadata

    def _activate(self) -> None:
        return None

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = feed[INPUT_NAME]
        if self._max_batch is not None:
            assert len(x) <= self._max_batch
        self.batches.append(len(x))
        means = x.mean(axis=(2, 3))  # [N, 3]
        return {OUTPUT_NAME: np.stack([means[:, c % 3] * (c + 1) for c in range(10)], axis=1)}


def test_batches_above_the_runner_max_are_split_and_joined():
    x = images(10)
    whole = Model(FakeRunner()).logits(x)
    runner = FakeRunner(max_batch=4)
    np.testing.assert_array_equal(Model(runner).logits(x), whole)
    assert runner.batches == [4, 4, 2]


def test_batch_sizes_sweep_then_repeat_and_pad_fills_the_last_batch():
    x = images(20)
    whole = Model(FakeRunner()).logits(x)
    runner = FakeRunner(max_batch=8)
    np.testing.assert_array_equal(Model(runner).logits(x, (1, 7, 16)), whole)
    assert runner.batches == [1, 7, 8, 4]  # 16 capped at the runner's max; the rest as it comes
    runner = FakeRunner()
    np.testing.assert_array_equal(Model(runner).logits(x, (6,), pad=True), whole)
    assert runner.batches == [6, 6, 6, 6]  # the last 2 images padded with copies to one shape


def test_logits_of_the_wrong_shape_are_an_error():
    class Truncating(FakeRunner):
        def infer(self, feed):
            return {OUTPUT_NAME: super().infer(feed)[OUTPUT_NAME][:1]}

    with pytest.raises(RtkError, match=r"returned logits of shape \[1, 10\] for a batch of 3"):
        Model(Truncating()).logits(images(3))


def test_predict_returns_classes_and_probabilities():
    model = Model(FakeRunner())
    pred = model.predict(images(5))
    assert pred.classes.dtype == np.int64 and pred.classes.shape == (5,)
    assert pred.probs.dtype == np.float32 and pred.probs.shape == (5, 10)
    np.testing.assert_array_equal(pred.classes, pred.probs.argmax(axis=1))
    assert model.classes == CLASSES and model.backend == "fake"


def test_a_model_without_rtk_metadata_is_refused():
    with pytest.raises(RtkError, match="carries no rtk metadata"):
        Model(FakeRunner(metadata={}))


# ---------------------------------------------------------------- load(): files and backends


def test_load_refuses_missing_and_unknown_files(tmp_path):
    with pytest.raises(RtkError, match="not found"):
        rtk.runtime.load(tmp_path / "missing.onnx")
    (tmp_path / "model.bin").write_bytes(b"x")
    with pytest.raises(RtkError, match="unknown model file type"):
        rtk.runtime.load(tmp_path / "model.bin")
    (tmp_path / "model.onnx").write_bytes(b"not an onnx file")
    with pytest.raises(RtkError, match="run it with onnxruntime or openvino, not torch"):
        rtk.runtime.load(tmp_path / "model.onnx", backend="torch")
    with pytest.raises(RtkError, match="unknown backend"):
        rtk.runtime.load(tmp_path / "model.onnx", backend="tflite")
    with pytest.raises(RtkError, match="onnxruntime cannot load"):
        rtk.runtime.load(tmp_path / "model.onnx", backend="onnxruntime")


def test_tensorrt_engine_without_tensorrt_is_a_missing_dependency(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError, as where it is absent
    write_fake_engine(tmp_path / "model.int8.plan", precision="int8")
    with pytest.raises(MissingDependency, match=r"tensorrt is not installed.*rtk\[gpu-cu13\].*rtk\[gpu-cu12\]") as info:
        rtk.runtime.load(tmp_path / "model.int8.plan")
    assert info.value.exit_code == 2
    with pytest.raises(RtkError, match="runs with tensorrt, not onnxruntime"):
        rtk.runtime.load(tmp_path / "model.int8.plan", backend="onnxruntime")


def test_tensorrt_device_memory_needs_cuda_python_or_pycuda(monkeypatch):
    from rtk.runtime import cuda

    for module in ("cuda", "cuda.bindings", "cuda.bindings.runtime", "pycuda", "pycuda.driver"):
        monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(MissingDependency, match=r"cuda-python or pycuda.*rtk\[gpu-cu13\]"):
        cuda.cuda_binding()
    with pytest.raises(MissingDependency, match=r"cuda-python or pycuda.*rtk\[rtx-cu13\].*rtk\[rtx-cu12\]"):
        cuda.cuda_binding("rtx")  # TensorRT for RTX's extras bring cuda-python


def test_the_fastest_installed_onnx_backend_is_the_default(monkeypatch):
    assert rtk.runtime.onnx_backend() == "openvino"  # both are installed here (the cpu and openvino extras)
    monkeypatch.setattr(rtk.runtime, "installed", lambda module: module == "onnxruntime")
    assert rtk.runtime.onnx_backend() == "onnxruntime"
    monkeypatch.setattr(rtk.runtime, "installed", lambda module: False)
    with pytest.raises(MissingDependency, match="needs openvino or onnxruntime"):
        rtk.runtime.onnx_backend()


def test_fp16_onnx_files_go_to_onnxruntime(monkeypatch):
    """OpenVINO's CPU plugin cannot run the FP16 file rtk quantize writes; auto must not pick it."""
    assert rtk.runtime.onnx_backend("fp16") == "onnxruntime"
    assert rtk.runtime.onnx_backend("int8") == "openvino"
    monkeypatch.setattr(rtk.runtime, "installed", lambda module: module == "openvino")
    with pytest.raises(MissingDependency, match="FP16 ONNX file needs onnxruntime"):
        rtk.runtime.onnx_backend("fp16")


# ---------------------------------------------------------------- real ONNX files


@pytest.fixture(scope="module")
def artifacts(bench_runs_dir):
    root = bench_runs_dir / "resnet20"
    return {"checkpoint": root / "checkpoint.pt", "fp32": root / "model.onnx", "int8": root / "model.int8.cpu.onnx"}


def test_every_backend_gives_the_same_fp32_logits(artifacts):
    x = images(16)
    reference = rtk.runtime.load(artifacts["checkpoint"], threads=1).logits(x)
    for backend in ("onnxruntime", "openvino"):
        model = rtk.runtime.load(artifacts["fp32"], backend=backend, threads=1)
        assert (model.backend, model.precision) == (backend, "fp32")  # OpenVINO: f32 hint, not bf16
        np.testing.assert_allclose(model.logits(x), reference, atol=1e-4, rtol=1e-4)
    assert model.metadata["depth"] == 20 and model.classes == CLASSES


def test_openvino_bf16_is_its_own_precision(artifacts):
    x = images(16)
    f32 = rtk.runtime.load(artifacts["fp32"], backend="openvino", precision="fp32", threads=1)
    bf16 = rtk.runtime.load(artifacts["fp32"], backend="openvino", precision="bf16", threads=1)
    assert bf16.precision == "bf16" and bf16.name == "openvino bf16"
    np.testing.assert_allclose(bf16.logits(x), f32.logits(x), atol=0.5)  # bf16 keeps 8 bits of mantissa


def test_precision_the_file_cannot_run_is_refused(artifacts):
    with pytest.raises(RtkError, match="int8 model; OpenVINO cannot run it as bf16"):
        rtk.runtime.load(artifacts["int8"], backend="openvino", precision="bf16")
    with pytest.raises(RtkError, match="int8 model; onnxruntime runs it as it is, not as fp32"):
        rtk.runtime.load(artifacts["int8"], backend="onnxruntime", precision="fp32")


def test_bad_input_reaches_the_user_as_the_documented_error(artifacts):
    model = rtk.runtime.load(artifacts["int8"], backend="onnxruntime")
    with pytest.raises(RtkError, match="channels-first"):
        model.predict(images(2).transpose(0, 3, 1, 2))
    with pytest.raises(RtkError, match="looks like raw pixels"):
        model.predict(images(2).transpose(0, 3, 1, 2).astype(np.float32))


@pytest.mark.parametrize("backend", ["torch", "onnxruntime", "openvino"])
def test_backend_failures_and_a_closed_model_are_rtk_errors(artifacts, backend):
    """What the docstring promises: RtkError, never onnxruntime's InvalidArgument, OpenVINO's or
    torch's RuntimeError, or an AttributeError after close()."""
    path = artifacts["checkpoint" if backend == "torch" else "fp32"]
    model = rtk.runtime.load(path, backend=backend, threads=1)
    wrong = np.zeros((2, 4, 32, 32), np.float32)  # 4 channels: past Model's checks, straight to the backend
    with pytest.raises(RtkError, match=f"{backend} cannot run"):
        model.runner.infer({INPUT_NAME: wrong})
    model.close()
    with pytest.raises(RtkError, match="is closed"):
        model.predict(images(2))
    model.close()  # twice is harmless


def test_a_path_that_is_not_a_path_is_an_rtk_error():
    for bad in (None, 3, ["model.onnx"]):
        with pytest.raises(RtkError, match="must be a str or os.PathLike"):
            rtk.runtime.load(bad)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def fixed_batch_onnx(artifacts, tmp_path_factory):
    from rtk.export import export_onnx

    out = tmp_path_factory.mktemp("fixed") / "model.b4.onnx"
    return export_onnx(artifacts["checkpoint"], out, batch_size=4, verify=False, log=lambda message: None)


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_a_fixed_batch_model_takes_any_batch(artifacts, fixed_batch_onnx, backend):
    """Batches are split into and padded up to the model's own batch of 4: 1, 4, 10 images."""
    dynamic = rtk.runtime.load(artifacts["fp32"], backend="onnxruntime", threads=1)
    fixed = rtk.runtime.load(fixed_batch_onnx, backend=backend, threads=1)
    assert fixed.runner.fixed_batch == 4 and dynamic.runner.fixed_batch is None
    for n in (1, 4, 10):
        x = images(n, seed=n)
        np.testing.assert_allclose(fixed.logits(x), dynamic.logits(x), atol=1e-4, rtol=1e-4)


def test_pixels_scaled_to_0_1_but_not_normalized_warn_once():
    model = Model(FakeRunner())
    scaled = images(4).transpose(0, 3, 1, 2).astype(np.float32) / 255  # [0, 1], mean/std never applied
    with pytest.warns(RuntimeWarning, match=r"looks like pixels divided by 255 but not normalized"):
        model.predict(scaled)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.predict(scaled)  # once per model
        Model(FakeRunner()).predict(normalize_uint8_nhwc(images(4)))  # normalized input: no warning
        Model(FakeRunner()).predict(images(4))  # uint8: normalized by the model


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_eight_threads_get_the_single_threaded_answers(artifacts, backend):
    model = rtk.runtime.load(artifacts["int8"], backend=backend, threads=1)
    batches = [images(3, seed) for seed in range(8)]  # one input per thread
    expected = [model.predict(b) for b in batches]
    failures: list[str] = []

    def worker(i: int) -> None:
        for _ in range(100):
            pred = model.predict(batches[i])
            if not (np.array_equal(pred.classes, expected[i].classes)
                    and np.array_equal(pred.probs, expected[i].probs)):
                failures.append(f"thread {i}")
                return

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []


def test_runtime_top1_equals_what_bench_measured(bench_run, artifacts, cifar_dir):
    """The runtime an app embeds gives the accuracy `rtk bench` reported, on the full test set."""
    from rtk import data

    test_images, labels = data.load_test_set(cifar_dir)
    measured = {row["name"]: row["accuracy"]["top1"] for row in bench_run["json"]["rows"]}
    for precision, name in (("fp32", "onnxruntime fp32"), ("int8", "onnxruntime int8")):
        model = rtk.runtime.load(artifacts[precision], backend="onnxruntime")
        top1 = 100.0 * float(np.mean(model.predict(test_images).classes == labels))
        assert top1 == pytest.approx(measured[name], abs=1e-9), name


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_import_and_predict_leave_torch_out(artifacts, backend):
    script = f"""
import sys
import numpy as np
import rtk.runtime
model = rtk.runtime.load({str(artifacts["int8"])!r}, backend={backend!r})
pred = model.predict(np.zeros((2, 32, 32, 3), np.uint8))
assert pred.classes.shape == (2,)
print("torch loaded:", "torch" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert "torch loaded: False" in out


# ---------------------------------------------------------------- TensorRT runner plumbing, no GPU
# A stand-in engine and device memory exercise what TensorRTRunner itself does (per-thread contexts,
# buffers sized for the profile, shapes, copies, clean-up); it says nothing about TensorRT's results.


class FakeCuda:
    """Device memory as numpy buffers keyed by fake pointers, and "pinned" host arrays it hands out
    and tracks; the interface of rtk.runtime.cuda.CudaPython."""

    def __init__(self) -> None:
        self.memory: dict[int, np.ndarray] = {}
        self.streams: set[int] = set()
        self.pinned: list[np.ndarray] = []
        self.copied_from: list[np.ndarray] = []  # the host arrays each to_device read
        self._next = 1
        self._lock = threading.Lock()

    def _handle(self) -> int:
        with self._lock:
            self._next += 1
            return self._next

    def current(self):
        return contextlib.nullcontext()

    def malloc(self, nbytes: int) -> int:
        pointer = self._handle()
        self.memory[pointer] = np.zeros(nbytes // 4, np.float32)
        return pointer

    def free(self, pointer: int) -> None:
        del self.memory[pointer]

    def host_array(self, shape: tuple) -> np.ndarray:
        array = np.zeros(shape, np.float32)
        self.pinned.append(array)
        return array

    def free_host(self, array: np.ndarray) -> None:
        self.pinned = [a for a in self.pinned if a is not array]

    def stream(self) -> int:
        handle = self._handle()
        self.streams.add(handle)
        return handle

    def destroy_stream(self, stream: int) -> None:
        self.streams.remove(stream)

    def to_device(self, pointer: int, array: np.ndarray, stream: int) -> None:
        self.copied_from.append(array)
        self.memory[pointer][:array.size] = array.ravel()

    def to_host(self, array: np.ndarray, pointer: int, stream: int) -> None:
        array[...] = self.memory[pointer][:array.size].reshape(array.shape)

    def synchronize(self, stream: int) -> None:
        assert stream in self.streams


class FakeContext:
    """logits = FakeRunner's function of the input, read from and written to FakeCuda memory."""

    def __init__(self, cuda: Any, contexts: list, bind_ok: bool = True) -> None:
        self.cuda, self.addresses, self.shape, self.bind_ok = cuda, {}, None, bind_ok
        contexts.append(self)

    def set_tensor_address(self, name: str, pointer: int) -> bool:
        self.addresses[name] = pointer
        return self.bind_ok

    def set_input_shape(self, name: str, shape: tuple) -> bool:
        self.shape = shape
        return name == INPUT_NAME

    def execute_async_v3(self, stream: int) -> bool:
        n = self.shape[0]
        x = self.cuda.memory[self.addresses[INPUT_NAME]][:n * 3 * 32 * 32].reshape(n, 3, 32, 32)
        logits = FakeRunner()._infer({INPUT_NAME: x})[OUTPUT_NAME]
        self.cuda.memory[self.addresses[OUTPUT_NAME]][:logits.size] = logits.ravel()
        return True


def fake_engine(monkeypatch, tmp_path, cuda: Any, make_context) -> tuple:
    """(engine path, contexts created): tensorrt replaced by a stand-in whose engine makes its
    contexts with make_context(cuda, contexts), the sidecar checks faked."""
    import types

    from rtk.runtime import tensorrt_runner

    contexts: list = []
    engine = types.SimpleNamespace(create_execution_context=lambda: make_context(cuda, contexts))
    runtime = types.SimpleNamespace(deserialize_cuda_engine=lambda plan: engine)
    fake = types.SimpleNamespace(Logger=lambda severity: None, Runtime=lambda logger: runtime)
    fake.Logger.WARNING = "warning"  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    plan = tmp_path / "model.fp16.plan"
    sidecar = write_fake_engine(plan, precision="fp16", profile=(1, 2, 4))
    monkeypatch.setattr(tensorrt_runner, "load_engine_checked", lambda path: (plan.read_bytes(), sidecar))
    return plan, contexts


@pytest.fixture
def fake_tensorrt(tmp_path, monkeypatch):
    """(engine path, FakeCuda, list of the contexts created) with tensorrt, cuda and the checks faked."""
    from rtk.runtime import tensorrt_runner

    cuda = FakeCuda()
    monkeypatch.setattr(tensorrt_runner, "cuda_binding", lambda extra="gpu": cuda)
    plan, contexts = fake_engine(monkeypatch, tmp_path, cuda, FakeContext)
    return plan, cuda, contexts


def test_tensorrt_runner_splits_copies_and_frees(fake_tensorrt):
    plan, cuda, contexts = fake_tensorrt
    x = images(10)
    with rtk.runtime.load(plan) as model:
        assert (model.backend, model.precision, model.runner.max_batch) == ("tensorrt", "fp16", 4)
        np.testing.assert_allclose(model.logits(x), Model(FakeRunner()).logits(x), rtol=1e-6)
        assert len(contexts) == 1 and contexts[0].shape == (2, 3, 32, 32)  # 10 = 4 + 4 + 2
        assert cuda.memory[contexts[0].addresses[INPUT_NAME]].size == 4 * 3 * 32 * 32  # sized for max 4
        # every host-to-device copy reads the pinned staging buffer (pageable memory would make it synchronous)
        assert [a.shape for a in cuda.pinned] == [(4, 3, 32, 32), (4, 10)]
        assert len(cuda.copied_from) == 3 and all(np.shares_memory(a, cuda.pinned[0]) for a in cuda.copied_from)
        work = model.runner.device_work(3)
        work.enqueue()
        assert contexts[0].shape == (3, 3, 32, 32) and work.stream in cuda.streams
        with pytest.raises(RtkError, match="outside the engine's profile 1..4"):
            model.runner.infer({INPUT_NAME: normalize_uint8_nhwc(images(5))})
    assert cuda.memory == {} and cuda.streams == set() and cuda.pinned == []  # everything released


@pytest.mark.parametrize("make_context, message", [
    (lambda cuda, contexts: None, r"could not create an execution context .*returned None: out of GPU memory"),
    (lambda cuda, contexts: FakeContext(cuda, contexts, bind_ok=False), r"set_tensor_address\('input'\) failed"),
])
def test_tensorrt_runner_checks_context_and_bindings(monkeypatch, tmp_path, make_context, message):
    from rtk.runtime import tensorrt_runner

    cuda = FakeCuda()
    monkeypatch.setattr(tensorrt_runner, "cuda_binding", lambda extra="gpu": cuda)
    plan, _ = fake_engine(monkeypatch, tmp_path, cuda, make_context)
    model = rtk.runtime.load(plan)
    with pytest.raises(RtkError, match=message):
        model.predict(images(2))
    model.close()
    assert cuda.memory == {} and cuda.pinned == []


class FakePyCudaMemory:
    """pycuda.driver's allocations and copies over a dict of numpy buffers, so FakeContext can
    compute on them; each call checks that the primary context is current (pushed)."""

    def __init__(self, driver: Any) -> None:
        self.driver, self.memory, self.pinned = driver, {}, []

    def install(self) -> None:
        driver, memory, pinned = self.driver, self.memory, self.pinned

        def needs_context() -> None:
            assert driver.pushed > 0, "pycuda call without a current context"

        class Allocation:
            def __init__(self, nbytes: int) -> None:
                needs_context()
                self.pointer = 1000 + len(memory)
                memory[self.pointer] = np.zeros(nbytes // 4, np.float32)

            def __int__(self) -> int:
                return self.pointer

            def free(self) -> None:
                needs_context()
                del memory[self.pointer]

        class HostAllocation:  # numpy takes the array interface; array.base is this object
            def __init__(self, shape: tuple, dtype: Any) -> None:
                needs_context()
                self.buffer = np.zeros(shape, dtype)
                self.__array_interface__ = self.buffer.__array_interface__
                pinned.append(self)

            def free(self) -> None:
                needs_context()
                pinned.remove(self)

        class Stream:
            count = 0

            def __init__(self) -> None:
                needs_context()
                Stream.count += 1
                self.handle = 500 + Stream.count

            def synchronize(self) -> None:
                needs_context()

        def htod(pointer: int, array: np.ndarray, stream: Any) -> None:
            needs_context()
            memory[pointer][:array.size] = array.ravel()

        def dtoh(array: np.ndarray, pointer: int, stream: Any) -> None:
            needs_context()
            array[...] = memory[pointer][:array.size].reshape(array.shape)

        driver.mem_alloc, driver.pagelocked_empty, driver.Stream = Allocation, HostAllocation, Stream
        driver.memcpy_htod_async, driver.memcpy_dtoh_async = htod, dtoh


def test_tensorrt_runner_on_pycuda_pops_every_context_it_pushes(monkeypatch, tmp_path):
    """With pycuda (cuda-python absent) the runner pushes the primary context around its work and
    pops it again: none is left current on the calling thread (before, it was pushed and never popped)."""
    from test_build import fake_pycuda

    driver = fake_pycuda(monkeypatch)
    memory = FakePyCudaMemory(driver)
    memory.install()
    plan, _ = fake_engine(monkeypatch, tmp_path, memory, FakeContext)
    model = rtk.runtime.load(plan)
    x = images(6)
    np.testing.assert_allclose(model.logits(x), Model(FakeRunner()).logits(x), rtol=1e-6)
    assert driver.pushed == 0  # balanced after inference
    model.runner.device_work(2).enqueue()
    assert driver.pushed == 0
    model.close()
    assert driver.pushed == 0 and memory.memory == {} and memory.pinned == []


def test_stream_handles_avoid_the_deprecated_int_conversion(monkeypatch):
    """cuda-bindings 12.9.1/13 deprecate int(cudaStream_t) for cuda.bindings.utils.get_cuda_native_handle."""
    import types

    from rtk.runtime import cuda

    class Stream:
        used_int = False

        def __int__(self) -> int:
            Stream.used_int = True
            return 5

    utils = types.ModuleType("cuda.bindings.utils")
    utils.get_cuda_native_handle = lambda stream: 0x7F00
    monkeypatch.setitem(sys.modules, "cuda.bindings.utils", utils)
    assert cuda.native_handle(Stream()) == 0x7F00 and not Stream.used_int
    monkeypatch.setitem(sys.modules, "cuda.bindings.utils", None)  # cuda-python before 12.9.1: int() it is
    assert cuda.native_handle(Stream()) == 5 and Stream.used_int


def test_tensorrt_runner_gives_each_thread_its_own_context(fake_tensorrt):
    plan, _, contexts = fake_tensorrt
    model = rtk.runtime.load(plan)
    batches = [images(3, seed) for seed in range(4)]
    expected = [model.predict(b).classes for b in batches]
    results: dict[int, bool] = {}

    def worker(i: int) -> None:
        results[i] = all(np.array_equal(model.predict(batches[i]).classes, expected[i]) for _ in range(20))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {0: True, 1: True, 2: True, 3: True}
    assert len(contexts) == 5  # the main thread's and one per worker thread
    model.close()


# ---------------------------------------------------------------- TensorRT for RTX runner, no GPU
# No RTX GPU is reachable (the lent H200 is compute capability 9.0, which TensorRT for RTX refuses):
# a stand-in tensorrt_rtx module checks the calls rtk makes as NVIDIA/TensorRT-RTX's samples make them
# (runtime config, runtime cache, strategies, contexts from the config) and what rtk does with the
# answers; the compatibility checks before it are rtk's real ones. Nothing here is TensorRT's result.


class FakeRuntimeCache:
    """IRuntimeCache: deserialize() takes only blobs it could have written (False for another GPU's)."""

    def __init__(self) -> None:
        self.kernels: list[str] = []

    def deserialize(self, blob: bytes) -> bool:
        if not blob.startswith(b"kernels:"):
            return False
        self.kernels = [k for k in blob.decode().removeprefix("kernels:").split(",") if k]
        return True

    def serialize(self) -> bytes:
        return ("kernels:" + ",".join(self.kernels)).encode()


def fake_rtx(monkeypatch, tmp_path, environment: dict) -> tuple:
    """(engine path, FakeCuda, the fake module's record of calls): tensorrt_rtx replaced by a stand-in
    whose contexts (FakeContext) come from a runtime config and add a kernel to its runtime cache;
    running_environment says `environment` ({"name", "compute_capability"}, TensorRT for RTX 1.7.1)."""
    import enum
    import types

    from rtk.runtime import engines, tensorrt_runner

    cuda, calls = FakeCuda(), {"deserialized": 0, "configs": [], "contexts": []}
    fake = types.ModuleType("tensorrt_rtx")
    fake.CudaGraphStrategy = enum.Enum("CudaGraphStrategy", "DISABLED WHOLE_GRAPH_CAPTURE")
    fake.DynamicShapesKernelSpecializationStrategy = enum.Enum("DynamicShapesKernelSpecializationStrategy",
                                                               "LAZY EAGER NONE")

    class RuntimeConfig:
        cuda_graph_strategy = fake.CudaGraphStrategy.DISABLED
        dynamic_shapes_kernel_specialization_strategy = fake.DynamicShapesKernelSpecializationStrategy.LAZY
        cache: FakeRuntimeCache | None = None

        def create_runtime_cache(self) -> FakeRuntimeCache:
            return FakeRuntimeCache()

        def set_runtime_cache(self, cache: FakeRuntimeCache) -> bool:
            self.cache = cache
            return True

    class Engine:
        def create_runtime_config(self) -> RuntimeConfig:
            calls["configs"].append(RuntimeConfig())
            return calls["configs"][-1]

        def create_execution_context(self, config: RuntimeConfig | None = None) -> FakeContext:
            assert config is not None and config.cache is not None, "a context without the runtime config"
            config.cache.kernels.append(f"context{len(calls['contexts'])}")  # the JIT's result, kept
            return FakeContext(cuda, calls["contexts"])

    def deserialize(plan: bytes) -> Engine:
        calls["deserialized"] += 1
        return Engine()

    fake.Logger = lambda severity: None
    fake.Logger.WARNING = "warning"
    fake.Runtime = lambda logger: types.SimpleNamespace(deserialize_cuda_engine=deserialize)
    monkeypatch.setitem(sys.modules, "tensorrt_rtx", fake)
    monkeypatch.setattr(tensorrt_runner, "cuda_binding", lambda extra="gpu": cuda)
    monkeypatch.setattr(engines, "running_environment", lambda runtime: ("1.7.1.116", environment))
    plan = tmp_path / "model.fp16.rtx.plan"
    write_fake_engine(plan, precision="fp16", profile=(1, 2, 4), runtime="tensorrt-rtx",
                      tensorrt_rtx_version="1.7.1.116", compute_capabilities=["8.6", "8.9", "12.0"])
    return plan, cuda, calls


RTX_4090 = {"name": "NVIDIA GeForce RTX 4090", "compute_capability": "8.9"}


def test_tensorrt_rtx_runner_compiles_once_into_a_runtime_cache_beside_the_engine(monkeypatch, tmp_path):
    from rtk.runtime.tensorrt_runner import runtime_cache_path

    plan, cuda, calls = fake_rtx(monkeypatch, tmp_path, RTX_4090)
    cache_file = runtime_cache_path(plan)
    assert cache_file.name == "model.fp16.rtx.runtime.cache"
    x = images(6)
    with rtk.runtime.load(plan) as model:  # the sidecar says tensorrt-rtx: the RTX runner, backend auto
        assert (model.backend, model.precision, model.runner.max_batch) == ("tensorrt-rtx", "fp16", 4)
        np.testing.assert_allclose(model.logits(x), Model(FakeRunner()).logits(x), rtol=1e-6)
        [config] = calls["configs"]
        assert config.cuda_graph_strategy.name == "WHOLE_GRAPH_CAPTURE"
        assert config.dynamic_shapes_kernel_specialization_strategy.name == "EAGER"
        assert not cache_file.exists()  # written when the model is closed
    assert cuda.memory == {} and cuda.streams == set() and cuda.pinned == []
    assert cache_file.read_bytes() == b"kernels:context0"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a cache of this GPU loads without a word
        with rtk.runtime.load(plan) as model:
            model.logits(x)
            assert calls["configs"][-1].cache.kernels == ["context0", "context1"]  # read back, then extended
    assert cache_file.read_bytes() == b"kernels:context0,context1"

    cache_file.write_bytes(b"a cache from another GPU")
    with pytest.warns(RuntimeWarning, match="is from another GPU, driver or TensorRT for RTX version"), \
            rtk.runtime.load(plan) as model:
        model.logits(x)
    assert cache_file.read_bytes() == b"kernels:context2"  # replaced by this GPU's
    with pytest.raises(RtkError, match="runs with tensorrt-rtx, not tensorrt"):
        rtk.runtime.load(plan, backend="tensorrt")


@pytest.mark.parametrize("gpu, message", [
    ({"name": "NVIDIA H200", "compute_capability": "9.0"},
     r"built for compute capabilities 8\.6, 8\.9, 12\.0 but this GPU is NVIDIA H200 \(compute capability 9\.0\)"),
    ({"name": "NVIDIA GeForce RTX 3050", "compute_capability": "8.6"}, None),
])
def test_tensorrt_rtx_runner_refuses_a_gpu_the_engine_was_not_built_for(monkeypatch, tmp_path, gpu, message):
    plan, _, calls = fake_rtx(monkeypatch, tmp_path, gpu)
    if message is None:
        rtk.runtime.load(plan).close()
        assert calls["deserialized"] == 1
        return
    with pytest.raises(RtkError, match=message) as refused:
        rtk.runtime.load(plan)
    assert "\n" not in str(refused.value) and calls["deserialized"] == 0  # before TensorRT for RTX is asked


# ---------------------------------------------------------------- onnxruntime on CUDA, no GPU
# The CPU onnxruntime package stands in for onnxruntime-gpu: these tests check how rtk asks for the
# CUDA provider, binds io and refuses a CPU fallback; they say nothing about CUDA's results.


def test_onnx_on_cuda_is_onnxruntime_and_asked_for_explicitly(artifacts):
    from rtk.runtime.onnxruntime_runner import OnnxRuntimeRunner
    from rtk.runtime.openvino_runner import OpenVinoRunner

    runner = rtk.runtime.make_runner(artifacts["int8"], device="cuda")  # auto on CUDA: onnxruntime, not OpenVINO
    assert isinstance(runner, OnnxRuntimeRunner) and runner.device == "cuda"
    assert isinstance(rtk.runtime.make_runner(artifacts["int8"]), OpenVinoRunner)  # device cpu is the default
    assert rtk.runtime.load(artifacts["fp32"], backend="onnxruntime").runner.device == "cpu"
    with pytest.raises(RtkError, match="OpenVINO runs on the CPU in rtk"):
        rtk.runtime.make_runner(artifacts["fp32"], backend="openvino", device="cuda")
    with pytest.raises(RtkError, match="unknown device 'gpu'; choose one of cpu, cuda"):
        rtk.runtime.make_runner(artifacts["fp32"], device="gpu")
    with pytest.raises(RtkError, match="a compute stream needs device cuda"):
        OnnxRuntimeRunner(str(artifacts["fp32"]), compute_stream=1)


def test_onnx_on_cuda_with_the_cpu_package_is_a_missing_dependency(artifacts):
    from rtk.runtime.onnxruntime_runner import cuda_provider_available

    assert not cuda_provider_available()  # the CPU package is what this machine has
    with pytest.raises(MissingDependency, match="has no CUDAExecutionProvider .*pip install onnxruntime-gpu"):
        rtk.runtime.load(artifacts["fp32"], device="cuda")


@pytest.fixture
def ort_listing_cuda(monkeypatch):
    """The real onnxruntime listing CUDAExecutionProvider, as onnxruntime-gpu does on any machine;
    returns the providers each InferenceSession was asked for and the preload_dlls calls."""
    import onnxruntime as ort

    seen: dict[str, list] = {"providers": [], "preloads": []}
    available = ort.get_available_providers()
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", *available])
    monkeypatch.setattr(ort, "preload_dlls", lambda *args, **kwargs: seen["preloads"].append(args))
    real_session = ort.InferenceSession

    def session(path, options, providers):
        seen["providers"].append(providers)
        return real_session(path, options, providers=providers)

    monkeypatch.setattr(ort, "InferenceSession", session)
    return seen


def test_a_cuda_provider_that_falls_back_to_the_cpu_is_refused(artifacts, ort_listing_cuda):
    # The CPU package, asked for a CUDA provider it lists but cannot load, warns and runs on the CPU:
    # what onnxruntime-gpu does without a GPU or its CUDA libraries.
    with pytest.raises(MissingDependency, match="could not start CUDAExecutionProvider .* fell back to the CPU"):
        rtk.runtime.load(artifacts["fp32"], device="cuda")
    assert ort_listing_cuda["providers"] == [[("CUDAExecutionProvider", {"device_id": "0"}), "CPUExecutionProvider"]]
    assert len(ort_listing_cuda["preloads"]) == 1


def test_cuda_session_binds_io_on_the_compute_stream(artifacts, ort_listing_cuda, monkeypatch):
    """A session that reports the CUDA provider, its io-binding moved to the CPU: the runner's own steps."""
    import onnxruntime as ort

    from rtk.runtime.onnxruntime_runner import OnnxRuntimeRunner

    make_session, bindings = ort.InferenceSession, []

    class CudaReporting:  # a CPU session that says it got the CUDA provider
        def __init__(self, path, options, providers):
            self._session = make_session(path, options, providers=["CPUExecutionProvider"])
            ort_listing_cuda["providers"][-1] = providers

        def get_providers(self):
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]

        def run_with_iobinding(self, binding):
            bindings.append(binding)
            return self._session.run_with_iobinding(binding)

        def __getattr__(self, name):
            return getattr(self._session, name)

    to_value, bind_output, devices = ort.OrtValue.ortvalue_from_numpy, ort.IOBinding.bind_output, []
    monkeypatch.setattr(ort, "InferenceSession", CudaReporting)
    monkeypatch.setattr(ort.OrtValue, "ortvalue_from_numpy",
                        lambda array, device, device_id: devices.append(device) or to_value(array))
    monkeypatch.setattr(ort.IOBinding, "bind_output", lambda self, name, device, device_id:
                        devices.append(device) or bind_output(self, name))
    x = images(8)
    runner = OnnxRuntimeRunner(str(artifacts["fp32"]), device="cuda", compute_stream=1234)
    runner.activate()
    with Model(runner) as model:
        assert ort_listing_cuda["providers"][-1] == [
            ("CUDAExecutionProvider", {"device_id": "0", "has_user_compute_stream": "1",
                                       "user_compute_stream": "1234"}), "CPUExecutionProvider"]
        assert (model.runner.device, model.name) == ("cuda", "onnxruntime cuda fp32")
        cpu = rtk.runtime.load(artifacts["fp32"], backend="onnxruntime")
        np.testing.assert_allclose(model.logits(x), cpu.logits(x), rtol=1e-6)
        work = model.runner.device_work(4)
        assert work is not None and work.stream == 1234 and devices == ["cuda", "cuda"]
        work.enqueue()
        (logits,) = bindings[0].copy_outputs_to_cpu()  # the bound output: device_work_input's batch of 4
        batch = device_work_input(4)
        assert batch.std() == pytest.approx(1, abs=0.05) and np.array_equal(batch, device_work_input(4))
        np.testing.assert_allclose(logits, cpu.runner.infer({INPUT_NAME: batch})[OUTPUT_NAME], rtol=1e-5)
    assert rtk.runtime.load(artifacts["fp32"], backend="onnxruntime").runner.device_work(4) is None  # CPU
