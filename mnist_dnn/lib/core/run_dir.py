"""The run folder (`--ckpt_dir`): the one place that knows its layout and its rules.

    model_config.json        how to rebuild the model, its dataset, what an exact resume needs, the run's id
    model.ckpt-<step>.index  checkpoints, as the course's tf.train.Saver named them
    model.ckpt-<step>.data-00000-of-00001
    checkpoint               TensorFlow's state file (written for other tools; never trusted here)
    best/                    the checkpoint of the best validation accuracy, and best.json
    logs/                    TensorBoard's events, unless --log_dir puts them elsewhere (`LOGS_DIR`)

Its checkpoints are a `CheckpointStore`'s (found, written, linked, pruned); a `RunDir` adds what
the run was trained as, the rules for resuming it, and its lock.
"""

import contextlib
import dataclasses
import json
import os
import uuid

from mnist_dnn.lib import files
from mnist_dnn.lib.config import WHICH, ModelConfig, TrainConfig  # noqa: F401 (WHICH: part of this module's API)
from mnist_dnn.lib.core.checkpoint_store import BEST_DIR, CheckpointStore
from mnist_dnn.lib.errors import BusyError, CheckpointError, UsageError

CONFIG_FILE = "model_config.json"
LOGS_DIR = "logs"  # the default TensorBoard folder of a run, inside it
RESERVED = (BEST_DIR, LOGS_DIR)  # names inside a run folder that are the run's own, never another run's folder


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """What a run folder was trained as: the model, its dataset, and what an exact resume needs."""

    model: ModelConfig
    dataset: str = "mnist"
    resume: dict = dataclasses.field(default_factory=dict)  # TrainConfig.resume_settings(); {} in older folders
    run_id: str = ""  # the run's own id (its HParams trial id ends with it); "" in older folders

    @classmethod
    def of(cls, config: TrainConfig, run_id: str = "") -> "RunConfig":
        return cls(config.model, config.data.dataset, config.resume_settings(), run_id)

    def to_json(self) -> str:
        fields = {**dataclasses.asdict(self.model), "dataset": self.dataset, "training": self.resume}
        if self.run_id:
            fields["run_id"] = self.run_id
        return json.dumps(fields, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "RunConfig":
        fields = json.loads(text)
        if not isinstance(fields, dict):
            raise ValueError(f"expected a JSON object, found {type(fields).__name__}")
        missing = [key for key in ("name", "hidden_units", "dataset") if key not in fields]
        if missing:
            raise ValueError(f"missing {', '.join(missing)}")
        if not isinstance(fields["hidden_units"], list) or not isinstance(fields["dataset"], str):
            raise ValueError("hidden_units must be a list and dataset a string")
        resume = fields.get("training", {})
        if not isinstance(resume, dict):
            raise ValueError("training must be an object")
        run_id = fields.get("run_id", "")
        if not isinstance(run_id, str):
            raise ValueError("run_id must be a string")
        model = ModelConfig(fields["name"], tuple(fields["hidden_units"]), fields.get("dropout", 0.0),
                            fields.get("conv_filters"), fields.get("pool_every", 0))
        model.validate()
        return cls(model, fields["dataset"], resume, run_id)

    def describe(self) -> str:
        return f"{self.model.name} {self.model.widths()} on {self.dataset}"


class RunDir(CheckpointStore):
    def __init__(self, path: str):
        super().__init__(path)
        self.config_path = os.path.join(path, CONFIG_FILE)

    @classmethod
    def of_checkpoint(cls, checkpoint_path: str) -> "RunDir":
        """The folder whose model_config.json describes a checkpoint: its own, or for `best/` its parent."""
        folder = os.path.dirname(checkpoint_path) or "."
        return cls(os.path.dirname(folder) or "." if os.path.basename(folder) == BEST_DIR else folder)

    def load_config(self) -> RunConfig:
        try:
            with open(self.config_path, encoding="utf-8") as f:
                return RunConfig.from_json(f.read())
        except FileNotFoundError:
            raise CheckpointError(f"{self.config_path} is missing: is {self.path} a folder written by "
                                  "mnist_dnn.train?") from None
        except IsADirectoryError:
            raise CheckpointError(f"{self.config_path} is a folder, not the run's configuration file") from None
        except (ValueError, KeyError, TypeError, UnicodeDecodeError, UsageError) as e:
            raise CheckpointError(f"{self.config_path} is malformed ({e}); restore it or train again") from None

    def save_config(self, config: RunConfig) -> None:
        os.makedirs(self.path, exist_ok=True)
        files.write_text(self.config_path, config.to_json())

    def is_run(self) -> bool:
        return os.path.isfile(self.config_path) or self.latest() is not None

    def check_readable(self) -> None:
        """Refuses a `ckpt_dir` that a tool cannot read a run from: empty, a file, a broken link, missing."""
        if not self.path.strip():
            raise UsageError("`ckpt_dir` is empty; point it at the folder train wrote (by default: checkpoints)")
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise UsageError(f"`ckpt_dir` {self.path} is a file, not a run folder; point it at the folder train wrote")
        files.check_link("ckpt_dir", self.path, "point it at a run folder")
        if not os.path.isdir(self.path):
            raise CheckpointError(f"`ckpt_dir` {self.path} does not exist; train first or point it at a run folder")

    def check_own_folder(self) -> None:
        """Refuses a folder that is part of another run, or whose reserved subfolders are other runs' folders."""
        parent, name = os.path.split(os.path.abspath(self.path))
        if name in RESERVED and RunDir(parent).is_run():
            raise UsageError(f"`ckpt_dir` {self.path} is the {name}/ folder of the run in {parent}; "
                             "pass another `ckpt_dir`")
        for name in RESERVED:
            inside = os.path.join(self.path, name)
            if os.path.isfile(os.path.join(inside, CONFIG_FILE)):
                raise UsageError(f"{inside} is the folder of another run, but a run keeps its own {name}/ there; "
                                 f"move that run away or pass another `ckpt_dir`")

    def check_resumable(self, config: RunConfig) -> RunConfig | None:
        """Refuses, before writing anything, to continue a run with settings it was not trained with. Returns the stored
        configuration, None for a new run."""
        if not os.path.exists(self.config_path):
            if self.latest():
                raise UsageError(f"{self.path} holds checkpoints but no {CONFIG_FILE}; pass another `ckpt_dir`")
            return None
        stored = self.load_config()
        if (stored.model, stored.dataset) != (config.model, config.dataset):
            raise UsageError(f"{self.path} holds a run of {stored.describe()}, not {config.describe()}; "
                             "pass another `ckpt_dir` or the same model and `dataset` flags")
        for name, value in stored.resume.items():
            if config.resume.get(name, value) != value:
                raise UsageError(f"{self.path} was trained with --{name}={value}, not --{name}={config.resume[name]}; "
                                 f"resume with --{name}={value} (the resume would not be exact) or pass another `ckpt_dir`")
        return stored

    @contextlib.contextmanager
    def lock(self):
        """Holds the folder's training lock (`files.folder_lock`); a second trainer on the folder is refused."""
        with files.folder_lock(self.path) as locked:
            if not locked:
                raise BusyError(f"another training run is using {self.path}; wait for it to end or pass "
                                "another `ckpt_dir`")
            yield


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]
