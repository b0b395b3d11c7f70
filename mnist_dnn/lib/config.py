"""What a run and each tool are made of, defined once: defaults, help and validation of every setting. The tools declare
their flags from these fields (`cli.define_config_flags`) and read them back (`build_config`), so a default or a help
text exists in one place only. `validate()` is the one range check that every entry point (the tools, sweep, search, the
Python API) goes through; it raises `ConfigError` naming the field, which the command line reports as the flag of that
name.

`build_config` is the one way from text to a config: flags, flagfiles and presets (as absl parsed them), sweep grids,
search spaces. Settings are named by their flags (a field's name, or the flag its `setting` names), nested configs'
included: `build_config(TrainConfig, {"model": "cnn", "hidden_units": "256-128"})`. A value is text (a list joins its
elements with ',' or '-', as grids and run folder names do), or what absl parsed (a list flag's strings)."""

import dataclasses
import math
import os
import re
import types
import typing

import numpy as np

from mnist_dnn.lib.errors import UsageError

IMAGE_SIZE = 28  # MNIST's images are IMAGE_SIZE x IMAGE_SIZE
NUM_PIXELS = IMAGE_SIZE * IMAGE_SIZE
NUM_CLASSES = 10
MODELS = ("raw", "dense", "logistic", "cnn", "lenet5")
ALIASES = {"DNN": "raw", "contrib_DNN": "dense", "LogisticRegression": "logistic"}  # the TF1 course's names
DEFAULT_HIDDEN_UNITS = {"raw": (128,), "dense": (60, 30), "logistic": (), "cnn": (128,), "lenet5": (120, 84)}
# The convolutional models' filter counts, one per 3x3 convolution (cnn) or the classic 5x5 pair (lenet5).
DEFAULT_CONV_FILTERS = {"cnn": (32, 64), "lenet5": (6, 16)}
FIXED_MODELS = ("lenet5",)  # the classic: its widths are part of its name
DROPOUT_MODELS = ("dense", "cnn")
DATASETS = ("mnist", "fashion_mnist", "kmnist")
OPTIMIZER_NAMES = ("sgd", "momentum", "nesterov", "adam", "adamw", "rmsprop", "adagrad")
LR_SCHEDULES = ("constant", "cosine")
STRATEGIES = ("default", "mirrored", "multi_worker")
SEARCH_KINDS = ("loguniform", "uniform", "int", "choice")  # a search space's parameters
SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "hyperband", "none")
WHICH = ("latest", "best")  # which checkpoint of a run folder the tools read
IDX_DIR_ENV = "MNIST_DNN_IDX_DIR"  # the offline MNIST, for the tools that are not told --idx_dir
# Exports: their formats, LiteRT quantizations and the SavedModel's signatures.
EXPORT_FORMATS = ("saved_model", "litert", "keras", "onnx")
QUANTIZATIONS = ("none", "int8")
REPRESENTATIVE_IMAGES = 1000  # training images that calibrate an int8 LiteRT model
SERVING_SIGNATURE, FLAT_SIGNATURE, BYTES_SIGNATURE = "serving_default", "predict_flat", "serving_bytes"
MAX_IMAGE_BYTES = 128 << 20  # an image file is read whole: far more than a digit's image needs
MAX_SHIFT, MAX_ROTATE, MAX_SCALE = 8, 45.0, 0.5  # the augmentations' bounds: pixels, degrees, fraction
# Bounds that keep a typo from asking for terabytes: a 784 x 10**8 weight matrix, a batch of 10**9.
MAX_HIDDEN_UNITS = 65_536
MAX_CONV_FILTERS = 4096
MAX_CONV_LAYERS = 4  # 3x3 "valid" convolutions shrink 28x28 by 2 each; four leave 20x20 for the pool
MAX_BATCH_SIZE = 65_536
MAX_SEED = 2**31 - 1
DEFAULT_EXPORT_DIRS = {"saved_model": "exports/mnist", "litert": "exports/mnist_litert", "keras": "exports/mnist_keras",
                       "onnx": "exports/mnist_onnx"}
MAX_STEPS = 10**9
MAX_PORT = 65535


class ConfigError(UsageError):
    """A setting is out of range; `field` names it (the flag of the same name on the command line)."""

    def __init__(self, field: str, problem: str):
        super().__init__(problem, field)


def setting(default, help: str, flag: str | None = "", choices: tuple[str, ...] | None = None):
    """A config field with its help text; `flag=None`: not a command-line flag, "": the field's name;
    `choices`: an enum flag (absl refuses another value as it parses)."""
    return dataclasses.field(default=default, metadata={"help": help, "flag": flag, "choices": choices})


def _same_as(config_class, name: str):
    """A setting with the default and help of `config_class`'s field `name`: one flag of several configs."""
    field = config_class.__dataclass_fields__[name]
    return setting(field.default, field.metadata["help"])


def _choice(field: str, value, choices) -> None:
    if value not in choices:
        raise ConfigError(field, f"must be one of {', '.join(choices)}; got {value!r}")


def _whole_number(field: str, value, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(field, f"must be a whole number from {low:,} to {high:,}; got {value!r}")


def _float32_in(field: str, value, low: float, high: float, what: str, low_inclusive: bool = False) -> None:
    """`value` within (low, high] ([low, high] if `low_inclusive`) as the float32 it becomes in the graph (1e39 is inf there)."""
    with np.errstate(over="ignore"):
        as_float32 = np.float32(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else np.nan
    above_low = low <= as_float32 if low_inclusive else low < as_float32
    if not (math.isfinite(as_float32) and above_low and as_float32 <= high):
        raise ConfigError(field, f"must be {what}; got {value!r}")


def conv_stages(conv_filters, pool_every: int) -> list[tuple[int, ...]]:
    """The convolutions' filters in groups, each followed by a 2x2 max-pool: groups of `pool_every`, or one group if 0."""
    size = pool_every or len(conv_filters)
    return [tuple(conv_filters[i:i + size]) for i in range(0, len(conv_filters), size)]


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """How training images are moved before each step: pixels of shift, degrees of rotation, zoom fraction."""

    shift: int = 0
    rotate: float = 0.0
    scale: float = 0.0


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a model; stored beside its checkpoints."""

    name: str = setting("dense", f"Model: {', '.join(MODELS)} (or the course's {', '.join(ALIASES)}).", flag="model")
    hidden_units: tuple[int, ...] | None = setting(None, "Hidden layer widths, e.g. 256,128 (default: the model's own; "
                                                   "for cnn the dense layers after the convolutions).")
    dropout: float = setting(0.0, "Dropout rate after each hidden layer (dense), or after the pool and each dense "
                             "layer (cnn).")
    conv_filters: tuple[int, ...] | None = setting(None, "Filters of each 3x3 convolution of --model=cnn, e.g. 32,64 "
                                                   "(its default); the convolutional models only.")
    pool_every: int = setting(0, "--model=cnn: a 2x2 max-pool after every N convolutions, e.g. 2 with "
                              "--conv_filters=16,16,32,32 (0: one pool, after the last).")

    def __post_init__(self):
        # The course's names are aliases; no hidden_units (conv_filters) means the model's own.
        name = ALIASES.get(self.name, self.name)
        object.__setattr__(self, "name", name)
        for field, defaults in (("hidden_units", DEFAULT_HIDDEN_UNITS), ("conv_filters", DEFAULT_CONV_FILTERS)):
            value = getattr(self, field)
            if value is None and name in DEFAULT_HIDDEN_UNITS:
                object.__setattr__(self, field, defaults.get(name, ()))
            elif value is not None:
                object.__setattr__(self, field, tuple(value))

    def widths(self) -> str:
        """The layer widths in words: `60-30`, `(no hidden layer)`, or `conv 32-64, 128` for a convnet."""
        units = "-".join(map(str, self.hidden_units)) or "(no hidden layer)"
        if not self.conv_filters:
            return units
        stages = "/".join("-".join(map(str, stage)) for stage in self.conv_stages())
        return f"conv {stages}, {units}"

    def conv_stages(self) -> list[tuple[int, ...]]:
        return conv_stages(self.conv_filters, self.pool_every)

    def validate(self) -> None:
        _choice("model", self.name, MODELS + tuple(ALIASES))
        if self.name == "logistic" and self.hidden_units:
            raise ConfigError("hidden_units", "must be empty for the logistic model (it has no hidden layer)")
        if self.name != "logistic" and not self.hidden_units:
            raise ConfigError("hidden_units", f"must name at least one layer for `model`={self.name}, e.g. 128")
        for units in self.hidden_units:
            _whole_number("hidden_units", units, 1, MAX_HIDDEN_UNITS)
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise ConfigError("dropout", f"must be in [0, 1); got {self.dropout!r}")
        if self.dropout and self.name not in DROPOUT_MODELS:
            raise ConfigError("dropout", f"is only supported by the {' and '.join(DROPOUT_MODELS)} models, not {self.name}")
        self._validate_convolutions()

    def _validate_convolutions(self) -> None:
        if self.name not in DEFAULT_CONV_FILTERS and self.conv_filters:
            raise ConfigError("conv_filters", f"applies to the convolutional models ({', '.join(DEFAULT_CONV_FILTERS)}) "
                              f"only, not to the {self.name} model")
        if self.name != "cnn" and self.pool_every:
            raise ConfigError("pool_every", f"applies to the cnn model only, not to the {self.name} model")
        if self.name not in DEFAULT_CONV_FILTERS:
            return
        if self.name in FIXED_MODELS:
            for field, defaults in (("hidden_units", DEFAULT_HIDDEN_UNITS), ("conv_filters", DEFAULT_CONV_FILTERS)):
                if getattr(self, field) != defaults[self.name]:
                    raise ConfigError(field, f"does not apply to the {self.name} model: its layers are the classic "
                                      f"{','.join(map(str, defaults[self.name]))}; the cnn model takes chosen widths")
            return
        if not 1 <= len(self.conv_filters) <= MAX_CONV_LAYERS:
            raise ConfigError("conv_filters", f"must name 1 to {MAX_CONV_LAYERS} convolutions for the {self.name} model, "
                              f"e.g. 32,64; got {len(self.conv_filters)}")
        for filters in self.conv_filters:
            _whole_number("conv_filters", filters, 1, MAX_CONV_FILTERS)
        if isinstance(self.pool_every, bool) or not isinstance(self.pool_every, int) or self.pool_every < 0:
            raise ConfigError("pool_every", f"must be a whole number of convolutions, 0 for one pool after the last; "
                              f"got {self.pool_every!r}")
        size = IMAGE_SIZE
        for stage in self.conv_stages():
            size = (size - 2 * len(stage)) // 2  # each 3x3 "valid" convolution takes 2 pixels, the pool halves
            if size < 1:
                raise ConfigError("conv_filters", f"{','.join(map(str, self.conv_filters))} with `pool_every`="
                                  f"{self.pool_every} shrink the {IMAGE_SIZE}x{IMAGE_SIZE} image to nothing; use fewer convolutions, "
                                  "or pool less often")


@dataclasses.dataclass(frozen=True)
class DatasetIdxDir:
    """An IDX folder that holds one named dataset and is used for that dataset only. The default from the
    MNIST_DNN_IDX_DIR variable is one (for `mnist`): a tool such as evaluate learns the dataset from the checkpoint, so
    only the library can tell whether it applies."""

    folder: str
    dataset: str = "mnist"


@dataclasses.dataclass(frozen=True)
class DataConfig:
    dataset: str = setting("mnist", f"TFDS dataset in MNIST format: {', '.join(DATASETS)}.")
    data_dir: str | None = setting(None, "TFDS data folder (default: TFDS's own, ~/tensorflow_datasets).")
    # A folder (of `dataset`, whichever it is), or a DatasetIdxDir.
    idx_dir: str | None = setting(None, "Offline: folder with the four IDX files of the dataset (.gz or plain), "
                                  "checked and imported once into --data_dir. Default for mnist: $MNIST_DNN_IDX_DIR.")
    validation_size: int = setting(5000, "Examples held out of TFDS train for validation.", flag=None)

    @property
    def idx_folder(self) -> str | None:
        """The IDX folder to import `dataset` from, if any."""
        if isinstance(self.idx_dir, DatasetIdxDir):
            return self.idx_dir.folder if self.idx_dir.dataset == self.dataset else None
        return self.idx_dir

    def validate(self) -> None:
        _choice("dataset", self.dataset, DATASETS)
        if self.data_dir is not None and not self.data_dir.strip():
            raise ConfigError("data_dir", "is empty; pass a folder, or leave it out for TFDS's own (~/tensorflow_datasets)")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    optimizer: str = setting("adam", f"Optimizer: {', '.join(OPTIMIZER_NAMES)}.")
    learning_rate: float = setting(0.001, "Learning rate.")
    lr_schedule: str = setting("constant", "Learning rate schedule: constant, or cosine (decays to 0 at --max_steps).")
    augment_shift: int = setting(0, f"Move each training image by a random 0..N pixels in x and y (0: off, N <= {MAX_SHIFT}).")
    augment_rotate: float = setting(0.0, "Turn each training image by a random angle of up to N degrees either way "
                                    f"(0: off, N <= {MAX_ROTATE:g}).")
    augment_scale: float = setting(0.0, "Zoom each training image by a random factor from 1-F to 1+F "
                                   f"(0: off, F <= {MAX_SCALE:g}).")
    batch_size: int = setting(128, "Training batch size.")
    max_steps: int = setting(5000, "Train until this global step.")
    seed: int = setting(0, "Seed of initialization and data order.")
    ckpt_dir: str = setting("checkpoints", "Folder of the run's checkpoints and model_config.json.")
    log_dir: str | None = setting(None, "TensorBoard folder of this run (default: logs/<model>-<units>-<optimizer>-<lr>-b<batch>).")
    log_every: int = setting(100, "Print and log training metrics every N steps.")
    eval_every: int = setting(1000, "Evaluate on the validation set every N steps.")
    checkpoint_every: int = setting(1000, "Save a checkpoint every N steps.")
    keep_checkpoints: int = setting(5, "How many recent checkpoints to keep.")
    steps_per_call: int = setting(100, "Train steps run inside one tf.function call (fewer Python round trips).")
    deterministic: bool = setting(False, "Bit-identical reruns (tf.config.experimental.enable_op_determinism).")
    strategy: str = setting("default", "tf.distribute strategy: default (one device), mirrored (all local devices), "
                            "or multi_worker (a TF_CONFIG cluster).")
    devices: tuple[str, ...] = setting((), "Devices for --strategy=mirrored, e.g. /gpu:0,/gpu:1 (default: all GPUs, else CPUs).")
    virtual_cpus: int = setting(0, "Split the CPU into N logical devices (to run --strategy=mirrored on a CPU).")
    export_dir: str | None = setting(None, "At the end of a completed run, export a SavedModel version into this folder "
                                     "(e.g. exports/mnist), as mnist_dnn.export does.")
    early_stopping_patience: int = setting(0, "Stop after this many evaluations (--eval_every) without a better "
                                           "validation accuracy; 0: off.")
    diagnostics: bool = setting(True, "At each evaluation, write weight and gradient histograms, gradient norms, "
                                "a confusion matrix and misclassified digits to <log_dir> (tags diagnostics/...).")
    jit_compile: bool | None = setting(None, "Train with an XLA-compiled loop over the split in memory (the default on one "
                                       "device); --nojit_compile uses the tf.data pipeline, as several devices do.")

    @property
    def augmentation(self) -> Augmentation:
        return Augmentation(self.augment_shift, self.augment_rotate, self.augment_scale)

    @property
    def compiled(self) -> bool:
        return self.strategy == "default" if self.jit_compile is None else self.jit_compile

    def validate(self) -> None:
        """Every setting, before anything is read or written."""
        self.model.validate()
        self.data.validate()
        if not self.ckpt_dir.strip():
            raise ConfigError("ckpt_dir", "is empty; pass the run's folder (by default: checkpoints)")
        _choice("optimizer", self.optimizer, OPTIMIZER_NAMES)
        _choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        _choice("strategy", self.strategy, STRATEGIES)
        _float32_in("learning_rate", self.learning_rate, 0.0, 1e6, "a positive number of at most 1e6")
        ranges = {"batch_size": (1, MAX_BATCH_SIZE), "max_steps": (1, MAX_STEPS), "log_every": (1, MAX_STEPS),
                  "eval_every": (1, MAX_STEPS), "checkpoint_every": (1, MAX_STEPS), "steps_per_call": (1, MAX_STEPS),
                  "keep_checkpoints": (1, 10_000), "seed": (0, MAX_SEED), "augment_shift": (0, MAX_SHIFT),
                  "virtual_cpus": (0, 64), "early_stopping_patience": (0, MAX_STEPS)}
        for field, (low, high) in ranges.items():
            _whole_number(field, getattr(self, field), low, high)
        _float32_in("augment_rotate", self.augment_rotate, 0.0, MAX_ROTATE, f"a number of degrees from 0 to {MAX_ROTATE:g}",
                    low_inclusive=True)
        _float32_in("augment_scale", self.augment_scale, 0.0, MAX_SCALE, f"a fraction from 0 to {MAX_SCALE:g}",
                    low_inclusive=True)
        if self.jit_compile and self.strategy != "default":
            raise ConfigError("jit_compile", f"runs on one device, not with `strategy`={self.strategy}; drop one of them")
        if self.devices and self.strategy != "mirrored":
            raise ConfigError("devices", f"is for `strategy`=mirrored, not `strategy`={self.strategy}")

    def resume_settings(self) -> dict:
        """What an exact resume depends on besides the model: stored beside the checkpoints."""
        return {"optimizer": self.optimizer, "lr_schedule": self.lr_schedule, "batch_size": self.batch_size,
                "seed": self.seed, "augment_shift": self.augment_shift, "augment_rotate": self.augment_rotate,
                "augment_scale": self.augment_scale}


@dataclasses.dataclass(frozen=True)
class RestoreConfig:
    """Which checkpoint of a run folder a tool reads (all of inspect_checkpoint's settings; checkpoints checks them)."""

    ckpt_dir: str = _same_as(TrainConfig, "ckpt_dir")
    checkpoint: str | None = setting(None, "A given checkpoint (e.g. checkpoints/model.ckpt-1000) instead of the latest.")
    which: str = setting("latest", "Without --checkpoint: the latest checkpoint of --ckpt_dir, or the best by "
                         "validation accuracy (ckpt_dir/best/).", choices=WHICH)


@dataclasses.dataclass(frozen=True)
class RunData:
    """Where a tool that reads a trained run finds its data; the dataset is the run's own, and `dataset` checks it."""

    data_dir: str | None = _same_as(DataConfig, "data_dir")
    idx_dir: str | DatasetIdxDir | None = _same_as(DataConfig, "idx_dir")
    dataset: str | None = setting(None, "The dataset the run must have been trained on: a run of another is refused "
                                  "(default: whichever it is; a model is always scored on its own).", choices=DATASETS)


@dataclasses.dataclass(frozen=True)
class EvaluateConfig:
    restore: RestoreConfig = RestoreConfig()
    data: RunData = RunData()
    batch_size: int = setting(1000, "Evaluation batch size (every example counts, whatever it is).")
    metrics_file: str | None = setting(None, "Also write the figures as JSON to this file.")
    confusion_matrix: bool = setting(False, "Also print the test confusion matrix (rows true class, columns "
                                     "predicted).")

    def validate(self) -> "EvaluateConfig":
        _whole_number("batch_size", self.batch_size, 1, MAX_BATCH_SIZE)
        return self


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    restore: RestoreConfig = RestoreConfig()
    data: RunData = RunData()
    format: str = setting("saved_model", "saved_model: for TensorFlow Serving; litert: a .tflite file for phones and "
                          "microcontrollers; keras: a model.keras file for keras.models.load_model; onnx: a model.onnx "
                          "file for onnxruntime (needs the onnx extra).", choices=EXPORT_FORMATS)
    quantize: str = setting("none", "With --format=litert: int8 is full-integer post-training quantization, calibrated "
                            f"on {REPRESENTATIVE_IMAGES} training images (needs the dataset: --idx_dir or TFDS's).",
                            choices=QUANTIZATIONS)
    export_dir: str | None = setting(None, "Model folder; each export is a numbered version inside it. Default: "
                                     f"{DEFAULT_EXPORT_DIRS['saved_model']}, or exports/mnist_<format>.")
    version: int | None = setting(None, "Version number to write (default: the next free one). Never overwritten.")

    def validate(self) -> "ExportConfig":
        _choice("format", self.format, EXPORT_FORMATS)
        _choice("quantize", self.quantize, QUANTIZATIONS)
        if self.quantize != "none" and self.format != "litert":
            raise ConfigError("quantize", "applies to `format`=litert only")
        return self


@dataclasses.dataclass(frozen=True)
class PredictConfig:
    model_dir: str = setting("exports/mnist", "A SavedModel version folder (exports/mnist/1), a .tflite, .onnx or "
                             ".keras file, or a model folder: its highest version.")
    json: bool = setting(False, "Print one JSON object per file: file, class, probabilities, confident.")
    min_confidence: float = setting(0.5, "Answers whose probability is below this are marked uncertain.")
    rest_request: str | None = setting(None, "Instead of classifying, write the JSON body of a TensorFlow Serving REST "
                                       "request (/v1/models/NAME:predict) for the files to this file.")
    rest_signature: str = setting(BYTES_SIGNATURE, "The signature the REST request calls: the encoded files as "
                                  '{"b64": ...}, or their pixels.', choices=(BYTES_SIGNATURE, SERVING_SIGNATURE))
    max_image_bytes: int = setting(MAX_IMAGE_BYTES, "Larger image files are refused unread.")
    write_test_digits: str | None = setting(None, "Instead of classifying, write the first `digits` images of MNIST's "
                                            "test split into this folder as test-0.png, test-1.png, ... (no model).")
    digits: int = setting(1, "How many test images `write_test_digits` writes (1 to 10,000).")

    def validate(self) -> "PredictConfig":
        if not 0.0 <= self.min_confidence <= 1.0:
            raise ConfigError("min_confidence", f"must be between 0 and 1, got {self.min_confidence}")
        if self.max_image_bytes < 1:
            raise ConfigError("max_image_bytes", f"must be a whole number of bytes from 1, got {self.max_image_bytes}")
        _whole_number("digits", self.digits, 1, 10_000)
        return self


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    model_dir: str = setting("exports/mnist", "A folder of numbered versions (the newest is served, and new ones "
                             "are picked up), one SavedModel version folder, or a .tflite, .onnx or .keras file.")
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
        _whole_number("port", self.port, 0, MAX_PORT)
        _whole_number("max_request_bytes", self.max_request_bytes, 1024, 2**31)
        _float32_in("file_system_poll_wait_seconds", self.file_system_poll_wait_seconds, 0, 86400,
                    "a number of seconds from 0 to 86400", low_inclusive=True)
        _whole_number("model_threads", self.model_threads, 1, 64)
        return self


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    root: str | None = setting(None, "Folder of the search: one run folder per trial (trial-NNNN/), the study "
                               "(study.db unless --storage), report.{csv,md,png}.")
    trials: int = setting(20, "Trials in total, over every run of this command and every worker sharing the study.")
    workers: int = setting(1, "Trials trained at once on this machine, each in a process of its own; the CPU cores "
                           "are split between them.")
    sampler: str = setting("tpe", f"How trials are chosen: {', '.join(SAMPLERS)} (every combination of the choice "
                           "and int parameters).")
    pruner: str = setting("median", f"Stops hopeless trials at an evaluation: {', '.join(PRUNERS)}.")
    storage: str | None = setting(None, "Optuna RDB storage URL shared by several machines, e.g. "
                                  "postgresql+psycopg://user@host/db, its password in ~/.pgpass; or the whole URL in "
                                  "MNIST_DNN_STORAGE (default: sqlite under --root). No file holds the password.")
    study_name: str = setting("mnist_dnn", "Name of the study in the storage (one storage can hold several).")
    search_seed: int | None = setting(None, "Seed of the sampler (worker i uses seed + i); default: random.")

    def validate(self) -> "SearchConfig":
        if not self.root:
            raise ConfigError("root", "is required: the folder of the search's trials, e.g. `root`=runs/search")
        _whole_number("trials", self.trials, 1, 100_000)
        _whole_number("workers", self.workers, 1, 64)
        _choice("sampler", self.sampler, SAMPLERS)
        _choice("pruner", self.pruner, PRUNERS)
        if not self.study_name:
            raise ConfigError("study_name", "must not be empty")
        return self


# From text to a config

BOOLEANS = {"true": True, "t": True, "1": True, "false": False, "f": False, "0": False}  # as absl reads them


def flag_fields(config_class):
    """(field, flag name) of every field that is a flag, nested configs included, in order."""
    for field in dataclasses.fields(config_class):
        if dataclasses.is_dataclass(field.default):
            yield from flag_fields(type(field.default))
        elif field.metadata.get("flag") is not None:
            yield field, field.metadata["flag"] or field.name


def env_idx_dir(given: str | None = None) -> str | DatasetIdxDir | None:
    """`given` (--idx_dir: the run's own source, whatever its dataset), or else the MNIST_DNN_IDX_DIR variable. The
    variable names MNIST, so it serves `mnist` only: a DatasetIdxDir, as tools such as evaluate learn the dataset from
    the checkpoint, not from a flag."""
    folder = os.environ.get(IDX_DIR_ENV)
    return given or (DatasetIdxDir(folder, "mnist") if folder else None)


def value_type(annotation) -> type:
    """The type of a field's annotation, None aside: str, int, float, bool or tuple (a list flag)."""
    if isinstance(annotation, types.UnionType):  # `X | None` (every optional field here is written so)
        return value_type(typing.get_args(annotation)[0])
    return typing.get_origin(annotation) or annotation


def build_config(base, settings: dict, source: str | None = None):
    """`base`, a config class (its defaults) or a config, with the fields that `settings` names (flag name -> value). A
    value its field cannot hold is a ConfigError naming the field (a scalar's: in flag `source`, e.g. grid, if given).
    """
    changes = {}
    for field in dataclasses.fields(base):
        name = field.name if field.metadata.get("flag") == "" else field.metadata.get("flag")
        if dataclasses.is_dataclass(field.default):
            nested = getattr(base, field.name)  # (a class's is the default config)
            changes[field.name] = build_config(type(nested) if isinstance(base, type) else nested, settings, source)
        elif name in settings:
            changes[field.name] = _value(field, name, settings[name], source)
    return base(**changes) if isinstance(base, type) else dataclasses.replace(base, **changes)


def _value(field, name: str, value, source: str | None):
    field_kind = value_type(field.type)
    if field_kind is tuple:
        return field.default if value is None else _items(field, name, value)
    if not isinstance(value, str) or field_kind is str:
        return value
    try:
        return BOOLEANS[value.lower()] if field_kind is bool else field_kind(value)
    except (KeyError, ValueError) as e:
        reason = "it is neither true nor false" if field_kind is bool else e
        raise ConfigError(source or name, f"value {value!r} is not valid for `{name}`: {reason}") from None


def _items(field, name: str, value) -> tuple:
    """A list's text (`256,128` or `256-128`) or absl's strings as the field's tuple."""
    if isinstance(value, str):
        value = [v.strip() for v in re.split("[,-]", value)] if value else []
    tuple_type = next(a for a in (field.type, *typing.get_args(field.type)) if typing.get_origin(a) is tuple)
    if typing.get_args(tuple_type)[0] is not int:
        return tuple(value)
    try:
        return tuple(int(v) for v in value)
    except ValueError:
        got = ",".join(map(str, value))
        raise ConfigError(name, f"must be comma-separated integers such as 256,128; got {got}") from None
