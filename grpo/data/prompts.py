"""Turning a data row's prompt into the text the model continues.

A prompt is either text or a conversation (a list of {"role", "content"} messages). With a
tokenizer that has a chat template (and `chat_template` on), it is rendered through the template
with the generation prompt appended, after an optional system message; otherwise the text (or the
messages' contents joined by newlines) is used as is, after the system prompt if one is given.
"""

from __future__ import annotations

import torch


def uses_chat_template(tokenizer, enabled: bool = True) -> bool:
    return bool(enabled and getattr(tokenizer, "chat_template", None))


def as_messages(prompt, system_prompt: str | None = None) -> list[dict]:
    msgs = list(prompt) if isinstance(prompt, (list, tuple)) else [{"role": "user", "content": str(prompt)}]
    if system_prompt and not (msgs and msgs[0].get("role") == "system"):
        msgs = [{"role": "system", "content": system_prompt}] + msgs
    return msgs


def format_prompts(tokenizer, prompts: list, *, system_prompt: str | None = None,
                   chat_template: bool = True) -> list[str]:
    if uses_chat_template(tokenizer, chat_template):
        return [tokenizer.apply_chat_template(as_messages(p, system_prompt), add_generation_prompt=True,
                                              tokenize=False) for p in prompts]
    out = []
    for p in prompts:
        text = "\n".join(m["content"] for m in p) if isinstance(p, (list, tuple)) else str(p)
        out.append(f"{system_prompt}\n{text}" if system_prompt else text)
    return out


def prompt_ids(tokenizer, prompts: list, *, system_prompt: str | None = None,
               chat_template: bool = True) -> list[list[int]]:
    """Each prompt's token ids as the model reads it, unpadded: formatted (format_prompts), then
    tokenised (text a chat template rendered already holds its special tokens; raw text takes the
    tokenizer's, BOS)."""
    texts = format_prompts(tokenizer, prompts, system_prompt=system_prompt, chat_template=chat_template)
    special = not uses_chat_template(tokenizer, chat_template)
    return [tokenizer(t, add_special_tokens=special)["input_ids"] for t in texts]


def encode_for_model(tokenizer, prompts: list, device, *, system_prompt: str | None = None,
                     chat_template: bool = True):
    """Format and left-pad a batch of prompts: (ids, mask), each (n, P)."""
    return _pad_left(tokenizer, prompt_ids(tokenizer, prompts, system_prompt=system_prompt,
                                           chat_template=chat_template), device)


def encode_prompts(tokenizer, prompts: list[str], device, add_special_tokens: bool = False):
    """Left-padded ids and mask, so every prompt ends at the same column.  Text rendered by a
    chat template already holds its special tokens; raw text may want the tokenizer's (BOS)."""
    return _pad_left(tokenizer, [tokenizer(p, add_special_tokens=add_special_tokens)["input_ids"] for p in prompts],
                     device)


def _pad_left(tokenizer, enc: list[list[int]], device):
    width = max(map(len, enc))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = torch.tensor([[pad] * (width - len(e)) + e for e in enc], device=device)
    mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in enc], device=device)
    return ids, mask


def positions(mask):
    """Position ids that ignore left padding: 0 at each row's first real token.  (N, P) -> (N, P)."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)
