"""`grpo report`: the run folder as one self-contained HTML page, opened in headless Chromium, and PNG curves.

The browser tests need Debian's `chromium` (/usr/bin/chromium, or $CHROMIUM) and the `playwright`
package (installed by the `test` extra; it drives the system browser, nothing is downloaded).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from grpo.report import chart_series, read_run
from grpo.report.page import render
from grpo.report.run import ReportError

CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
TRICKY = "</script><b>bold?</b> & <img src=x onerror=alert(1)>"


def grpo(*args, cwd, timeout=600):
    return subprocess.run([sys.executable, "-m", "grpo", *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "GRPO_CACHE": str(Path(cwd) / "cache")})


@pytest.fixture(scope="module")
def run_dir(tiny_model_dir, tmp_path_factory):
    """A 3-step run (2 prompts x 4 completions logged per step, an evaluation every step), one of its
    logged completions replaced by text that would break a page that does not escape it."""
    root = tmp_path_factory.mktemp("report")
    out = root / "run"
    proc = grpo("train", "--model", tiny_model_dir, "--max-steps", "3", "--prompts-per-step", "2", "--group-size", "4",
                "--max-new-tokens", "6", "--eval-size", "8", "--eval-every", "1", "--device", "cpu",
                "--output-dir", out, cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = (out / "completions.jsonl").read_text().splitlines()
    first = json.loads(lines[-1])
    first["completion"] = TRICKY
    (out / "completions.jsonl").write_text("\n".join(lines[:-1] + [json.dumps(first)]) + "\n")
    return out


@pytest.fixture(scope="module")
def report(run_dir):
    proc = grpo("report", run_dir, "--png", cwd=run_dir.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir / "report.html", proc


@pytest.mark.slow
def test_report_writes_one_page_and_a_png_per_chart(report, run_dir):
    page, proc = report
    assert page.is_file() and "report:" in proc.stdout
    charts = chart_series(read_run(run_dir))
    pngs = sorted((run_dir / "report-png").glob("*.png"))
    assert sorted(p.stem for p in pngs) == sorted(c["id"] for c in charts)
    import matplotlib.image
    for p in pngs:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        h, w = matplotlib.image.imread(p).shape[:2]
        assert w > 400 and h > 200
    text = page.read_text()
    assert "<script src" not in text and "<link" not in text and "http://" not in text.replace(
        "http://www.w3.org/2000/svg", "")                          # nothing to fetch: the page is self-contained


def test_charts_group_the_metrics_and_keep_unknown_ones():
    from grpo.report.run import RunFiles
    rows = [{"step": s, "reward/mean": 0.1 * s, "reward/fmt/mean": 0.2, "reward/fmt/std": 0.0, "time/step": 1.0,
             "time/generate": 0.5, "time/tokens_per_sec": 30.0, "new/thing": s} for s in (1, 2)]
    evals = [{"step": 0, "when": "before", "mean_reward": 0.1, "pass/fmt": 0.0, "n": 8},
             {"step": 2, "when": "after", "mean_reward": 0.3, "pass/fmt": 0.5, "n": 8}]
    charts = {c["id"]: c for c in chart_series(RunFiles(Path("."), rows, evals))}
    assert [s["name"] for s in charts["reward"]["series"]] == ["reward/mean", "reward/fmt/mean"]
    assert [s["name"] for s in charts["time"]["series"]] == ["time/step", "time/generate"]   # throughput has its own
    assert [s["name"] for s in charts["throughput"]["series"]] == ["time/tokens_per_sec"]
    assert charts["eval"]["series"][0] == {"name": "mean_reward", "x": [0, 2], "y": [0.1, 0.3]}
    assert charts["other-new-thing"]["series"][0]["y"] == [1, 2]
    assert "kl" not in charts                                       # no data, no chart


@pytest.mark.slow
def test_bad_run_folders_name_the_file_and_line(tmp_path):
    with pytest.raises(ReportError, match="no metrics.jsonl"):
        read_run(tmp_path)
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\nnot json\n')
    with pytest.raises(ReportError, match=r"metrics.jsonl:2: not valid JSON"):
        read_run(tmp_path)
    proc = grpo("report", tmp_path / "nowhere", cwd=tmp_path)
    assert proc.returncode == 2 and "no such run folder" in proc.stderr and "Traceback" not in proc.stderr
    (tmp_path / "metrics.jsonl").write_bytes(b'{"step": 1}\n{"step": 2, "note": "\xff\xfe"}\n')
    with pytest.raises(ReportError, match=r"metrics.jsonl:2: not UTF-8 text \(byte 0xff\); the file is damaged"):
        read_run(tmp_path)
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n')
    (tmp_path / "config.yaml").write_text("preset: dr_grpo\nlr: [1e-4\nseed: 3\n")         # edited by hand, badly
    with pytest.raises(ReportError, match=r"config.yaml:3: not valid YAML"):
        read_run(tmp_path)
    proc = grpo("report", tmp_path, cwd=tmp_path)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert last.startswith(f"grpo report: error: {tmp_path / 'config.yaml'}:3: not valid YAML"), last


@pytest.mark.slow
def test_completion_text_cannot_end_the_data_script(run_dir):
    html = render(read_run(run_dir))
    assert TRICKY not in html and "<\\/script><b>bold?<\\/b>" in html


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium; or set $CHROMIUM)")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        yield b
        b.close()


@pytest.fixture
def page(browser, report):
    """The report open in Chromium, with every console error, page error and network request recorded."""
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = ctx.new_page()
    pg.problems, pg.requests = [], []
    pg.on("console", lambda m: pg.problems.append(f"console {m.type}: {m.text}") if m.type in ("error", "warning") else None)
    pg.on("pageerror", lambda e: pg.problems.append(f"page error: {e}"))
    pg.on("request", lambda r: pg.requests.append(r.url))
    pg.goto(report[0].as_uri())
    pg.wait_for_selector("body[data-ready='1']", timeout=20000)
    yield pg
    ctx.close()


@pytest.mark.slow
def test_page_draws_every_chart_without_errors_and_fetches_nothing(page, run_dir, tmp_path):
    charts = chart_series(read_run(run_dir))
    assert page.locator("figure.chart").count() == len(charts) >= 10
    for c in charts:
        fig = page.locator(f"figure.chart[data-chart='{c['id']}']")
        assert fig.locator("path.series").count() == len(c["series"]), c["id"]
        assert len(fig.locator("path.series").first.get_attribute("d")) > 10, c["id"]
    assert page.locator("figure.chart[data-chart='eval'] circle").count() == 4 * 3   # 4 evaluations x 3 series
    assert page.locator("#errors").is_hidden()
    shot = tmp_path / "report.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 20000
    assert page.problems == []
    assert [u for u in page.requests if not u.startswith("file://")] == []


@pytest.mark.slow
def test_completions_browser_by_step_by_prompt_and_sorted(page, run_dir):
    rows = [json.loads(x) for x in (run_dir / "completions.jsonl").read_text().splitlines()]
    last = max(r["step"] for r in rows)
    groups = page.locator("section.group")
    assert groups.count() == 2 and page.locator("#pick").input_value() == str(last)    # the latest step first
    assert groups.first.locator(".card").count() == 4                                  # G side by side
    assert page.get_by_text(TRICKY).count() == 1                                       # shown as text, not markup
    page.select_option("#pick", "1")
    assert [int(g) for g in groups.evaluate_all("els => els.map(e => e.dataset.step)")] == [1, 1]
    page.select_option("#sort", "advantage-desc")
    for i in range(groups.count()):
        adv = [float(a) for a in groups.nth(i).locator(".card").evaluate_all("els => els.map(e => e.dataset.advantage)")]
        assert adv == sorted(adv, reverse=True)
        want = sorted((r["advantage"] for r in rows if r["step"] == 1 and r["group"] == i), reverse=True)
        assert adv == pytest.approx(want)
    page.select_option("#sort", "reward-asc")
    rewards = [float(a) for a in groups.first.locator(".card").evaluate_all("els => els.map(e => e.dataset.reward)")]
    assert rewards == sorted(rewards)
    page.select_option("#mode", "prompt")
    prompt = rows[0]["prompt"]
    shown = groups.evaluate_all("els => els.map(e => e.querySelector('pre.prompt').textContent)")
    assert shown and set(shown) == {prompt}
    assert groups.count() == len({(r["step"], r["group"]) for r in rows if r["prompt"] == prompt})
    assert page.problems == []


@pytest.mark.slow
def test_hovering_a_chart_shows_the_values_at_that_step(page):
    fig = page.locator("figure.chart[data-chart='reward']")
    box = fig.locator("svg").bounding_box()
    page.mouse.move(box["x"] + box["width"] - 12, box["y"] + box["height"] / 2)
    tip = fig.locator(".tip")
    assert tip.is_visible() and "step 3" in tip.inner_text() and "reward/mean" in tip.inner_text()


@pytest.mark.slow
def test_png_without_matplotlib_names_the_extra(monkeypatch, run_dir, tmp_path):
    from grpo.report.png import write_pngs
    monkeypatch.setitem(sys.modules, "matplotlib", None)          # `import matplotlib` now fails
    with pytest.raises(ReportError, match=r"--png needs matplotlib: pip install 'grpo\[report\]'"):
        write_pngs(read_run(run_dir), tmp_path / "png")


@pytest.mark.slow
def test_an_episode_shows_as_its_conversation(browser, tiny_model_dir, tmp_path):
    """An environment run's completions are conversations: each turn its own block, the model's
    turns told from the environment's, in the order they came."""
    out = tmp_path / "env-run"
    proc = grpo("train", "--model", tiny_model_dir, "--env", "retry", "--env-max-turns", "3", "--max-steps", "2",
                "--prompts-per-step", "2", "--group-size", "4", "--max-new-tokens", "4", "--eval-size", "0",
                "--device", "cpu", "--output-dir", out, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(x) for x in (out / "completions.jsonl").read_text().splitlines()]
    assert all(r["messages"] and r["messages"][0]["role"] == "assistant" for r in rows)
    # the opening the environment's reset returned (the data row's prompt as the user's message)
    assert all(r["opening"] and r["opening"][-1] == {"role": "user", "content": r["prompt"]} for r in rows)
    assert any(len(r["messages"]) > 1 for r in rows), "the test needs an episode of more than one turn"
    proc = grpo("report", out, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = ctx.new_page()
    pg.goto((out / "report.html").as_uri())
    pg.wait_for_selector("body[data-ready='1']", timeout=20000)
    last = [r for r in rows if r["step"] == 2]
    shown = pg.locator("section.group .card .convo").evaluate_all(
        "els => els.map(c => [...c.querySelectorAll('.turn')].map(t => [t.dataset.role, t.className, "
        "t.querySelector('pre').textContent]))")
    want = sorted([[m["role"], "turn " + ("model" if m["role"] == "assistant" else "env"), m["content"]]
                   for m in r["messages"]] for r in last)
    assert sorted(shown) == want
    # each group shows the opening its episodes shared, in place of the data row's prompt
    opened = pg.locator("section.group > .opening").evaluate_all(
        "els => els.map(o => [...o.querySelectorAll('.turn')].map(t => [t.dataset.role, t.querySelector('pre').textContent]))")
    groups = {(r["step"], r["group"]): [[m["role"], m["content"]] for m in r["opening"]] for r in rows}
    assert sorted(opened) == sorted(v for (step, _), v in groups.items() if step == 2)
    ctx.close()


@pytest.mark.slow
def test_openings_that_differ_and_unseen_messages_show_on_each_card(browser, tmp_path):
    """Episodes of one group that opened differently show each its own opening on its card; an
    environment message the token budget kept from the model is shown greyed and labelled."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text(json.dumps({"step": 1, "reward/mean": 0.5}) + "\n")
    rows = [dict(step=1, group=0, prompt="p", completion="x", reward=float(i), rewards={}, advantage=0.0, length=3,
                 truncated=i == 1, opening=[{"role": "user", "content": f"open {i}"}],
                 messages=[{"role": "assistant", "content": "a"}] +
                          ([{"role": "user", "content": "too long", "unseen": True}] if i == 1 else []))
            for i in range(2)]
    (out / "completions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    proc = grpo("report", out, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ctx = browser.new_context()
    pg = ctx.new_page()
    pg.goto((out / "report.html").as_uri())
    pg.wait_for_selector("body[data-ready='1']", timeout=20000)
    assert pg.locator("section.group > .opening").count() == 0 and pg.locator("section.group > pre.prompt").count() == 1
    cards = pg.locator(".card").evaluate_all(
        "els => els.map(c => [c.querySelector('details.opening .turn pre').textContent, "
        "[...c.querySelectorAll('.convo .turn.unseen')].map(t => t.textContent)])")
    assert sorted(cards) == [["open 0", []], ["open 1", ["user · not seen by the model (token budget)too long"]]]
    ctx.close()
