"""The cost of a periodic stop against the training it interrupts, in one process.

    python benchmarks/periodic_stop.py [--idx_dir=DIR] [--rounds=9] [--out=FILE]

With the main command's settings (dense 784-60-30-10, Adam, batch 128), after a warm-up, it
alternates: 250 training steps, then one stop as `train` makes it every 1,000 steps
(validate the 5,000 validation images, keep the best checkpoint, write the diagnostics, save a
checkpoint). Prints the medians and their ratio (target: a stop costs at most 250 steps).
Writes benchmarks/periodic_stop.json (benchmarks/end_to_end.py runs it too, into its own JSON).
"""

import tempfile

import harness


def make_run(args, folder: str):
    from mnist_dnn.lib.core import data
    from mnist_dnn.lib.core.run_dir import RunDir
    from mnist_dnn.lib.trainer import distribute, training
    config = training.TrainConfig(data=data.DataConfig("mnist", args.data_dir, args.idx_dir),
                                  ckpt_dir=f"{folder}/ckpt", log_dir=f"{folder}/logs",
                                  jit_compile=False if args.smoke else None)  # --smoke: no XLA compiling
    state = training.build_state(config)
    splits = data.load_splits(config.data)
    run = training._Run(config, state, distribute.make_strategy("default"), splits, config.log_dir,
                        RunDir(config.ckpt_dir), None, print)
    return run, state


def stop(run, state) -> None:
    step = state.current_step()
    run.validation.best = None  # so every stop keeps a best checkpoint, as an improving run does
    run.validation(step)  # in train's order: validation (and the best checkpoint), then the save
    run.save(step)


def main():
    parser = harness.parser(__doc__, "periodic_stop.json")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--steps", type=int, default=250, help="training steps a round")
    args = harness.parse(parser, smoke={"rounds": 1, "steps": 5})
    bench = harness.Benchmark("periodic_stop", args)
    with tempfile.TemporaryDirectory() as folder:
        run, state = make_run(args, folder)
        run.runner(args.steps)  # compiles
        stop(run, state)  # traces the validation and diagnostics functions
        rounds = harness.interleaved({"steps_s": lambda: harness.seconds(lambda: (run.runner(args.steps),
                                                                                  float(state.step.numpy()))),
                                      "stop_s": lambda: harness.seconds(lambda: stop(run, state))}, args.rounds)
        run.close()
    result = {name: harness.spread(values) for name, values in rounds.items()}
    result["stop_over_steps"] = result["stop_s"]["median"] / result["steps_s"]["median"]
    table = (f"{args.steps} training steps {result['steps_s']['median'] * 1000:.1f} ms, one stop "
             f"{result['stop_s']['median'] * 1000:.1f} ms (median of {args.rounds}): ratio "
             f"{result['stop_over_steps']:.2f} (target <= 1)")
    bench.write(result, table)


if __name__ == "__main__":
    harness.main(main)
