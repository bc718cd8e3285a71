class PolygraphyException(Exception): ...  # what G_LOGGER.critical raises
