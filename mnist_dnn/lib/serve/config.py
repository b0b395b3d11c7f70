"""The settings of `mnist_dnn.serve`, defined once (its flags are declared from them).

Kept apart from the server so that the tool declares its flags without importing TensorFlow.
"""

import dataclasses
import re

from mnist_dnn.lib.config import ConfigError, setting

MAX_PORT = 65535


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    model_dir: str = setting("exports/mnist", "A folder of numbered versions (the newest is served, and new ones "
                             "are picked up), one SavedModel version folder, or a .tflite file.")
    model_name: str = setting("mnist", "The NAME in /v1/models/NAME (TensorFlow Serving's MODEL_NAME).")
    host: str = setting("127.0.0.1", "The address to listen on; 0.0.0.0 for every network (a phone on the same "
                        "network), 127.0.0.1 for this machine only.")
    port: int = setting(8501, "The port to listen on (TensorFlow Serving's REST port); 0 for any free one.")
    max_request_bytes: int = setting(16 * 2**20, "Larger request bodies are refused with status 413.")
    file_system_poll_wait_seconds: float = setting(1.0, "How often to look for a new version (as TensorFlow "
                                                   "Serving's flag of the same name); 0: never.")
    model_threads: int = setting(2, "Requests parsed and run through the model at the same time (a thread pool).")

    def validate(self) -> "ServeConfig":
        if not re.fullmatch(r"[A-Za-z0-9_.\-]+", self.model_name):
            raise ConfigError("model_name", f"must be letters, digits, '_', '.' or '-'; got {self.model_name!r}")
        if not 0 <= self.port <= MAX_PORT:
            raise ConfigError("port", f"must be a whole number from 0 to {MAX_PORT}; got {self.port}")
        if not 1024 <= self.max_request_bytes <= 2**31:
            raise ConfigError("max_request_bytes", f"must be from 1024 to {2**31:,}; got {self.max_request_bytes}")
        if not 0 <= self.file_system_poll_wait_seconds <= 86400:
            raise ConfigError("file_system_poll_wait_seconds", f"must be from 0 to 86400; got "
                              f"{self.file_system_poll_wait_seconds}")
        if not 1 <= self.model_threads <= 64:
            raise ConfigError("model_threads", f"must be a whole number from 1 to 64; got {self.model_threads}")
        return self
