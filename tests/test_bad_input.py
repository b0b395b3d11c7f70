"""The bad-input catalogue: every tool, fed wrong flags, paths and files, in process.

Each case asserts what the README promises for bad input: a non-zero exit (2 usage, 1 data
or checkpoint), exactly one `error:` line naming the problem and the fix, no traceback, and
no file created, changed or deleted (the folders are hashed before and after).
"""

import json
import os
import pathlib
import shutil
import socket
import stat
import struct
import sys
import zlib

import pytest

from conftest import ROOT, call_tool, folder_hashes, run_cli
from test_search import postgres_password  # noqa: F401 (a fixture)
from mnist_dnn.cli import command_line, startup
from mnist_dnn.lib import config
from mnist_dnn.lib.core import data

# (tool, args, exit code, fragment of the error line, damage done to the copied run first)
TRAIN = [
    (["--model=vgg"], 2, "--model must be one of raw, dense, logistic, cnn, lenet5"),
    (["--model="], 2, "--model must be one of"),
    (["--hidden_units=256,x"], 2, "--hidden_units must be comma-separated integers"),
    (["--hidden_units=256,0"], 2, "--hidden_units must be a whole number from 1"),
    (["--hidden_units="], 2, "--hidden_units must name at least one layer"),
    (["--hidden_units=100000000"], 2, "65,536"),
    (["--model=logistic", "--hidden_units=10"], 2, "no hidden layer"),
    (["--dropout=1.0"], 2, "--dropout must be in [0, 1)"),
    (["--dropout=-0.1"], 2, "--dropout must be in [0, 1)"),
    (["--dropout=x"], 2, "dropout"),
    (["--model=raw", "--dropout=0.5"], 2, "--dropout is only supported by the dense and cnn models, not raw"),
    (["--model=lenet5", "--dropout=0.5"], 2, "--dropout is only supported by the dense and cnn models, not lenet5"),
    (["--model=cnn", "--conv_filters=32,0"], 2, "--conv_filters must be a whole number from 1 to 4,096"),
    (["--model=cnn", "--conv_filters=32,-64"], 2, "--conv_filters must be a whole number from 1"),
    (["--model=cnn", "--conv_filters=100000"], 2, "4,096"),
    (["--model=cnn", "--conv_filters=32,x"], 2, "--conv_filters must be comma-separated integers"),
    (["--model=cnn", "--conv_filters="], 2, "--conv_filters must name 1 to 4 convolutions for the cnn model"),
    (["--model=cnn", "--conv_filters=8,8,8,8,8"], 2, "--conv_filters must name 1 to 4 convolutions"),
    (["--model=cnn", "--hidden_units="], 2, "--hidden_units must name at least one layer"),
    (["--conv_filters=32"], 2, "--conv_filters applies to the convolutional models (cnn, lenet5) only, not to the dense"),
    (["--model=logistic", "--conv_filters=32"], 2, "--conv_filters applies to the convolutional models"),
    (["--model=lenet5", "--hidden_units=256"], 2, "--hidden_units does not apply to the lenet5 model: its layers are "
                                                  "the classic 120,84"),
    (["--model=lenet5", "--conv_filters=32,64"], 2, "--conv_filters does not apply to the lenet5 model"),
    (["--model=cnn", "--conv_filters=8,8,8,8", "--pool_every=1"], 2, "--conv_filters 8,8,8,8 with --pool_every=1 shrink "
                                                                     "the 28x28 image to nothing"),
    (["--model=cnn", "--pool_every=-2"], 2, "--pool_every must be a whole number of convolutions"),
    (["--pool_every=2"], 2, "--pool_every applies to the cnn model only, not to the dense model"),
    (["--optimizer=adamax"], 2, "--optimizer must be one of sgd"),
    (["--optimizer=lbfgs"], 2, "--optimizer must be one of"),
    (["--learning_rate=0"], 2, "--learning_rate must be a positive number"),
    (["--learning_rate=-1"], 2, "--learning_rate must be a positive number"),
    (["--learning_rate=1e39"], 2, "--learning_rate must be a positive number"),
    (["--learning_rate=nan"], 2, "--learning_rate must be a positive number"),
    (["--learning_rate=inf"], 2, "--learning_rate must be a positive number"),
    (["--learning_rate=fast"], 2, "learning_rate"),
    (["--lr_schedule=step"], 2, "--lr_schedule must be one of constant, cosine"),
    (["--augment_shift=9"], 2, "--augment_shift must be a whole number from 0 to 8"),
    (["--augment_shift=-1"], 2, "--augment_shift must be"),
    (["--augment_rotate=46"], 2, "--augment_rotate must be a number of degrees from 0 to 45"),
    (["--augment_rotate=-5"], 2, "--augment_rotate must be"),
    (["--augment_rotate=nan"], 2, "--augment_rotate must be"),
    (["--augment_scale=0.6"], 2, "--augment_scale must be a fraction from 0 to 0.5"),
    (["--augment_scale=-0.1"], 2, "--augment_scale must be"),
    (["--batch_size=0"], 2, "--batch_size must be a whole number from 1"),
    (["--batch_size=-3"], 2, "--batch_size must be"),
    (["--batch_size=1000000000"], 2, "65,536"),
    (["--batch_size=many"], 2, "batch_size"),
    (["--max_steps=0"], 2, "--max_steps must be"),
    (["--max_steps=-1"], 2, "--max_steps must be"),
    (["--max_steps=100000000000000000000"], 2, "--max_steps must be"),
    (["--seed=-1"], 2, "--seed must be a whole number from 0"),
    (["--seed=100000000000000000000"], 2, "--seed must be"),
    (["--log_every=0"], 2, "--log_every must be"),
    (["--eval_every=0"], 2, "--eval_every must be"),
    (["--checkpoint_every=0"], 2, "--checkpoint_every must be"),
    (["--keep_checkpoints=0"], 2, "--keep_checkpoints must be"),
    (["--steps_per_call=0"], 2, "--steps_per_call must be"),
    (["--early_stopping_patience=-1"], 2, "--early_stopping_patience must be"),
    (["--strategy=tpu"], 2, "--strategy must be one of default, mirrored, multi_worker"),
    (["--strategy=multi_worker"], 2, "TF_CONFIG"),
    (["--devices=/gpu:7"], 2, "--devices is for --strategy=mirrored"),
    (["--strategy=mirrored", "--devices=/gpu:7"], 2, "--devices names /gpu:7, which this machine does not have"),
    (["--strategy=mirrored", "--devices=banana"], 2, "--devices names banana"),
    (["--virtual_cpus=-2"], 2, "--virtual_cpus must be"),
    (["--jit_compile", "--strategy=mirrored"], 2, "--jit_compile runs on one device"),
    (["--dataset=cifar10"], 2, "--dataset must be one of mnist, fashion_mnist"),
    (["--flagfile={tmp}/missing.cfg"], 2, "missing.cfg"),
    (["--no_such_flag=1"], 2, "no_such_flag"),
    (["stray"], 2, "unexpected arguments"),
    (["--ckpt_dir={file}"], 2, "--ckpt_dir"),
    (["--ckpt_dir={file}/ckpt"], 2, "--ckpt_dir {file}/ckpt is under a file"),
    (["--log_dir={file}"], 2, "--log_dir"),
    (["--log_dir={file}/logs"], 2, "--log_dir {file}/logs is under a file"),
    (["--export_dir={file}"], 2, "--export_dir"),
    (["--ckpt_dir={loop}"], 2, "--ckpt_dir {loop} is a loop of symbolic links"),
    (["--ckpt_dir={loop}/run"], 2, "--ckpt_dir {loop}/run is a loop of symbolic links (at {loop})"),
    (["--log_dir={loop}"], 2, "--log_dir {loop} is a loop of symbolic links"),
    (["--export_dir={loop}"], 2, "--export_dir {loop} is a loop of symbolic links"),
    (["--ckpt_dir={dangling}"], 2, "--ckpt_dir {dangling} is a symbolic link to the missing"),
    (["--result_file={tmp}/missing/r.json"], 2, "--result_file"),
    (["--result_file={tmp}"], 2, "--result_file"),
    (["--idx_dir={tmp}/no_idx", "--data_dir={tmp}/tfds"], 1, "is not a folder"),
    # issue 27: an output file that is not the tool's to write
    (["--ckpt_dir={tmp}/new", "--result_file={run}/model_config.json"], 2,
     "--result_file {run}/model_config.json is inside a run folder, {run}"),
    (["--ckpt_dir={tmp}/new", "--result_file={run}/best/r.json"], 2, "is inside a run folder, {run}/best"),
    (["--ckpt_dir={tmp}/new", "--result_file={export}/1/r.json"], 2, "is inside an export, {export}/1"),
    (["--ckpt_dir={tmp}/new", "--result_file={export}/r.json"], 2, "is inside an export, {export}"),
    (["--ckpt_dir={tmp}", "--result_file={tmp}/r.json"], 2, "--result_file {tmp}/r.json is inside {tmp}, which this"),
    (["--ckpt_dir={tmp}/new", "--export_dir={tmp}", "--result_file={tmp}/r.json"], 2, "which this command writes"),
    (["--ckpt_dir={tmp}/new", "--result_file={file}"], 2, "--result_file {file} exists and is not a file this tool "
                                                          "wrote; pass another file, or --overwrite"),
    (["--ckpt_dir={tmp}/new", "--result_file={tmp}/link"], 2, "--result_file {tmp}/link exists and is not"),
    # issue 27 (item 12): a loop of symbolic links is worded as one wherever a path is read or written
    (["--data_dir={loop}"], 2, "--data_dir {loop} is a loop of symbolic links; pass a folder"),
    (["--data_dir={loop}/tfds"], 2, "--data_dir {loop}/tfds is a loop of symbolic links (at {loop})"),
    (["--result_file={loop}"], 2, "--result_file {loop} is a loop of symbolic links; pass another file"),
    (["--result_file={loop}/r.json"], 2, "--result_file {loop}/r.json is a loop of symbolic links (at {loop})"),
    (["--result_file={dangling}"], 2, "--result_file {dangling} is a symbolic link to the missing gone"),
    # issue 27: an empty folder flag (a traceback, or TFDS's data written into the working folder)
    (["--ckpt_dir="], 2, "--ckpt_dir is empty"),
    (["--data_dir="], 2, "--data_dir is empty"),
    # issue 26: the wrong kind of folder: an export, another run's folder or part of one, another run's TensorBoard events
    (["--ckpt_dir={export}"], 2, "--ckpt_dir {export} holds SavedModel versions 1 and LiteRT versions 2: it is an export folder, not a run"),
    (["--ckpt_dir={export}/1"], 2, "--ckpt_dir {export}/1 holds a SavedModel: it is an export folder"),
    (["--ckpt_dir={tmp}/new", "--export_dir={run}"], 2, "--export_dir {run} is a training run's folder"),
    (["--ckpt_dir={tmp}/new", "--export_dir={tmp}/new"], 2, "--export_dir {tmp}/new is the run folder (--ckpt_dir)"),
    (["--ckpt_dir={run}/best"], 2, "--ckpt_dir {run}/best is the best/ folder of the run in {run}"),
    (["--ckpt_dir={run}/logs"], 2, "--ckpt_dir {run}/logs is the logs/ folder of the run in {run}"),
    (["--ckpt_dir={nest}"], 2, "{nest}/best is the folder of another run, but a run keeps its own best/ there"),
    (["--ckpt_dir={tmp}/new", "--log_dir={runlogs}"], 2, "--log_dir {runlogs} holds the TensorBoard events of another run"),
    (["--ckpt_dir={tmp}/new", "--log_dir={run}/.."], 2, "holds the TensorBoard events of another run"),
]
RESUME = [  # on a copy of a trained run: a resume that would not be exact, or of something else
    (["--optimizer=sgd"], 2, "was trained with --optimizer=adam, not --optimizer=sgd"),
    (["--optimizer=adamw"], 2, "--optimizer=adam, not --optimizer=adamw"),
    (["--optimizer=rmsprop"], 2, "--optimizer=adam"),
    (["--batch_size=32"], 2, "--batch_size=64, not --batch_size=32"),
    (["--seed=3"], 2, "--seed=0, not --seed=3"),
    (["--augment_shift=1"], 2, "--augment_shift=0, not --augment_shift=1"),
    (["--augment_rotate=10"], 2, "--augment_rotate=0.0, not --augment_rotate=10.0"),
    (["--augment_scale=0.1"], 2, "--augment_scale=0.0, not --augment_scale=0.1"),
    (["--lr_schedule=cosine"], 2, "--lr_schedule=constant, not --lr_schedule=cosine"),
    # issue 27: the run's own bookkeeping as the result file
    (["--result_file={run}/model_config.json"], 2, "--result_file {run}/model_config.json is inside {run}, which this "
                                                   "command writes"),
    (["--result_file={run}/model_config.json", "--overwrite"], 2, "is inside {run}, which this command writes"),
    (["--hidden_units=17"], 2, "holds a run of dense 32 on mnist, not dense 17 on mnist"),
    (["--model=raw"], 2, "not raw 32 on mnist"),
    (["--model=cnn"], 2, "holds a run of dense 32 on mnist, not cnn conv 32-64, 32 on mnist"),
    (["--model=lenet5", "--hidden_units=120,84"], 2, "not lenet5 conv 6-16, 120-84 on mnist"),
    (["--dataset=fashion_mnist"], 2, "not dense 32 on fashion_mnist"),
]
# issue 26 (and 27, item 11): refused after the run folder is read: nothing is created, not even the run's default
# log folder {run}/logs (a refused run left an empty logs/ folder).
REFUSED_RUNS = [  # (args, exit code, fragment, what is done to the copied run first)
    (["--hidden_units=32", "--batch_size=64"], 1, "another training run is using {run}", "locked"),
    (["--hidden_units=32", "--batch_size=64", "--log_dir={tmp}/logs"], 1, "another training run is using", "locked"),
    (["--hidden_units=32", "--batch_size=64", "--dropout=0.25"], 1, "none of the 2 checkpoints in {run} restores",
     "config with dropout"),
    (["--hidden_units=32", "--batch_size=64", "--dropout=0.25", "--log_dir={tmp}/logs"], 1,
     "none of the 2 checkpoints in {run} restores", "config with dropout"),
    (["--hidden_units=32", "--batch_size=64", "--log_dir={runlogs}"], 2,
     "--log_dir {runlogs} holds the TensorBoard events of another run", "config of another run"),
]
EVALUATE = [
    (["--ckpt_dir={tmp}/nothing"], 1, "does not exist"),
    (["--ckpt_dir={tmp}"], 1, "holds no checkpoint"),
    (["--ckpt_dir={file}"], 2, "is a file, not a run folder"),
    (["--ckpt_dir={run}", "--which=worst"], 2, "which"),
    (["--ckpt_dir={run}", "--which=best", "--checkpoint={run}/model.ckpt-30"], 2, "either --checkpoint or --which=best"),
    (["--ckpt_dir={run}", "--checkpoint={run}/model.ckpt-99"], 1, "model.ckpt-99 does not exist"),
    (["--ckpt_dir={run}", "--checkpoint={file}"], 1, "does not exist"),
    (["--ckpt_dir={run}", "--checkpoint={run}"], 2, "is a folder; name a checkpoint"),
    (["--ckpt_dir={run}", "--batch_size=0"], 2, "--batch_size must be"),
    (["--ckpt_dir={run}", "--metrics_file={tmp}/missing/m.json"], 2, "--metrics_file"),
    (["--ckpt_dir={run}", "stray"], 2, "unexpected arguments"),
    (["--ckpt_dir={run}", "--bogus"], 2, "bogus"),
    # issue 27: a preset is a set of training flags
    (["--ckpt_dir={run}", "--preset=fast"], 2, "mnist_dnn.evaluate takes none"),
    # issue 27: an output file that is not the tool's to write
    (["--ckpt_dir={run}", "--metrics_file={run}/model_config.json"], 2,
     "--metrics_file {run}/model_config.json is inside a run folder, {run}"),
    (["--ckpt_dir={run}", "--metrics_file={run}/metrics.json"], 2, "is inside a run folder, {run}"),
    (["--ckpt_dir={run}", "--metrics_file={run}/best/best.json", "--overwrite"], 2, "is inside a run folder, {run}/best"),
    (["--ckpt_dir={run}", "--metrics_file={export}/1/saved_model.pb"], 2, "is inside an export, {export}/1"),
    (["--ckpt_dir={run}", "--metrics_file={export}/1/variables/m.json"], 2, "is inside an export, {export}/1"),
    (["--ckpt_dir={run}", "--metrics_file={file}"], 2, "--metrics_file {file} exists and is not a file this tool wrote"),
    (["--ckpt_dir={run}", "--metrics_file={tmp}/result.json"], 2, "exists and is not a file this tool wrote"),
    # issue 27: a model is scored on its own dataset
    (["--ckpt_dir={run}", "--dataset=fashion_mnist"], 2,
     "--dataset is fashion_mnist, but {run}/model.ckpt-30 was trained on mnist; a model is scored"),
    (["--ckpt_dir={run}", "--which=best", "--dataset=kmnist"], 2, "--dataset is kmnist, but {run}/best/"),
    (["--ckpt_dir={run}", "--dataset=cifar10"], 2, "--dataset=cifar10: value should be one of"),
    # issue 27 (item 12): a loop of symbolic links is worded as one
    (["--ckpt_dir={loop}"], 2, "--ckpt_dir {loop} is a loop of symbolic links; point it at a run folder"),
    (["--ckpt_dir={loop}/run"], 2, "--ckpt_dir {loop}/run is a loop of symbolic links (at {loop})"),
    (["--ckpt_dir={dangling}"], 2, "--ckpt_dir {dangling} is a symbolic link to the missing gone"),
    (["--ckpt_dir={run}", "--metrics_file={loop}/m.json"], 2, "--metrics_file {loop}/m.json is a loop of symbolic"),
    # issue 27: an empty folder flag (a traceback, or TFDS's data written into the working folder)
    (["--ckpt_dir="], 2, "--ckpt_dir is empty"),
    (["--ckpt_dir={run}", "--data_dir="], 2, "--data_dir is empty"),
    # issue 26: an export folder is pointed to predict and serve
    (["--ckpt_dir={export}"], 2, "--ckpt_dir {export} holds SavedModel versions 1 and LiteRT versions 2: an export, not a training run's "
                                 "folder; read it with predict or serve (--model_dir={export})"),
    (["--ckpt_dir={export}", "--which=best"], 2, "holds SavedModel versions 1 and LiteRT versions 2: an export"),
    (["--ckpt_dir={export}/1"], 2, "--ckpt_dir {export}/1 holds a SavedModel: an export"),
]
DAMAGED_RUN = {  # damage to a copy of the trained run -> what evaluate, export and inspect say
    "no config": (lambda run: os.remove(f"{run}/model_config.json"), 1, "model_config.json is missing"),
    "config not json": (lambda run: _write(f"{run}/model_config.json", "{not json"), 1, "is malformed"),
    "config empty": (lambda run: _write(f"{run}/model_config.json", ""), 1, "is malformed"),
    "config a list": (lambda run: _write(f"{run}/model_config.json", "[1, 2]"), 1, "is malformed"),
    "config a number": (lambda run: _write(f"{run}/model_config.json", "7"), 1, "is malformed"),
    "config without dataset": (lambda run: _edit_config(run, drop="dataset"), 1, "missing dataset"),
    "config without name": (lambda run: _edit_config(run, drop="name"), 1, "missing name"),
    "config with float units": (lambda run: _edit_config(run, hidden_units=[60.5, 30]), 1, "is malformed"),
    "config with units as a number": (lambda run: _edit_config(run, hidden_units=32), 1, "is malformed"),
    "config of another width": (lambda run: _edit_config(run, hidden_units=[17]), 1, "cannot restore"),
    "config of another model": (lambda run: _edit_config(run, name="raw"), 1, "cannot restore"),
    "config of a convnet": (lambda run: _edit_config(run, name="cnn", conv_filters=[4]), 1, "cannot restore"),
    "config with conv filters": (lambda run: _edit_config(run, conv_filters=[8]), 1, "is malformed"),
    "config with conv filters as a number": (lambda run: _edit_config(run, conv_filters=8), 1, "is malformed"),
    "config with a pool on a dense model": (lambda run: _edit_config(run, pool_every=2), 1, "is malformed"),
    "config not utf-8": (lambda run: _write(f"{run}/model_config.json", b"\xff\xfe"), 1, "is malformed"),
    "truncated index": (lambda run: _truncate(f"{run}/model.ckpt-30.index", 40), 1, "model.ckpt-30"),
    "zeroed data": (lambda run: _zero(f"{run}/model.ckpt-30.data-00000-of-00001"), 1, "model.ckpt-30"),
    "truncated data": (lambda run: _truncate(f"{run}/model.ckpt-30.data-00000-of-00001", 100), 1, "model.ckpt-30"),
    # issue 27: every checkpoint of the folder damaged (train blamed "model and optimizer")
    "every checkpoint zeroed": (lambda run: [_zero(f"{run}/model.ckpt-{step}.data-00000-of-00001") for step in (20, 30)],
                                1, "model.ckpt-30"),
    "every checkpoint truncated": (lambda run: [_truncate(f"{run}/model.ckpt-{step}.data-00000-of-00001", 100)
                                                for step in (20, 30)], 1, "model.ckpt-30"),
}
PREPARE = {**{damage: damage_run for damage, (damage_run, *_) in DAMAGED_RUN.items()},
           "locked": lambda run: _LOCKS.append(_lock(run)),
           "config of another run": lambda run: _edit_config(run, run_id="0123456789ab"),
           "config with dropout": lambda run: _edit_config(run, dropout=0.25)}  # checkpoints without its seed state
_LOCKS = []  # folders locked as a trainer locks them, released after the case
EXPORT = [
    (["--ckpt_dir={tmp}/nothing", "--export_dir={tmp}/exports"], 1, "does not exist"),
    (["--ckpt_dir={run}", "--export_dir={file}"], 2, "--export_dir"),
    (["--ckpt_dir={run}", "--export_dir={file}/exports"], 2, "--export_dir"),
    (["--ckpt_dir={run}", "--export_dir={loop}"], 2, "--export_dir {loop} is a loop of symbolic links"),
    (["--ckpt_dir={run}", "--export_dir={tmp}/exports", "--version=0"], 2, "--version must be"),
    (["--ckpt_dir={run}", "--export_dir={tmp}/exports", "--version=-4"], 2, "--version must be"),
    (["--ckpt_dir={run}", "--export_dir={tmp}/exports", "--which=worst"], 2, "which"),
    (["--ckpt_dir={run}", "--export_dir={tmp}/exports", "--checkpoint={run}/model.ckpt-3"], 1, "does not exist"),
    (["--ckpt_dir={run}", "--export_dir={tmp}/exports", "stray"], 2, "unexpected arguments"),
    # issue 27: a model is exported (and calibrated) with its own dataset
    (["--ckpt_dir={run}", "--export_dir={tmp}/exports", "--dataset=fashion_mnist"], 2,
     "--dataset is fashion_mnist, but {run}/model.ckpt-30 was trained on mnist"),
    (["--ckpt_dir={run}", "--export_dir={tmp}/exports", "--format=litert", "--quantize=int8", "--dataset=kmnist"], 2,
     "--dataset is kmnist, but"),
    # issue 27 (item 12): a loop of symbolic links is worded as one
    (["--ckpt_dir={loop}", "--export_dir={tmp}/exports"], 2, "--ckpt_dir {loop} is a loop of symbolic links"),
    # issue 27: an empty folder flag (a traceback, or TFDS's data written into the working folder)
    (["--ckpt_dir=", "--export_dir={tmp}/exports"], 2, "--ckpt_dir is empty"),
    # issue 26: an export as the run to export; a run folder as the export folder
    (["--ckpt_dir={export}", "--export_dir={tmp}/exports"], 2, "--ckpt_dir {export} holds SavedModel versions 1 and LiteRT versions 2: an "
                                                              "export, not a training run's folder; read it with predict"),
    (["--ckpt_dir={run}", "--export_dir={run}"], 2, "--export_dir {run} is a training run's folder"),
    (["--ckpt_dir={run}", "--export_dir={nest}/best"], 2, "--export_dir {nest}/best is a training run's folder"),
    # issue 36: a Keras or ONNX model into a folder of SavedModel and LiteRT versions; an ONNX version that exists
    (["--ckpt_dir={run}", "--export_dir={export}", "--format=keras"], 2, "--export_dir {export} holds"),
    (["--ckpt_dir={run}", "--export_dir={export}", "--format=onnx"], 2, "--export_dir {export} holds"),
    (["--ckpt_dir={run}", "--export_dir={onnx_exports}", "--format=onnx", "--version=1"], 2,
     "{onnx_exports}/1 already exists; pass another --version"),
    (["--ckpt_dir={run}", "--export_dir={onnx_exports}"], 2, "--export_dir {onnx_exports} holds onnx versions"),
]
INSPECT = [
    (["--ckpt_dir={tmp}/nothing"], 1, "does not exist"),
    (["--ckpt_dir={file}"], 2, "is a file"),
    (["--ckpt_dir={tmp}"], 1, "holds no checkpoint"),
    (["--ckpt_dir={run}", "--which=worst"], 2, "which"),
    (["--ckpt_dir={run}", "--checkpoint={run}/model.ckpt-3"], 1, "does not exist"),
    (["--ckpt_dir={run}", "stray"], 2, "unexpected arguments"),
    # issue 27 (item 12): a loop of symbolic links is worded as one
    (["--ckpt_dir={loop}"], 2, "--ckpt_dir {loop} is a loop of symbolic links"),
    # issue 27: an empty folder flag (a traceback, or TFDS's data written into the working folder)
    (["--ckpt_dir="], 2, "--ckpt_dir is empty"),
    # issue 26
    (["--ckpt_dir={export}"], 2, "--ckpt_dir {export} holds SavedModel versions 1 and LiteRT versions 2: an export"),
]
PREDICT = [
    (["--model_dir={tmp}/nothing"], 2, "no image files given"),
    (["--model_dir={tmp}/nothing", "{file}"], 2, "--model_dir"),
    (["--model_dir={tmp}", "{file}"], 2, "neither a SavedModel"),
    # issue 36: an ONNX or Keras file that is not one
    (["--model_dir={onnx_exports}", "{digit}"], 2, "{onnx_exports}/1/model.onnx is not an ONNX model of mnist_dnn"),
    (["--model_dir={keras_file}", "{digit}"], 2, "{keras_file} is not a Keras model of mnist_dnn"),
    # issue 27 (and 26, item 7): a preset is a set of training flags
    (["--preset=fast", "{file}"], 2, "--preset=fast is a set of training flags, for train, sweep and search only"),
    # issue 27: an output file that is not the tool's to write
    (["--rest_request={file}", "{file}"], 2, "--rest_request {file} is also an input of this command"),
    (["--rest_request={tmp}/link", "--overwrite", "{file}"], 2, "--rest_request {tmp}/link is also an input"),
    (["--rest_request={file}", "{tmp}/seven.png"], 2, "--rest_request {file} exists and is not a file this tool wrote"),
    (["--rest_request={export}/1/r.json", "{file}"], 2, "--rest_request {export}/1/r.json is inside an export"),
    (["--rest_request={export}/2/r.json", "{file}"], 2, "is inside an export, {export}"),
    (["--rest_request={run}/r.json", "{file}"], 2, "--rest_request {run}/r.json is inside a run folder"),
    # issue 27 (item 12): a loop of symbolic links is worded as one
    (["--model_dir={loop}", "{file}"], 2, "--model_dir {loop} is a loop of symbolic links; point it at an exported"),
    (["--rest_request={loop}", "{file}"], 2, "--rest_request {loop} is a loop of symbolic links"),
]
SERVE = [  # start-up errors: the server never starts serving
    (["--model_dir={tmp}/nothing"], 1, "{tmp}/nothing does not exist"),
    (["--model_dir={tmp}"], 1, "holds no model"),
    (["--model_dir={file}"], 2, "{file} is not a LiteRT model of mnist_dnn"),
    (["--model_dir={tmp}/nothing", "--port=70000"], 2, "--port must be a whole number from 0 to 65,535"),
    (["--port=http"], 2, "port"),
    (["--model_name=a/b"], 2, "--model_name must be letters, digits"),
    (["--max_request_bytes=0"], 2, "--max_request_bytes must be"),
    (["--file_system_poll_wait_seconds=-1"], 2, "--file_system_poll_wait_seconds must be"),
    (["--model_threads=0"], 2, "--model_threads must be"),
    (["--model_dir={tmp}", "stray"], 2, "unexpected arguments"),
    # issue 27 (item 12): a loop of symbolic links is worded as one
    (["--model_dir={loop}"], 2, "--model_dir {loop} is a loop of symbolic links; point it at a model folder"),
    # issue 37: a version whose variables are half written (an IndexError traceback before), or whose index is empty
    (["--model_dir={halfvars}"], 1, "cannot load the SavedModel {halfvars}/1: Read less bytes than requested"),
    (["--model_dir={halfvars}/1"], 1, "cannot load the SavedModel {halfvars}/1: Read less bytes than requested"),
    (["--model_dir={noindex}"], 1, "cannot load the SavedModel {noindex}/1: file is too short to be an sstable"),
]
SWEEP = [
    (["--grid=learning_rate=0.1,0.01"], 2, "--root is required"),
    (["--root={file}", "--grid=learning_rate=0.1,0.01"], 2, "--root"),
    (["--root={tmp}/sweep"], 2, "give at least one --grid"),
    (["--root={tmp}/sweep", "--grid=learning_rate"], 2, "must be NAME=VALUE1,VALUE2"),
    (["--root={tmp}/sweep", "--grid=learning_rate="], 2, "must be NAME=VALUE1,VALUE2"),
    (["--root={tmp}/sweep", "--grid=learning_rate=0.1,,0.2"], 2, "has an empty value"),
    (["--root={tmp}/sweep", "--grid=learning_rate=0.1,0.1"], 2, "repeats a value"),
    (["--root={tmp}/sweep", "--grid=learning_rate=0.1", "--grid=learning_rate=0.2"], 2, "more than once"),
    (["--root={tmp}/sweep", "--grid=ckpt_dir=a,b"], 2, "cannot vary --ckpt_dir"),
    (["--root={tmp}/sweep", "--grid=no_such=1,2"], 2, "not a flag of mnist_dnn.train"),
    (["--root={tmp}/sweep", "--grid=batch_size=0,-1"], 2, "--batch_size must be"),
    (["--root={tmp}/sweep", "--grid=batch_size=x,2"], 2, "not valid for --batch_size"),
    (["--root={tmp}/sweep", "--grid=model=vgg,dense"], 2, "--model must be one of"),
    (["--root={tmp}/sweep", "--grid=conv_filters=16-32,0", "--model=cnn"], 2, "--conv_filters must be a whole number"),
    (["--root={tmp}/sweep", "--grid=model=cnn,lenet5", "--hidden_units=64"], 2, "does not apply to the lenet5 model"),
    (["--root={tmp}/sweep", "--grid=learning_rate=nan,0.1"], 2, "--learning_rate must be"),
    (["--root={tmp}/sweep", "--grid=optimizer=lbfgs,sgd"], 2, "--optimizer must be one of"),
    (["--root={tmp}/sweep", "--grid=hidden_units=128,x-1"], 2, "--hidden_units"),
    (["--root={tmp}/sweep", "--grid=model=logistic,dense", "--hidden_units=32"], 2, "no hidden layer"),
    (["--root={tmp}/sweep", "--grid=dropout=0.1,0.2", "--model=raw"], 2, "only supported by the dense and cnn models"),
    (["--root={tmp}/sweep", "--grid=learning_rate=0.1,0.2", "stray"], 2, "unexpected arguments"),
    (["--root={corrupt_sweep}", "--grid=learning_rate=0.1,0.2"], 1, "sweep.json"),
    # issue 27 (item 12): a loop of symbolic links is worded as one (it was a FileExistsError traceback)
    (["--root={loop}", "--grid=learning_rate=0.1,0.2"], 2, "--root {loop} is a loop of symbolic links"),
]
LR = "--space=learning_rate=loguniform:1e-4:1e-1"
SEARCH = [
    ([LR], 2, "--root is required"),
    (["--root={file}", LR], 2, "--root {file} is a file"),
    (["--root={tmp}/s"], 2, "--space is empty"),
    (["--root={tmp}/s", "--space=learning_rate"], 2, "must be NAME=KIND:ARGS"),
    (["--root={tmp}/s", "--space=learning_rate=loguniform"], 2, "must be NAME=KIND:ARGS"),
    (["--root={tmp}/s", "--space==choice:1,2"], 2, "must be NAME=KIND:ARGS"),
    (["--root={tmp}/s", "--space=learning_rate=normal:0:1"], 2, "unknown kind 'normal'"),
    (["--root={tmp}/s", "--space=learning_rate=loguniform:1e-1:1e-4"], 2, "the low bound 0.1 must be below"),
    (["--root={tmp}/s", "--space=dropout=uniform:0.5:0.5"], 2, "must be below the high bound"),
    (["--root={tmp}/s", "--space=batch_size=int:256:32"], 2, "must be below the high bound"),
    (["--root={tmp}/s", "--space=learning_rate=loguniform:0:1"], 2, "needs a positive low bound"),
    (["--root={tmp}/s", "--space=learning_rate=uniform:a:b"], 2, "takes LOW:HIGH"),
    (["--root={tmp}/s", "--space=batch_size=int:32"], 2, "takes LOW:HIGH"),
    (["--root={tmp}/s", "--space=batch_size=int:32.5:64"], 2, "takes LOW:HIGH"),
    (["--root={tmp}/s", "--space=learning_rate=uniform:0:inf"], 2, "takes LOW:HIGH"),
    (["--root={tmp}/s", "--space=no_such=choice:1,2"], 2, "no_such is not a training flag"),
    (["--root={tmp}/s", "--space=ckpt_dir=choice:a,b"], 2, "ckpt_dir is not a training flag"),
    (["--root={tmp}/s", "--space=result_file=choice:a,b"], 2, "result_file is not a training flag"),
    (["--root={tmp}/s", "--space=trials=int:1:3"], 2, "trials is not a training flag"),
    (["--root={tmp}/s", "--space=optimizer=choice:"], 2, "must be NAME=KIND:ARGS"),
    (["--root={tmp}/s", "--space=optimizer=choice:sgd,,adam"], 2, "has an empty choice"),
    (["--root={tmp}/s", "--space=optimizer=choice:sgd,"], 2, "has an empty choice"),
    (["--root={tmp}/s", "--space=optimizer=choice:sgd,sgd"], 2, "repeats a choice"),
    (["--root={tmp}/s", "--space=optimizer=choice:sgd,lbfgs"], 2, "--optimizer must be one of"),
    (["--root={tmp}/s", "--space=batch_size=choice:32,x"], 2, "value 'x' is not valid for --batch_size"),
    (["--root={tmp}/s", "--space=batch_size=uniform:0.5:2"], 2, "is not valid for --batch_size"),
    (["--root={tmp}/s", "--space=hidden_units=choice:128,x-1"], 2, "--hidden_units"),
    (["--root={tmp}/s", "--space=learning_rate=uniform:0:1"], 2, "--learning_rate must be a positive number"),
    (["--root={tmp}/s", "--space=dropout=uniform:0:0.5", "--model=raw"], 2, "only supported by the dense and cnn models"),
    (["--root={tmp}/s", "--space=optimizer=choice:sgd", "--space=optimizer=choice:adam"], 2, "more than once"),
    (["--root={tmp}/s", LR, "--sampler=grid"], 2, "--sampler=grid takes choice and int parameters only"),
    (["--root={tmp}/s", LR, "--trials=0"], 2, "--trials must be a whole number from 1"),
    (["--root={tmp}/s", LR, "--trials=-2"], 2, "--trials must be"),
    (["--root={tmp}/s", LR, "--workers=0"], 2, "--workers must be a whole number from 1"),
    (["--root={tmp}/s", LR, "--sampler=cmaes"], 2, "--sampler must be one of tpe, random, grid"),
    (["--root={tmp}/s", LR, "--pruner=asha"], 2, "--pruner must be one of median, hyperband, none"),
    (["--root={tmp}/s", LR, "--study_name="], 2, "--study_name must not be empty"),
    (["--root={tmp}/s", LR, "--storage=redis://localhost:6379"], 2, "--storage 'redis://localhost:6379' is not an"),
    (["--root={tmp}/s", LR, "--storage=just-a-name"], 2, "is not an Optuna RDB storage URL"),
    (["--root={tmp}/s", LR, "--storage=postgresql+psycopg://nobody:secret@127.0.0.1:1/none"], 1,
     "cannot open the study storage postgresql+psycopg://nobody:***@127.0.0.1:1/none"),
    (["--root={tmp}/s", LR, "--storage=sqlite:///{tmp}/missing/study.db"], 1, "cannot open the study storage"),
    # issue 37 (item 7): a database in memory is one per process, which the workers cannot share
    (["--root={tmp}/s", LR, "--storage=sqlite://"], 2, "--storage sqlite:// is a database in memory"),
    (["--root={tmp}/s", LR, "--storage=sqlite:///:memory:"], 2, "--storage sqlite:///:memory: is a database in memory"),
    (["--root={tmp}/s", LR, "--storage=sqlite+pysqlite:///:memory:?cache=shared"], 2, "is a database in memory"),
    (["--root={other_study}", "--space=optimizer=choice:sgd,adam"], 2, "was created with another space or objective"),
    (["--root={other_study}", LR, "--study_name=another"], 2, "holds the trials of another study"),
    (["--root={tmp}/s", LR, "--max_steps=0"], 2, "--max_steps must be"),
    (["--root={tmp}/s", LR, "stray"], 2, "unexpected arguments"),
    # issue 27 (item 12): a loop of symbolic links is worded as one (it was a FileExistsError traceback)
    (["--root={loop}", LR], 2, "--root {loop} is a loop of symbolic links"),
    (["--root={loop}/s", LR], 2, "--root {loop}/s is a loop of symbolic links (at {loop})"),
]
REPORT = [
    ([], 2, "--root is required"),
    (["--root={tmp}/nothing"], 2, "is missing"),
    (["--root={file}"], 2, "--root"),
    (["--root={corrupt_sweep}"], 1, "sweep.json"),
    (["--root={tmp}", "stray"], 2, "unexpected arguments"),
    # issue 27: each run is reported on its own dataset; the flag is not taken
    (["--root={tmp}", "--dataset=fashion_mnist"], 2, "Unknown command line flag 'dataset'"),
    # issue 27 (item 12): a loop of symbolic links is worded as one
    (["--root={loop}"], 2, "--root {loop} is a loop of symbolic links"),
]

# issue 37 (item 1): an output flag never replaces what is not a regular file (it renamed a file over a FIFO or a
# device). {device} is a character device node made in the test's folder (root only; the case skips otherwise).
SPECIAL_OUTPUTS = [
    ("train", ["--ckpt_dir={tmp}/new", "--result_file={fifo}"], "--result_file {fifo} is a FIFO, not a regular file"),
    ("train", ["--ckpt_dir={tmp}/new", "--result_file={device}"], "--result_file {device} is a character device"),
    ("train", ["--ckpt_dir={tmp}/new", "--result_file={fifolink}", "--overwrite"],
     "--result_file {fifolink} is a symbolic link to a FIFO"),
    ("train", ["--ckpt_dir={tmp}/new", "--result_file={tmp}/sub"], "--result_file {tmp}/sub is a folder"),
    ("evaluate", ["--ckpt_dir={run}", "--metrics_file={fifo}"], "--metrics_file {fifo} is a FIFO"),
    ("evaluate", ["--ckpt_dir={run}", "--metrics_file={device}", "--overwrite"], "--metrics_file {device} is a character"),
    ("evaluate", ["--ckpt_dir={run}", "--metrics_file={fifolink}"], "is a symbolic link to a FIFO, not a regular"),
    ("predict", ["--rest_request={fifo}", "{tmp}/seven.png"], "--rest_request {fifo} is a FIFO, not a regular file"),
    ("predict", ["--rest_request={device}", "--overwrite", "{tmp}/seven.png"], "--rest_request {device} is a character"),
    ("predict", ["--rest_request={fifolink}", "{tmp}/seven.png"], "--rest_request {fifolink} is a symbolic link to a"),
]

# issue 37 (item 2): every file a tool reads but the dataset and checkpoints (predict's images, flagfiles, presets) is a
# regular file, checked before it is opened, read up to a cap, and a decoding error is one line. A FIFO blocked predict
# and absl's flagfile reader, /dev/zero filled the memory, a 3 GB sparse .png crashed predict (test_faults.py has those
# under a memory limit). Predict names each file it cannot read and exits 1; a flagfile or preset is a usage error.
REQUEST = "--rest_request={tmp}/r.json"  # predict without a model: it reads the files, and writes no request
INPUTS = [
    ("predict", [REQUEST, "{fifo}"], 1, "{fifo}: is a FIFO, not a regular file; pass a regular file"),
    ("predict", [REQUEST, "{fifolink}"], 1, "{fifolink}: is a symbolic link to a FIFO, not a regular file"),
    ("predict", [REQUEST, "{device}"], 1, "{device}: is a character device, not a regular file"),
    ("predict", [REQUEST, "{tmp}/sub"], 1, "{tmp}/sub: is a folder, not a regular file"),
    ("predict", [REQUEST, "{socket}"], 1, "{socket}: is a socket, not a regular file"),
    ("predict", [REQUEST, "{sparse}"], 1, "{sparse}: is 134,217,729 bytes, over the cap of 134,217,728; pass a smaller "
                                          "image, or raise --max_image_bytes"),
    ("predict", [REQUEST, "--max_image_bytes=20", "{digit}"], 1, "bytes, over the cap of 20; pass a smaller image"),
    ("predict", [REQUEST, "{digit}", "{fifo}"], 1, "{fifo}: is a FIFO"),  # the request must hold every file
    ("predict", [REQUEST, "{tmp}/missing.png"], 1, "{tmp}/missing.png: No such file or directory"),
    ("predict", [REQUEST, "{empty}"], 1, "{empty}: not an image TensorFlow can decode (PNG, JPEG, BMP or GIF)"),
    ("predict", [REQUEST, "{file}"], 1, "{file}: not an image TensorFlow can decode"),
    ("predict", [REQUEST, "{half_png}"], 1, "{half_png}: not an image TensorFlow can decode"),
    ("predict", [REQUEST, "{half_jpeg}"], 1, "{half_jpeg}: not an image TensorFlow can decode"),
    ("predict", [REQUEST, "{wide_png}"], 1, "{wide_png}: image of 100000000x1 pixels is too large"),
    ("predict", ["--model_dir={model}", "{fifo}"], 1, "{fifo}: is a FIFO, not a regular file"),
    ("predict", ["--model_dir={model}", "{device}", "--json"], 1, "{device}: is a character device"),
    ("predict", ["--model_dir={model}", "--max_image_bytes=10", "{digit}"], 1, "bytes, over the cap of 10;"),
    # issue 37: an export whose variables are half written (an IndexError traceback before)
    ("predict", ["--model_dir={halfvars}", "{digit}"], 2, "cannot load the SavedModel {halfvars}/1: Read less bytes"),
    ("predict", ["--model_dir={noindex}/1", "{digit}"], 2, "cannot load the SavedModel {noindex}/1: file is too short"),
    ("predict", ["--max_image_bytes=0", "{digit}"], 2, "--max_image_bytes must be a whole number of bytes from 1, got 0"),
    ("predict", ["--max_image_bytes=-1", "{digit}"], 2, "--max_image_bytes must be a whole number of bytes from 1"),
    ("predict", ["--max_image_bytes=lots", "{digit}"], 2, "--max_image_bytes"),
    # issue 36 (item 5): a few test digits as PNG files, through predict
    ("predict", ["--write_test_digits={file}"], 2, "--write_test_digits {file} is not a folder; pass a folder for"),
    ("predict", ["--write_test_digits={fifo}"], 2, "--write_test_digits {fifo} is not a folder"),
    ("predict", ["--write_test_digits={loop}"], 2, "--write_test_digits {loop} is a loop of symbolic links"),
    ("predict", ["--write_test_digits={tmp}/d", "--digits=0"], 2, "--digits must be a whole number from 1 to 10,000"),
    ("predict", ["--write_test_digits={tmp}/d", "--digits=10001"], 2, "--digits must be a whole number from 1"),
    ("predict", ["--write_test_digits={tmp}/d", "--digits=few"], 2, "--digits"),
    ("predict", ["--write_test_digits={tmp}/d", "{digit}"], 2, "--write_test_digits takes no image files; got {digit}"),
    ("train", ["--flagfile={fifo}"], 2, "--flagfile {fifo}: is a FIFO, not a regular file; pass a regular file"),
    ("train", ["--flagfile", "{fifo}"], 2, "--flagfile {fifo}: is a FIFO"),
    ("train", ["-flagfile={fifolink}"], 2, "--flagfile {fifolink}: is a symbolic link to a FIFO"),
    ("train", ["--max_steps=5", "--flagfile={sparse}"], 2, "--flagfile {sparse}: is 134,217,729 bytes, over the cap of "
                                                          "1,048,576; split it: a flagfile may name others"),
    ("train", ["--flagfile={indented}"], 2, "--flagfile {fifo}: is a FIFO"),  # absl reads an indented line as a flag
    ("train", ["--flagfile={nested_missing}"], 2, "--flagfile {tmp}/missing.cfg: No such file or directory"),
    ("evaluate", ["--flagfile={device}"], 2, "--flagfile {device}: is a character device, not a regular file"),
    ("export", ["--flagfile={tmp}/sub"], 2, "--flagfile {tmp}/sub: is a folder, not a regular file"),
    ("predict", ["--flagfile={socket}", "{digit}"], 2, "--flagfile {socket}: is a socket"),
    ("sweep", ["--flagfile={digit}"], 2, "--flagfile {digit}: is not a text file (UTF-8); pass a file of flags"),
    ("search", ["--flagfile={nul}"], 2, "--flagfile {nul}: is not a text file (UTF-8)"),
    ("report", ["--flagfile={latin1}"], 2, "--flagfile {latin1}: is not a text file (UTF-8)"),
    ("serve", ["--flagfile={bigcfg}"], 2, "--flagfile {bigcfg}: is 1,048,577 bytes, over the cap of 1,048,576"),
    ("inspect_checkpoint", ["--flagfile={nested}"], 2, "--flagfile {fifo}: is a FIFO"),  # named in a flagfile
    # presets: the shipped flagfiles, here a folder of hostile ones (a FIFO is no preset: never opened)
    ("train", ["--preset=huge"], 2, "--flagfile {configs}/huge.cfg: is 1,048,577 bytes, over the cap of 1,048,576"),
    ("sweep", ["--preset=binary"], 2, "--flagfile {configs}/binary.cfg: is not a text file (UTF-8)"),
    ("search", ["--preset=nested"], 2, "--flagfile {fifo}: is a FIFO"),
    ("train", ["--preset=fifo"], 2, "--preset=fifo is not a shipped config"),
    # predict's and export's other flags
    ("predict", ["--min_confidence=1.5", "{digit}"], 2, "--min_confidence must be between 0 and 1, got 1.5"),
    ("predict", ["--min_confidence=nan", "{digit}"], 2, "--min_confidence must be between 0 and 1"),
    ("predict", ["--rest_signature=predict_flat", "{digit}"], 2, "--rest_signature"),
    ("predict", ["--model_dir={fifo}", "{digit}"], 2, "--model_dir {fifo} is neither a SavedModel"),
    ("predict", ["--model_dir={device}", "{digit}"], 2, "--model_dir {device} is neither a SavedModel"),
    ("export", ["--ckpt_dir={run}", "--export_dir={tmp}/exports", "--format=tflite"], 2, "--format"),
    ("export", ["--ckpt_dir={run}", "--export_dir={tmp}/exports", "--quantize=int4"], 2, "--quantize"),
    ("export", ["--ckpt_dir={run}", "--export_dir={tmp}/exports", "--quantize=int8"], 2,
     "--quantize applies to --format=litert only"),
    ("export", ["--ckpt_dir={run}", "--export_dir={tmp}/exports", "--version=x"], 2, "--version"),
    ("export", ["--ckpt_dir={run}", "--export_dir={tmp}/exports", "--version=9223372036854775808"], 2, "--version must be"),
    ("export", ["--ckpt_dir={run}", "--export_dir={fifo}"], 2, "--export_dir {fifo}"),
    ("export", ["--ckpt_dir={fifo}", "--export_dir={tmp}/exports"], 2, "--ckpt_dir {fifo}"),
    ("export", ["--ckpt_dir={run}", "--export_dir={tmp}/exports", "--checkpoint={fifo}"], 1, "{fifo}"),
]

CASES = ([("train", args, code, fragment, None) for args, code, fragment in TRAIN]
         + [("train", ["--ckpt_dir={run}", "--log_dir={tmp}/logs", "--hidden_units=32", "--batch_size=64", *args],
             code, fragment, None)
            for args, code, fragment in RESUME]
         + [("train", ["--ckpt_dir={run}", *args], code, fragment, damage) for args, code, fragment, damage in REFUSED_RUNS]
         + [("evaluate", args, code, fragment, None) for args, code, fragment in EVALUATE]
         + [(tool, [*args, "--ckpt_dir={run}", "--checkpoint={run}/model.ckpt-30"], code, fragment, damage)
            for damage, (_, code, fragment) in DAMAGED_RUN.items()
            for tool, args in (("evaluate", []), ("export", ["--export_dir={tmp}/exports"]))]
         + [("export", args, code, fragment, None) for args, code, fragment in EXPORT]
         + [("inspect_checkpoint", args, code, fragment, None) for args, code, fragment in INSPECT]
         + [("inspect_checkpoint", ["--ckpt_dir={run}"], 1, "model.ckpt-30", damage)
            for damage in ("truncated index", "zeroed data", "truncated data")]
         + [("predict", args, code, fragment, None) for args, code, fragment in PREDICT]
         + [("serve", args, code, fragment, None) for args, code, fragment in SERVE]
         + [("sweep", args, code, fragment, None) for args, code, fragment in SWEEP]
         + [("search", args, code, fragment, None) for args, code, fragment in SEARCH]
         + [("report", args, code, fragment, None) for args, code, fragment in REPORT]
         # issue 27: a resume into a folder whose checkpoints are all damaged says so, and renames nothing
         + [("train", ["--ckpt_dir={run}", "--log_dir={tmp}", "--hidden_units=32", "--batch_size=64",
                       "--max_steps=40"], 1, "all 2 checkpoints in {run} are damaged", damage)
            for damage in ("every checkpoint zeroed", "every checkpoint truncated")]
         + [(tool, args, 2, fragment, None) for tool, args, fragment in SPECIAL_OUTPUTS]
         + [(tool, args, code, fragment, None) for tool, args, code, fragment in INPUTS]
         # issue 36: an extra that is not installed (its import fails)
         + [("export", ["--ckpt_dir={run}", "--export_dir={tmp}/exports", "--format=onnx"], 2,
             'ONNX exports need the onnx extra: pip install -e ".[onnx]"', "no tf2onnx"),
            ("predict", ["--model_dir={onnx_exports}", "{digit}"], 2, 'needs onnxruntime: pip install -e ".[onnx]"',
             "no onnxruntime")])
MISSING_MODULES = {"no tf2onnx": "tf2onnx", "no onnxruntime": "onnxruntime"}  # damage: the import made to fail


def _write(path, content):
    with open(path, "wb" if isinstance(content, bytes) else "w") as f:
        f.write(content)


def _edit_config(run, drop=None, **changes):
    with open(f"{run}/model_config.json") as f:
        fields = json.load(f)
    fields.pop(drop, None)
    _write(f"{run}/model_config.json", json.dumps({**fields, **changes}))


def _lock(folder) -> int:
    import fcntl

    descriptor = os.open(folder, os.O_RDONLY)
    fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return descriptor


def _truncate(path, size):
    with open(path, "r+b") as f:
        f.truncate(size)


def _zero(path):
    _write(path, b"\0" * os.path.getsize(path))


def _search_root_of_another_space(root):
    from mnist_dnn.lib.experiments import search

    config = search.SearchConfig(root=root)
    search.record_root(config)
    search.open_study(config, {"space": ["learning_rate=loguniform:0.0001:0.1"], "objective": search.OBJECTIVE},
                       create=True)


def _png_header(width: int, height: int) -> bytes:
    """The signature and IHDR chunk of an 8-bit grayscale PNG of that size: all a reader looks at first."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + header + struct.pack(">I", zlib.crc32(b"IHDR" + header))


def _make_inputs(tmp_path, places: dict, args: list[str]) -> None:
    """The hostile input files the args name: made only where named (a socket, a 128 MB sparse file)."""
    import numpy as np
    import tensorflow as tf

    digit = tf.io.encode_png(np.full((28, 28, 1), 7, np.uint8)).numpy()
    contents = {"digit": digit, "empty": b"", "half_png": digit[:len(digit) // 2], "wide_png": _png_header(10**8, 1),
                "half_jpeg": tf.io.encode_jpeg(np.full((28, 28, 1), 7, np.uint8)).numpy()[:60],
                "nul": b"--max_steps=5\0\n", "latin1": "--ckpt_dir=caf\xe9\n".encode("latin-1"),
                "bigcfg": b"#" * (2**20 + 1), "nested": f"--flagfile={places['fifo']}\n".encode(),
                "indented": f"--max_steps=5\n  --flagfile={places['fifo']}\n".encode(),
                "nested_missing": f"--flagfile={tmp_path}/missing.cfg\n".encode()}
    named = " ".join(args)
    for name, content in contents.items():
        places[name] = str(tmp_path / f"{name}.in")
        if f"{{{name}}}" in named:
            _write(places[name], content)
    places["sparse"], places["socket"] = str(tmp_path / "sparse.png"), str(tmp_path / "socket")
    places["onnx_exports"], places["keras_file"] = str(tmp_path / "onnx_exports"), str(tmp_path / "model.keras")
    if "{onnx_exports}" in named:  # version 1: a file named as an ONNX export, which is none
        os.makedirs(f"{places['onnx_exports']}/1")
        _write(f"{places['onnx_exports']}/1/model.onnx", b"not an ONNX model")
    if "{keras_file}" in named:
        _write(places["keras_file"], b"not a Keras model")
    if "{sparse}" in named:
        os.truncate(os.open(places["sparse"], os.O_CREAT | os.O_WRONLY), config.MAX_IMAGE_BYTES + 1)
    if "{socket}" in named:
        with socket.socket(socket.AF_UNIX) as server:
            server.bind(places["socket"])  # the socket file stays when it closes
    configs = places["configs"] = str(tmp_path / "configs")
    if any(f"--preset={name}" in args for name in ("huge", "binary", "nested", "fifo")):  # for the shipped ones
        os.mkdir(configs)
        for name in ("huge", "binary", "nested"):
            _write(f"{configs}/{name}.cfg", {"huge": contents["bigcfg"], "binary": digit, "nested": contents["nested"]}[name])
        os.mkfifo(f"{configs}/fifo.cfg")


# The folders every case reads (the tiny run, the data, the export): their hashes as the last case's check found
# them, with the names, inodes, sizes and times of their files then.
_CHECKED = {}


def _files_as_stat_sees_them(folder) -> list:
    """Every file and folder below `folder` with its inode, size and times: any write changes one of them."""
    entries = []
    for root, dirs, names in os.walk(folder):
        for name in dirs + names:
            s = os.lstat(os.path.join(root, name))
            entries.append((root, name, s.st_ino, s.st_size, s.st_mtime_ns, s.st_ctime_ns))
    return sorted(entries)


def _shared_hashes_before(folders) -> dict:
    """folder_hashes of the shared folders before a case: the last case's check of a folder, unless stat sees a
    change since (another test may write there between cases), read again then."""
    hashes = {}
    for folder in folders:
        seen, known = _CHECKED.get(str(folder), (None, None))
        hashes.update(known if seen == _files_as_stat_sees_them(folder) else folder_hashes(folder))
    return hashes


def _shared_hashes_after(folders) -> dict:
    """folder_hashes of the shared folders after a case, every file read in full, kept for the next case."""
    hashes = {}
    for folder in folders:
        seen = _files_as_stat_sees_them(folder)
        _CHECKED[str(folder)] = (seen, folder_hashes(folder))
        hashes.update(_CHECKED[str(folder)][1])
    return hashes


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory) -> str:
    """A model folder holding version 1, a SavedModel of a small dense model with random weights."""
    from mnist_dnn.lib.core import exporting, models

    folder = tmp_path_factory.mktemp("tiny_export") / "mnist"
    exporting.export_model(models.create_model(models.make_config("dense", hidden_units=(16,)), seed=3), str(folder))
    return str(folder)


@pytest.fixture(scope="module")
def trained(tiny_run) -> str:
    """The shared tiny run's checkpoint folder (steps 20 and 30): the cases copy it before damaging it."""
    return str(tiny_run[0] / "ckpt")


def test_the_catalogue_covers_every_tool_with_at_least_200_cases():
    assert len(CASES) >= 200
    assert {tool for tool, *_ in CASES} == {"train", "evaluate", "export", "predict", "inspect_checkpoint", "sweep",
                                            "search", "report", "serve"}


@pytest.mark.parametrize("tool, args, code, fragment, damage", CASES,
                         ids=[f"{c[0]}:{' '.join(c[1])}:{c[4] or ''}" for c in CASES])
def test_bad_input_is_one_error_line_and_touches_nothing(tool, args, code, fragment, damage, tmp_path, tiny_data,
                                                        trained, request, monkeypatch):
    places = {"tmp": str(tmp_path), "file": str(tmp_path / "afile"), "run": str(tmp_path / "run"),
              "corrupt_sweep": str(tmp_path / "corrupt_sweep"), "loop": str(tmp_path / "loop1"),
              "dangling": str(tmp_path / "dangling"), "other_study": str(tmp_path / "other_study"),
              "export": str(tmp_path / "export"), "nest": str(tmp_path / "nest"), "runlogs": str(tmp_path / "runlogs"),
              "fifo": str(tmp_path / "fifo"), "fifolink": str(tmp_path / "fifolink"), "device": str(tmp_path / "null")}
    if any("{device}" in a for a in args):
        if os.geteuid() != 0:
            pytest.skip("making a device node (mknod) needs root")
        os.mknod(places["device"], stat.S_IFCHR | 0o666, os.makedev(1, 3))  # /dev/null's numbers, in tmp_path
    os.mkfifo(places["fifo"])
    _make_inputs(tmp_path, places, args)
    if any("{model}" in a for a in args):
        places["model"] = request.getfixturevalue("tiny_export")
    if any("{halfvars}" in a or "{noindex}" in a for a in args):  # copies of it, damaged
        places["halfvars"] = shutil.copytree(request.getfixturevalue("tiny_export"), tmp_path / "halfvars")
        data_file = next(places["halfvars"].glob("1/variables/*.data-*"))
        _truncate(data_file, data_file.stat().st_size // 2)
        places["noindex"] = shutil.copytree(request.getfixturevalue("tiny_export"), tmp_path / "noindex")
        _truncate(next(places["noindex"].glob("1/variables/*.index")), 0)
    if os.path.isdir(places["configs"]):
        monkeypatch.setattr(command_line, "configs_dir", lambda: pathlib.Path(places["configs"]))
    os.symlink("fifo", places["fifolink"])
    os.mkdir(tmp_path / "sub")
    _write(places["file"], "a file, not a folder")
    os.symlink("loop2", places["loop"])
    os.symlink("loop1", tmp_path / "loop2")
    os.symlink("gone", places["dangling"])
    os.symlink("afile", tmp_path / "link")
    _write(tmp_path / "result.json", json.dumps({"step": 30, "start_step": 0, "checkpoint": "x"}))  # a train result
    if any("{export}" in a for a in args):  # an export's layout: versions 1 (a SavedModel) and 2 (a LiteRT file)
        os.makedirs(f"{places['export']}/1/variables")
        _write(f"{places['export']}/1/saved_model.pb", b"a SavedModel")
        os.makedirs(f"{places['export']}/2")
        _write(f"{places['export']}/2/model.tflite", b"a LiteRT model")
    if any("{run}" in a for a in args):
        shutil.copytree(trained, places["run"])
        if damage in PREPARE:
            PREPARE[damage](places["run"])
    if damage in MISSING_MODULES:
        monkeypatch.setitem(sys.modules, MISSING_MODULES[damage], None)
    if any("{runlogs}" in a for a in args) or any("{run}/.." in a for a in args):
        shutil.copytree(os.path.join(os.path.dirname(trained), "logs"), places["runlogs"])
        shutil.copytree(places["runlogs"], tmp_path, dirs_exist_ok=True)  # {run}/..: the run's parent as a log folder
    if any("{nest}" in a for a in args):  # a folder whose best/ is another run's folder
        shutil.copytree(trained, os.path.join(places["nest"], "best"))
    if any("{corrupt_sweep}" in a for a in args):
        os.makedirs(places["corrupt_sweep"])
        _write(os.path.join(places["corrupt_sweep"], "sweep.json"), "{broken")
    if any("{other_study}" in a for a in args):
        _search_root_of_another_space(places["other_study"])
    args = [a.format(**places) for a in args]
    if tool in ("train", "evaluate", "sweep", "search", "report") and not any(a.startswith("--data_dir") for a in args):
        args.append(f"--data_dir={tiny_data.data_dir}")
    shared = [trained, tiny_data.data_dir, *([places["model"]] if "model" in places else [])]
    before = {**folder_hashes(tmp_path), **_shared_hashes_before(shared)}
    try:
        result = call_tool(tool, *args)
    finally:
        while _LOCKS:
            os.close(_LOCKS.pop())
    assert result.returncode == code, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    assert fragment.format(**places) in errors[0], errors[0]
    assert {**folder_hashes(tmp_path), **_shared_hashes_after(shared)} == before


@pytest.mark.slow
@pytest.mark.parametrize("tool, extra", [("search", ["--storage={url}", LR]), ("report", [])])
def test_a_storage_that_needs_a_password_given_none_is_one_line(tool, extra, postgres_password, tiny_data, tmp_path):
    """Issue 36 (item 4): the URL without the password, none in MNIST_DNN_STORAGE or a pgpass file: one line that
    says where to give it; nothing written (the search's root is not created; the report's root is unchanged)."""
    from mnist_dnn.lib.experiments import search

    root = tmp_path / "root"
    if tool == "report":  # a root as a search writes it: the study's name and the URL without the password
        root.mkdir()
        _write(root / "search.json", json.dumps({"study_name": "shared", "storage": postgres_password}))
    args = [f"--root={root}", f"--data_dir={tiny_data.data_dir}", *(a.format(url=postgres_password) for a in extra)]
    before = folder_hashes(tmp_path)
    result = call_tool(tool, *args, env_extra={"PGPASSFILE": str(tmp_path / "none"), search.STORAGE_ENV: ""})
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [f"error: the storage {postgres_password} needs a password, and none was given: put the whole "
                      f"URL in the environment, {search.STORAGE_ENV}=postgresql+psycopg://user:PASSWORD@host/db, or "
                      "the password in ~/.pgpass (no file of the search holds it)"], result.stderr
    assert folder_hashes(tmp_path) == before


@pytest.mark.slow
@pytest.mark.parametrize("log_level", [None, "2", "3"])
def test_a_second_run_that_loads_the_cached_loop_prints_nothing_on_stderr(log_level, tiny_data, tmp_path, monkeypatch):
    """Not bad input, but a common shell setting: TF_CPP_MIN_LOG_LEVEL=2 let XLA's cache-hit ERROR lines through."""
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    env = {startup.XLA_CACHE_ENV: str(tmp_path / "xla"), "TF_XLA_FLAGS": ""}  # not the test session's cache
    env.update({} if log_level is None else {"TF_CPP_MIN_LOG_LEVEL": log_level})
    # A run that decodes the dataset first (no array cache yet) traces TFDS functions before the loop,
    # which renames the loop's program: it compiles its own copy, once.
    data.load_splits(tiny_data)
    programs = []
    for run in ("first", "second"):
        result = run_cli("train", "--max_steps=20", "--log_every=10", "--eval_every=20", f"--data_dir={tiny_data.data_dir}",
                         f"--ckpt_dir={tmp_path / run}", f"--log_dir={tmp_path / run / 'logs'}", cwd=ROOT, env_extra=env)
        assert result.returncode == 0 and result.stderr == "", result.stderr
        programs.append(sorted(os.listdir(tmp_path / "xla" / startup.cache_key())))
    assert programs[0] and programs[1] == programs[0]  # the second run compiled nothing new
