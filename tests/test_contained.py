"""Reward functions run contained (grpo/rewards/contained.py): a call that hangs, a worker that exits
or is killed, a function that raises or returns a non-number, each named with its sample; the run
stops or scores the completion None (`reward_failure`); workers are replaced, die with the run and
never see the terminal's Ctrl-C; scores equal the in-process ones."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import types

import pytest
import torch

from grpo.config import TrainConfig
from grpo.rewards import RewardError, build_reward_fns, score
from grpo.rewards.contained import Contained, default_workers

USER = textwrap.dedent('''
    import os, subprocess, time

    def length(prompts, completions, answer, **_):
        return [len(c) + 0.5 * len(str(a)) for c, a in zip(completions, answer)]

    def parity(prompts, completions, **_):
        return [None if c.endswith("9") else float(len(c) % 2) for c in completions]

    def hang(prompts, completions, **_):
        if "3" in completions[0]:
            time.sleep(1000)
        return [1.0] * len(completions)

    def exits(prompts, completions, **_):
        if "5" in completions[0]:
            os._exit(3)
        return [0.5] * len(completions)

    def segfault(prompts, completions, **_):
        import ctypes
        ctypes.string_at(0)

    def killed(prompts, completions, **_):
        os.kill(os.getpid(), 9)

    def raises(prompts, completions, **_):
        raise ValueError("no score for " + completions[0])

    def text(prompts, completions, **_):
        return ["high"] * len(completions)

    def quits(prompts, completions, **_):
        raise SystemExit(4)

    def spawns(prompts, completions, **_):
        with open(os.environ["SPAWN_PID_FILE"], "w") as f:
            p = subprocess.Popen(["sleep", "1000"])
            f.write(str(p.pid))
        p.wait()
        return [1.0]

    def pgid(prompts, completions, **_):
        return [float(os.getpgid(0))]
''')

TASK = types.SimpleNamespace(rewards={}, name="t")
PROMPTS = [f"{i}+{i}=" for i in range(8)]
COMPLETIONS = [str(3 * i) + "x" * (i % 3) for i in range(8)]      # '0', '3x', '6xx', '9', '12x', '15xx', ...
COLUMNS = {"answer": [2 * i for i in range(8)]}


@pytest.fixture
def user_file(tmp_path, monkeypatch):
    (tmp_path / "user_rewards.py").write_text(USER)
    monkeypatch.chdir(tmp_path)
    return "user_rewards.py"


@pytest.fixture
def pools():
    made = []

    def build(*names, workers=2, timeout=2.0, failure="stop"):
        cfg = TrainConfig(reward=[f"user_rewards.py:{n}" for n in names], reward_workers=workers,
                          reward_timeout=timeout, reward_failure=failure)
        fns = build_reward_fns(cfg, TASK)
        made.append(fns)
        return fns

    yield build
    for fns in made:
        fns.close()


def test_scores_equal_the_in_process_ones(user_file, pools):
    contained = pools("length", "parity:-2", workers=3)
    plain = pools("length", "parity:-2", workers=0)
    assert all(isinstance(fn, Contained) for fn, _ in contained.values())
    assert not any(isinstance(fn, Contained) for fn, _ in plain.values())
    a, b = score(contained, PROMPTS, COMPLETIONS, COLUMNS), score(plain, PROMPTS, COMPLETIONS, COLUMNS)
    for x, y in zip(a, b):
        if isinstance(x, dict):
            assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
        else:
            assert torch.equal(x, y)
    # length: len(c) + 0.5 len(str(a)); parity: len % 2 weighted -2, None where c ends with 7
    expected = [len(c) + 0.5 * len(str(2 * i)) - 2 * (0 if c.endswith("9") else len(c) % 2)
                for i, c in enumerate(COMPLETIONS)]
    assert a[0].tolist() == pytest.approx(expected)
    assert a[2]["parity"].tolist() == [c.endswith("9") for c in COMPLETIONS] and not a[3]["parity"].any()


@pytest.mark.slow
def test_a_hang_stops_within_the_timeout_and_names_the_sample(user_file, pools):
    fns = pools("hang", timeout=1.5)
    t0 = time.monotonic()
    with pytest.raises(RewardError) as e:
        score(fns, PROMPTS, COMPLETIONS, COLUMNS)
    took = time.monotonic() - t0
    assert 1.5 <= took < 1.5 + 3.0, took
    msg = str(e.value)
    first = next(i for i, c in enumerate(COMPLETIONS) if "3" in c)
    assert (f"reward function 'hang' timed out after 1.5 s (reward_timeout) on sample {first} "
            f"(prompt {PROMPTS[first]!r}, completion {COMPLETIONS[first]!r})") in msg, msg
    assert "--reward-failure unscorable" in msg


@pytest.mark.slow
def test_a_hang_scored_unscorable_and_the_pool_goes_on(user_file, pools):
    fns = pools("hang", timeout=1.0, failure="unscorable")
    total, _, _, failed = score(fns, PROMPTS, COMPLETIONS, COLUMNS)
    hung = ["3" in c for c in COMPLETIONS]
    assert failed["hang"].tolist() == hung and sum(hung) >= 1
    assert total.tolist() == [0.0 if h else 1.0 for h in hung]
    assert fns.pool.replaced == sum(hung)
    total, _, _, failed = score(fns, ["p", "q"], ["1", "2"], {"answer": [1, 2]})     # replacements serve
    assert total.tolist() == [1.0, 1.0] and not failed["hang"].any()


@pytest.mark.parametrize("fn, what", [
    ("exits", "ended its worker process (exit code 3)"),
    ("segfault", "ended its worker process (killed by signal 11, SIGSEGV)"),
    ("killed", "ended its worker process (killed by signal 9, SIGKILL)"),
    ("raises", "raised ValueError: no score for"),
    ("quits", "raised SystemExit: 4"),
    ("text", "returned 'high' (expected a finite number or None)"),
])
def test_each_failure_is_named(user_file, pools, fn, what):
    fns = pools(fn)
    with pytest.raises(RewardError) as e:
        score(fns, PROMPTS, COMPLETIONS, COLUMNS)
    msg = str(e.value)
    assert msg.startswith(f"reward function {fn!r} {what}") and "on sample " in msg and "prompt '" in msg, msg


def test_exits_unscorable_counts_only_the_culprits(user_file, pools):
    fns = pools("exits", "length", failure="unscorable")
    total, per_fn, _, failed = score(fns, PROMPTS, COMPLETIONS, COLUMNS)
    culprits = ["5" in c for c in COMPLETIONS]
    assert failed["exits"].tolist() == culprits and not failed["length"].any()
    assert per_fn["exits"].tolist() == [0.0 if c else 0.5 for c in culprits]


@pytest.mark.slow
def test_a_timeout_kills_what_the_function_started(user_file, pools, tmp_path, monkeypatch):
    pid_file = tmp_path / "spawned.pid"
    monkeypatch.setenv("SPAWN_PID_FILE", str(pid_file))
    fns = pools("spawns", timeout=1.0, workers=1)
    with pytest.raises(RewardError, match="timed out after 1 s"):
        score(fns, ["p"], ["c"], {})
    pid = int(pid_file.read_text())
    assert _gone([pid])


def _gone(pids, wait: float = 5.0) -> bool:
    """Every pid has ended (a zombie waiting for its reaper counts as ended)."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        alive = []
        for p in pids:
            try:
                state = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if state != "Z":
                alive.append(p)
        if not alive:
            return True
        time.sleep(0.05)
    return False


def test_workers_live_in_their_own_session(user_file, pools):
    fns = pools("pgid", workers=1)
    total, *_ = score(fns, ["p"], ["c"], {})
    assert int(total.item()) != os.getpgid(0)            # the terminal's Ctrl-C goes to our group only
    assert int(total.item()) == fns.pool.workers[0].proc.pid


@pytest.mark.slow
def test_workers_die_with_the_process_that_started_them(user_file, tmp_path):
    code = textwrap.dedent('''
        import os, sys, types
        from grpo.config import TrainConfig
        from grpo.rewards import build_reward_fns, score
        fns = build_reward_fns(TrainConfig(reward=["user_rewards.py:length"], reward_workers=2),
                               types.SimpleNamespace(rewards={}, name="t"))
        score(fns, ["p"], ["c"], {"answer": [1]})
        print(" ".join(str(w.proc.pid) for w in fns.pool.workers), flush=True)
        os._exit(0)                         # no close(), no atexit: as if killed
    ''')
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    pids = [int(p) for p in out.stdout.split()]
    assert len(pids) == 2, out.stderr
    assert _gone(pids)


def test_close_stops_every_worker(user_file, pools):
    fns = pools("length", workers=2)
    score(fns, ["p"], ["c"], {"answer": [1]})
    procs = [w.proc for w in fns.pool.workers]
    fns.close()
    assert all(p.poll() is not None for p in procs)


@pytest.mark.slow
def test_the_worker_count_setting(user_file, pools):
    assert pools("length", workers=3).pool.size == 3
    assert 1 <= default_workers() <= 8
    assert pools("length", workers=None).pool.size == default_workers()
    assert build_reward_fns(TrainConfig(reward=["exact_match"]), types.SimpleNamespace(rewards={}, name="t")).pool is None


def test_the_worker_stays_free_of_torch():
    out = subprocess.run([sys.executable, "-c", "import sys, grpo.rewards.worker, grpo.rewards.user; "
                          "print('torch' in sys.modules)"], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr


def test_in_process_failures_follow_the_setting_too(user_file, pools):
    fns = pools("raises", "length", workers=0, failure="unscorable")
    total, per_fn, _, failed = score(fns, PROMPTS[:3], COMPLETIONS[:3], {"answer": COLUMNS["answer"][:3]})
    assert failed["raises"].all() and not failed["length"].any()
    assert total.tolist() == per_fn["length"].tolist()
    with pytest.raises(RewardError, match=r"'raises' raised ValueError: no score for 0 on sample 0"):
        score(pools("raises", workers=0), PROMPTS, COMPLETIONS, COLUMNS)


def test_sigint_to_the_run_leaves_workers_alone(user_file, pools):
    fns = pools("length", workers=1)
    score(fns, ["p"], ["c"], {"answer": [1]})
    w = fns.pool.workers[0]
    os.kill(w.proc.pid, signal.SIGINT)               # as the terminal would send it, were it in our group
    time.sleep(0.2)
    assert w.proc.poll() is None
    total, *_ = score(fns, ["p"], ["cc"], {"answer": [1]})
    assert total.tolist() == [2.5]
