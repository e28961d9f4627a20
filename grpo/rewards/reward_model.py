"""A frozen reward model as a reward function: AutoModelForSequenceClassification with one output.

The reward model brings its own tokenizer (it need not share the actor's). Each (prompt,
completion) pair is rendered through the reward tokenizer's chat template when it has one
(the prompt's messages, then the completion as the assistant's turn), else as the prompt text
followed directly by the completion, exactly as the actor saw it. Batches are padded on the
right (so absolute position embeddings are unaffected) and the model's own pooling takes the
score at the last token that is not padding; `model.config.pad_token_id` is set to the id used
for padding so the two always agree. Over-long inputs are cut from the left, keeping the end of
the completion.
"""

from __future__ import annotations

import os
import warnings

import torch

from ..config import ConfigError
from ..data.prompts import as_messages


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".rstrip(": ")


class RewardModel:
    """`RewardModel(path, device, batch_size)(prompts, completions, **columns) -> list[float]`:
    logits[:, 0] of a frozen sequence classifier on each prompt + completion."""

    def __init__(self, path, device=None, batch_size: int = 16, dtype: torch.dtype | None = None):
        self.__name__ = "reward_model"
        self.path = str(path)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        if int(batch_size) < 1:
            raise ConfigError(f"reward_model_batch_size: must be >= 1, got {batch_size}")
        self.batch_size = int(batch_size)
        config = self._config()
        tok = self._tokenizer(config)
        model = self._model(config, dtype)
        self._set_padding(tok, model, config)
        limits = [n for n in (tok.model_max_length, getattr(config.get_text_config(), "max_position_embeddings", None))
                  if isinstance(n, int) and 0 < n < 1_000_000]
        self.max_length = min(limits) if limits else None
        self.chat = bool(getattr(tok, "chat_template", None))
        self.tokenizer = tok
        self.model = model.to(self.device).eval().requires_grad_(False)

    # ------------------------------------------------------------------ loading
    def _config(self):
        from transformers import AutoConfig
        local = os.path.isabs(self.path) or self.path.startswith((".", "~")) or os.path.exists(self.path)
        if local and not os.path.exists(os.path.expanduser(self.path)):
            raise ConfigError(f"reward_model: cannot load a model config from {self.path}: no such file or folder")
        try:
            config = AutoConfig.from_pretrained(os.path.expanduser(self.path))
        except Exception as e:
            raise ConfigError(f"reward_model: cannot load a model config from {self.path}: {_first_line(e)}") from e
        if config.num_labels != 1:
            archs = ", ".join(getattr(config, "architectures", None) or []) or config.model_type
            raise ConfigError(f"reward_model: {self.path} ({archs}) has num_labels={config.num_labels}, but a reward "
                              "model must output a single score (num_labels=1)")
        return config

    def _tokenizer(self, config):
        from transformers import AutoTokenizer
        try:
            tok = AutoTokenizer.from_pretrained(os.path.expanduser(self.path))
        except Exception as e:
            raise ConfigError(f"reward_model: cannot load the tokenizer from {self.path}: {_first_line(e)}") from e
        if len(tok) <= 1 or not tok("reward model probe 123", add_special_tokens=False)["input_ids"]:
            raise ConfigError(f"reward_model: cannot load the tokenizer from {self.path}: it has no vocabulary "
                              "(are the tokenizer files missing?)")
        vocab = getattr(config.get_text_config(), "vocab_size", None)
        if isinstance(vocab, int) and len(tok) > vocab:
            raise ConfigError(f"reward_model: the tokenizer at {self.path} has {len(tok)} tokens but the model's "
                              f"vocabulary has {vocab}; they do not belong together")
        return tok

    def _model(self, config, dtype):
        from transformers import AutoModelForSequenceClassification
        kw = {"dtype": dtype} if dtype is not None else {}
        try:
            model, info = AutoModelForSequenceClassification.from_pretrained(
                os.path.expanduser(self.path), config=config, output_loading_info=True, **kw)
        except Exception as e:
            raise ConfigError(f"reward_model: cannot load a sequence-classification model from {self.path}: "
                              f"{_first_line(e)}") from e
        prefix = getattr(model, "base_model_prefix", "") or "\0"
        missing = sorted(info.get("missing_keys", []) or [])
        head = [k for k in missing if not k.startswith(prefix)]
        if head:
            raise ConfigError(f"reward_model: {self.path} has no trained score head (missing {', '.join(head)}); "
                              "it is not a trained sequence classifier")
        if missing:
            warnings.warn(f"reward_model: {self.path}: weights not in the checkpoint, left at random: "
                          f"{', '.join(missing[:5])}", stacklevel=3)
        return model

    def _set_padding(self, tok, model, config) -> None:
        """The tokenizer's pad token, else the model's, else EOS; the model's pooling must agree."""
        pad_id = tok.pad_token_id
        if pad_id is None:
            pad_id = config.get_text_config().pad_token_id
        if pad_id is None:
            pad_id = tok.eos_token_id
        if pad_id is None:
            warnings.warn(f"reward_model: {self.path} has no pad or EOS token; scoring one completion at a time",
                          stacklevel=3)
            self.batch_size = 1
        elif tok.pad_token_id is None:
            tok.pad_token = tok.convert_ids_to_tokens(pad_id)
        for c in {id(model.config): model.config, id(model.config.get_text_config()): model.config.get_text_config()}.values():
            c.pad_token_id = pad_id
        self.pad_id = pad_id

    # ------------------------------------------------------------------ text
    def texts(self, prompts: list, completions: list[str]) -> list[str]:
        """The text the reward model reads for each pair."""
        if self.chat:
            return [self.tokenizer.apply_chat_template(as_messages(p) + [{"role": "assistant", "content": c}],
                                                       tokenize=False)
                    for p, c in zip(prompts, completions)]
        out = []
        for p, c in zip(prompts, completions):
            text = "\n".join(m["content"] for m in p) if isinstance(p, (list, tuple)) else str(p)
            out.append(text + c)
        return out

    def encode(self, prompts: list, completions: list[str]) -> list[list[int]]:
        ids = self.tokenizer(self.texts(prompts, completions), add_special_tokens=not self.chat)["input_ids"]
        if self.max_length:
            ids = [x[-self.max_length:] for x in ids]       # keep the end: the completion
        return ids

    # ------------------------------------------------------------------ scoring
    @torch.inference_mode()
    def __call__(self, prompts: list, completions: list[str], **_) -> list[float]:
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts for {len(completions)} completions")
        ids = self.encode(prompts, completions)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))   # similar lengths together: less padding
        scores: list[float] = [0.0] * len(ids)
        for s in range(0, len(order), self.batch_size):
            part = order[s:s + self.batch_size]
            width = max(len(ids[i]) for i in part)
            pad = self.pad_id if self.pad_id is not None else 0
            x = torch.full((len(part), width), pad, dtype=torch.long)
            mask = torch.zeros((len(part), width), dtype=torch.long)
            for row, i in enumerate(part):                             # right padding
                x[row, :len(ids[i])] = torch.tensor(ids[i], dtype=torch.long)
                mask[row, :len(ids[i])] = 1
            logits = self.model(input_ids=x.to(self.device), attention_mask=mask.to(self.device)).logits
            for i, v in zip(part, logits[:, 0].float().cpu().tolist()):
                scores[i] = v
        return scores

    def __repr__(self) -> str:
        return f"RewardModel({self.path!r}, device={str(self.device)!r}, batch_size={self.batch_size})"
