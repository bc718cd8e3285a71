"""rtk: CIFAR-10 ResNets from training to a deployed TensorRT engine.

Nothing heavy is imported here: `import rtk` and `rtk --help` must stay fast and work without
torch, onnx, onnxruntime or tensorrt installed (tests/test_imports.py checks it).
"""

__version__ = "0.1.0"
