"""Multiplication of a `difficulty`-digit number by one digit, direct or with a scratchpad.

Prompt (both variants): "37*6=". The first operand has exactly `difficulty`
digits (1..3; default 3 for the direct task, 2 for the scratchpad; leading digit
nonzero except for 1-digit, 0..9), the second is a single digit 2..9.

Direct ("multiplication"): the completion is the answer, "222"; reward 1.0 iff
it equals the canonical answer exactly.

Scratchpad ("multiplication_scratchpad"): one partial product per digit of the
first operand, least significant first, then "#" and the answer:

    37*6=   ->  "7*6=2c4;3*6+4=2c2;#222"
    905*8=  ->  "5*8=0c4;0*8+4=4;9*8=2c7;#7240"

A step is "x*b[+k]=d[cK];": digit times b, "+k" only when a carry k > 0 comes
in, the result digit, "cK" only when a carry K > 0 goes out (carries are single
digits, at most 8). The last carry-out is the answer's leading digit. Reward
checks only the text after the last "#".
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from toy_tasks.addition import digit_range
from toy_tasks.base import Problem, Task, answer_after_marker, check_str, parse_int

DIFFICULTIES = (1, 2, 3)
MULTIPLIERS = (2, 3, 4, 5, 6, 7, 8, 9)  # 0 and 1 would make trivial problems
SLACK = 4


def scratchpad(a: int, b: int) -> str:
    """Digit-by-digit a*b for a single digit b, e.g. (37, 6) -> "7*6=2c4;3*6+4=2c2;#222"."""
    steps, carry = [], 0
    for x in reversed(str(a)):
        total = int(x) * b + carry
        step = f"{x}*{b}" + (f"+{carry}" if carry else "") + f"={total % 10}"
        step += f"c{total // 10}" if total >= 10 else ""
        steps.append(step + ";")
        carry = total // 10
    return "".join(steps) + f"#{a * b}"


@dataclass
class MultiplicationTask(Task):
    scratchpad: bool = False

    def make_problem(self, a: int, b: int) -> Problem:
        """The problem "a*b=" (difficulty = number of digits of a)."""
        return Problem(self.name, f"{a}*{b}=", str(a * b), len(str(a)), (a, b))

    def key(self, problem: Problem) -> str:
        # Unordered pair, so 3*7 and 7*3 (both 1-digit problems) share a split; the
        # prefix is shared by both variants so they have the same test set.
        a, b = sorted(problem.data)
        return f"multiplication:{a}*{b}"

    def _draw(self, difficulty: int, rng: np.random.Generator, split: str) -> Problem:
        lo, hi = digit_range(difficulty)
        a = int(rng.integers(lo, hi + 1))
        b = MULTIPLIERS[int(rng.integers(len(MULTIPLIERS)))]
        return self.make_problem(a, b)

    def demonstration(self, problem: Problem, rng: np.random.Generator) -> str:
        a, b = problem.data
        return scratchpad(a, b) if self.scratchpad else str(a * b)

    def final_answer(self, completion: str) -> str | None:
        check_str(completion)
        return answer_after_marker(completion) if self.scratchpad else parse_int(completion)


def _max_completion_len(scratchpad_format: bool) -> int:
    a, b = digit_range(max(DIFFICULTIES))[1], max(MULTIPLIERS)  # 999*9: every carry is 8
    return len(scratchpad(a, b)) if scratchpad_format else len(str(a * b))


MULTIPLICATION = MultiplicationTask(
    name="multiplication",
    max_new_tokens=_max_completion_len(False) + 1 + SLACK,
    # 3 digits: at 2 digits the direct task has only ~580 training problems and a base memorises them
    # (train pass@1 0.99 vs held-out 0.31) long before it generalises; at 3 digits (~5,800) it does not
    default_difficulty=3,
    difficulties=DIFFICULTIES,
    scratchpad=False,
)
MULTIPLICATION_SCRATCHPAD = MultiplicationTask(
    name="multiplication_scratchpad",
    max_new_tokens=_max_completion_len(True) + 1 + SLACK,
    default_difficulty=2,
    difficulties=DIFFICULTIES,
    scratchpad=True,
)
