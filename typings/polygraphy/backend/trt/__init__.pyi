# Polygraphy's TensorRT loaders (polygraphy/backend/trt/loader.py, config.py, profile.py, 0.53.6):
# each is a callable that builds its TensorRT object when called; the snake_case functions call
# the loader at once.
from collections.abc import Callable, Mapping, Sequence
from typing import IO

from tensorrt import (
    Builder,
    IBuilderConfig,
    ICudaEngine,
    IHostMemory,
    INetworkDefinition,
    MemoryPoolType,
    OnnxParser,
    ProfilingVerbosity,
)

class Profile:
    def add(self, name: str, min: Sequence[int], opt: Sequence[int], max: Sequence[int]) -> Profile: ...

class NetworkFromOnnxPath:
    def __init__(self, path: str, *, strongly_typed: bool | None = ...) -> None: ...
    def __call__(self) -> tuple[Builder, INetworkDefinition, OnnxParser]: ...

class CreateConfig:
    def __init__(self, tf32: bool | None = ..., *, profiles: list[Profile] | None = ...,
                 memory_pool_limits: Mapping[MemoryPoolType, int] | None = ...,
                 builder_optimization_level: int | None = ...,
                 profiling_verbosity: ProfilingVerbosity | None = ...,
                 load_timing_cache: str | IO[bytes] | None = ...) -> None: ...
    def __call__(self, builder: Builder, network: INetworkDefinition) -> IBuilderConfig: ...

ConfigLoader = Callable[[Builder, INetworkDefinition], IBuilderConfig]  # CreateConfig, CreateConfigRTX, ...

class PostprocessConfig:
    def __init__(self, config: ConfigLoader,
                 func: Callable[[Builder, INetworkDefinition, IBuilderConfig], None]) -> None: ...
    def __call__(self, builder: Builder, network: INetworkDefinition) -> IBuilderConfig: ...

class PostprocessNetwork:  # calls func(network=...) on the parsed network
    def __init__(self, network: NetworkFromOnnxPath, func: Callable[..., None], name: str | None = ...) -> None: ...
    def __call__(self) -> tuple[Builder, INetworkDefinition, OnnxParser]: ...

def engine_bytes_from_network(network: NetworkFromOnnxPath | PostprocessNetwork, config: ConfigLoader | None = ...,
                              save_timing_cache: str | IO[bytes] | None = ...) -> IHostMemory: ...
def engine_from_bytes(serialized_engine: bytes) -> ICudaEngine: ...
