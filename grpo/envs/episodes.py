"""Multi-turn episodes, token in and token out.

An episode's trajectory is the prompt's tokens followed by, turn after turn, exactly the tokens
the policy sampled and the tokens of the environment's answer as the chat template renders it
between turns. The model's text is never tokenised again: the next turn is sampled on top of the
very tokens of the last, and the trainer scores those same tokens. Only sampled tokens carry loss
(`Rollout.sampled`); the sampler's log-prob of each is kept; environment tokens carry log-prob 0.

Each model turn is one call of the rollout engine over the episodes still running (one row
each; each turn draws from a generator seeded by the episode's own, so an episode's samples do
not depend on which others share the call).
"""

from __future__ import annotations

import math
import numbers
import time
from dataclasses import dataclass, field, replace
from functools import partial

import torch
from torch import Tensor

from ..data.prompts import as_messages, format_prompts, uses_chat_template
from ..rollout.base import Rollout, RolloutEngine, SamplingSettings
from ..errors import EnvironmentFailure
from .base import EpisodeLimits, Reply
from .contain import episode_label, run_calls
from .tools import template_offers_tools, tool_schema, tools_system_prompt

MARK = "GRPOTURNMARK"          # stands for the model's turn when the template renders what follows it


@dataclass
class Episode:
    env: object
    messages: list[dict]                   # the conversation as text (for logs and the browser)
    prompt: list[int]                      # the opening's tokens
    ids: list[int] = field(default_factory=list)          # the trajectory after the prompt
    sampled: list[bool] = field(default_factory=list)     # True where the policy sampled the token
    logps: list[float] = field(default_factory=list)      # the sampler's log-prob (0 on environment tokens)
    entropy: list[float] = field(default_factory=list)
    turns: int = 0
    reward: float | None = None
    done: bool = False
    truncated: bool = False                # ended by a limit, not by the environment
    tool_calls: int = 0
    tool_errors: int = 0
    turn_rewards: list = field(default_factory=list)     # each model turn's own reward (None where none)
    turn_of: list[int] = field(default_factory=list)      # the model turn of each token (0: the environment's)


def render_between_turns(tokenizer, messages: list[dict], new: list[dict], *, chat_template: bool = True,
                         tools=None, eos_text: str = "") -> str:
    """The text that follows the model's last turn up to the start of its next one: the end of
    its turn as the template writes it (less `eos_text`, which the model sampled itself), the
    environment's messages `new`, and the generation prompt. Without a chat template, the new
    messages' contents, as they are."""
    if not uses_chat_template(tokenizer, chat_template):
        return "".join(m["content"] for m in new)
    convo = list(messages) + [{"role": "assistant", "content": MARK}] + list(new)
    kw = {"tools": tools} if tools else {}
    text = tokenizer.apply_chat_template(convo, add_generation_prompt=True, tokenize=False, **kw)
    at = text.rfind(MARK)
    if at < 0:
        raise ValueError("the chat template does not write the assistant's message back; "
                         "it cannot render an environment's answer between turns")
    after = text[at + len(MARK):]
    if eos_text and after.startswith(eos_text):
        after = after[len(eos_text):]
    return after


def turn_text(tokenizer, toks: list[int], eos: set[int]) -> str:
    """The text `step()` receives for a model turn: its sampled tokens decoded as they are, special
    tokens included, less the one end-of-turn token that closed it (the trained tokens are all of
    `toks`, that one included)."""
    if toks and toks[-1] in eos:
        toks = toks[:-1]
    return tokenizer.decode(toks, skip_special_tokens=False)


def _is_message(m) -> bool:
    return isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)


def _what(value) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 60 else text[:57] + '...'}"


def checked_opening(name: str, value, where: str):
    """What `reset` returned, if it is an opening: a list of {"role", "content"} messages (or one text,
    the user's message); else an EnvironmentFailure naming the class, the method and the episode."""
    if isinstance(value, str) and value.strip():
        return value
    if isinstance(value, (list, tuple)) and value and all(_is_message(m) for m in value):
        return list(value)
    hint = " (did reset forget its return?)" if value is None else ""
    raise EnvironmentFailure(f"environment {name}.reset returned {_what(value)}{hint} on {where}; expected a list "
                             'of {"role": text, "content": text} messages')


def checked_reply(name: str, reply, where: str) -> None:
    """A Reply whose fields have their types (messages a list of messages, rewards finite numbers or
    None, done a bool, the tool counts integers); else an EnvironmentFailure naming what is wrong."""
    def fail(what: str):
        raise EnvironmentFailure(f"environment {name}.step returned {what} on {where}")
    if not isinstance(reply, Reply):
        fail(f"{type(reply).__name__}, not a Reply")
    if not isinstance(reply.messages, (list, tuple)) or not all(_is_message(m) for m in reply.messages):
        fail(f'a Reply whose messages are {_what(reply.messages)}; expected a list of {{"role": text, '
             '"content": text}} messages')
    for attr in ("reward", "turn_reward"):
        v = getattr(reply, attr)
        if v is not None and (isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(float(v))):
            fail(f"a Reply whose {attr} is {_what(v)}; expected a finite number or None")
    if not isinstance(reply.done, (bool, int)):
        fail(f"a Reply whose done is {_what(reply.done)}; expected True or False")
    for attr in ("tool_calls", "tool_errors"):
        v = getattr(reply, attr)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            fail(f"a Reply whose {attr} is {_what(v)}; expected a count (0, 1, ...)")


def run_episodes(engine: RolloutEngine, model, tokenizer, envs: list, rows: list[dict], sampling: SamplingSettings,
                 generators: list[torch.Generator] | None, limits: EpisodeLimits, *, system_prompt: str | None = None,
                 chat_template: bool = True, tools=None, device="cpu") -> tuple[Rollout, list[Episode], dict]:
    """One episode per (env, row), to the end. `tools`: the functions the environments offer
    (grpo/envs/tools.py), through the chat template's `tools=` where it writes them, else in the
    system message. Returns the Rollout of the trajectories (one row per episode, `sampled`
    marking the policy's tokens), the episodes, and timings."""
    if generators is not None and len(generators) != len(envs):
        raise ValueError(f"{len(generators)} generators for {len(envs)} episodes")
    talk = _Talk(tokenizer, chat_template, tools, system_prompt, limits,
                 type(envs[0]).__name__ if envs else "?", [str(r.get("prompt", "")) for r in rows])
    t_env = time.perf_counter()
    eps = talk.open(envs, rows)
    eos = set(sampling.eos_ids)
    times = dict(generate=0.0, environment=time.perf_counter() - t_env)
    while active := [i for i, e in enumerate(eps) if not e.done]:
        t0 = time.perf_counter()
        toks, texts = _model_turn(engine, model, tokenizer, eps, active, sampling, eos, generators, limits, device)
        times["generate"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        replies = run_calls([partial(eps[i].env.step, text) for i, text in zip(active, texts)], method="step",
                            describe=lambda r: talk.label(active[r], eps[active[r]].turns), **talk.contained)
        times["environment"] += time.perf_counter() - t0
        for row, i in enumerate(active):
            talk.answer(eps[i], toks[row], replies[row], eos, talk.label(i, eps[i].turns))
    return trajectories(eps, sampling.pad_id, device, record_entropy=sampling.record_entropy), eps, times


class _Talk:
    """How a run's episodes talk: the chat template (and the tools it offers), the system prompt,
    the limits, and the labels that name an episode in an error."""

    def __init__(self, tokenizer, chat_template: bool, tools, system_prompt: str | None, limits: EpisodeLimits,
                 name: str, prompts: list[str]):
        self.tokenizer, self.chat_template, self.limits, self.name, self.prompts = \
            tokenizer, chat_template, limits, name, prompts
        self.use_template = uses_chat_template(tokenizer, chat_template)
        schemas = [tool_schema(f) for f in tools] if tools else None
        if schemas and not self.use_template:
            schemas = None        # no chat format to describe them in: the model knows its calls from its warm start
        elif schemas and not template_offers_tools(tokenizer, schemas):
            # the template does not write tools: they are described in the system message instead
            fallback = tools_system_prompt(schemas)
            system_prompt = f"{system_prompt}\n\n{fallback}" if system_prompt else fallback
            schemas = None
        self.schemas, self.system_prompt = schemas, system_prompt
        self.contained = dict(workers=limits.workers, timeout=limits.timeout, name=name)

    def label(self, i: int, turn: int | None = None) -> str:
        return episode_label(i, self.prompts[i]) if turn is None else episode_label(i, self.prompts[i], turn)

    def open(self, envs: list, rows: list[dict]) -> list[Episode]:
        """Every episode's opening (what reset returned, checked) and its tokens."""
        opened = run_calls([partial(env.reset, row) for env, row in zip(envs, rows)], method="reset",
                           describe=self.label, **self.contained)
        openings = [as_messages(checked_opening(self.name, m, self.label(i)), self.system_prompt)
                    for i, m in enumerate(opened)]
        tok = self.tokenizer
        if self.use_template:
            kw = {"tools": self.schemas} if self.schemas else {}
            texts = [tok.apply_chat_template(m, add_generation_prompt=True, tokenize=False, **kw) for m in openings]
        else:
            texts = format_prompts(tok, openings, chat_template=False)
        prompts = [tok(t, add_special_tokens=not self.use_template)["input_ids"] for t in texts]
        return [Episode(env, list(m), p) for env, m, p in zip(envs, openings, prompts)]

    def answer(self, e: Episode, toks: list[int], reply, eos: set[int], where: str) -> None:
        """The environment's reply to the model's turn `toks`: the episode ends, or its messages join
        the trajectory as the template renders them between turns."""
        checked_reply(self.name, reply, where)
        ended_by_eos = bool(toks) and toks[-1] in eos
        e.tool_calls += reply.tool_calls
        e.tool_errors += reply.tool_errors
        e.turn_rewards.append(None if reply.turn_reward is None else float(reply.turn_reward))
        if reply.reward is not None:
            e.reward = float(reply.reward)
        # a turn cut by max_new_tokens still counts as truncated; out of turns is not a cut
        if reply.done or not ended_by_eos or e.turns >= self.limits.max_turns:
            e.done, e.truncated = True, not ended_by_eos
            return
        eos_text = self.tokenizer.decode([toks[-1]], skip_special_tokens=False)
        between = render_between_turns(self.tokenizer, e.messages[:-1], reply.messages,
                                       chat_template=self.chat_template, tools=self.schemas, eos_text=eos_text)
        env_ids = self.tokenizer(between, add_special_tokens=False)["input_ids"]
        if len(e.ids) + len(env_ids) >= self.limits.max_tokens:     # no room left for another turn
            # the model never reads these: kept in the record, marked so
            e.messages += [{**m, "unseen": True} for m in reply.messages]
            e.done, e.truncated = True, True
            return
        e.messages += list(reply.messages)
        n = len(env_ids)
        e.ids += env_ids
        e.sampled += [False] * n
        e.logps += [0.0] * n
        e.entropy += [0.0] * n
        e.turn_of += [0] * n


def _model_turn(engine, model, tokenizer, eps: list[Episode], active: list[int], sampling: SamplingSettings,
                eos: set[int], generators, limits: EpisodeLimits, device) -> tuple[list[list[int]], list[str]]:
    """One model turn of every running episode, in one engine call: each episode's sampled tokens
    (cut at its token budget) added to it, and the turn's tokens and text."""
    room = [limits.max_tokens - len(eps[i].ids) for i in active]
    budget = min(sampling.max_new_tokens, max(room))
    ids, mask = _left([eps[i].prompt + eps[i].ids for i in active], sampling.pad_id, device)
    # each turn draws from a seed of its own, one draw of the episode's generator: how far a
    # turn's decoding runs depends on the other rows of the call, so the episode's own generator
    # must advance the same whatever shares the call
    turn_seeds = None if generators is None else [
        int(torch.randint(1 << 62, (1,), generator=generators[i], device=generators[i].device)) for i in active]
    roll = engine.generate(model, ids, mask, replace(sampling, num_samples=1, max_new_tokens=budget), turn_seeds)
    turn_toks, texts = [], []
    for row, i in enumerate(active):
        e = eps[i]
        n = min(int(roll.lengths[row]), room[row])
        toks = roll.completion_ids[row, :n].tolist()
        e.ids += toks
        e.sampled += [True] * n
        e.logps += roll.logprobs[row, :n].tolist()
        e.entropy += roll.entropy[row, :n].tolist() if roll.entropy is not None else [0.0] * n
        e.turns += 1
        e.turn_of += [e.turns] * n
        turn_toks.append(toks)
        texts.append(turn_text(tokenizer, toks, eos))
        e.messages.append({"role": "assistant", "content": texts[-1]})
    return turn_toks, texts


def trajectories(eps: list[Episode], pad: int, device, record_entropy: bool = False) -> Rollout:
    """The episodes as a Rollout: prompts left-padded, trajectories right-padded."""
    prompt_ids, prompt_mask = _left([e.prompt for e in eps], pad, device)
    L = max(1, max(len(e.ids) for e in eps))
    K = max(len(e.turn_rewards) for e in eps)

    def right(seqs, value, dtype):
        return torch.tensor([list(s) + [value] * (L - len(s)) for s in seqs], dtype=dtype, device=device)

    lengths = torch.tensor([len(e.ids) for e in eps], device=device)
    valid = torch.arange(L, device=device)[None] < lengths[:, None]
    return Rollout(prompt_ids=prompt_ids, prompt_mask=prompt_mask,
                   completion_ids=right([e.ids for e in eps], pad, torch.long), completion_mask=valid,
                   logprobs=right([e.logps for e in eps], 0.0, torch.float32), lengths=lengths,
                   truncated=torch.tensor([e.truncated for e in eps], device=device),
                   entropy=right([e.entropy for e in eps], 0.0, torch.float32) if record_entropy else None,
                   sampled=right([e.sampled for e in eps], False, torch.bool),
                   turns=right([e.turn_of for e in eps], 0, torch.long),
                   turn_rewards=torch.tensor([[float("nan") if r is None else r for r in e.turn_rewards]
                                              + [float("nan")] * (K - len(e.turn_rewards)) for e in eps],
                                             dtype=torch.float32, device=device).view(len(eps), K))


def _left(seqs: list[list[int]], pad: int, device) -> tuple[Tensor, Tensor]:
    width = max(map(len, seqs))
    ids = torch.tensor([[pad] * (width - len(s)) + list(s) for s in seqs], device=device)
    mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs], device=device)
    return ids, mask

