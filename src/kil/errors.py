"""Project errors. Every message is one line naming what is wrong and where."""


class KilError(Exception):
    """Base class: the message is a single line fit for a terminal or a ROS log."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split("\n")))


class ConfigError(KilError, ValueError):
    """A configuration value (YAML key, ROS parameter, CLI option) is invalid."""


class MessageError(KilError, ValueError):
    """A message dataclass or a ROS 2 message has a wrong shape, dtype, value or encoding."""


class GraphError(ConfigError):
    """A graph description is malformed or inconsistent."""


class BagError(KilError):
    """A rosbag2 episode cannot be written or read."""


class TransformError(KilError, LookupError):
    """A coordinate transform is unknown or too old."""
