"""Multi-turn episodes (grpo/envs): the trained-on tokens are the sampled ones, environment tokens
carry no loss, and the trainer scores exactly what the sampler saw.

The tiny random model's turns end at EOS or at '=' (both passed as end-of-turn tokens), so most
episodes run several turns; the environment answers each turn with a few characters of its own.
"""

from __future__ import annotations

import pytest
import torch

from grpo.envs import EpisodeLimits, Reply, run_episodes
from grpo.envs.episodes import render_between_turns
from grpo.models.loading import load_model
from grpo.models.logprobs import token_stats
from grpo.parallel.world import World
from grpo.rollout import HFEngine, SamplingSettings
from grpo.train.step import build_batch


class Countdown:
    """Answers every turn with '+N=' (N its turn number); ends after 3 turns with reward = the
    number of '1' characters the model wrote; each turn's own reward is its count of '1'."""

    def reset(self, row):
        self.turn, self.ones = 0, 0
        return [{"role": "user", "content": row["prompt"]}]

    def step(self, text):
        self.turn += 1
        self.ones += text.count("1")
        if self.turn >= 3:
            return Reply(done=True, reward=float(self.ones), turn_reward=float(text.count("1")))
        return Reply(messages=[{"role": "user", "content": f"+{self.turn}="}], reward=float(self.ones),
                     turn_reward=float(text.count("1")))


class Recording:
    """An engine that remembers every call's input rows and what it sampled."""

    def __init__(self):
        self.inner, self.calls = HFEngine(), []

    def generate(self, model, ids, mask, sampling, generator=None):
        roll = self.inner.generate(model, ids, mask, sampling, generator)
        self.calls.append(([r[m.bool()].tolist() for r, m in zip(ids, mask)],
                           [c[:n].tolist() for c, n in zip(roll.completion_ids, roll.lengths.tolist())]))
        return roll


@pytest.fixture(scope="module")
def episodes(tiny_model_dir):
    model, tok = load_model(tiny_model_dir, torch.device("cpu"))
    model.eval()
    eq = tok.convert_tokens_to_ids("=")
    sampling = SamplingSettings(max_new_tokens=5, eos_ids=(tok.eos_token_id, eq), pad_id=tok.pad_token_id)
    rows = [{"prompt": p} for p in ["1+2=", "33+44=", "5+67="] for _ in range(4)]
    gens = [torch.Generator().manual_seed(100 + i) for i in range(len(rows))]
    engine = Recording()
    roll, eps, times = run_episodes(engine, model, tok, [Countdown() for _ in rows], rows, sampling, gens,
                                    EpisodeLimits(max_turns=3, max_tokens=40))
    return model, tok, roll, eps, engine, sampling, rows


def test_trajectory_tokens_are_the_sampled_ones_and_the_environments(episodes):
    model, tok, roll, eps, engine, *_ = episodes
    assert max(e.turns for e in eps) >= 2, "the test needs multi-turn episodes"
    # each episode's turns, in order, from the engine's calls (rows are the episodes still running)
    turns = {i: [] for i in range(len(eps))}
    for inputs, outputs in engine.calls:
        running = [i for i in turns if len(turns[i]) < eps[i].turns][:len(inputs)]
        for i, ctx, out in zip(running, inputs, outputs):
            done = sum(len(t) for t, _ in turns[i])
            # the context of this turn is the prompt and every token so far, as they were: nothing re-tokenised
            assert ctx == eps[i].prompt + eps[i].ids[:len(ctx) - len(eps[i].prompt)]
            turns[i].append((out, done))
    for i, e in enumerate(eps):
        n = int(roll.lengths[i])
        ids = roll.completion_ids[i, :n].tolist()
        sampled = roll.sampled[i, :n].tolist()
        policy = [t for t, s in zip(ids, sampled) if s]
        assert policy == [t for out, _ in turns[i] for t in out]           # trained-on == sampled
        env_tokens = [t for t, s in zip(ids, sampled) if not s]
        between = [tok(f"+{k}=", add_special_tokens=False)["input_ids"] for k in range(1, e.turns)]
        assert env_tokens == [t for b in between for t in b]                 # the environment's, rendered
        assert torch.all(roll.logprobs[i, :n][~roll.sampled[i, :n]] == 0)
        # the episode ends on a model turn here: truncated exactly when that turn was cut (no end-of-turn token)
        assert e.truncated == (ids[-1] not in (tok.eos_token_id, tok.convert_tokens_to_ids("="))), i


def test_the_trainer_scores_what_the_sampler_saw(episodes):
    model, tok, roll, *_ = episodes
    with torch.no_grad():
        st = token_stats(model, roll, temperature=1.0, chunk=64)
    m = roll.loss_tokens
    torch.testing.assert_close(st.logp[m], roll.logprobs[m], atol=1e-4, rtol=0)


@pytest.mark.parametrize("credit", ["uniform", "mean", "discounted"])
def test_no_environment_token_carries_loss(episodes, tiny_config, credit):
    model, tok, roll, eps, engine, sampling, rows = episodes
    cfg = tiny_config(prompts_per_step=3, group_size=4, token_credit=credit, token_norm=credit == "uniform")
    rewards = torch.tensor([e.reward or 0.0 for e in eps]).view(3, 4)
    batch = build_batch(cfg, rows[::4], roll, [""] * len(eps), rewards, {}, World(), 0)
    env = roll.completion_mask & ~roll.sampled
    assert env.any()
    assert not (batch.loss_mask & env).any()
    assert torch.all(batch.adv.normalized[env] == 0)
    # the advantages of the sampled tokens are those of the same rewards over sampled-only completions
    from grpo.algo.advantages import estimator
    counts = roll.loss_tokens.sum(1)
    alone = estimator(cfg.advantage_estimator)(rewards, counts, int(counts.max()), cfg, history=[])
    torch.testing.assert_close(batch.adv.normalized[roll.loss_tokens], alone.normalized[alone.mask])


def test_turn_advantages_by_hand():
    from grpo.algo.advantages import turn_advantages
    nan = float("nan")
    # one group of 3 episodes, 2 turns; episode 0 ended after turn 1
    r = torch.tensor([[[1.0, nan], [0.0, 1.0], [0.0, 0.0]]])
    # turn 1: rewards 1, 0, 0: mean 1/3, population std sqrt((4/9 + 1/9 + 1/9) / 3) = sqrt(2)/3 = 0.47140
    #   z = (2/3) / 0.47140 = 1.41421, (-1/3) / 0.47140 = -0.70711 (twice)
    # turn 2: episodes 1 and 2 only: rewards 1, 0: mean 0.5, std 0.5, z = 1, -1; episode 0 gets 0
    expect = torch.tensor([[[1.41421, 0.0], [-0.70711, 1.0], [-0.70711, -1.0]]])
    torch.testing.assert_close(turn_advantages(r), expect, atol=1e-4, rtol=0)
    # equal rewards at a turn, or a single rewarded episode there: 0, never NaN
    r = torch.tensor([[[2.0, 5.0], [2.0, nan], [2.0, nan]]])
    assert torch.equal(turn_advantages(r), torch.zeros(1, 3, 2))


def test_turn_credit_adds_each_turns_group_relative_advantage(episodes, tiny_config):
    """env_credit=turn: a sampled token's advantage is the episode's plus weight x its turn's z-score
    among the group's episodes that reached the turn, checked against a slow loop; environment
    tokens still carry nothing."""
    import statistics
    model, tok, roll, eps, engine, sampling, rows = episodes
    rewards = torch.tensor([e.reward or 0.0 for e in eps]).view(3, 4)
    plain = build_batch(tiny_config(prompts_per_step=3, group_size=4, env="retry"), rows[::4], roll,
                        [""] * len(eps), rewards, {}, World(), 0)
    turned = build_batch(tiny_config(prompts_per_step=3, group_size=4, env="retry", env_credit="turn",
                                     env_turn_weight=0.5), rows[::4], roll, [""] * len(eps), rewards, {}, World(), 0)
    extra = turned.adv.normalized - plain.adv.normalized
    checked = 0
    for i, e in enumerate(eps):
        group = eps[i // 4 * 4:i // 4 * 4 + 4]
        for k in range(1, e.turns + 1):
            at_k = [g.turn_rewards[k - 1] for g in group if g.turns >= k and g.turn_rewards[k - 1] is not None]
            mean, std = statistics.mean(at_k), statistics.pstdev(at_k)
            z = 0.0 if max(at_k) == min(at_k) else (e.turn_rewards[k - 1] - mean) / (std + 1e-8)
            cols = [t for t, turn in enumerate(e.turn_of) if turn == k]
            torch.testing.assert_close(extra[i, cols], torch.full((len(cols),), 0.5 * z), atol=1e-5, rtol=0)
            checked += len(cols) * (z != 0)
    assert checked > 0, "the test needs turns whose rewards differ within a group"
    env = roll.completion_mask & ~roll.sampled
    assert torch.all(turned.adv.normalized[env] == 0) and not (turned.loss_mask & env).any()


def test_between_turns_through_a_chat_template(tiny_model_dir):
    """With a chat template the environment's message is rendered as the template writes it after
    the assistant's turn, less the end-of-turn token the model sampled itself."""
    _, tok = load_model(tiny_model_dir, torch.device("cpu"))
    tok.chat_template = ("{% for m in messages %}{{ m['role'][0] }}{{ m['content'] }}<eos>{% endfor %}"
                         "{% if add_generation_prompt %}a{% endif %}")
    text = render_between_turns(tok, [{"role": "user", "content": "1+2="}], [{"role": "tool", "content": "3"}],
                                eos_text="<eos>")
    assert text == "t3<eos>a"


ENV_FILE = '''
from grpo.envs import Reply

class Echo:
    """Ends each episode after its first turn or second turn; reward 1 for a turn with a '1'."""
    def reset(self, row):
        self.turn = 0
        return [{"role": "user", "content": row["prompt"]}]

    def step(self, text):
        self.turn += 1
        if "1" in text or self.turn >= 2:
            return Reply(done=True, reward=float("1" in text))
        return Reply(messages=[{"role": "user", "content": "="}], reward=0.0)

class NoStep:
    def reset(self, row):
        return []
'''


def test_a_run_trains_on_episodes_of_an_environment_file(tiny_config, tmp_path):
    import json
    from grpo.train import train
    (tmp_path / "myenv.py").write_text(ENV_FILE)
    cfg = tiny_config(env=f"{tmp_path / 'myenv.py'}:Echo", eval_size=4, log_completions=8)
    summary = train(cfg, log=lambda *a: None)
    rows = [json.loads(line) for line in open(f"{cfg.output_dir}/metrics.jsonl")]
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        assert r["env/turns_mean"] >= 1 and "reward/env/mean" in r and r["time/environment"] >= 0
    evals = [json.loads(line) for line in open(f"{cfg.output_dir}/eval.jsonl")]
    assert {"success", "turns"} <= set(evals[0]) and summary is not None


@pytest.mark.parametrize("spec, message", [
    ("nothere.py:Echo", "env: cannot import 'nothere.py:Echo': file nothere.py not found"),
    ("{dir}/myenv.py:Ech", "env: {dir}/myenv.py has no Class 'Ech'; did you mean 'Echo'?"),
    ("{dir}/myenv.py:NoStep", "env: NoStep has no step method"),
    ("{dir}/myenv.py:Reply", "env: Reply has no reset or step method"),
])
def test_a_bad_env_is_a_one_line_error(tiny_config, tmp_path, spec, message):
    from grpo.errors import ConfigError
    from grpo.train import train
    (tmp_path / "myenv.py").write_text(ENV_FILE)
    cfg = tiny_config(env=spec.format(dir=tmp_path))
    with pytest.raises(ConfigError) as e:
        train(cfg, log=lambda *a: None)
    assert message.format(dir=tmp_path) in str(e.value)


def test_retry_shows_the_problem_again_until_right_or_out_of_turns():
    from types import SimpleNamespace
    from grpo.data.tasks import get_task
    from grpo.envs.load import load_env
    make = load_env("retry", get_task("arithmetic"), SimpleNamespace(env_max_turns=3))
    env = make()
    assert env.reset({"prompt": "2+3=", "answer": "5"}) == [{"role": "user", "content": "2+3="}]
    assert env.step("6") == Reply(messages=[{"role": "user", "content": " 2+3="}], reward=0.0, turn_reward=0.0)
    assert env.step("5") == Reply(done=True, reward=1.0, turn_reward=1.0)
    env = make()
    env.reset({"prompt": "2+3=", "answer": "5"})
    assert [env.step("4").done for _ in range(3)] == [False, False, True]


def test_an_unknown_env_name_lists_the_built_ins(tiny_config):
    from grpo.errors import ConfigError
    from grpo.train import train
    with pytest.raises(ConfigError, match="env: unknown environment 'retri'; built-in: retry"):
        train(tiny_config(env="retri"), log=lambda *a: None)


def test_an_episode_samples_the_same_whatever_shares_its_calls(tiny_model_dir):
    """Each turn draws from a generator seeded by the episode's own: episode 0 run alone gives the
    tokens it gives among eleven others (whose turns end at other times)."""
    model, tok = load_model(tiny_model_dir, torch.device("cpu"))
    model.eval()
    eq = tok.convert_tokens_to_ids("=")
    sampling = SamplingSettings(max_new_tokens=5, eos_ids=(tok.eos_token_id, eq), pad_id=tok.pad_token_id)
    rows = [{"prompt": p} for p in ["1+2=", "33+44=", "5+67="] for _ in range(4)]

    def run(idx):
        gens = [torch.Generator().manual_seed(100 + i) for i in idx]
        _, eps, _ = run_episodes(HFEngine(), model, tok, [Countdown() for _ in idx], [rows[i] for i in idx], sampling,
                                 gens, EpisodeLimits(max_turns=3, max_tokens=40))
        return eps

    together = run(list(range(12)))
    assert max(e.turns for e in together) >= 2
    for i in (0, 5, 11):
        alone = run([i])[0]
        assert alone.ids == together[i].ids and alone.sampled == together[i].sampled, i


class Slow(Countdown):
    """Countdown whose steps sleep; one episode's step can hang or raise."""
    hang_on = raise_on = None
    pause = 0.2

    def reset(self, row):
        self.prompt = row["prompt"]
        return super().reset(row)

    def step(self, text):
        import time
        if self.prompt == self.hang_on:
            time.sleep(30)
        if self.prompt == self.raise_on:
            raise KeyError("no such board")
        time.sleep(self.pause)
        return super().step(text)


def _slow_run(tiny_model_dir, limits, **kind):
    model, tok = load_model(tiny_model_dir, torch.device("cpu"))
    model.eval()
    sampling = SamplingSettings(max_new_tokens=3, eos_ids=(tok.eos_token_id,), pad_id=tok.pad_token_id)
    rows = [{"prompt": f"{i}+1="} for i in range(8)]
    envs = []
    for _ in rows:
        env = Slow()
        for k, v in kind.items():
            setattr(env, k, v)
        envs.append(env)
    return run_episodes(HFEngine(), model, tok, envs, rows, sampling, [torch.Generator().manual_seed(i) for i in
                                                                        range(8)], limits)


@pytest.mark.slow
def test_environment_steps_of_a_turn_run_at_once(tiny_model_dir):
    """Eight episodes whose steps take 0.2 s each: with 8 workers a turn's environment time is about
    one step's, with 1 worker about eight; the episodes are the same either way."""
    _, together, times8 = _slow_run(tiny_model_dir, EpisodeLimits(max_turns=1, max_tokens=8, workers=8))
    _, alone, times1 = _slow_run(tiny_model_dir, EpisodeLimits(max_turns=1, max_tokens=8, workers=1))
    assert [e.ids for e in together] == [e.ids for e in alone]
    assert times1["environment"] >= 8 * 0.2 and times8["environment"] < 4 * 0.2


@pytest.mark.slow
def test_an_environment_that_hangs_or_raises_stops_with_one_line(tiny_model_dir):
    import time
    from grpo.errors import EnvironmentFailure
    t = time.perf_counter()
    with pytest.raises(EnvironmentFailure) as e:
        _slow_run(tiny_model_dir, EpisodeLimits(max_turns=1, max_tokens=8, timeout=1.0), hang_on="3+1=")
    assert time.perf_counter() - t < 15
    assert str(e.value) == "environment Slow.step timed out after 1 s (env_timeout) on episode 3 (prompt '3+1=', turn 1)"
    with pytest.raises(EnvironmentFailure) as e:
        _slow_run(tiny_model_dir, EpisodeLimits(max_turns=1, max_tokens=8), raise_on="5+1=", pause=0.0)
    assert str(e.value) == ("environment Slow.step raised KeyError: 'no such board' on episode 5 (prompt '5+1=', "
                            "turn 1)")


def test_reward_functions_add_to_the_environments_reward(tiny_config, tmp_path):
    """--reward with --env: each episode's reward is the environment's plus the weighted reward
    functions' scores of its last model turn."""
    import json
    from grpo.train import train
    (tmp_path / "myenv.py").write_text(ENV_FILE)
    (tmp_path / "score.py").write_text("def has_two(prompts, completions, **kw):\n"
                                       "    return [float('2' in c) for c in completions]\n")
    cfg = tiny_config(env=f"{tmp_path / 'myenv.py'}:Echo", eval_size=0, max_steps=3, reward_workers=0,
                      reward=[f"{tmp_path / 'score.py'}:has_two:0.5"], log_completions=64)
    train(cfg, log=lambda *a: None)
    rows = [json.loads(line) for line in open(f"{cfg.output_dir}/metrics.jsonl")]
    for r in rows:
        assert r["reward/mean"] == pytest.approx(r["reward/env/mean"] + 0.5 * r["reward/has_two/mean"], abs=1e-5)
    assert any(r["reward/has_two/mean"] > 0 for r in rows) and all("reward/env/mean" in r for r in rows)


class Scripted:
    """An engine that 'samples' `turn` (token ids) on every row of every call, cut at max_new_tokens."""

    def __init__(self, turn):
        self.turn = list(turn)

    def generate(self, model, ids, mask, sampling, seeds=None):
        from grpo.rollout.base import Rollout
        toks = self.turn[:sampling.max_new_tokens]
        comp = torch.tensor([toks] * ids.shape[0])
        return Rollout(prompt_ids=ids, prompt_mask=mask, completion_ids=comp,
                       completion_mask=torch.ones_like(comp, dtype=torch.bool), logprobs=torch.zeros(comp.shape),
                       lengths=torch.full((ids.shape[0],), len(toks)),
                       truncated=torch.tensor([toks[-1] not in sampling.eos_ids] * ids.shape[0]))


class Echo:
    """Records the text of each turn; answers with `answer` (or ends after `turns` turns)."""

    def __init__(self, answer="+1=", turns=2):
        self.seen, self.answer, self.turns = [], answer, turns

    def reset(self, row):
        return [{"role": "user", "content": row["prompt"]}]

    def step(self, text):
        self.seen.append(text)
        if len(self.seen) >= self.turns:
            return Reply(done=True, reward=1.0)
        return Reply(messages=[{"role": "user", "content": self.answer}])


def test_step_gets_the_turn_with_its_special_tokens_less_the_closing_one(tiny_model_dir):
    """A special token the model sampled inside its turn reaches step() as its text (it is trained
    on); only the end-of-turn token that closed the turn is left out of the text."""
    tok = demo_tokenizer(tiny_model_dir)
    digits = tok("12", add_special_tokens=False)["input_ids"]
    turn = digits + [tok.unk_token_id] + digits + [tok.eos_token_id]
    env = Echo(turns=1)
    sampling = SamplingSettings(max_new_tokens=10, eos_ids=(tok.eos_token_id,), pad_id=tok.pad_token_id)
    roll, eps, _ = run_episodes(Scripted(turn), None, tok, [env], [{"prompt": "1+2="}], sampling, None,
                                EpisodeLimits(max_turns=2, max_tokens=40))
    assert env.seen == [f"12{tok.unk_token}12"]
    assert roll.completion_ids[0, :int(roll.lengths[0])].tolist() == turn        # every sampled token trained on
    assert roll.loss_tokens[0, :len(turn)].all()


def test_an_environment_message_cut_by_the_budget_is_marked_unseen(tiny_model_dir):
    from grpo.train.rollouts import conversation_text
    tok = demo_tokenizer(tiny_model_dir)
    turn = tok("12", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    env = Echo(answer="9" * 30, turns=3)
    sampling = SamplingSettings(max_new_tokens=10, eos_ids=(tok.eos_token_id,), pad_id=tok.pad_token_id)
    roll, eps, _ = run_episodes(Scripted(turn), None, tok, [env], [{"prompt": "1+2="}], sampling, None,
                                EpisodeLimits(max_turns=3, max_tokens=20))
    e = eps[0]
    assert e.done and e.truncated and e.turns == 1 and e.ids == turn               # the answer took no token
    assert e.messages[-1] == {"role": "user", "content": "9" * 30, "unseen": True}
    text = conversation_text(e.messages)
    assert text.messages[-1]["unseen"] is True and text.endswith("user (unseen): " + "9" * 30)
    # with room for it, the same answer is read and not marked
    roll, eps, _ = run_episodes(Scripted(turn), None, tok, [Echo(answer="9" * 30, turns=2)], [{"prompt": "1+2="}],
                                sampling, None, EpisodeLimits(max_turns=3, max_tokens=60))
    assert "unseen" not in eps[0].messages[2] and eps[0].turns == 2


def demo_tokenizer(path):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(path)
