"""Addition of two `difficulty`-digit numbers, answered directly or with a scratchpad.

Prompt (both variants): "23+48=". Both operands have exactly `difficulty` digits
(1..5, default 2); the leading digit is nonzero except for 1-digit operands (0..9).

Direct ("addition"): the completion is the answer itself, "71". Reward 1.0 iff
the completion equals the canonical answer exactly (no "#", no leading zeros,
no trailing characters).

Scratchpad ("addition_scratchpad"): one step per digit column, least
significant first, then "#" and the answer:

    23+48=  ->  "3+8=1c1;2+4+1=7;#71"
    95+17=  ->  "5+7=2c1;9+1+1=1c1;#112"

A step is "x+y[+1]=d[c1];": the two digits of the column, "+1" only when a
carry comes in, the result digit, "c1" only when a carry goes out. The last
step's carry-out is the answer's leading 1. Reward checks only the final
answer: the text after the last "#" must be exactly the canonical answer.

Verbose scratchpad ("addition_verbose", 1..3 digits): the scratchpad with optional
RE-CHECK steps: after each column step, the demonstration repeats it 0, 1 or 2 times
(uniformly at random, per column), each repeat prefixed with "?":

    23+48=  ->  "3+8=1c1;?3+8=1c1;2+4+1=7;#71"   (one of 9 demonstrations)

so one problem is solved in 1x to ~3x as many tokens, and the length is removable:
the re-checks add nothing (the reward is the same final-answer check). It is the
task for length / token-efficiency methods; `recheck_count` counts the "?" steps.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from toy_tasks.base import Problem, Task, answer_after_marker, check_str, parse_int

DIFFICULTIES = (1, 2, 3, 4, 5)
SLACK = 4  # max_new_tokens = longest demonstration + EOS + a few tokens of slack


def digit_range(n_digits: int) -> tuple[int, int]:
    """Inclusive range of `n_digits`-digit numbers: (0, 9) for 1 digit, (10, 99) for 2, ..."""
    lo = 0 if n_digits == 1 else 10 ** (n_digits - 1)
    return lo, 10**n_digits - 1


def scratchpad(a: int, b: int) -> str:
    """Column-by-column addition of two equal-length numbers, e.g. (23, 48) -> "3+8=1c1;2+4+1=7;#71"."""
    n_digits = max(len(str(a)), len(str(b)))
    xs, ys = str(a).zfill(n_digits)[::-1], str(b).zfill(n_digits)[::-1]
    steps, carry = [], 0
    for x, y in zip(xs, ys):
        total = int(x) + int(y) + carry
        step = f"{x}+{y}" + ("+1" if carry else "") + f"={total % 10}" + ("c1" if total >= 10 else "")
        steps.append(step + ";")
        carry = total // 10
    return "".join(steps) + f"#{a + b}"


def verbose_scratchpad(a: int, b: int, rechecks: list[int]) -> str:
    """The scratchpad of (a, b) with column k's step repeated rechecks[k] more times, each repeat
    prefixed by "?": (23, 48, [1, 0]) -> "3+8=1c1;?3+8=1c1;2+4+1=7;#71"."""
    *steps, answer = scratchpad(a, b).split(";")
    if len(rechecks) != len(steps):
        raise ValueError(f"one re-check count per column: {len(steps)} columns, got {rechecks!r}")
    return "".join(f"{step};" + f"?{step};" * k for step, k in zip(steps, rechecks)) + answer


def recheck_count(completion: str) -> int:
    """Number of re-check steps ("?"-prefixed) in a completion (any string)."""
    check_str(completion)
    return completion.count("?")


@dataclass
class AdditionTask(Task):
    scratchpad: bool = False
    max_rechecks: int = 0   # verbose: each column step is repeated 0..max_rechecks times (uniform)

    def make_problem(self, a: int, b: int) -> Problem:
        """The problem "a+b=" (difficulty = number of digits of the longer operand)."""
        difficulty = max(len(str(a)), len(str(b)))
        return Problem(self.name, f"{a}+{b}=", str(a + b), difficulty, (a, b))

    def key(self, problem: Problem) -> str:
        # Unordered pair: 23+48 and 48+23 land in the same split, so commutativity
        # cannot leak test problems into training. The "addition" prefix is shared by
        # the direct and scratchpad variants, so both have the same test set.
        a, b = sorted(problem.data)
        return f"addition:{a}+{b}"

    def _draw(self, difficulty: int, rng: np.random.Generator, split: str) -> Problem:
        lo, hi = digit_range(difficulty)
        a, b = (int(x) for x in rng.integers(lo, hi + 1, size=2))
        return self.make_problem(a, b)

    def demonstration(self, problem: Problem, rng: np.random.Generator) -> str:
        a, b = problem.data
        if self.max_rechecks:
            n_columns = max(len(str(a)), len(str(b)))
            return verbose_scratchpad(a, b, [int(k) for k in rng.integers(0, self.max_rechecks + 1, size=n_columns)])
        return scratchpad(a, b) if self.scratchpad else str(a + b)

    def final_answer(self, completion: str) -> str | None:
        check_str(completion)
        return answer_after_marker(completion) if self.scratchpad else parse_int(completion)


def _max_completion_len(scratchpad_format: bool, max_rechecks: int = 0, difficulties=DIFFICULTIES) -> int:
    a = b = digit_range(max(difficulties))[1]  # 99999+99999: every column carries
    if max_rechecks:
        return len(verbose_scratchpad(a, b, [max_rechecks] * max(difficulties)))
    return len(scratchpad(a, b)) if scratchpad_format else len(str(a + b))


VERBOSE_DIFFICULTIES = (1, 2, 3)  # 3 digits with 2 re-checks per column is ~100 tokens


ADDITION = AdditionTask(
    name="addition",
    max_new_tokens=_max_completion_len(False) + 1 + SLACK,
    default_difficulty=2,
    difficulties=DIFFICULTIES,
    scratchpad=False,
)
ADDITION_SCRATCHPAD = AdditionTask(
    name="addition_scratchpad",
    max_new_tokens=_max_completion_len(True) + 1 + SLACK,
    default_difficulty=2,
    difficulties=DIFFICULTIES,
    scratchpad=True,
)
ADDITION_VERBOSE = AdditionTask(
    name="addition_verbose",
    max_new_tokens=_max_completion_len(True, 2, VERBOSE_DIFFICULTIES) + 1 + SLACK,
    default_difficulty=2,
    difficulties=VERBOSE_DIFFICULTIES,
    scratchpad=True,
    max_rechecks=2,
    context=128,  # "999+999=" + 100 new tokens does not fit the other bases' 96
)
