"""tf.distribute strategies for training on one device, several devices, or several hosts. The training loop is the same
for all: it builds everything under `strategy.scope()` and runs each step with `strategy.run`. Which devices take part
is decided here and only here."""

import json
import os

import tensorflow as tf

from mnist_dnn.lib.errors import UsageError


def split_cpu(virtual_cpus: int) -> None:
    """Splits the CPU into `virtual_cpus` logical devices, so mirrored training runs on a CPU. Must run before
    TensorFlow initializes its devices (before any op)."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * virtual_cpus)
    except RuntimeError:
        raise UsageError("`virtual_cpus` must be set before TensorFlow starts; use it from the command line") from None


def make_strategy(name: str, devices: tuple[str, ...] = (), virtual_cpus: int = 0) -> tf.distribute.Strategy:
    """The strategy `name` of `TrainConfig.strategy` (which `TrainConfig.validate` has checked, with `virtual_cpus`)."""
    if virtual_cpus:
        split_cpu(virtual_cpus)
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        # With no --devices: every GPU, or else every (virtual) CPU.
        devices = devices or tuple(d.name for d in tf.config.list_logical_devices("GPU")) or tuple(
            d.name for d in tf.config.list_logical_devices("CPU"))
        _check_devices_exist(devices)
        return tf.distribute.MirroredStrategy(list(devices))
    if "TF_CONFIG" not in os.environ:
        raise UsageError("`strategy`=multi_worker needs the TF_CONFIG environment variable (see the README)")
    try:
        json.loads(os.environ["TF_CONFIG"])
    except ValueError as e:
        raise UsageError(f"TF_CONFIG is not valid JSON: {e}") from None
    return tf.distribute.MultiWorkerMirroredStrategy()


def _check_devices_exist(devices) -> None:
    """Refuses a device this machine lacks (TensorFlow would quietly place its work elsewhere)."""
    have = {(d.device_type, d.device_index) for d in map(tf.DeviceSpec.from_string,
                                                             (x.name for x in tf.config.list_logical_devices()))}
    for device in devices:
        try:
            spec = tf.DeviceSpec.from_string(device)
        except ValueError:
            spec = None
        if spec is None or (spec.device_type, spec.device_index or 0) not in have:
            names = ", ".join(sorted(f"/{t.lower()}:{i}" for t, i in have))
            raise UsageError(f"`devices` names {device}, which this machine does not have; it has {names}")


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """The worker that writes checkpoints and summaries: task 0, or the only one."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    return task_type == "chief" or (task_type == "worker" and task_id == 0 and "chief" not in resolver.cluster_spec().as_dict())
