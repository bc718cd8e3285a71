# polygraphy/backend/trt/util.py (0.53.6): get_trt_logger() returns TRT_LOGGER once it is set, and
# every loader logs through it.
from tensorrt import ILogger

TRT_LOGGER: ILogger | None
