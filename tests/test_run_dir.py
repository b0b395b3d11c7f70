"""The run folder: checkpoints found from their files, never overwritten, never non-finite;
the stored config and the resume rules; the best checkpoint."""

import hashlib
import os

import numpy as np
import pytest
import tensorflow as tf

from mnist_dnn.lib.trainer import training
from mnist_dnn.lib.config import DataConfig, ModelConfig, TrainConfig
from mnist_dnn.lib.errors import CheckpointError, TrainingError, UsageError
from mnist_dnn.lib.core.checkpoint_store import Best
from mnist_dnn.lib.core.run_dir import RunConfig, RunDir

SMALL = TrainConfig(model=ModelConfig("dense", (8,)))


def folder_hashes(folder) -> dict:
    """Every file below `folder` with the SHA-256 of its bytes."""
    hashes = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                hashes[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return hashes


@pytest.fixture
def saved(tmp_path):
    """A run folder with checkpoints at steps 10, 20, 30 of a small model (no training needed)."""
    run = RunDir(str(tmp_path / "ckpt"))
    state = training.build_state(SMALL)
    run.save_config(RunConfig.of(SMALL))
    for step in (10, 20, 30):
        state.step.assign(step)
        run.save(state.checkpoint, step, state.weights(), keep=5)
    return run, state


def test_checkpoints_are_found_from_their_files_whatever_the_state_file_holds(saved):
    run, _ = saved
    state_file = os.path.join(run.path, "checkpoint")
    for damage in (b"", b"\0" * 64, b"\xff\xfe garbage", None):
        if damage is None:
            os.remove(state_file)
        else:
            with open(state_file, "wb") as f:
                f.write(damage)
        assert run.steps() == [10, 20, 30] and run.latest().endswith("model.ckpt-30")
        fresh = training.build_state(SMALL)
        assert run.restore_newest(fresh.checkpoint).endswith("model.ckpt-30") and int(fresh.step) == 30


def test_a_damaged_newest_checkpoint_is_set_aside_so_its_step_can_be_saved_again(saved):
    run, state = saved
    with open(run.checkpoint_path(30) + ".data-00000-of-00001", "r+b") as f:
        f.truncate(100)
    fresh = training.build_state(SMALL)
    assert run.restore_newest(fresh.checkpoint, set_aside=True).endswith("model.ckpt-20") and int(fresh.step) == 20
    assert run.steps() == [10, 20] and os.path.exists(run.checkpoint_path(30) + "-damaged.index")
    run.save(fresh.checkpoint, 30, fresh.weights(), keep=5)
    assert run.steps() == [10, 20, 30]


def test_an_incomplete_checkpoint_is_not_counted(saved):
    run, _ = saved
    os.remove(run.checkpoint_path(30) + ".data-00000-of-00001")
    assert run.steps() == [10, 20]


def test_an_existing_checkpoint_is_never_written_over(saved):
    run, state = saved
    before = folder_hashes(run.path)
    with pytest.raises(CheckpointError, match="never written over"):
        run.save(state.checkpoint, 20, state.weights(), keep=5)
    assert folder_hashes(run.path) == before


def test_non_finite_weights_are_never_saved(saved):
    run, state = saved
    state.model.trainable_variables[0].assign(tf.fill(state.model.trainable_variables[0].shape, np.inf))
    with pytest.raises(TrainingError, match="not all finite.*model.ckpt-30"):
        run.save(state.checkpoint, 40, state.weights(), keep=5)
    with pytest.raises(TrainingError, match="not all finite"):
        run.save_best(state.checkpoint, Best(40, 0.1, 0.9), state.weights())
    assert run.steps() == [10, 20, 30] and run.read_best() is None


def test_saving_keeps_the_newest_and_writes_a_state_file_tensorflow_reads(saved):
    run, state = saved
    state.step.assign(40)
    run.save(state.checkpoint, 40, state.weights(), keep=2)
    assert run.steps() == [30, 40]
    assert tf.train.latest_checkpoint(run.path) == run.checkpoint_path(40)


def test_restore_refuses_a_healthy_checkpoint_of_another_structure(saved):
    """An Adam checkpoint does not restore into an SGD run: skipped, never half-restored."""
    run, _ = saved
    sgd = training.build_state(TrainConfig(model=SMALL.model, optimizer="sgd"))
    with pytest.raises(CheckpointError, match="none of the 3 checkpoints"):
        run.restore_newest(sgd.checkpoint)


def test_the_best_folder_holds_one_checkpoint_and_best_json_names_it(saved):
    run, state = saved
    run.save_best(state.checkpoint, Best(10, 0.5, 0.8), state.weights())
    run.save_best(state.checkpoint, Best(30, 0.4, 0.9), state.weights())
    assert run.read_best() == Best(30, 0.4, 0.9) and run.steps(run.best_dir) == [30]
    assert run.best_checkpoint() == os.path.join(run.best_dir, "model.ckpt-30")
    assert RunDir.of_checkpoint(run.best_checkpoint()).path == run.path


def test_the_save_of_a_best_step_links_its_files_and_each_outlives_the_others_removal(saved):
    run, state = saved
    state.step.assign(40)
    run.save_best(state.checkpoint, Best(40, 0.5, 0.8), state.weights())  # validation first, then the save
    run.save(state.checkpoint, 40, state.weights(), keep=1)
    assert os.path.samefile(run.checkpoint_path(40) + ".index", run.checkpoint_path(40, run.best_dir) + ".index")
    state.step.assign(45)
    run.save_best(state.checkpoint, Best(45, 0.4, 0.9), state.weights())  # removes best/model.ckpt-40
    assert run.steps() == [40] and run.steps(run.best_dir) == [45]
    fresh = training.build_state(SMALL)
    fresh.checkpoint.restore(run.checkpoint_path(40)).assert_consumed()
    assert int(fresh.step) == 40
    # Only a checkpoint the same object wrote is linked (the state in memory, not an earlier run's).
    RunDir(run.path).save(state.checkpoint, 45, state.weights(), keep=2)
    assert not os.path.samefile(run.checkpoint_path(45) + ".index", run.checkpoint_path(45, run.best_dir) + ".index")


def test_leftovers_of_an_interrupted_save_are_removed(saved):
    run, _ = saved
    os.makedirs(os.path.join(run.path, "model.ckpt-40_temp"))
    run.remove_leftovers()
    assert not os.path.exists(os.path.join(run.path, "model.ckpt-40_temp")) and run.steps() == [10, 20, 30]


@pytest.mark.parametrize("text", [
    '{"hidden_units": [8], "dropout": 0.0, "dataset": "mnist"}',  # no name
    '{"name": "dense", "hidden_units": [8], "dropout": 0.0}',  # no dataset
    '{"name": "dense", "hidden_units": 8, "dataset": "mnist"}',  # wrong type
    '{"name": "dense", "hidden_units": [60.5, 30], "dataset": "mnist"}',
    '{"name": "vgg", "hidden_units": [8], "dataset": "mnist"}',
    '{"name": "dense", "hidden_units": [8], "dataset": "mnist", "training": [1]}',
    "[1, 2]", "3", "null", "{", "",
])
def test_every_malformed_model_config_is_a_checkpoint_error(tmp_path, text):
    run = RunDir(str(tmp_path))
    with open(run.config_path, "w") as f:
        f.write(text)
    with pytest.raises(CheckpointError, match="model_config.json is malformed"):
        run.load_config()


def test_non_utf8_model_config_is_a_checkpoint_error(tmp_path):
    run = RunDir(str(tmp_path))
    with open(run.config_path, "wb") as f:
        f.write(b"\xff\xfe\x00")
    with pytest.raises(CheckpointError, match="malformed"):
        run.load_config()


@pytest.mark.parametrize("change, fragment", [
    (dict(model=ModelConfig("raw")), "holds a run of dense 8 on mnist, not raw 128 on mnist"),
    (dict(data=DataConfig("fashion_mnist")), "not dense 8 on fashion_mnist"),
    (dict(optimizer="adamw"), "--optimizer=adam, not --optimizer=adamw"),
    (dict(batch_size=64), "--batch_size=128, not --batch_size=64"),
    (dict(seed=1), "--seed=0, not --seed=1"),
    (dict(augment_shift=2), "--augment_shift=0, not --augment_shift=2"),
    (dict(augment_rotate=8.0), "--augment_rotate=0.0, not --augment_rotate=8.0"),
    (dict(lr_schedule="cosine"), "--lr_schedule=constant, not --lr_schedule=cosine"),
])
def test_resuming_with_other_settings_is_refused_and_the_stored_config_is_untouched(saved, change, fragment):
    run, _ = saved
    before = folder_hashes(run.path)
    other = TrainConfig(**{"model": SMALL.model, **change})
    with pytest.raises(UsageError, match=fragment):
        run.check_resumable(RunConfig.of(other))
    assert folder_hashes(run.path) == before


def test_a_new_learning_rate_is_allowed_on_resume(saved):
    run, _ = saved
    run.check_resumable(RunConfig.of(TrainConfig(model=SMALL.model, learning_rate=0.0001)))


def test_run_config_round_trips_through_json():
    config = RunConfig(ModelConfig("dense", (60, 30), 0.2), "kmnist", {"optimizer": "adam"})
    assert RunConfig.from_json(config.to_json()) == config


def test_folder_problem_accepts_folders_and_links_to_them_and_names_what_is_in_the_way(tmp_path):
    from mnist_dnn.lib import files

    (tmp_path / "dir").mkdir()
    (tmp_path / "afile").write_text("x")
    for name, target in (("to_dir", "dir"), ("to_file", "afile"), ("loop1", "loop2"), ("loop2", "loop1"),
                         ("dangling", "gone")):
        os.symlink(target, tmp_path / name)
    assert files.folder_problem(str(tmp_path / "dir")) is None
    assert files.folder_problem(str(tmp_path / "to_dir")) is None  # ~/.cache -> /data, say
    assert files.folder_problem(str(tmp_path / "to_dir" / "new" / "run")) is None
    assert files.folder_problem(str(tmp_path / "to_file")) == f"{tmp_path / 'to_file'} is a file, not a folder"
    assert files.folder_problem(str(tmp_path / "to_file" / "x")).endswith(f"is under a file (at {tmp_path / 'to_file'})")
    assert "is a loop of symbolic links" in files.folder_problem(str(tmp_path / "loop1"))
    assert "is a symbolic link to the missing gone" in files.folder_problem(str(tmp_path / "dangling" / "x"))
    assert sorted(os.listdir(tmp_path)) == ["afile", "dangling", "dir", "loop1", "loop2", "to_dir", "to_file"]


def test_a_folder_is_written_beside_its_place_then_renamed_into_it(tmp_path):
    from mnist_dnn.lib import files

    seen = []
    files.write_folder(str(tmp_path / "v1"), lambda folder: (seen.append(folder), os.makedirs(folder)))
    assert os.path.dirname(seen[0]) == str(tmp_path) and os.path.basename(seen[0]).startswith(".tmp-v1-")
    assert os.listdir(tmp_path) == ["v1"]


# issue 27: a folder whose checkpoints are all damaged was blamed on "model and optimizer".
@pytest.mark.parametrize("set_aside", [False, True])
def test_a_folder_whose_checkpoints_are_all_damaged_says_damaged(saved, set_aside):
    run, _ = saved
    for step in run.steps():
        data_file = run.checkpoint_path(step) + ".data-00000-of-00001"
        with open(data_file, "r+b") as f:
            f.write(b"\0" * os.path.getsize(data_file))
    fresh = training.build_state(SMALL)
    with pytest.raises(CheckpointError) as refused:
        run.restore_newest(fresh.checkpoint, set_aside=set_aside, say=lambda line: None)
    message = str(refused.value)
    assert message.startswith(f"all 3 checkpoints in {run.path} are damaged") and "model and optimizer" not in message
    assert run.steps() == [10, 20, 30]  # a refused run renames nothing, even with set_aside


def test_a_folder_of_damaged_and_foreign_checkpoints_says_both(saved):
    run, _ = saved
    data_file = run.checkpoint_path(30) + ".data-00000-of-00001"
    with open(data_file, "r+b") as f:
        f.write(b"\0" * os.path.getsize(data_file))
    sgd = training.build_state(TrainConfig(model=SMALL.model, optimizer="sgd"))
    with pytest.raises(CheckpointError, match="none of the 3 checkpoints .* restores: 2 do not match this run's model "
                                              "and optimizer and 1 are damaged"):
        run.restore_newest(sgd.checkpoint, say=lambda line: None)
