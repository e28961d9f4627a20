"""RewardModel: a tiny random sequence classifier with its own byte-level tokenizer (nothing downloaded)."""

from __future__ import annotations

import pytest
import torch

from grpo.data import tasks
from grpo.config import ConfigError, TrainConfig
from grpo.rewards.reward_model import RewardModel
from grpo.rewards import build_reward_fns, score

CHAT = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"

PROMPTS = ["1+2=", "What is 12+30?", [{"role": "user", "content": "7+8="}], "9+9=", "0+0=", "a"]
COMPLETIONS = ["3", "The answer is 42, because 12 + 30 = 42.", "15", "", "zero plus zero is zero", "bcd"]


def byte_tokenizer(pad: bool, chat: bool):
    """A byte-level BPE tokenizer (unlike the demo's character WordLevel one), trained in milliseconds."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    special = ["<|end|>", "<|pad|>"] if pad else ["<|end|>"]
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=special, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["1+2=3 What is 12+30? The answer is 42", "user assistant zero plus"], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|end|>",
                                   pad_token="<|pad|>" if pad else None)
    if chat:
        fast.chat_template = CHAT
    return fast


def save_model(path, arch: str, num_labels: int = 1, *, pad: bool = False, chat: bool = False, lm_head=False):
    from transformers import GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel, LlamaConfig, \
        LlamaForSequenceClassification

    tok = byte_tokenizer(pad, chat)
    torch.manual_seed(0)
    if arch == "gpt2":          # absolute position embeddings: wrong padding would change the scores
        config = GPT2Config(vocab_size=len(tok), n_embd=16, n_layer=2, n_head=2, n_positions=128,
                            num_labels=num_labels, eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id)
        model = (GPT2LMHeadModel if lm_head else GPT2ForSequenceClassification)(config)
    else:
        config = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                             num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
                             num_labels=num_labels, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        model = LlamaForSequenceClassification(config)
    with torch.no_grad():       # a random head this small gives near-equal scores; spread them out
        for name, p in model.named_parameters():
            if name.startswith("score"):
                p.normal_(0, 5.0)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    """GPT-2 classifier; tokenizer without pad token or chat template (padding falls back to EOS)."""
    return save_model(tmp_path_factory.mktemp("rm-gpt2"), "gpt2")


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    """Llama classifier; tokenizer with its own pad token and a chat template."""
    return save_model(tmp_path_factory.mktemp("rm-llama"), "llama", pad=True, chat=True)


@pytest.mark.slow
@pytest.mark.parametrize("which", ["gpt2_dir", "llama_dir"])
def test_deterministic_and_batched_equals_one_by_one(which, request):
    path = request.getfixturevalue(which)
    batched, single = RewardModel(path, "cpu", batch_size=4), RewardModel(path, "cpu", batch_size=1)
    a = batched(PROMPTS, COMPLETIONS, answer=["x"] * 6)     # extra columns are ignored
    assert len(a) == 6 and all(isinstance(v, float) for v in a)
    assert batched(PROMPTS, COMPLETIONS) == a                # same inputs, same scores
    assert single(PROMPTS, COMPLETIONS) == pytest.approx(a, abs=1e-5)
    assert len({round(v, 4) for v in a}) == 6                # the scores depend on the text
    assert batched(PROMPTS[::-1], COMPLETIONS[::-1]) == pytest.approx(a[::-1], abs=1e-5)


def test_plain_text_and_last_token_pooling(gpt2_dir):
    rm = RewardModel(gpt2_dir, "cpu", batch_size=8)
    assert not rm.chat and rm.texts(PROMPTS[:3], COMPLETIONS[:3]) == ["1+2=3", PROMPTS[1] + COMPLETIONS[1], "7+8=15"]
    # no pad token: EOS pads, and the model's pooling is told so
    assert rm.tokenizer.pad_token == "<|end|>" and rm.model.config.pad_token_id == rm.tokenizer.eos_token_id
    # by hand: the unpadded sequence through the model; the score is logits[:, 0] at the last token
    ids = rm.tokenizer("What is 12+30?The answer is 42, because 12 + 30 = 42.")["input_ids"]
    want = rm.model(torch.tensor([ids])).logits[0, 0].item()
    assert rm(PROMPTS, COMPLETIONS)[1] == pytest.approx(want, abs=1e-5)
    assert not any(p.requires_grad for p in rm.model.parameters()) and not rm.model.training


def test_chat_template_is_the_reward_models_own(llama_dir):
    rm = RewardModel(llama_dir, "cpu", batch_size=8)
    assert rm.chat and rm.model.config.pad_token_id == rm.tokenizer.convert_tokens_to_ids("<|pad|>")
    assert rm.texts(PROMPTS[:3], COMPLETIONS[:3])[2] == "<|user|>7+8=<|end|><|assistant|>15<|end|>"


def test_through_build_reward_fns_and_score(gpt2_dir):
    cfg = TrainConfig(reward=["exact_match"], reward_model=str(gpt2_dir), reward_model_weight=0.5,
                      reward_model_batch_size=3)
    fns = build_reward_fns(cfg, tasks.arithmetic(), "cpu")
    assert list(fns) == ["exact_match", "reward_model"]
    rm, w = fns["reward_model"]
    assert isinstance(rm, RewardModel) and w == 0.5 and rm.batch_size == 3
    total, per_fn, _, _ = score(fns, ["1+2=", "1+2="], ["3", "4"], {"answer": ["3", "3"]})
    assert total.tolist() == pytest.approx([1 + 0.5 * per_fn["reward_model"][0].item(),
                                            0.5 * per_fn["reward_model"][1].item()])


def test_two_labels_is_refused(tmp_path):
    path = save_model(tmp_path / "two", "gpt2", num_labels=2)
    with pytest.raises(ConfigError) as e:
        RewardModel(path, "cpu", 4)
    assert str(e.value) == (f"reward_model: {path} (GPT2ForSequenceClassification) has num_labels=2, but a reward "
                            "model must output a single score (num_labels=1)")


def test_causal_lm_without_score_head_is_refused(tmp_path):
    path = save_model(tmp_path / "lm", "gpt2", lm_head=True)
    with pytest.raises(ConfigError, match=r"has no trained score head \(missing score.weight\)"):
        RewardModel(path, "cpu", 4)


def test_bad_path(tmp_path):
    path = tmp_path / "nowhere"
    with pytest.raises(ConfigError) as e:
        RewardModel(path, "cpu", 4)
    assert str(e.value) == f"reward_model: cannot load a model config from {path}: no such file or folder"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match=r"^reward_model: cannot load a model config from .*empty: ValueError: Unrecognized model"):
        RewardModel(empty, "cpu", 4)


def test_missing_tokenizer_is_refused(tmp_path):
    path = save_model(tmp_path / "notok", "gpt2")
    for f in path.glob("tokenizer*"):
        f.unlink()
    with pytest.raises(ConfigError) as e:
        RewardModel(path, "cpu", 4)
    assert str(e.value) == (f"reward_model: cannot load the tokenizer from {path}: it has no vocabulary "
                            "(are the tokenizer files missing?)")


def test_training_with_a_reward_model_of_another_tokenizer(tiny_config, tmp_path):
    import json
    from grpo.train import train
    rm = save_model(tmp_path / "rm", "gpt2", pad=True, chat=True)
    cfg = tiny_config(reward_model=str(rm), reward_model_weight=0.5, max_steps=2, eval_size=0,
                      output_dir=str(tmp_path / "run"))
    train(cfg, log=lambda *a: None)
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    for r in rows:
        # the total is the weighted sum of the task's verifier and the reward model, each logged
        assert r["reward/mean"] == pytest.approx(r["reward/exact_match/mean"] + 0.5 * r["reward/reward_model/mean"],
                                                 abs=1e-4)
        assert r["reward/reward_model/std"] > 0
