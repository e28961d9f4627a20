"""Tools: Python functions the model may call during an episode.

A tool is a function with type hints and a docstring that documents its arguments; its JSON
schema comes from transformers' `get_json_schema` (the form chat templates take in `tools=`).
Tools are offered through the chat template when the template renders them; otherwise through a
system message that lists them and the call format (`tools_system_prompt`). A call is written as

    <tool_call>{"name": "NAME", "arguments": {...}}</tool_call>

(the form Hermes-style templates, SmolLM2's and Qwen's among them, teach). `ToolEnv` parses the
calls of a model turn, runs each with a timeout, and answers with one `tool` message per call;
a malformed call, an unknown tool, bad arguments, an exception or a timeout is an answer the
model reads ("error: ..."), not a crash.
"""

from __future__ import annotations

import json
import re
import threading

from .base import Reply

CALL = re.compile(r"<tool_call>(.*?)</tool_call>", re.S)


def tool_schema(fn) -> dict:
    """The function's JSON schema ({"type": "function", "function": {...}}), or a ValueError naming it."""
    from transformers.utils import get_json_schema
    try:
        return get_json_schema(fn)
    except Exception as e:            # transformers raises its own exception types for each gap
        raise ValueError(f"tool {getattr(fn, '__name__', fn)!r}: {e}") from None


def template_offers_tools(tokenizer, schemas: list[dict]) -> bool:
    """Whether the tokenizer's chat template writes the tools it is given into the prompt."""
    if not getattr(tokenizer, "chat_template", None) or not schemas:
        return False
    name = schemas[0]["function"]["name"]
    try:
        text = tokenizer.apply_chat_template([{"role": "user", "content": "x"}], tools=schemas,
                                             add_generation_prompt=True, tokenize=False)
    except Exception:
        return False
    return name in text


def tools_system_prompt(schemas: list[dict]) -> str:
    """The fallback: a system message that lists the tools and says how to call one."""
    lines = [json.dumps(s["function"], separators=(", ", ": ")) for s in schemas]
    return ("You can call these tools. To call one, write <tool_call>{\"name\": NAME, \"arguments\": {...}}"
            "</tool_call> and end your turn; its result comes back in the next message.\nTools:\n" + "\n".join(lines))


def parse_tool_calls(text: str) -> list[dict | str]:
    """Each <tool_call> of `text`: {"name", "arguments"}, or a string saying what is wrong with it."""
    out: list[dict | str] = []
    for body in CALL.findall(text):
        try:
            call = json.loads(body)
        except json.JSONDecodeError as e:
            out.append(f"the tool call is not valid JSON ({e.msg} at character {e.pos})")
            continue
        except (ValueError, RecursionError) as e:      # e.g. a number too long, nesting too deep
            out.append(f"the tool call is not valid JSON ({type(e).__name__}: {str(e)[:80]})")
            continue
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            out.append('a tool call needs {"name": ..., "arguments": {...}}')
            continue
        args = call.get("arguments", {})
        if isinstance(args, str):             # some models write the arguments as a JSON string
            try:
                args = json.loads(args)
            except ValueError:
                pass
        if not isinstance(args, dict):
            out.append(f"the arguments of {call['name']!r} must be an object")
            continue
        out.append({"name": call["name"], "arguments": args})
    return out


def call_tool(tools: dict, call: dict | str, timeout: float) -> tuple[str, bool]:
    """(the result as text, whether it went well). A call runs in a thread of its own; one that
    takes longer than `timeout` seconds is left behind and answered as timed out."""
    if isinstance(call, str):
        return f"error: {call}", False
    fn = tools.get(call["name"])
    if fn is None:
        return f"error: no tool named {call['name']!r} (tools: {', '.join(sorted(tools))})", False
    box: dict = {}

    def run():
        try:
            value = fn(**call["arguments"])
            box["value"] = value if isinstance(value, str) else json.dumps(value, default=str)
        except BaseException as e:      # the model reads what went wrong (SystemExit included)
            box["error"] = f"{type(e).__name__}: {e}"

    worker = threading.Thread(target=run, name=f"tool-{call['name']}", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        return f"error: {call['name']} timed out after {timeout:g} s", False
    if "error" in box:
        return f"error: {box['error']}", False
    return box["value"], True


class ToolEnv:
    """An environment whose model may call `tools` (a list of functions) before it answers.
    A turn with tool calls is answered with their results; a turn without one is the answer,
    judged by `answer(text) -> Reply` (a subclass writes it)."""

    tools: list = []
    tool_timeout: float = 10.0

    def reset(self, row: dict) -> list[dict]:
        self.row = row
        return [{"role": "user", "content": row["prompt"]}]

    def step(self, text: str) -> Reply:
        calls = parse_tool_calls(text)
        if not calls:
            return self.answer(text)
        by_name = {f.__name__: f for f in self.tools}
        messages, errors = [], 0
        for call in calls:
            content, ok = call_tool(by_name, call, self.tool_timeout)
            errors += not ok
            name = call["name"] if isinstance(call, dict) else "error"
            messages.append({"role": "tool", "name": name, "content": content})
        return Reply(messages=messages, tool_calls=len(calls), tool_errors=errors)

    def answer(self, text: str) -> Reply:
        raise NotImplementedError("a ToolEnv subclass judges the final answer in answer(text)")
