"""The web chat in a real headless Chromium (Debian's ``chromium``), driven by Playwright.

Playwright's own browser download is never used: the system Chromium is launched through
``executable_path``. Where it is missing the test skips with the command that installs it
(``make install-test`` does, as root on Debian, so CI runs this for real). Screenshots land in
``tests/artifacts/`` for a person to look at.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from core.engine import Engine
from tests.web_support import Served, serve_web

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

playwright_api = pytest.importorskip(
    "playwright.async_api", reason="Playwright for Python is not installed (pip install playwright)"
)

ARTIFACTS = Path(__file__).parent / "artifacts"
TIMEOUT_MS = 90_000


def chromium_path() -> str:
    for candidate in (
        os.environ.get("FINECHAT_CHROMIUM", ""),
        shutil.which("chromium") or "",
        shutil.which("chromium-browser") or "",
        "/usr/bin/chromium",
    ):
        if candidate and Path(candidate).is_file():
            return candidate
    pytest.skip(
        "BROWSER TEST SKIPPED: no Chromium found. Install it with "
        "'apt-get install -y chromium chromium-driver' (make install-test does this as root) "
        "or point FINECHAT_CHROMIUM at a Chromium binary."
    )


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def web(engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Served]:
    db = tmp_path_factory.mktemp("browser") / "memory.sqlite"
    async with serve_web(engine, db) as served:
        yield served


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser() -> AsyncIterator[playwright_api.Browser]:
    executable = chromium_path()
    async with playwright_api.async_playwright() as pw:
        launched = await pw.chromium.launch(
            executable_path=executable,
            headless=True,
            args=["--headless", "--no-sandbox", "--disable-gpu"],
        )
        try:
            yield launched
        finally:
            await launched.close()


@pytest_asyncio.fixture(loop_scope="module")
async def page(browser: playwright_api.Browser, web: Served) -> AsyncIterator[playwright_api.Page]:
    context = await browser.new_context(viewport={"width": 1200, "height": 900})
    pg = await context.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    await pg.goto(web.url)
    await pg.locator("#who").filter(has_text="browser keeps your conversation").wait_for()
    try:
        yield pg
    finally:
        await context.close()


async def send(page: playwright_api.Page, text: str) -> None:
    box = page.locator("#chat-input textarea")
    await box.fill(text)
    await box.press("Enter")


async def wait_answered(page: playwright_api.Page, replies: int) -> str:
    """Wait for the ``replies``-th answer to finish (the status line shows its speed)."""
    bots = page.locator('#chatbot [data-testid="bot"]')
    await page.wait_for_function(
        "n => document.querySelectorAll('#chatbot [data-testid=\"bot\"]').length >= n",
        arg=replies,
    )
    await page.locator("#chat-status").filter(has_text="tok/s").wait_for()
    return (await bots.nth(replies - 1).inner_text()).strip()


# Records every distinct text the newest answer bubble shows, to prove the page streams.
WATCH_STREAM = """
() => {
  window.__seen = [];
  const record = () => {
    const bots = document.querySelectorAll('#chatbot [data-testid="bot"]');
    const text = bots.length ? bots[bots.length - 1].innerText.trim() : '';
    if (text && window.__seen[window.__seen.length - 1] !== text) window.__seen.push(text);
  };
  new MutationObserver(record).observe(
    document.querySelector('#chatbot'), {subtree: true, childList: true, characterData: true});
}
"""


async def test_chat_streams_and_a_reload_keeps_the_conversation(
    page: playwright_api.Page, web: Served
) -> None:
    await page.evaluate(WATCH_STREAM)
    await send(page, "Hello! What is the capital of France?")
    answer = await wait_answered(page, 1)
    assert answer
    seen: list[str] = await page.evaluate("window.__seen")
    assert len(seen) >= 3, f"the answer did not stream: {seen}"
    # Partial Markdown may render differently from the final text, so compare lengths.
    assert len(seen[0]) < len(seen[-1]) and seen[-1] == answer, seen
    assert await page.locator("#chat-input textarea").input_value() == ""
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "web-chat.png"), full_page=True)

    await page.reload()
    user = page.locator('#chatbot [data-testid="user"]')
    await user.first.wait_for()
    assert (await user.first.inner_text()).strip() == "Hello! What is the capital of France?"
    bot = page.locator('#chatbot [data-testid="bot"]')
    await bot.first.wait_for()
    assert (await bot.first.inner_text()).strip() == answer
    bid = await page.evaluate("localStorage.getItem('finechat-browser-id')")
    assert bid, "the browser id was not kept in localStorage"


async def test_bad_input_shows_an_error_and_keeps_the_text(
    page: playwright_api.Page, web: Served
) -> None:
    box = page.locator("#chat-input textarea")
    await page.locator("#chat-send").click()
    await page.get_by_test_id("toast-body").filter(has_text="empty").wait_for()

    paste = "long paste " * 9_100  # 100 KB
    await box.fill(paste)
    await page.locator("#chat-send").click()
    await page.get_by_test_id("toast-body").filter(has_text="too long").wait_for()
    assert await box.input_value() == paste  # nothing lost: the text is still there to shorten
    assert await page.locator('#chatbot [data-testid="user"]').count() == 0


async def test_markup_is_shown_as_text_and_never_runs(page: playwright_api.Page) -> None:
    attack = (
        '<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script>'
        " **not bold** [click](javascript:window.__pwned=3)"
    )
    await send(page, attack)
    await wait_answered(page, 1)
    user = page.locator('#chatbot [data-testid="user"]').first
    assert (await user.inner_text()).strip() == attack
    assert await user.locator("img, script, strong, a").count() == 0
    assert await page.evaluate("window.__pwned") is None


async def test_arena_streams_both_sides_and_records_a_vote(
    page: playwright_api.Page, web: Served
) -> None:
    await page.get_by_role("tab", name="Arena").click()
    prompt = page.locator("#arena-input textarea")
    await prompt.fill("Give me one tip for learning to cook.")
    await page.locator("#arena-send").click()
    for side in ("a", "b"):
        await page.locator(f"#arena-stats-{side}").filter(has_text="tok/s").wait_for()
    vote = page.locator("#vote-a")
    await page.wait_for_function("() => !document.querySelector('#vote-a').disabled")
    await vote.click()
    await page.locator("#arena-vote-status").filter(has_text="Recorded").wait_for()
    await page.locator("#arena-leaderboard").filter(has_text="temperature 0.2").wait_for()
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "web-arena.png"), full_page=True)
    with sqlite3.connect(web.store.path) as db:
        rows = db.execute("SELECT prompt, winner, settings_a, settings_b FROM votes").fetchall()
    assert rows == [
        (
            "Give me one tip for learning to cook.",
            "a",
            '{"temperature": 0.2}',
            '{"temperature": 1.0}',
        )
    ]


async def wait_status(page: playwright_api.Page, before: str, has: str = "tok/s") -> str:
    """Wait until the status line changed from ``before`` and contains ``has``."""
    await page.wait_for_function(
        "([before, has]) => { const t = document.querySelector('#chat-status').innerText;"
        " return t !== before && t.includes(has); }",
        arg=[before, has],
    )
    return await page.locator("#chat-status").inner_text()


def conv_rows(db: str, key: str) -> list[tuple[int, str | None]]:
    with sqlite3.connect(db) as con:
        return con.execute(
            "SELECT id, title FROM conversations WHERE key = ? ORDER BY id", (key,)
        ).fetchall()


async def test_conversation_list_rename_delete_edit_and_thumbs_up(
    page: playwright_api.Page, web: Served
) -> None:
    status = page.locator("#chat-status")
    await send(page, "Plan a picnic")
    await wait_answered(page, 1)
    # The browser id is stored encrypted; find the visitor's key from the database instead.
    with sqlite3.connect(web.store.path) as con:
        key = con.execute(
            "SELECT c.key FROM conversations c JOIN messages m ON m.conversation_id = c.id"
            " WHERE m.text = 'Plan a picnic'"
        ).fetchone()[0]

    # 👍 on the answer is stored with the message.
    before = await status.inner_text()
    await page.locator('#chatbot button[aria-label="Like"]').first.click()
    await wait_status(page, before, "saved")
    liked = await web.service.history(key)
    assert liked[-1].role == "assistant" and liked[-1].feedback == 1
    await page.reload()  # the stored 👍 shows again
    await page.locator('#chatbot button[aria-label="Liked"]').wait_for()

    # Edit the last message: the box gets its exact text; sending makes a new branch.
    await page.locator("#chat-edit").click()
    box = page.locator("#chat-input textarea")
    await page.wait_for_function(
        "() => document.querySelector('#chat-input textarea').value === 'Plan a picnic'"
    )
    await status.filter(has_text="Editing").wait_for()
    before = await status.inner_text()
    await box.fill("Plan a picnic for two")
    await box.press("Enter")
    await wait_status(page, before)
    users = page.locator('#chatbot [data-testid="user"]')
    await page.wait_for_function(
        "() => document.querySelectorAll('#chatbot [data-testid=\"user\"]').length === 1"
    )
    assert (await users.first.inner_text()).strip() == "Plan a picnic for two"
    texts = [t.text for t in await web.store.all_messages(key) if t.role == "user"]
    assert texts == ["Plan a picnic", "Plan a picnic for two"]  # the old one stays, a branch
    await page.locator("#chat-edit").filter(has_text="Edit last message").wait_for()

    # A second conversation with a hostile first message: its title is shown as text.
    await page.locator("#chat-new").click()
    await page.locator('#chatbot [data-testid="user"]').first.wait_for(state="detached")
    attack = '<img src=x onerror="window.__pwned=1"> <b>Second</b> chat'
    before = await status.inner_text()
    await send(page, attack)
    await wait_status(page, before)
    labels = page.locator("#conv-list label")
    await page.wait_for_function("() => document.querySelectorAll('#conv-list label').length === 2")
    assert [(await labels.nth(i).inner_text()).strip() for i in range(2)] == [
        attack,
        "Plan a picnic",
    ]  # newest first
    assert await page.locator("#conv-list img, #conv-list b").count() == 0
    assert await page.evaluate("window.__pwned") is None

    # Resume the first conversation from the list.
    await labels.filter(has_text="Plan a picnic").click()
    await page.locator("#conv-note").filter(has_text="Opened").wait_for()
    await users.first.filter(has_text="Plan a picnic for two").wait_for()
    title = page.locator("#conv-title input, #conv-title textarea").first
    assert await title.input_value() == "Plan a picnic"

    # Rename it.
    await title.fill("Picnic plans — Saturday")
    await page.locator("#conv-rename").click()
    await page.locator("#conv-note").filter(has_text="Renamed").wait_for()
    await labels.filter(has_text="Picnic plans").wait_for()
    assert ("Picnic plans — Saturday") in [t for _, t in conv_rows(web.store.path, key)]

    # Download it as Markdown: both branches, the 👍, the exact text.
    async with page.expect_download() as info:
        await page.locator("#conv-download-md").click()
    download = await info.value
    md = await asyncio.to_thread(Path(await download.path()).read_text, encoding="utf-8")
    assert download.suggested_filename == "Picnic-plans-Saturday.md"
    assert md.startswith("# Picnic plans — Saturday\n")
    assert "```text\nPlan a picnic\n```" in md and "```text\nPlan a picnic for two\n```" in md
    assert "👍" in md and "another branch, from the start" in md
    async with page.expect_download() as info:
        await page.locator("#conv-download-json").click()
    saved = Path(await (await info.value).path())
    data = json.loads(await asyncio.to_thread(saved.read_text, encoding="utf-8"))
    assert next(m["feedback"] for m in data["messages"] if m["role"] == "assistant") == "up"

    # 👍 on the resumed conversation's answer too; the thumb shows as chosen.
    before = await status.inner_text()
    await page.locator('#chatbot button[aria-label="Like"]').first.click()
    await wait_status(page, before, "saved")
    await page.locator('#chatbot button[aria-label="Liked"]').first.wait_for()
    assert (await web.service.history(key))[-1].feedback == 1
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "web-conversations.png"), full_page=True)

    # Delete it (after a confirmation): gone from the list, the page and the database.
    await page.locator("#conv-delete").click()
    await page.locator("#conv-confirm-delete").click()
    await page.locator("#conv-note").filter(has_text="Deleted").wait_for()
    await page.wait_for_function("() => document.querySelectorAll('#conv-list label').length === 1")
    assert (await labels.first.inner_text()).strip() == attack
    assert await page.locator('#chatbot [data-testid="user"]').count() == 0
    assert [t for _, t in conv_rows(web.store.path, key)] == [None]
    with sqlite3.connect(web.store.path) as con:
        left = con.execute("SELECT COUNT(*) FROM messages WHERE text LIKE 'Plan a picnic%'")
        assert left.fetchone() == (0,)
