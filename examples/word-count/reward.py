"""A user's own reward for examples/word-count: how close the answer's first line comes to the
number of words the prompt asks for (1.0 exactly right, falling linearly to 0 at twice as far)."""

import re


def word_count(prompts, completions, answer, **_):
    scores = []
    for text, want in zip(completions, answer):
        want = int(want)
        first_line = text.strip().split("\n")[0]
        words = len(re.findall(r"[A-Za-z0-9']+", first_line))
        scores.append(max(0.0, 1.0 - abs(words - want) / want))
    return scores
