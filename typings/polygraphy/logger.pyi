from contextlib import AbstractContextManager

class Logger:
    WARNING: int
    colors: bool
    # messages below `severity` are dropped while the context is open
    def verbosity(self, severity: int = ...) -> AbstractContextManager[None]: ...

G_LOGGER: Logger
