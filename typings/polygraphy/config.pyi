# polygraphy/config.py (0.53.6): read from the environment once, when Polygraphy is first imported.
USE_TENSORRT_RTX: bool  # POLYGRAPHY_USE_TENSORRT_RTX != "0": Polygraphy's `trt` is tensorrt_rtx
