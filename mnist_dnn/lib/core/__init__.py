"""The core: data, models and their loss, run folders, checkpoints, evaluation, exports.

What training and serving both stand on. May import only the ground (`mnist_dnn.lib`'s own
modules: config, errors, files, outputs, ...); never trainer, serve, experiments or cli.
"""
