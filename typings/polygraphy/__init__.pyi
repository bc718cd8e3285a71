# A minimal type stub for the parts of Polygraphy that rtk/build/ uses (Polygraphy ships no
# py.typed marker). Written from the 0.53.6 sources (polygraphy/backend/trt/{loader,config,profile,util}.py,
# polygraphy/backend/tensorrt_rtx/config.py, polygraphy/config.py, polygraphy/logger/logger.py,
# polygraphy/exception/exception.py); checked by tests/test_build.py.
__version__: str
