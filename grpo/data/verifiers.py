"""The verifiers tasks bring with them: plain functions of the completion text and the row's
reference answer. They are also built-in rewards (grpo/rewards/builtins.py), under the same names."""

from __future__ import annotations


def answers_of(reward: str, answer, columns: dict, n: int) -> list:
    """The `answer` column, or a clear error naming the columns there are."""
    if answer is None:
        have = ", ".join(sorted(k for k in columns if k != "completion_length")) or "none"
        raise ValueError(f"the {reward} reward needs an `answer` column, the reference answer of each row "
                         f"(the data has: {have})")
    if len(answer) != n:
        raise ValueError(f"the {reward} reward got {len(answer)} answers for {n} completions")
    return answer


def exact_match(prompts: list, completions: list[str], answer: list | None = None, **columns) -> list[float]:
    """1.0 when the completion, stripped of surrounding whitespace, equals the stripped answer, else 0.0."""
    answer = answers_of("exact_match", answer, columns, len(completions))
    return [1.0 if c.strip() == str(a).strip() else 0.0 for c, a in zip(completions, answer)]


def extract_answer(completion: str) -> str:
    """The answer inside a completion: the content of the last <answer>...</answer>, stripped; else, when
    an <answer> tag is opened but never closed, what follows the last one; else the whole completion, stripped."""
    end = completion.rfind("</answer>")
    start = completion.rfind("<answer>")
    if start != -1 and start > end:                  # opened and never closed (e.g. cut at max_new_tokens)
        return completion[start + len("<answer>"):].strip()
    if end != -1:
        start = completion.rfind("<answer>", 0, end)
        if start != -1:
            return completion[start + len("<answer>"):end].strip()
    return completion.strip()
