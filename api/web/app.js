// The Sluice page: sign-in, the chat list, one chat's messages kept live (./live.js), the
// composer. User text is always shown as text; model text only through ./render.js.

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
};

// ---------------------------------------------------------------------------------------
// Errors and the banner.

function banner(text) {
  $("banner-text").textContent = text;
  $("banner").hidden = false;
}

function clearBanner() {
  $("banner").hidden = true;
  $("banner-text").textContent = "";
}

/** Tells the user what went wrong; a 401 ends the session. */
function report(error) {
  if (!(error instanceof ApiError)) {
    console.error(error);
    banner(`Something went wrong: ${error}`);
    return;
  }
  if (error.status === 401 && token()) {
    signOut("Your session has ended. Log in again.");
    return;
  }
  let text = error.message;
  if (error.status === 429) {
    text = `Too many requests: ${error.message}`;
    if (error.retryAfter) text += ` Try again in ${error.retryAfter} s.`;
  }
  banner(text);
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
  await Promise.all([loadChats(), loadTemplates()]);
  const wanted = location.hash.match(/^#chat=([0-9a-f-]{36})$/);
  const chat = (wanted && state.chats.find((c) => c.id === wanted[1])) || state.chats[0];
  if (chat) await selectChat(chat.id);
  else showChat(null);
}

function signOut(message) {
  setToken(null);
  closeChat();
  state.chats = [];
  $("chat-list").replaceChildren();
  history.replaceState(null, "", location.pathname);
  showAuth();
  if (message) banner(message);
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
  $("input").focus();
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
  $("logout").addEventListener("click", () => signOut());
  $("new-chat-form").addEventListener("submit", createChat);
  $("composer").addEventListener("submit", send);
  $("input").addEventListener("keydown", onComposerKey);
  $("toggle-chats").addEventListener("click", () => toggleSidebar());
  if (token()) showApp().catch(report);
  else showAuth();
}

boot();
