// The Sluice page: sign-in, the chat list, one chat's messages kept live (./live.js), the
// composer, the account panel (sign out, password change, account deletion). User text is
// always shown as text; model text only through ./render.js.

import { ApiError, all, call, newKey, setToken, token } from "./api.js";
import { Live } from "./live.js";
import { renderMarkdown } from "./render.js";

const $ = (id) => document.getElementById(id);
const PAGE = 100;

const state = {
  chats: [],
  chatId: null,
  /** The open chat's messages, oldest first, a user message before its reply. */
  messages: [],
  etag: null,
  /** message id -> {generation, attempt, seq, text}: a pending reply's text so far. */
  partials: new Map(),
  live: null,
  syncing: false,
  syncAgain: false,
  /** Counts final events, so a read that raced one is done again. */
  finals: 0,
  /** {what, key}: the Idempotency-Key of the message being sent, until it is accepted. */
  sendKey: null,
  /** A password change is under way: a 401 for the token it replaces is expected. */
  renewing: false,
};

// ---------------------------------------------------------------------------------------
// Errors and the banner.

/** Shows `text` in the banner; kind "info" for news that is not an error. */
function banner(text, kind = "error") {
  $("banner-text").textContent = text;
  $("banner").classList.toggle("info", kind === "info");
  $("banner").hidden = false;
}

function clearBanner() {
  $("banner").hidden = true;
  $("banner-text").textContent = "";
}

/** Why a sign-in ended, by the API's code; any other 401 gets the generic line. */
const SESSION_ENDED = {
  token_revoked:
    "This sign-in has ended (signed out, or the password was changed elsewhere). Log in again.",
  token_expired: "Your session has expired. Log in again.",
  invalid_token: "Your session is no longer valid. Log in again.",
  account_suspended: "This account is suspended; ask the operators. You have been signed out.",
};

/** An answer to a request made with a token that says the sign-in is over. */
function endsSession(error) {
  return (
    error instanceof ApiError &&
    Boolean(error.bearer) &&
    (error.status === 401 || error.code === "account_suspended")
  );
}

/** A readable line for an error. */
function describe(error) {
  if (!(error instanceof ApiError)) return `Something went wrong: ${error}`;
  if (error.status === 429) {
    let text = `Too many requests: ${error.message}`;
    if (error.retryAfter) text += ` Try again in ${error.retryAfter} s.`;
    return text;
  }
  return error.message;
}

/**
 * Tells the user what went wrong. A 401 (revoked, expired, invalid token) or a suspended
 * account ends the session and returns to the sign-in view, unless the token it was sent
 * with is no longer the page's (an earlier sign-in's request, answered late).
 */
function report(error) {
  if (!(error instanceof ApiError)) console.error(error);
  if (endsSession(error)) {
    if (error.bearer !== token() || state.renewing) return;
    signOut(SESSION_ENDED[error.code] || "Your session has ended. Log in again.");
    return;
  }
  banner(describe(error));
}

// ---------------------------------------------------------------------------------------
// Signing in and out.

function showAuth() {
  $("app-view").hidden = true;
  $("auth-view").hidden = false;
  $("email").focus();
}

async function showApp() {
  $("auth-view").hidden = true;
  $("app-view").hidden = false;
  await Promise.all([loadMe(), loadChats(), loadTemplates(), loadModels()]);
  const wanted = location.hash.match(/^#chat=([0-9a-f-]{36})$/);
  const chat = (wanted && state.chats.find((c) => c.id === wanted[1])) || state.chats[0];
  if (chat) await selectChat(chat.id);
  else showChat(null);
}

/** Forgets the token and everything shown, closes the event stream: the sign-in view. */
function signOut(message, kind = "error") {
  setToken(null);
  closeAccount();
  closeChat();
  state.chats = [];
  $("account-email").textContent = "";
  $("chat-list").replaceChildren();
  history.replaceState(null, "", location.pathname);
  showAuth();
  if (message) banner(message, kind);
}

async function onAuthSubmit(event) {
  event.preventDefault();
  const action = event.submitter && event.submitter.value === "register" ? "register" : "login";
  const buttons = [$("login-button"), $("register-button")];
  buttons.forEach((b) => (b.disabled = true));
  try {
    const { data } = await call("POST", `/api/auth/${action}`, {
      body: { email: $("email").value, password: $("password").value },
    });
    setToken(data.token);
    $("password").value = "";
    clearBanner();
    await showApp();
  } catch (e) {
    report(e);
  } finally {
    buttons.forEach((b) => (b.disabled = false));
  }
}

// ---------------------------------------------------------------------------------------
// Chats.

async function loadChats() {
  try {
    state.chats = await all(`/api/chats?limit=${PAGE}`);
  } catch (e) {
    report(e);
  }
  renderChats();
}

// The model chosen last is kept across reloads; a model no longer offered falls back to the
// default.
const MODEL_KEY = "sluice.model";

async function loadModels() {
  const select = $("model");
  try {
    const { data } = await call("GET", "/api/models");
    const options = data.items.map((m) => {
      const option = document.createElement("option");
      option.value = m.name;
      option.textContent = m.name;
      const prices = `$${m.input_price_per_mtok} in, $${m.output_price_per_mtok} out per million tokens`;
      const context = m.context_tokens ? `, ${m.context_tokens} tokens of context` : "";
      option.title = `${m.provider}: ${prices}${context}`;
      return option;
    });
    select.replaceChildren(...options);
    const kept = localStorage.getItem(MODEL_KEY);
    select.value = data.items.some((m) => m.name === kept) ? kept : data.default;
  } catch (e) {
    report(e);
  }
}

async function loadTemplates() {
  const select = $("template");
  try {
    const { data } = await call("GET", "/api/prompts");
    const options = data.items.map((t) => {
      const option = document.createElement("option");
      option.value = t.id;
      option.textContent = t.name;
      option.title = t.body;
      return option;
    });
    const none = document.createElement("option");
    none.value = "";
    none.textContent = "None";
    select.replaceChildren(none, ...options);
  } catch (e) {
    report(e);
  }
}

function renderChats() {
  const items = state.chats.map((chat) => {
    const li = document.createElement("li");
    const open = document.createElement("button");
    open.type = "button";
    open.className = "chat-open";
    open.textContent = chat.title;
    if (chat.id === state.chatId) open.setAttribute("aria-current", "true");
    open.addEventListener("click", () => selectChat(chat.id));
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "chat-delete icon";
    remove.textContent = "×";
    remove.setAttribute("aria-label", `Delete chat ${chat.title}`);
    remove.addEventListener("click", () => deleteChat(chat));
    li.append(open, remove);
    return li;
  });
  $("chat-list").replaceChildren(...items);
}

async function createChat(event) {
  event.preventDefault();
  const input = $("new-chat-title");
  const title = input.value.trim();
  try {
    const { data } = await call("POST", "/api/chats", { body: title ? { title } : {} });
    input.value = "";
    state.chats.unshift(data);
    await selectChat(data.id);
  } catch (e) {
    report(e);
  }
}

async function deleteChat(chat) {
  if (!confirm(`Delete the chat “${chat.title}” and all its messages?`)) return;
  const open = state.chatId === chat.id;
  // The open chat's stream would end with the chat and retry into a 404: close it first.
  if (open && state.live) {
    state.live.stop();
    state.live = null;
  }
  try {
    await call("DELETE", `/api/chats/${chat.id}`);
  } catch (e) {
    // Already gone is what was asked for.
    if (!(e instanceof ApiError && e.status === 404)) {
      report(e);
      if (open) await selectChat(chat.id);
      return;
    }
  }
  state.chats = state.chats.filter((c) => c.id !== chat.id);
  if (state.chatId === chat.id) {
    closeChat();
    if (state.chats[0]) await selectChat(state.chats[0].id);
    else showChat(null);
  }
  renderChats();
}

// ---------------------------------------------------------------------------------------
// The account panel: who is signed in, sign out, change the password, delete the account.

async function loadMe() {
  try {
    const { data } = await call("GET", "/api/me");
    $("account-email").textContent = data.email;
  } catch (e) {
    report(e);
  }
}

/** Shows an inline error under a form (null hides it), marking `field` invalid. */
function formError(id, text, field) {
  const el = $(id);
  el.textContent = text || "";
  el.hidden = !text;
  for (const input of el.closest("form").querySelectorAll("input")) {
    input.removeAttribute("aria-invalid");
  }
  if (text && field) {
    field.setAttribute("aria-invalid", "true");
    field.focus();
  }
  if (text) el.scrollIntoView({ block: "nearest" });
}

function resetAccount() {
  for (const form of [$("password-form"), $("delete-form")]) form.reset();
  formError("password-error", null);
  formError("delete-error", null);
  $("password-done").textContent = "";
}

function openAccount() {
  resetAccount();
  $("account").showModal();
  loadMe();
  loadUsage();
}

/** This month's usage (the API's default range), in the account panel. */
async function loadUsage() {
  const el = $("account-usage");
  try {
    const { data } = await call("GET", "/api/me/usage?group_by=model");
    const t = data.total;
    const tokens = (t.prompt_tokens + t.completion_tokens).toLocaleString();
    const cost = t.cost_usd.toLocaleString(undefined, { style: "currency", currency: "USD", maximumFractionDigits: 4 });
    const calls = `${t.calls} call${t.calls === 1 ? "" : "s"}`;
    el.textContent = `This month: ${tokens} tokens in ${calls}, ${cost}.`;
  } catch (e) {
    el.textContent = "";
    report(e);
  }
}

function closeAccount() {
  if ($("account").open) $("account").close();
}

async function onSignOut() {
  const button = $("sign-out");
  button.disabled = true;
  // The stream first: ended by the sign-out, it would see a 401 of its own.
  closeChat();
  let message = "You have signed out.";
  try {
    await call("POST", "/api/auth/logout");
  } catch (e) {
    // A 401: this sign-in had already ended, which is what was asked for.
    if (!(e instanceof ApiError && e.status === 401)) {
      message =
        `Signed out on this page, but the server could not be told (${describe(e)}); ` +
        "the sign-in stays valid until it expires.";
    }
  } finally {
    button.disabled = false;
  }
  signOut(message, "info");
}

async function onChangePassword(event) {
  event.preventDefault();
  formError("password-error", null);
  $("password-done").textContent = "";
  const current = $("current-password");
  const next = $("new-password");
  const confirmation = $("confirm-password");
  if (next.value !== confirmation.value) {
    formError("password-error", "The new password and its confirmation differ.", confirmation);
    return;
  }
  const submit = $("change-password");
  submit.disabled = true;
  state.renewing = true;
  try {
    const { data } = await call("POST", "/api/me/password", {
      body: { old: current.value, new: next.value },
    });
    setToken(data.token);
    state.renewing = false;
    $("password-form").reset();
    $("password-done").textContent = "Password changed. Every other sign-in has ended.";
    // The stream belonged to the sign-in that just ended: open it again with the new token.
    restartLive();
  } catch (e) {
    state.renewing = false;
    if (e instanceof ApiError && e.code === "wrong_password") {
      formError("password-error", "The current password is not right.", current);
    } else if (e instanceof ApiError && e.code === "invalid_password") {
      formError(
        "password-error",
        "The new password must be at least 8 characters (and at most 1024 bytes).",
        next,
      );
    } else if (endsSession(e)) {
      report(e);
    } else {
      formError("password-error", describe(e));
    }
  } finally {
    state.renewing = false;
    submit.disabled = false;
  }
}

async function onDeleteAccount(event) {
  event.preventDefault();
  formError("delete-error", null);
  const password = $("delete-password");
  if (!$("delete-confirm").checked) {
    formError("delete-error", "Tick the box to confirm.", $("delete-confirm"));
    return;
  }
  const submit = $("delete-account");
  submit.disabled = true;
  try {
    await call("DELETE", "/api/me", { body: { password: password.value } });
    signOut("Your account and all its chats have been deleted.", "info");
  } catch (e) {
    if (e instanceof ApiError && e.code === "wrong_password") {
      formError("delete-error", "The password is not right; nothing was deleted.", password);
    } else if (endsSession(e)) {
      report(e);
    } else {
      formError("delete-error", describe(e));
    }
  } finally {
    submit.disabled = false;
  }
}

// ---------------------------------------------------------------------------------------

function closeChat() {
  if (state.live) state.live.stop();
  state.live = null;
  state.chatId = null;
  state.messages = [];
  state.etag = null;
  state.partials.clear();
  $("messages").replaceChildren();
  elements.clear();
}

function showChat(chat) {
  $("chat-title").textContent = chat ? chat.title : "Sluice";
  $("composer").hidden = !chat;
  $("empty-state").hidden = Boolean(chat);
  $("live-state").textContent = "";
}

async function selectChat(id) {
  closeChat();
  const chat = state.chats.find((c) => c.id === id);
  if (!chat) return;
  state.chatId = id;
  history.replaceState(null, "", `#chat=${id}`);
  showChat(chat);
  renderChats();
  toggleSidebar(false);
  await sync();
  if (state.chatId !== id) return;
  openLive(id);
  $("input").focus();
}

/** Opens the open chat's event stream again, with the token the page now holds. */
function restartLive() {
  if (!state.live || !state.chatId) return;
  state.live.stop();
  state.live = null;
  openLive(state.chatId);
}

function openLive(id) {
  state.live = new Live(id, {
    onEvent,
    sync,
    hasPending: () => state.messages.some((m) => m.status === "pending"),
    onMode: (mode) => {
      $("live-state").textContent = { connecting: "connecting…", streaming: "live", polling: "polling" }[mode] || "";
      $("live-state").dataset.mode = mode;
    },
    onError: report,
  });
  state.live.start();
}

// ---------------------------------------------------------------------------------------
// Messages: reading them, and the live events.

/** Reads the open chat's messages; a 304 (same ETag) changes nothing. */
async function sync() {
  const id = state.chatId;
  if (!id) return;
  if (state.syncing) {
    state.syncAgain = true;
    return;
  }
  state.syncing = true;
  try {
    do {
      state.syncAgain = false;
      const finals = state.finals;
      const path = `/api/chats/${id}/messages?limit=${PAGE}`;
      const { status, data, etag } = await call("GET", path, { etag: state.etag });
      if (state.chatId !== id) return;
      if (status === 304) continue;
      let items = data.items;
      if (data.next) {
        items = items.concat(await all(`${path}&after=${encodeURIComponent(data.next)}`));
      }
      if (state.chatId !== id) return;
      // A final event that arrived during the read is newer than what the read saw.
      if (finals !== state.finals) {
        state.etag = null;
        state.syncAgain = true;
        continue;
      }
      state.etag = etag;
      state.messages = items;
      for (const messageId of state.partials.keys()) {
        const m = items.find((x) => x.id === messageId);
        if (!m || m.status !== "pending") state.partials.delete(messageId);
      }
      renderMessages();
    } while (state.syncAgain && state.chatId === id);
  } catch (e) {
    if (e instanceof ApiError && e.code === "chat_not_found") {
      state.chats = state.chats.filter((c) => c.id !== id);
      closeChat();
      showChat(null);
      renderChats();
    }
    report(e);
  } finally {
    state.syncing = false;
  }
}

function upsert(message) {
  const i = state.messages.findIndex((m) => m.id === message.id);
  if (i >= 0) state.messages[i] = message;
  else state.messages.push(message);
  if (message.status !== "pending") state.partials.delete(message.id);
  state.messages.sort(
    (a, b) =>
      Date.parse(a.created_at) - Date.parse(b.created_at) ||
      (a.role === "user" ? 0 : 1) - (b.role === "user" ? 0 : 1),
  );
}

/** Applies one event of the stream (see the contract in README's "Web page"). */
function onEvent(type, data) {
  if (data.chat_id && data.chat_id !== state.chatId) return;
  const id = data.message_id;
  const current = state.partials.get(id);
  const newer = (p) =>
    !current || p.generation > current.generation ||
    (p.generation === current.generation && p.attempt > current.attempt);
  const same = (p) => current && p.generation === current.generation && p.attempt === current.attempt;
  switch (type) {
    case "message.created":
      upsert(data);
      break;
    case "message.completed":
    case "message.failed":
      state.finals += 1;
      upsert(data);
      break;
    case "message.delta":
      if (data.seq === 0 && (newer(data) || same(data))) {
        // seq 0 of the attempt under way: the call started over.
        state.partials.set(id, { ...pick(data), text: data.text });
      } else if (same(data) && data.seq === current.seq + 1) {
        current.seq = data.seq;
        current.text += data.text;
      } else {
        // A duplicate or a gap: ignored; a snapshot or the final message puts it right.
        return;
      }
      break;
    case "message.reset":
      if (!newer(data) && !same(data)) return;
      state.partials.set(id, { ...pick(data), seq: -1, text: "" });
      // A reset of a reply this page holds as finished: retried elsewhere; read it again.
      if (state.messages.some((m) => m.id === id && m.status !== "pending")) sync();
      break;
    case "message.snapshot":
      if (!newer(data) && !(same(data) && data.seq >= current.seq)) return;
      state.partials.set(id, { ...pick(data), text: data.text });
      break;
    default:
      return;
  }
  const message = state.messages.find((m) => m.id === id);
  if (id && message && message.status !== "pending") state.partials.delete(id);
  renderMessages();
}

function pick({ generation, attempt, seq }) {
  return { generation, attempt, seq };
}

// ---------------------------------------------------------------------------------------
// Drawing messages: one element per message, updated in place so that focus (on Stop, say)
// survives the stream's updates.

/** message id -> {el, body, status, actions, bodyKey, statusKey} */
const elements = new Map();

function messageParts(message) {
  const el = document.createElement("article");
  el.className = `msg ${message.role}`;
  el.dataset.id = message.id;
  const who = document.createElement("h2");
  who.className = "who";
  who.textContent = message.role === "user" ? "You" : "Assistant";
  const body = document.createElement("div");
  body.className = "body";
  const status = document.createElement("div");
  status.className = "status";
  const actions = document.createElement("div");
  actions.className = "actions";
  el.append(who, body, status, actions);
  return { el, body, status, actions, bodyKey: null, statusKey: null };
}

function button(label, onClick, className) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = label;
  if (className) b.className = className;
  b.addEventListener("click", onClick);
  return b;
}

function updateParts(parts, message) {
  const partial = state.partials.get(message.id);
  parts.el.dataset.status = message.status;
  const text = message.status === "pending" ? (partial ? partial.text : "") : message.content;
  const bodyKey = `${message.status}\u0000${text}`;
  if (parts.bodyKey !== bodyKey) {
    parts.bodyKey = bodyKey;
    if (message.role === "user") parts.body.textContent = text;
    else renderMarkdown(parts.body, text);
    parts.el.classList.toggle("streaming", Boolean(message.status === "pending" && text));
  }
  const error = message.error || {};
  const statusKey = `${message.status}\u0000${error.kind}\u0000${error.message}`;
  if (parts.statusKey === statusKey) return;
  parts.statusKey = statusKey;
  parts.status.replaceChildren();
  parts.actions.replaceChildren();
  if (message.role !== "assistant") return;
  if (message.status === "pending") {
    const spinner = document.createElement("span");
    spinner.className = "spinner";
    spinner.setAttribute("aria-hidden", "true");
    const words = document.createElement("span");
    words.textContent = "Waiting for the reply…";
    parts.status.append(spinner, words);
    parts.actions.append(button("Stop", () => stopReply(message.id), "secondary stop"));
  } else if (message.status === "failed") {
    const words = document.createElement("span");
    words.className = error.kind === "cancelled" ? "stopped" : "error";
    words.textContent = error.kind === "cancelled"
      ? "Stopped."
      : `Failed: ${error.message || "the reply could not be made"}`;
    parts.status.append(words);
    parts.actions.append(button("Retry", () => retryReply(message.id), "retry"));
  }
}

function renderMessages() {
  const box = $("messages");
  const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 48;
  const wanted = [];
  const seen = new Set();
  for (const message of state.messages) {
    let parts = elements.get(message.id);
    if (!parts) {
      parts = messageParts(message);
      elements.set(message.id, parts);
    }
    updateParts(parts, message);
    wanted.push(parts.el);
    seen.add(message.id);
  }
  for (const id of elements.keys()) if (!seen.has(id)) elements.delete(id);
  const inOrder =
    box.children.length === wanted.length && wanted.every((el, i) => box.children[i] === el);
  if (!inOrder) box.replaceChildren(...wanted);
  if (atBottom || !inOrder) box.scrollTop = box.scrollHeight;
}

// ---------------------------------------------------------------------------------------
// Sending, stopping, retrying.

async function send(event) {
  event.preventDefault();
  const input = $("input");
  const content = input.value;
  if (!content.trim() || !state.chatId) return;
  const id = state.chatId;
  const body = { content };
  if ($("template").value) body.template_id = $("template").value;
  if ($("model").value) body.model = $("model").value;
  $("send").disabled = true;
  // One key per message sent: sending the same text again after a failure reuses it, so a
  // send whose answer was lost (a 408, a dropped connection) is not posted twice.
  const what = JSON.stringify([id, body]);
  if (!state.sendKey || state.sendKey.what !== what) state.sendKey = { what, key: newKey() };
  try {
    const { data } = await call("POST", `/api/chats/${id}/messages`, {
      body,
      idempotencyKey: state.sendKey.key,
    });
    state.sendKey = null;
    // Only now: a refused message stays in the box, to be sent again.
    input.value = "";
    clearBanner();
    if (state.chatId === id) {
      upsert(data.user_message);
      upsert(data.assistant_message);
      renderMessages();
    }
  } catch (e) {
    report(e);
  } finally {
    $("send").disabled = false;
    input.focus();
  }
}

async function replyAction(messageId, action) {
  const id = state.chatId;
  try {
    const options = action === "retry" ? { idempotencyKey: newKey() } : {};
    const { data } = await call("POST", `/api/chats/${id}/messages/${messageId}/${action}`, options);
    if (state.chatId === id) {
      upsert(data);
      renderMessages();
    }
  } catch (e) {
    // 409: it changed meanwhile (answered, or stopped elsewhere): show what it is now.
    if (e instanceof ApiError && e.status === 409) sync();
    else report(e);
  }
}

const stopReply = (messageId) => replyAction(messageId, "cancel");
const retryReply = (messageId) => replyAction(messageId, "retry");

function onComposerKey(event) {
  // Enter sends; Shift+Enter is a new line; an IME composing text keeps its Enter.
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    $("composer").requestSubmit();
  }
}

// ---------------------------------------------------------------------------------------
// Phone layout: the chat list is a panel opened by the "Chats" button.

function toggleSidebar(open) {
  const show = open === undefined ? !document.body.classList.contains("sidebar-open") : open;
  document.body.classList.toggle("sidebar-open", show);
  $("toggle-chats").setAttribute("aria-expanded", String(show));
}

function boot() {
  $("auth-form").addEventListener("submit", onAuthSubmit);
  $("banner-close").addEventListener("click", clearBanner);
  $("account-open").addEventListener("click", openAccount);
  $("account-close").addEventListener("click", closeAccount);
  $("account").addEventListener("close", resetAccount);
  $("sign-out").addEventListener("click", onSignOut);
  $("password-form").addEventListener("submit", onChangePassword);
  $("delete-form").addEventListener("submit", onDeleteAccount);
  $("new-chat-form").addEventListener("submit", createChat);
  $("composer").addEventListener("submit", send);
  $("model").addEventListener("change", () => localStorage.setItem(MODEL_KEY, $("model").value));
  $("input").addEventListener("keydown", onComposerKey);
  $("toggle-chats").addEventListener("click", () => toggleSidebar());
  if (token()) showApp().catch(report);
  else showAuth();
}

boot();
