"""Chain: evaluate a multi-step expression one operation at a time, planning each step.

Prompt: an expression of single-digit numbers (1..9) with + - * and
parentheses (only where needed), with `difficulty` operations (2..4, default 3):

    "(3+4)*2-5="  ->  "[3+4]7;[7*2]14;[14-5]9;#9"

Each step is "[<plan>]<result>;": the PLAN tokens inside the brackets name the
operation evaluated next, with the values of its operands as they stand then;
the EXECUTION tokens after "]" are its result. After the last step come "#" and
the final answer. The next operation is the leftmost one whose operands are
both plain numbers in the parse tree of the prompt (standard precedence,
left-associative), so "2*3+4*5" does 2*3 first, then 4*5, then 6+20.

Every intermediate value (and the answer) is in 0..999; drawn expressions that
violate that are rejected. Reward checks only the final answer: the text after
the last "#" must be exactly the canonical answer.

`chain_orders` is the same task (same prompts, splits, verifier) whose demonstrations
evaluate a ready operation drawn uniformly at random at every step, instead of the
leftmost one: "2*3+4*5=" is demonstrated as "[2*3]6;[4*5]20;[6+20]26;#26" or as
"[4*5]20;[2*3]6;[6+20]26;#26". Under `chain` the plan is a function of the prompt, so a
policy has no choice of plan to explore; under `chain_orders` every prompt with two
independent sub-expressions has several correct plans (`valid_plans`), and a base
trained on it spreads probability over them.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from toy_tasks.base import (
    Problem,
    Task,
    Tree,
    answer_after_marker,
    check_str,
    leaves,
    parse_expression,
    to_text,
)

DIFFICULTIES = (2, 3, 4)
DIGITS = (1, 2, 3, 4, 5, 6, 7, 8, 9)
OPS = "+-*"
MAX_VALUE = 999  # intermediate values must stay in 0..MAX_VALUE
SLACK = 4


def _apply(op: str, a: int, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


def _reduce_once(tree: tuple) -> tuple[Tree, tuple[int, str, int, int]]:
    """Evaluate the leftmost operation whose operands are both numbers.

    Returns (tree with that operation replaced by its value, (a, op, b, value)).
    Descending left first finds it: if the left operand still has an operation,
    the leftmost ready one is in there.
    """
    op, left, right = tree
    if isinstance(left, int) and isinstance(right, int):
        value = _apply(op, left, right)
        return value, (left, op, right, value)
    if not isinstance(left, int):
        new_left, step = _reduce_once(left)
        return (op, new_left, right), step
    new_right, step = _reduce_once(right)
    return (op, left, new_right), step


def _ready(tree: Tree, path: tuple[int, ...] = ()) -> list[tuple[int, ...]]:
    """Paths (1 = left child, 2 = right child) to every operation whose operands are both numbers,
    left to right."""
    if isinstance(tree, int):
        return []
    _, left, right = tree
    if isinstance(left, int) and isinstance(right, int):
        return [path]
    return _ready(left, path + (1,)) + _ready(right, path + (2,))


def _reduce_at(tree: tuple, path: tuple[int, ...]) -> tuple[Tree, tuple[int, str, int, int]]:
    """Evaluate the ready operation at `path`; same return value as _reduce_once."""
    op, left, right = tree
    if not path:
        value = _apply(op, left, right)
        return value, (left, op, right, value)
    if path[0] == 1:
        new_left, step = _reduce_at(left, path[1:])
        return (op, new_left, right), step
    new_right, step = _reduce_at(right, path[1:])
    return (op, left, new_right), step


def valid_plans(tree: Tree) -> set[str]:
    """Every correct completion of the tree, one per order of evaluation that only ever evaluates
    ready operations (for "2*3+4*5" two; for a left-to-right chain one)."""
    if isinstance(tree, int):
        return {f"#{tree}"}
    out = set()
    for path in _ready(tree):
        rest, (a, op, b, v) = _reduce_at(tree, path)
        out |= {f"[{a}{op}{b}]{v};" + tail for tail in valid_plans(rest)}
    return out


def steps(tree: Tree) -> list[tuple[int, str, int, int]]:
    """Every step (a, op, b, value) in evaluation order; the last value is the answer."""
    out = []
    while not isinstance(tree, int):
        tree, step = _reduce_once(tree)
        out.append(step)
    return out


def demonstration_text(tree: Tree) -> str:
    """The completion for a tree: for "(3+4)*2-5" it is "[3+4]7;[7*2]14;[14-5]9;#9"."""
    plan = steps(tree)
    return "".join(f"[{a}{op}{b}]{v};" for a, op, b, v in plan) + f"#{plan[-1][3]}"


def _random_tree(n_ops: int, rng: np.random.Generator) -> Tree:
    """A random expression tree with `n_ops` operations (random shape, ops and digits)."""
    if n_ops == 0:
        return DIGITS[int(rng.integers(len(DIGITS)))]
    n_left = int(rng.integers(n_ops))  # operations in the left subtree: 0..n_ops-1
    op = OPS[int(rng.integers(len(OPS)))]
    return (op, _random_tree(n_left, rng), _random_tree(n_ops - 1 - n_left, rng))


@dataclass
class ChainTask(Task):
    any_order: bool = False  # demonstrations: a random ready operation per step (chain_orders), not the leftmost

    def make_problem(self, expression: str) -> Problem:
        """The problem "<expression>="; ValueError unless it is a valid chain expression
        (single digits 1..9, + - * only, every intermediate value in 0..999)."""
        tree = parse_expression(expression)  # ParseError is a ValueError
        if isinstance(tree, int) or "/" in expression or any(x not in DIGITS for x in leaves(tree)):
            raise ValueError(f"{expression!r}: chain needs digits 1..9 joined by at least one of + - *")
        plan = steps(tree)
        if any(not 0 <= v <= MAX_VALUE for *_, v in plan):
            raise ValueError(f"{expression!r}: an intermediate value leaves 0..{MAX_VALUE}")
        return Problem(self.name, f"{expression}=", str(plan[-1][3]), len(plan), (expression,))

    def key(self, problem: Problem) -> str:
        return f"chain:{problem.data[0]}"

    def _draw(self, difficulty: int, rng: np.random.Generator, split: str) -> Problem | None:
        # Print with minimal parentheses, then parse the text back: the steps follow the
        # prompt the model sees (for "1+(2+3)" printed as "1+2+3", that is (1+2)+3).
        text, _ = to_text(_random_tree(difficulty, rng))
        try:
            return self.make_problem(text)
        except ValueError:  # an intermediate value out of range: draw again
            return None

    def demonstration(self, problem: Problem, rng: np.random.Generator) -> str:
        tree = parse_expression(problem.data[0])
        if not self.any_order:
            return demonstration_text(tree)
        text = ""
        while not isinstance(tree, int):
            ready = _ready(tree)
            tree, (a, op, b, v) = _reduce_at(tree, ready[int(rng.integers(len(ready)))])
            text += f"[{a}{op}{b}]{v};"
        return text + f"#{tree}"

    def final_answer(self, completion: str) -> str | None:
        check_str(completion)
        return answer_after_marker(completion)


def _max_completion_len() -> int:
    # With n operations: n steps "[a op b]v;" (4 fixed characters each), n + 1 digit
    # operands, n - 1 intermediate operands and n values of at most 3 digits, then "#"
    # and an answer of at most 3 digits. A bound, not always reached.
    n, width = max(DIFFICULTIES), len(str(MAX_VALUE))
    return 4 * n + (n + 1) + (n - 1) * width + n * width + 1 + width


CHAIN = ChainTask(
    name="chain",
    max_new_tokens=_max_completion_len() + 1 + SLACK,
    default_difficulty=3,
    difficulties=DIFFICULTIES,
)
# The same problems and splits (the key is chain's), demonstrated in random valid orders.
CHAIN_ORDERS = ChainTask(
    name="chain_orders",
    max_new_tokens=_max_completion_len() + 1 + SLACK,
    default_difficulty=3,
    difficulties=DIFFICULTIES,
    any_order=True,
)
