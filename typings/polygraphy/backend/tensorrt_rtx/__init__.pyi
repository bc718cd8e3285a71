# polygraphy/backend/tensorrt_rtx/config.py (0.53.6): CreateConfig's common arguments (no tf32 and no
# precision flags) and the compute capabilities a TensorRT-for-RTX engine is built for.
from collections.abc import Mapping, Sequence
from typing import Any

from polygraphy.backend.trt import Profile
from tensorrt import Builder, IBuilderConfig, INetworkDefinition, ProfilingVerbosity

class CreateConfigRTX:
    def __init__(self, use_gpu: bool | None = ..., compute_capabilities: Sequence[tuple[int, int]] | None = ..., *,
                 profiles: list[Profile] | None = ..., memory_pool_limits: Mapping[Any, int] | None = ...,
                 builder_optimization_level: int | None = ...,
                 profiling_verbosity: ProfilingVerbosity | None = ...) -> None: ...
    def __call__(self, builder: Builder, network: INetworkDefinition) -> IBuilderConfig: ...
