"""The training loop's outer shell, in the shape of Orbit's controller. The runner trains a number of steps in one call;
periodic work (logging, validation, checkpoints) are actions that the controller calls when their step comes. Adding a
periodic job is adding an action."""

import dataclasses
from typing import Callable


@dataclasses.dataclass(frozen=True)
class Action:
    """`run(step)` every `every` steps, and at the last step when `at_end` (or at a stop when `at_stop`)."""

    every: int
    run: Callable[[int], None]
    at_end: bool = True
    at_stop: bool = False


def next_stop(step: int, max_steps: int, steps_per_call: int, actions: list[Action]) -> int:
    """The next step at which the runner must return: an action is due, a call is full, or the end."""
    return min([max_steps, step + steps_per_call] + [(step // a.every + 1) * a.every for a in actions])


def run(runner, get_step: Callable[[], int], max_steps: int, steps_per_call: int, actions: list[Action],
        stop_requested: Callable[[], bool]) -> int:
    """Trains to `max_steps` or until `stop_requested()`; returns the step it ended at. After each call of the runner,
    the actions due at that step run, in order; one of them may request the stop (early stopping), which the actions
    after it see."""
    step = get_step()
    while step < max_steps and not stop_requested():
        runner(next_stop(step, max_steps, steps_per_call, actions) - step)
        step = get_step()
        for action in actions:
            stopping = stop_requested()
            if step % action.every == 0 or (step >= max_steps and action.at_end) or (stopping and action.at_stop):
                action.run(step)
    return step
