"""Prompt formatting: chat template with a system message when the tokenizer has one, raw text otherwise."""

from __future__ import annotations

from grpo import demo
from grpo.data.prompts import encode_for_model, format_prompts

TEMPLATE = ("{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}"
            "{% if add_generation_prompt %}[assistant]{% endif %}")


def test_raw_text_without_a_template():
    tok = demo.build_tokenizer()
    assert format_prompts(tok, ["1+2="]) == ["1+2="]
    assert format_prompts(tok, ["1+2="], system_prompt="9") == ["9\n1+2="]
    # a conversation row on a template-less tokenizer: the contents, one per line
    assert format_prompts(tok, [[{"role": "user", "content": "1+"}, {"role": "user", "content": "2="}]]) == ["1+\n2="]


def test_chat_template_with_system_prompt_and_messages():
    tok = demo.build_tokenizer()
    tok.chat_template = TEMPLATE
    assert format_prompts(tok, ["1+2="]) == ["[user]1+2=[assistant]"]
    assert format_prompts(tok, ["1+2="], system_prompt="be brief") == ["[system]be brief[user]1+2=[assistant]"]
    msgs = [{"role": "system", "content": "mine"}, {"role": "user", "content": "3+4="}]
    # a row that brings its own system message keeps it
    assert format_prompts(tok, [msgs], system_prompt="other") == ["[system]mine[user]3+4=[assistant]"]
    assert format_prompts(tok, ["1+2="], chat_template=False) == ["1+2="]


def test_encode_left_pads_to_a_common_end():
    tok = demo.build_tokenizer()
    ids, mask = encode_for_model(tok, ["1+2=", "10+20="], "cpu")
    assert ids.shape == mask.shape == (2, 6)
    assert mask.tolist() == [[0, 0, 1, 1, 1, 1], [1] * 6]
    assert tok.decode(ids[0, 2:]) == "1+2="
