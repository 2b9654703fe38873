"""The web page in headless Chromium (Debian's), driven by Playwright: run by
scripts/browser-test.sh, which starts the API, a worker and mock-gemini and sets
SLUICE_WEB_URL, SLUICE_CHROMIUM and SLUICE_SCREENSHOTS. Plain asserts; every wait is on a
condition (Playwright's expect), never a fixed sleep."""

import os
import re
import sys
import time
import uuid

from playwright.sync_api import expect, sync_playwright

BASE = os.environ["SLUICE_WEB_URL"]
CHROMIUM = os.environ.get("SLUICE_CHROMIUM", "/usr/bin/chromium")
SHOTS = os.environ.get("SLUICE_SCREENSHOTS", "target/browser")
# A reply takes the mock's latency plus the pipeline; generous, as the machine may be busy.
REPLY_MS = 30_000
PASSWORD = "correct horse battery"

expect.set_options(timeout=10_000)


def shot(page, name):
    page.screenshot(path=os.path.join(SHOTS, f"{name}.png"), full_page=True)


def send(page, text):
    page.fill("#input", text)
    page.press("#input", "Enter")


def last_reply(page):
    return page.locator("article.msg.assistant").last


def step(name):
    print(f"browser-test: {name}", file=sys.stderr, flush=True)


def run(page, dialogs, email):
    step("register")
    page.goto(BASE + "/")
    expect(page.locator("#auth-view")).to_be_visible()
    page.fill("#email", email)
    page.fill("#password", PASSWORD)
    page.click("#register-button")
    expect(page.locator("#app-view")).to_be_visible()
    expect(page.locator("#auth-view")).to_be_hidden()

    step("create a chat")
    page.fill("#new-chat-title", "Browser test")
    page.click("#new-chat")
    expect(page.locator("#chat-title")).to_have_text("Browser test")
    expect(page.locator("#chat-list .chat-open[aria-current=true]")).to_have_text("Browser test")

    step("send; Shift+Enter is a new line, Enter sends; the reply streams in")
    expect(page.locator("#live-state")).to_have_attribute("data-mode", "streaming")
    # The mock streams its reply a few words per chunk, 200 ms apart.
    page.fill("#input", "Hello **world** [[mock:chunk-pause=200]]")
    page.press("#input", "Shift+Enter")
    page.keyboard.type("second line")
    expect(page.locator("article.msg")).to_have_count(0)
    page.press("#input", "Enter")
    user = page.locator("article.msg.user").last
    expect(user.locator(".body")).to_have_text("Hello **world** [[mock:chunk-pause=200]]\nsecond line")
    expect(page.locator("#input")).to_have_value("")
    reply = last_reply(page)
    # Part of the text is shown while the reply is still pending: it streamed.
    expect(reply).to_have_class(re.compile(r"\bstreaming\b"), timeout=REPLY_MS)
    expect(reply).to_have_attribute("data-status", "pending")
    expect(reply.locator(".body")).to_contain_text("mock reply")
    shot(page, "01-streaming")
    expect(reply).to_have_attribute("data-status", "completed", timeout=REPLY_MS)
    expect(reply.locator(".body")).to_contain_text("mock reply to: Hello world")
    # Markdown rendered: the model's ** became <strong>; the user's own text stayed text.
    expect(reply.locator(".body strong")).to_have_text("world")
    expect(user.locator(".body strong")).to_have_count(0)
    expect(reply).not_to_have_class(re.compile(r"\bstreaming\b"))
    shot(page, "01-reply")

    step("reload: the history is there")
    page.reload()
    expect(page.locator("#chat-title")).to_have_text("Browser test")
    expect(page.locator("article.msg")).to_have_count(2)
    expect(last_reply(page)).to_have_attribute("data-status", "completed")
    expect(last_reply(page).locator(".body")).to_contain_text("mock reply to: Hello world")

    step("a reply fails once, with a readable reason; Retry completes it")
    send(page, "fail once please [[mock:fail=400x1]]")
    reply = last_reply(page)
    expect(reply).to_have_attribute("data-status", "failed", timeout=REPLY_MS)
    error = reply.locator(".status .error")
    expect(error).to_contain_text(re.compile(r"Failed: \S+"))
    shot(page, "02-failed")
    reply.get_by_role("button", name="Retry").click()
    expect(reply).to_have_attribute("data-status", "completed", timeout=REPLY_MS)
    expect(reply.locator(".body")).to_contain_text("mock reply to: fail once please")
    expect(reply.get_by_role("button", name="Retry")).to_have_count(0)

    step("a slow reply is stopped while it streams")
    send(page, "take your time [[mock:chunk-pause=1000]]")
    reply = last_reply(page)
    expect(reply).to_have_attribute("data-status", "pending")
    expect(reply.locator(".spinner")).to_be_visible()
    expect(reply).to_have_class(re.compile(r"\bstreaming\b"), timeout=REPLY_MS)
    shot(page, "03-pending")
    reply.get_by_role("button", name="Stop").click()
    expect(reply).to_have_attribute("data-status", "failed")
    expect(reply.locator(".status")).to_have_text("Stopped.")
    expect(reply.get_by_role("button", name="Retry")).to_be_visible()
    shot(page, "04-stopped")

    step("hostile HTML in a prompt (echoed by the model) stays inert")
    hostile = (
        "<img src=x onerror=alert(1)> <script>alert(2)</script> "
        "[link](javascript:alert(3)) <a href=\"javascript:alert(4)\">a</a>"
    )
    send(page, hostile)
    reply = last_reply(page)
    expect(reply).to_have_attribute("data-status", "completed", timeout=REPLY_MS)
    user = page.locator("article.msg.user").last
    expect(user.locator(".body")).to_have_text(hostile)
    messages = page.locator("#messages")
    assert messages.locator("script").count() == 0, "a <script> reached the DOM"
    assert messages.locator("[onerror]").count() == 0, "an onerror attribute reached the DOM"
    assert messages.locator("a[href^='javascript']").count() == 0, "a javascript: link reached the DOM"
    assert messages.locator("img").count() == reply.locator(".body img").count()
    assert user.locator("img").count() == 0, "the user's text was parsed as HTML"
    shot(page, "05-hostile")

    step("a second chat, deleted after confirming")
    page.fill("#new-chat-title", "Doomed")
    page.click("#new-chat")
    expect(page.locator("#chat-title")).to_have_text("Doomed")
    page.get_by_role("button", name="Delete chat Doomed").click()
    expect(page.locator("#chat-list")).not_to_contain_text("Doomed")
    expect(page.locator("#chat-title")).to_have_text("Browser test")
    assert any(kind == "confirm" for kind, _ in dialogs), "no confirmation was asked"

    step("phone width: the chat list collapses")
    page.set_viewport_size({"width": 390, "height": 844})
    expect(page.locator("#sidebar")).to_be_hidden()
    expect(page.locator("#toggle-chats")).to_be_visible()
    shot(page, "06-phone")
    page.click("#toggle-chats")
    expect(page.locator("#sidebar")).to_be_visible()
    shot(page, "07-phone-chats")
    page.locator("#chat-list .chat-open", has_text="Browser test").click()
    expect(page.locator("#sidebar")).to_be_hidden()

    step("logging out shows the sign-in form")
    page.set_viewport_size({"width": 1200, "height": 800})
    page.click("#logout")
    expect(page.locator("#auth-view")).to_be_visible()

    alerts = [message for kind, message in dialogs if kind != "confirm"]
    assert not alerts, f"a dialog fired: {alerts}"


def run_polling(page, email):
    """The same account in a browser whose event stream is refused (the token route answers
    404, as an API without it would): the page polls, and the reply still arrives."""
    step("no event stream: the page falls back to polling")
    page.route(
        "**/events/token",
        lambda route: route.fulfill(
            status=404,
            content_type="application/json",
            body='{"error":{"code":"not_found","message":"no such endpoint"}}',
        ),
    )
    page.goto(BASE + "/")
    page.fill("#email", email)
    page.fill("#password", PASSWORD)
    page.click("#login-button")
    expect(page.locator("#chat-title")).to_have_text("Browser test")
    expect(page.locator("#live-state")).to_have_attribute("data-mode", "polling")
    send(page, "polled please")
    reply = last_reply(page)
    expect(reply).to_have_attribute("data-status", "completed", timeout=REPLY_MS)
    expect(reply.locator(".body")).to_contain_text("mock reply to: polled please")
    shot(page, "08-polling")


def is_our_error(message):
    """A console error, except the expected ones: the 404 of the hostile reply's `<img src=x>`,
    and Chromium's CSP report when DOMPurify parses the hostile HTML in its inert document
    (the handler is refused by the CSP there too, then removed by DOMPurify; the DOM checks
    above prove it never reached the page)."""
    if message.type != "error":
        return False
    url = (message.location or {}).get("url", "")
    expected = (
        url.endswith("/x")
        or (url.endswith("/assets/purify.min.js") and "inline event handler" in message.text)
    )
    return not expected


def main():
    os.makedirs(SHOTS, exist_ok=True)
    started = time.monotonic()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 800})
            dialogs = []

            def on_dialog(dialog):
                dialogs.append((dialog.type, dialog.message))
                if dialog.type == "confirm":
                    dialog.accept()
                else:
                    dialog.dismiss()

            page.on("dialog", on_dialog)
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            # CSP violations and failed loads of our own files show up here.
            page.on(
                "console",
                lambda m: errors.append(f"{m.text} ({m.location.get('url')})") if is_our_error(m) else None,
            )
            email = f"browser-{uuid.uuid4().hex[:12]}@example.com"
            try:
                run(page, dialogs, email)
            except BaseException:
                shot(page, "failure")
                raise
            assert not errors, f"errors in the page: {errors}"
            polling = browser.new_page(viewport={"width": 1200, "height": 800})
            try:
                run_polling(polling, email)
            except BaseException:
                shot(polling, "failure-polling")
                raise
        finally:
            browser.close()
    print(f"browser-test: all steps passed in {time.monotonic() - started:.1f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
