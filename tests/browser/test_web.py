"""The web page in headless Chromium (Debian's), driven by Playwright: run by
scripts/browser-test.sh, which starts the API, a worker and mock-gemini and sets
SLUICE_WEB_URL, SLUICE_CHROMIUM and SLUICE_SCREENSHOTS. Plain asserts; every wait is on a
condition (Playwright's expect, or `eventually` for the API's answer), never a fixed sleep."""

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

    step("signing out (account panel) shows the sign-in form")
    page.set_viewport_size({"width": 1200, "height": 800})
    sign_out(page)

    alerts = [message for kind, message in dialogs if kind != "confirm"]
    assert not alerts, f"a dialog fired: {alerts}"


def token(page):
    return page.evaluate("localStorage.getItem('sluice.token')")


def api_status(page, path, bearer):
    """The status and error code of GET `path` sent with `bearer`, from outside the page."""
    response = page.request.get(BASE + path, headers={"authorization": f"Bearer {bearer}"})
    body = response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
    return response.status, (body.get("error") or {}).get("code")


def eventually(probe, want, seconds=5):
    """Calls probe() until it returns `want` (revocation is immediate on one replica; the
    deadline only covers a slow machine). Returns the last value."""
    deadline = time.monotonic() + seconds
    got = probe()
    while got != want and time.monotonic() < deadline:
        time.sleep(0.2)
        got = probe()
    return got


def sign_in(page, email, password, button="#login-button"):
    page.fill("#email", email)
    page.fill("#password", password)
    page.click(button)


def open_account(page, email):
    page.get_by_role("button", name="Account", exact=True).click()
    panel = page.get_by_role("dialog", name="Account")
    expect(panel).to_be_visible()
    expect(panel.locator("#account-email")).to_have_text(email)
    return panel


def sign_out(page):
    page.get_by_role("button", name="Account", exact=True).click()
    page.get_by_role("dialog", name="Account").get_by_role("button", name="Sign out").click()
    expect(page.locator("#auth-view")).to_be_visible()
    expect(page.locator("#app-view")).to_be_hidden()
    expect(page.locator("#banner-text")).to_have_text("You have signed out.")
    assert token(page) is None, "the token is still stored after signing out"


def change_password_form(panel, current, new, confirm):
    panel.get_by_label("Current password").fill(current)
    panel.get_by_label("New password", exact=True).fill(new)
    panel.get_by_label("Confirm the new password").fill(confirm)
    panel.get_by_role("button", name="Change password").click()


def run_account(page, other, email):
    """A fresh account: its password changed (the old token refused, the page still live),
    another sign-in of it ended by that change, signed out and in with the new password,
    then deleted."""
    new_password = "a brand new passphrase"
    step("account: register, post a message")
    page.goto(BASE + "/")
    sign_in(page, email, PASSWORD, "#register-button")
    expect(page.locator("#app-view")).to_be_visible()
    page.fill("#new-chat-title", "Account test")
    page.click("#new-chat")
    expect(page.locator("#chat-title")).to_have_text("Account test")
    expect(page.locator("#live-state")).to_have_attribute("data-mode", "streaming")
    # The catalogue's default model is chosen; every model on offer is listed.
    expect(page.locator("#model")).to_have_value("gemini-2.5-flash")
    expect(page.locator("#model option")).to_have_count(3)
    send(page, "before the change")
    expect(last_reply(page)).to_have_attribute("data-status", "completed", timeout=REPLY_MS)
    expect(last_reply(page).locator(".body")).to_contain_text("mock reply to: before the change")

    step("account: a second sign-in of the same account, in another browser")
    other.goto(BASE + "/")
    sign_in(other, email, PASSWORD)
    expect(other.locator("#chat-title")).to_have_text("Account test")

    step("account: the panel shows the email and this month's usage; bad password changes are refused inline")
    panel = open_account(page, email)
    expect(panel.locator("#account-usage")).to_contain_text("tokens in 1 call")
    shot(page, "09-account")
    error = panel.locator("#password-error")
    change_password_form(panel, PASSWORD, new_password, new_password + "x")
    expect(error).to_have_text("The new password and its confirmation differ.")
    change_password_form(panel, "not the password", new_password, new_password)
    expect(error).to_have_text("The current password is not right.")
    expect(panel.get_by_label("Current password")).to_be_focused()
    change_password_form(panel, PASSWORD, "short", "short")
    expect(error).to_contain_text("at least 8 characters")
    expect(panel.get_by_label("New password", exact=True)).to_have_attribute("aria-invalid", "true")
    shot(page, "10-password-refused")

    step("account: change the password; the old token is refused, the page keeps working")
    old = token(page)
    assert api_status(page, "/api/me", old)[0] == 200
    change_password_form(panel, PASSWORD, new_password, new_password)
    expect(panel.locator("#password-done")).to_contain_text("Password changed")
    expect(error).to_be_hidden()
    new = token(page)
    assert new and new != old, "the page did not keep the new token"
    got = eventually(lambda: api_status(page, "/api/me", old), (401, "token_revoked"))
    assert got == (401, "token_revoked"), f"the old token still answers {got}"
    assert api_status(page, "/api/me", new)[0] == 200
    shot(page, "11-password-changed")
    panel.get_by_role("button", name="Close").click()
    expect(panel).to_be_hidden()
    expect(page.locator("#app-view")).to_be_visible()
    # The stream is opened again with the new token, and a new message gets its reply.
    expect(page.locator("#live-state")).to_have_attribute("data-mode", "streaming")
    send(page, "after the change [[mock:chunk-pause=200]]")
    reply = last_reply(page)
    expect(reply).to_have_class(re.compile(r"\bstreaming\b"), timeout=REPLY_MS)
    expect(reply).to_have_attribute("data-status", "completed", timeout=REPLY_MS)
    expect(reply.locator(".body")).to_contain_text("mock reply to: after the change")
    expect(page.locator("#banner")).to_be_hidden()
    assert token(page) == new

    step("account: the other sign-in has ended; its next request returns it to sign-in")
    # Its event stream may have ended it already (within a heartbeat); if not, a new chat is
    # asked for, in one go, so it is never sent without a token.
    other.evaluate(
        """() => {
            if (document.getElementById("app-view").hidden) return;
            document.getElementById("new-chat-title").value = "Too late";
            document.getElementById("new-chat").click();
        }"""
    )
    expect(other.locator("#auth-view")).to_be_visible()
    expect(other.locator("#banner-text")).to_contain_text("This sign-in has ended")
    assert token(other) is None
    shot(other, "12-ended-elsewhere")

    step("account: sign out; the old password fails, the new one works")
    signed_out = token(page)
    sign_out(page)
    got = eventually(lambda: api_status(page, "/api/me", signed_out), (401, "token_revoked"))
    assert got == (401, "token_revoked"), f"the signed-out token still answers {got}"
    shot(page, "13-signed-out")
    sign_in(page, email, PASSWORD)
    expect(page.locator("#banner-text")).to_have_text("wrong email or password")
    expect(page.locator("#auth-view")).to_be_visible()
    sign_in(page, email, new_password)
    expect(page.locator("#chat-title")).to_have_text("Account test")
    expect(page.locator("#banner")).to_be_hidden()
    expect(page.locator("article.msg")).to_have_count(4)

    step("account: delete it (a wrong password deletes nothing)")
    panel = open_account(page, email)
    form = panel.locator("#delete-form")
    expect(form).to_contain_text("deletes your account and all your chats")
    form.get_by_label("Password").fill(PASSWORD)
    form.get_by_label("I understand").check()
    form.get_by_role("button", name="Delete my account").click()
    expect(form.locator("#delete-error")).to_have_text("The password is not right; nothing was deleted.")
    expect(form.get_by_label("Password")).to_be_focused()
    shot(page, "14-delete-refused")
    form.get_by_label("Password").fill(new_password)
    form.get_by_role("button", name="Delete my account").click()
    expect(page.locator("#auth-view")).to_be_visible()
    expect(panel).to_be_hidden()
    expect(page.locator("#banner-text")).to_have_text("Your account and all its chats have been deleted.")
    assert token(page) is None
    shot(page, "15-deleted")
    sign_in(page, email, new_password)
    expect(page.locator("#banner-text")).to_have_text("wrong email or password")
    expect(page.locator("#auth-view")).to_be_visible()
    shot(page, "16-deleted-login")


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


def watch_errors(page, errors):
    """Collects the page's exceptions and console errors, except the browser's own line for an
    API answer that was not 2xx (a refused password or token is expected here)."""
    page.on("pageerror", lambda e: errors.append(str(e)))

    def on_console(m):
        if m.type != "error":
            return
        url = (m.location or {}).get("url", "")
        if "/api/" in url and "Failed to load resource" in m.text:
            return
        errors.append(f"{m.text} ({url})")

    page.on("console", on_console)


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
            # New pages are new browser contexts: each has a localStorage of its own.
            account = browser.new_page(viewport={"width": 1200, "height": 800})
            other = browser.new_page(viewport={"width": 1200, "height": 800})
            account_errors = []
            watch_errors(account, account_errors)
            watch_errors(other, account_errors)
            try:
                run_account(account, other, f"account-{uuid.uuid4().hex[:12]}@example.com")
            except BaseException:
                shot(account, "failure-account")
                shot(other, "failure-account-other")
                raise
            assert not account_errors, f"errors in the account pages: {account_errors}"
        finally:
            browser.close()
    print(f"browser-test: all steps passed in {time.monotonic() - started:.1f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
