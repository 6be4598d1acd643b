"""Synthetic arithmetic tasks with exact verifiers, for RL on a tiny character-level model.

    from toy_tasks import get_task
    task = get_task("addition_scratchpad")
    problems = task.sample(8, np.random.default_rng(0), split="train")
    task.reward(problems[0], task.demonstration(problems[0], rng))  # 1.0

Registered tasks (prompt -> one correct completion):
    addition                  "23+48="      -> "71"
    addition_scratchpad       "23+48="      -> "3+8=1c1;2+4+1=7;#71"
    addition_verbose          "23+48="      -> "3+8=1c1;?3+8=1c1;2+4+1=7;#71" (0-2 "?" re-checks per column)
    multiplication            "37*6="       -> "222"
    multiplication_scratchpad "37*6="       -> "7*6=2c4;3*6+4=2c2;#222"
    countdown                 "3,4,7:25="   -> "3*7+4"
    chain                     "(3+4)*2-5="  -> "[3+4]7;[7*2]14;[14-5]9;#9"
    chain_orders              "2*3+4*5="    -> "[4*5]20;[2*3]6;[6+20]26;#26" (any valid order)
"""
from __future__ import annotations

from toy_tasks.addition import ADDITION, ADDITION_SCRATCHPAD, ADDITION_VERBOSE
from toy_tasks.base import Problem, Task
from toy_tasks.chain import CHAIN, CHAIN_ORDERS
from toy_tasks.countdown import COUNTDOWN
from toy_tasks.multiplication import MULTIPLICATION, MULTIPLICATION_SCRATCHPAD

TASKS: dict[str, Task] = {
    task.name: task
    for task in (ADDITION, ADDITION_SCRATCHPAD, ADDITION_VERBOSE, MULTIPLICATION, MULTIPLICATION_SCRATCHPAD, COUNTDOWN, CHAIN, CHAIN_ORDERS)
}


def get_task(name: str) -> Task:
    """The registered task called `name`; ValueError listing the known names otherwise."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")
    return TASKS[name]


__all__ = ["Problem", "Task", "TASKS", "get_task"]
