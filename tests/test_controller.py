"""The controller: the runner trains between actions; each action runs at its steps."""

from mnist_dnn.lib.trainer import controller
from mnist_dnn.lib.trainer.controller import Action


class FakeRunner:
    def __init__(self):
        self.step, self.calls = 0, []

    def __call__(self, num_steps):
        self.calls.append(num_steps)
        self.step += num_steps


def run(max_steps=25, steps_per_call=100, actions=(), stop=lambda: False, runner=None):
    runner = runner or FakeRunner()
    end = controller.run(runner, lambda: runner.step, max_steps, steps_per_call, list(actions), stop)
    return end, runner


def test_actions_run_at_their_steps_and_at_the_end():
    seen = []
    log = Action(10, lambda s: seen.append(("log", s)))
    save = Action(7, lambda s: seen.append(("save", s)), at_end=False)
    end, runner = run(max_steps=25, actions=[log, save])
    assert end == 25 and sum(runner.calls) == 25
    assert seen == [("save", 7), ("log", 10), ("save", 14), ("log", 20), ("save", 21), ("log", 25)]


def test_the_runner_returns_at_every_due_step_and_at_most_steps_per_call():
    _, runner = run(max_steps=25, steps_per_call=4, actions=[Action(10, lambda s: None)])
    assert runner.calls == [4, 4, 2, 4, 4, 2, 4, 1]


def test_a_stop_request_ends_the_loop_and_runs_the_at_stop_actions():
    seen, requested = [], []
    validate = Action(5, lambda s: (seen.append(("validate", s)), s == 10 and requested.append(True)))
    save = Action(8, lambda s: seen.append(("save", s)), at_stop=True)
    end, _ = run(max_steps=100, actions=[validate, save], stop=lambda: bool(requested))
    assert end == 10
    assert seen == [("validate", 5), ("save", 8), ("validate", 10), ("save", 10)]


def test_a_finished_run_runs_nothing():
    runner = FakeRunner()
    runner.step = 25
    end, runner = run(max_steps=25, actions=[Action(1, lambda s: 1 / 0)], runner=runner)
    assert end == 25 and runner.calls == []


def test_next_stop_is_the_nearest_due_step():
    actions = [Action(10, None), Action(25, None)]
    assert controller.next_stop(0, 100, 100, actions) == 10
    assert controller.next_stop(20, 100, 3, actions) == 23
    assert controller.next_stop(24, 100, 100, actions) == 25
    assert controller.next_stop(95, 98, 100, actions) == 98
