// The Sluice page: sign-in, the chat list (search, rename, delete), one chat's branch of
// messages kept live (./live.js) with edit, regenerate, branch arrows and delete, the
// composer, exports, the account panel (sign out, password change, export, account
// deletion). User text is always shown as text; model text only through ./render.js.

import { ApiError, all, call, download, newKey, setToken, token } from "./api.js";
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
  /** The id of the user message being edited in place, or null. */
  editing: null,
  /** The message list follows the newest message (false once the user scrolls up). */
  pinned: true,
  /** Where following the newest message last scrolled the list to. */
  pinnedTop: 0,
  /** The chat search: null (the plain list) or {q, items, note}. */
  search: null,
  /** Counts searches, so that only the newest one's answer is shown. */
  searchSeq: 0,
  /** {id, selector}: what to focus once message `id` is drawn (after a branch switch). */
  focusAfter: null,
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
  if (error.code === "reply_in_flight") {
    return "A reply is still being written in this chat: wait for it or stop it first.";
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

/** The chat list, or the search's results while a search is shown. */
function renderChats() {
  // A chat's button that has the focus keeps it across the redraw.
  const focused = document.activeElement;
  const focusId = focused && focused.matches && focused.matches(".chat-open") ? focused.dataset.id : null;
  const search = state.search;
  const shown = search ? search.items : state.chats;
  const items = shown.map((entry) => {
    // A search hit names a chat; the list's copy has its latest title.
    const chat = state.chats.find((c) => c.id === entry.id) || entry;
    const li = document.createElement("li");
    const open = document.createElement("button");
    open.type = "button";
    open.className = "chat-open";
    const title = document.createElement("span");
    title.className = "chat-title";
    title.textContent = chat.title;
    open.append(title);
    if (search && entry.snippet) {
      const snippet = document.createElement("span");
      snippet.className = "chat-snippet";
      snippet.textContent = entry.snippet;
      open.append(snippet);
    }
    open.title = "Double-click (or F2) to rename";
    open.dataset.id = chat.id;
    if (chat.id === state.chatId) open.setAttribute("aria-current", "true");
    // The open chat's button stays as it is (a double-click finds it to rename); on a phone
    // the list closes.
    open.addEventListener("click", () => {
      if (chat.id === state.chatId) toggleSidebar(false);
      else selectChat(chat.id, chat);
    });
    open.addEventListener("keydown", (event) => {
      if (event.key === "F2") {
        event.preventDefault();
        inlineRename(chat, open);
      }
    });
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "chat-delete icon";
    remove.textContent = "×";
    remove.title = "Delete chat";
    remove.setAttribute("aria-label", `Delete chat ${chat.title}`);
    remove.addEventListener("click", () => deleteChat(chat));
    li.append(open, remove);
    return li;
  });
  $("chat-list").replaceChildren(...items);
  if (focusId) {
    const again = [...$("chat-list").querySelectorAll(".chat-open")].find((b) => b.dataset.id === focusId);
    if (again) again.focus();
  }
  $("chat-list").setAttribute("aria-label", search ? `Chats matching ${search.q}` : "Your chats");
  let note = "";
  if (search && search.note) note = search.note;
  else if (search && !search.items.length) note = "No chats match.";
  else if (search) {
    const n = search.items.length;
    note = search.more ? `The first ${n} chats found` : `${n} chat${n === 1 ? "" : "s"} found`;
  }
  $("search-state").textContent = note;
}

/** A double-click on a chat in the list renames it (found by id: the list may be redrawn
 * between the two clicks). */
function onChatListDblClick(event) {
  const open = event.target.closest(".chat-open");
  if (!open) return;
  const chat = state.chats.find((c) => c.id === open.dataset.id);
  if (chat) inlineRename(chat, open);
}

// ---------------------------------------------------------------------------------------
// Searching the chats: GET /api/chats?q= (debounced as the user types; an empty box shows
// the plain list again).

const SEARCH_DELAY_MS = 250;
const SEARCH_LIMIT = 50;
let searchTimer = null;

function onSearchInput() {
  clearTimeout(searchTimer);
  const q = $("chat-search").value.trim();
  if (!q) {
    state.searchSeq += 1;
    state.search = null;
    renderChats();
    return;
  }
  searchTimer = setTimeout(() => runSearch(q), SEARCH_DELAY_MS);
}

async function runSearch(q) {
  const seq = ++state.searchSeq;
  let search;
  try {
    const { data } = await call("GET", `/api/chats?q=${encodeURIComponent(q)}&limit=${SEARCH_LIMIT}`);
    search = { q, items: data.items, more: Boolean(data.next) };
  } catch (e) {
    if (e instanceof ApiError && (e.status === 404 || e.status === 405)) {
      search = { q, items: [], note: "Search is not available on this server." };
    } else if (e instanceof ApiError && e.status === 422) {
      search = { q, items: [], note: e.code === "query_too_broad" ? "Too many matches: add words to narrow the search." : e.message };
    } else {
      if (seq === state.searchSeq) report(e);
      return;
    }
  }
  // Only the newest search counts, and only while the box still asks for it.
  if (seq !== state.searchSeq || $("chat-search").value.trim() !== q) return;
  state.search = search;
  renderChats();
}

function onSearchKey(event) {
  if (event.key === "Escape" && $("chat-search").value) {
    event.preventDefault();
    event.stopPropagation();
    $("chat-search").value = "";
    onSearchInput();
  }
}

// ---------------------------------------------------------------------------------------
// Renaming a chat in place (the header's title, or a chat in the list): Enter or leaving the
// field saves, Escape cancels.

function inlineRename(chat, shown) {
  if (shown.hidden) return;
  const input = document.createElement("input");
  input.className = "rename-input";
  input.maxLength = 200;
  input.value = chat.title;
  input.setAttribute("aria-label", "Chat title (Enter saves, Escape cancels)");
  shown.hidden = true;
  shown.after(input);
  input.focus();
  input.select();
  let done = false;
  const finish = (save, byKey) => {
    if (done) return;
    done = true;
    const title = input.value.trim();
    input.remove();
    shown.hidden = false;
    // From the keyboard, back to where the rename began (the header's title takes no focus:
    // its button does).
    const back = shown === $("chat-title") ? $("rename-chat") : shown;
    if (byKey && back.isConnected) back.focus();
    if (save && title && title !== chat.title) renameChat(chat.id, title);
  };
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.isComposing) {
      event.preventDefault();
      finish(true, true);
    } else if (event.key === "Escape") {
      event.preventDefault();
      event.stopPropagation();
      finish(false, true);
    }
  });
  input.addEventListener("blur", () => finish(true, false));
}

function renameOpenChat() {
  const chat = state.chats.find((c) => c.id === state.chatId);
  if (chat) inlineRename(chat, $("chat-title"));
}

async function renameChat(id, title) {
  try {
    const { data } = await call("PATCH", `/api/chats/${id}`, { body: { title } });
    updateChat(data);
  } catch (e) {
    report(e);
  }
}

/** A chat as the API now shows it (renamed, or named by its first message). */
function updateChat(chat) {
  const known = state.chats.find((c) => c.id === chat.id);
  if (known) Object.assign(known, chat);
  else state.chats.unshift(chat);
  if (state.search) {
    for (const hit of state.search.items) if (hit.id === chat.id) hit.title = chat.title;
  }
  if (state.chatId === chat.id) $("chat-title").textContent = chat.title;
  renderChats();
}

async function createChat(event) {
  event.preventDefault();
  const input = $("new-chat-title");
  const title = input.value.trim();
  try {
    const { data } = await call("POST", "/api/chats", { body: title ? { title } : {} });
    input.value = "";
    state.chats.unshift(data);
    // The new chat shows in the plain list.
    if (state.search) {
      $("chat-search").value = "";
      onSearchInput();
    }
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
  if (state.search) state.search.items = state.search.items.filter((c) => c.id !== chat.id);
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
  $("export-all-state").textContent = "";
  $("export-all-state").classList.remove("form-error");
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
  state.editing = null;
  state.partials.clear();
  $("messages").replaceChildren();
  elements.clear();
}

function showChat(chat) {
  $("chat-title").textContent = chat ? chat.title : "Sluice";
  $("chat-title").hidden = false;
  for (const input of document.querySelectorAll(".topbar .rename-input")) input.remove();
  $("rename-chat").hidden = !chat;
  $("export-menu").hidden = !chat;
  $("export-menu").open = false;
  $("composer").hidden = !chat;
  $("empty-state").hidden = Boolean(chat);
  $("live-state").textContent = "";
}

/** Opens chat `id` (`known`: its entry when it is not in the list yet, a search hit say). */
async function selectChat(id, known) {
  closeChat();
  let chat = state.chats.find((c) => c.id === id);
  if (!chat && known) {
    chat = { id: known.id, title: known.title, created_at: known.created_at };
    state.chats.unshift(chat);
  }
  if (!chat) return;
  state.chatId = id;
  pin();
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

/** Reads the open chat's branch again in full (after it changed shape: an edit, a new
 * answer, another branch shown, a message deleted). */
function refetch() {
  state.etag = null;
  return sync();
}

function upsert(message) {
  const i = state.messages.findIndex((m) => m.id === message.id);
  if (i >= 0) {
    // Events and action answers carry no siblings: the branch read's stay.
    const old = state.messages[i];
    if (!("siblings" in message) && old.siblings) {
      message = { ...message, siblings: old.siblings, sibling_index: old.sibling_index };
    }
    state.messages[i] = message;
  } else {
    state.messages.push(message);
  }
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
  // A message this page does not show may belong on the branch the chat now shows (an edit
  // or a new answer made elsewhere), or to another branch: the branch read decides.
  const known = state.messages.some((m) => m.id === (id || data.id));
  switch (type) {
    case "message.created":
      if (known) upsert(data);
      else sync();
      break;
    case "message.completed":
    case "message.failed":
      state.finals += 1;
      if (known) upsert(data);
      else sync();
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

/** message id -> {el, nav, body, status, actions, bodyKey, navKey, statusKey} */
const elements = new Map();

/** The body key of a message being edited (its body holds the editor). */
const EDITING = "\u0000editing";

function messageParts(message) {
  const el = document.createElement("article");
  el.className = `msg ${message.role}`;
  el.dataset.id = message.id;
  const head = document.createElement("div");
  head.className = "head";
  const who = document.createElement("h2");
  who.className = "who";
  who.textContent = message.role === "user" ? "You" : "Assistant";
  const nav = document.createElement("div");
  nav.className = "branch";
  head.append(who, nav);
  const body = document.createElement("div");
  body.className = "body";
  const status = document.createElement("div");
  status.className = "status";
  const actions = document.createElement("div");
  actions.className = "actions";
  el.append(head, body, status, actions);
  return { el, nav, body, status, actions, bodyKey: null, navKey: null, statusKey: null };
}

/** A button; `label` (optional) is its accessible name and tooltip when the text is short. */
function button(text, onClick, className, label) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = text;
  if (className) b.className = className;
  if (label) {
    b.setAttribute("aria-label", label);
    b.title = label;
  }
  b.addEventListener("click", onClick);
  return b;
}

function updateParts(parts, message) {
  const partial = state.partials.get(message.id);
  const editing = state.editing === message.id;
  parts.el.dataset.status = message.status;
  parts.el.classList.toggle("editing", editing);
  if (editing) {
    if (parts.bodyKey !== EDITING) {
      parts.bodyKey = EDITING;
      parts.body.replaceChildren(editor(message));
    }
  } else {
    const text = message.status === "pending" ? (partial ? partial.text : "") : message.content;
    const bodyKey = `${message.status}\u0000${text}`;
    if (parts.bodyKey !== bodyKey) {
      parts.bodyKey = bodyKey;
      if (message.role === "user") parts.body.textContent = text;
      else renderMarkdown(parts.body, text);
      parts.el.classList.toggle("streaming", Boolean(message.status === "pending" && text));
    }
  }

  // The arrows' handlers hold the siblings: drawn again whenever those change.
  const siblings = message.siblings || [];
  const navKey = siblings.length > 1 ? `${message.sibling_index}:${siblings.join(",")}` : "";
  if (parts.navKey !== navKey) {
    parts.navKey = navKey;
    parts.nav.replaceChildren(...branchArrows(message));
    if (navKey) {
      const what = message.role === "user" ? "Version" : "Answer";
      parts.nav.setAttribute("role", "group");
      parts.nav.setAttribute("aria-label", `${what} ${message.sibling_index + 1} of ${siblings.length}`);
    } else {
      parts.nav.removeAttribute("role");
      parts.nav.removeAttribute("aria-label");
    }
  }

  const error = message.error || {};
  const statusKey = `${message.status}\u0000${error.kind}\u0000${error.message}\u0000${editing}`;
  if (parts.statusKey === statusKey) return;
  parts.statusKey = statusKey;
  parts.status.replaceChildren();
  parts.actions.replaceChildren();
  const remove = () =>
    button("Delete", () => deleteMessage(message), "link danger-link",
      message.role === "user"
        ? "Delete this message, its reply and everything below"
        : "Delete this reply and everything below");
  if (message.role === "user") {
    if (!editing) {
      parts.actions.append(
        button("✎ Edit", () => startEdit(message.id), "link edit", "Edit this message"),
        remove(),
      );
    }
    return;
  }
  if (message.status === "pending") {
    const spinner = document.createElement("span");
    spinner.className = "spinner";
    spinner.setAttribute("aria-hidden", "true");
    const words = document.createElement("span");
    words.textContent = "Waiting for the reply…";
    parts.status.append(spinner, words);
    parts.actions.append(button("Stop", () => stopReply(message.id), "secondary stop"));
    const hint = document.createElement("span");
    hint.className = "hint";
    hint.textContent = "or press Escape";
    parts.actions.append(hint);
    return;
  }
  if (message.status === "failed") {
    const words = document.createElement("span");
    words.className = error.kind === "cancelled" ? "stopped" : "error";
    words.textContent = error.kind === "cancelled"
      ? "Stopped."
      : `Failed: ${error.message || "the reply could not be made"}`;
    parts.status.append(words);
    parts.actions.append(button("Retry", () => retryReply(message.id), "retry"));
  }
  parts.actions.append(
    button("↻ Regenerate", () => regenerate(message.id), "link regenerate",
      "Regenerate this reply (another answer beside it)"),
    remove(),
  );
}

/** "‹ 2/3 ›" for a message with siblings: the arrows show the branch through the other. */
function branchArrows(message) {
  const siblings = message.siblings || [];
  if (siblings.length < 2) return [];
  const i = message.sibling_index;
  const what = message.role === "user" ? "version of this message" : "answer";
  const prev = button("‹", () => switchBranch(message, -1), "icon arrow prev", `Previous ${what}`);
  prev.disabled = i <= 0;
  const next = button("›", () => switchBranch(message, 1), "icon arrow next", `Next ${what}`);
  next.disabled = i >= siblings.length - 1;
  const where = document.createElement("span");
  where.className = "where";
  where.textContent = `${i + 1}/${siblings.length}`;
  return [prev, where, next];
}

/** The in-place editor of a user message: Enter (or Save) saves, Escape (or Cancel) cancels. */
function editor(message) {
  const form = document.createElement("form");
  form.className = "edit-form";
  const area = document.createElement("textarea");
  area.value = message.content;
  area.maxLength = 32000;
  area.rows = Math.min(10, Math.max(2, message.content.split("\n").length));
  area.setAttribute("aria-label", "Edit your message (Enter saves, Shift+Enter for a new line, Escape cancels)");
  const save = document.createElement("button");
  save.type = "submit";
  save.textContent = "Save";
  save.title = "Save and send: the old version stays, behind the arrows";
  const cancel = button("Cancel", cancelEdit, "secondary");
  const row = document.createElement("div");
  row.className = "edit-row";
  row.append(save, cancel);
  form.append(area, row);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    saveEdit(message.id, area.value, save);
  });
  area.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      form.requestSubmit();
    } else if (event.key === "Escape") {
      event.preventDefault();
      event.stopPropagation();
      cancelEdit();
    }
  });
  return form;
}

function renderMessages() {
  const box = $("messages");
  // Scrolled up since the list last followed the newest message (its scroll event may not
  // have come yet): it stays where the user put it.
  if (state.pinned && box.scrollTop < state.pinnedTop - 2 && distanceToEnd(box) >= NEAR_END) {
    state.pinned = false;
  }
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
  if (state.editing && !seen.has(state.editing)) state.editing = null;
  const inOrder =
    box.children.length === wanted.length && wanted.every((el, i) => box.children[i] === el);
  if (!inOrder) box.replaceChildren(...wanted);
  if (state.pinned) toEnd();
  const after = state.focusAfter;
  const shown = after && elements.get(after.id);
  if (shown) {
    state.focusAfter = null;
    const target = shown.el.querySelector(after.selector);
    const other = shown.el.querySelector(".arrow:not(:disabled)");
    const focus = target && !target.disabled ? target : other;
    if (focus) focus.focus();
  }
}

/** How close to its end (px) the list counts as showing the newest message. */
const NEAR_END = 48;

function distanceToEnd(box) {
  return box.scrollHeight - box.scrollTop - box.clientHeight;
}

/** Scrolls the list to its end. */
function toEnd() {
  const box = $("messages");
  box.scrollTop = box.scrollHeight;
  state.pinnedTop = box.scrollTop;
}

/** From now on the list follows the newest message (a chat opened, a message sent). */
function pin() {
  state.pinned = true;
  state.pinnedTop = 0;
}

/** Follows the newest message while the list is scrolled to (nearly) its end. */
function onMessagesScroll() {
  state.pinned = distanceToEnd($("messages")) < NEAR_END;
}

// ---------------------------------------------------------------------------------------
// Sending, stopping, retrying.

async function send(event) {
  event.preventDefault();
  const input = $("input");
  const content = input.value;
  if (!content.trim() || !state.chatId) return;
  const id = state.chatId;
  const first = state.messages.length === 0;
  const body = composerChoices({ content });
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
      pin();
      upsert(data.user_message);
      upsert(data.assistant_message);
      renderMessages();
    }
    // A chat created without a title is named by its first message.
    if (first) refreshChat(id);
  } catch (e) {
    report(e);
  } finally {
    $("send").disabled = false;
    input.focus();
  }
}

/** `body` with the composer's template and model, as a post, an edit or a new answer uses. */
function composerChoices(body, { template = true } = {}) {
  if (template && $("template").value) body.template_id = $("template").value;
  if ($("model").value) body.model = $("model").value;
  return body;
}

/** Reads one chat's title again (it may have been named by its first message). */
async function refreshChat(id) {
  try {
    const { data } = await call("GET", `/api/chats/${id}`);
    updateChat(data);
  } catch (e) {
    if (!(e instanceof ApiError && e.status === 404)) report(e);
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

/** The reply being written, if any (the newest pending one). */
function pendingReply() {
  for (let i = state.messages.length - 1; i >= 0; i -= 1) {
    const m = state.messages[i];
    if (m.role === "assistant" && m.status === "pending") return m;
  }
  return null;
}

// ---------------------------------------------------------------------------------------
// Branches: editing a question, another answer, switching between them, deleting.

function startEdit(messageId) {
  state.editing = messageId;
  renderMessages();
  const parts = elements.get(messageId);
  const area = parts && parts.body.querySelector("textarea");
  if (!area) return;
  area.focus();
  area.setSelectionRange(area.value.length, area.value.length);
  parts.el.scrollIntoView({ block: "nearest" });
}

function cancelEdit() {
  const id = state.editing;
  state.editing = null;
  renderMessages();
  const parts = id && elements.get(id);
  const edit = parts && parts.actions.querySelector(".edit");
  if (edit) edit.focus();
  else $("input").focus();
}

/**
 * Shows a new branch at once: the messages from `replaced` down are dropped for `added`
 * (a new question and its reply, or a new reply), followed to the end; then the branch is
 * read again for the arrows.
 */
function followNewBranch(replaced, added) {
  const i = state.messages.findIndex((m) => m.id === replaced);
  if (i >= 0) state.messages = state.messages.slice(0, i);
  for (const message of added) upsert(message);
  pin();
  renderMessages();
  refetch();
}

async function saveEdit(messageId, content, save) {
  // Enter again while the first save is on its way (requestSubmit ignores a disabled button).
  if (save.disabled) return;
  if (!content.trim()) {
    banner("A message cannot be empty.");
    return;
  }
  const id = state.chatId;
  save.disabled = true;
  try {
    const { data } = await call("POST", `/api/chats/${id}/messages/${messageId}/edit`, {
      body: composerChoices({ content }),
      idempotencyKey: newKey(),
    });
    if (state.chatId !== id) return;
    clearBanner();
    state.editing = null;
    followNewBranch(messageId, [data.user_message, data.assistant_message]);
    $("input").focus();
  } catch (e) {
    report(e);
  } finally {
    save.disabled = false;
  }
}

/** Replies being answered again: a second click while the first is on its way does nothing. */
const regenerating = new Set();

async function regenerate(messageId) {
  if (regenerating.has(messageId)) return;
  regenerating.add(messageId);
  const id = state.chatId;
  try {
    const { data } = await call("POST", `/api/chats/${id}/messages/${messageId}/regenerate`, {
      // The reply's own template stays; the model is the one chosen now.
      body: composerChoices({}, { template: false }),
      idempotencyKey: newKey(),
    });
    if (state.chatId !== id) return;
    clearBanner();
    followNewBranch(messageId, [data]);
  } catch (e) {
    report(e);
  } finally {
    regenerating.delete(messageId);
  }
}

async function switchBranch(message, step) {
  const siblings = message.siblings || [];
  const target = siblings[message.sibling_index + step];
  if (!target) return;
  const id = state.chatId;
  try {
    await call("POST", `/api/chats/${id}/branch`, { body: { message_id: target } });
    if (state.chatId !== id) return;
    // The same arrow of the message shown instead keeps the focus.
    state.focusAfter = { id: target, selector: step < 0 ? ".arrow.prev" : ".arrow.next" };
    await refetch();
  } catch (e) {
    report(e);
  }
}

async function deleteMessage(message) {
  const what = message.role === "user"
    ? "Delete this message, its reply and everything below it?"
    : "Delete this reply and everything below it?";
  if (!confirm(what)) return;
  const id = state.chatId;
  try {
    await call("DELETE", `/api/chats/${id}/messages/${message.id}`);
  } catch (e) {
    // Already gone is what was asked for.
    if (!(e instanceof ApiError && e.status === 404 && e.code === "message_not_found")) {
      report(e);
      return;
    }
  }
  if (state.chatId !== id) return;
  $("input").focus();
  await refetch();
}

// ---------------------------------------------------------------------------------------
// Exports: the open chat (Markdown or JSON) and all the user's data, fetched with the token
// and saved through a temporary object URL.

function saveFile(blob, name) {
  const url = URL.createObjectURL(blob);
  const link = document.createElement("a");
  link.href = url;
  link.download = name;
  link.hidden = true;
  // Inside the open modal, if any: the rest of the page is inert under it.
  ($("account").open ? $("account") : document.body).append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60000);
}

/** A file name from a title: letters, digits and dashes. */
function slug(title) {
  const s = title.toLowerCase().replace(/[^\p{L}\p{N}]+/gu, "-").replace(/^-+|-+$/g, "");
  return s.slice(0, 60) || "chat";
}

/** A missing route (an API without exports), as opposed to a missing chat. */
function unsupported(e) {
  return e instanceof ApiError && (e.status === 405 || (e.status === 404 && !e.code.endsWith("_not_found")));
}

async function exportChat(format) {
  $("export-menu").open = false;
  const chat = state.chats.find((c) => c.id === state.chatId);
  if (!chat) return;
  try {
    const { blob, filename } = await download(`/api/chats/${chat.id}/export?format=${format}`);
    saveFile(blob, filename || `${slug(chat.title)}.${format === "markdown" ? "md" : "json"}`);
  } catch (e) {
    if (unsupported(e)) banner("Export is not available on this server.");
    else report(e);
  }
}

async function exportAll() {
  const button = $("export-all");
  const note = $("export-all-state");
  note.classList.remove("form-error");
  note.textContent = "Preparing your data…";
  button.disabled = true;
  try {
    const { blob, filename } = await download("/api/me/export");
    saveFile(blob, filename || "sluice-export.json");
    note.textContent = "Your data has been downloaded.";
  } catch (e) {
    if (endsSession(e)) {
      report(e);
      return;
    }
    note.classList.add("form-error");
    note.textContent = unsupported(e) ? "Export is not available on this server." : describe(e);
  } finally {
    button.disabled = false;
  }
}

// ---------------------------------------------------------------------------------------
// Keys: Enter sends; Up in an empty box edits the last question; Escape stops a reply.

function onComposerKey(event) {
  // Enter sends; Shift+Enter is a new line; an IME composing text keeps its Enter.
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    $("composer").requestSubmit();
  } else if (
    event.key === "ArrowUp" && !$("input").value &&
    !event.shiftKey && !event.altKey && !event.ctrlKey && !event.metaKey
  ) {
    const last = [...state.messages].reverse().find((m) => m.role === "user");
    if (last) {
      event.preventDefault();
      startEdit(last.id);
    }
  }
}

/** Escape stops the reply being written, from anywhere but another field or a dialog. */
function onDocumentKey(event) {
  if (event.key !== "Escape" || event.defaultPrevented) return;
  if ($("export-menu").open) {
    $("export-menu").open = false;
    $("export-menu").querySelector("summary").focus();
    return;
  }
  if ($("account").open || !state.chatId) return;
  const target = event.target;
  if (target !== $("input") && target.closest && target.closest("input, textarea, select")) return;
  const reply = pendingReply();
  if (reply) {
    event.preventDefault();
    stopReply(reply.id);
  }
}

/** A click outside the export menu closes it. */
function onDocumentClick(event) {
  const menu = $("export-menu");
  if (menu.open && !menu.contains(event.target)) menu.open = false;
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
  $("export-all").addEventListener("click", exportAll);
  $("password-form").addEventListener("submit", onChangePassword);
  $("delete-form").addEventListener("submit", onDeleteAccount);
  $("new-chat-form").addEventListener("submit", createChat);
  $("chat-search").addEventListener("input", onSearchInput);
  $("chat-search").addEventListener("keydown", onSearchKey);
  $("chat-list").addEventListener("dblclick", onChatListDblClick);
  $("chat-title").addEventListener("dblclick", renameOpenChat);
  $("rename-chat").addEventListener("click", renameOpenChat);
  $("export-markdown").addEventListener("click", () => exportChat("markdown"));
  $("export-json").addEventListener("click", () => exportChat("json"));
  $("composer").addEventListener("submit", send);
  $("model").addEventListener("change", () => localStorage.setItem(MODEL_KEY, $("model").value));
  $("input").addEventListener("keydown", onComposerKey);
  $("messages").addEventListener("scroll", onMessagesScroll, { passive: true });
  // A box that changes size (the window, the message box grown) keeps the newest in view.
  if (globalThis.ResizeObserver) {
    new ResizeObserver(() => state.pinned && toEnd()).observe($("messages"));
  }
  document.addEventListener("keydown", onDocumentKey);
  document.addEventListener("click", onDocumentClick);
  $("toggle-chats").addEventListener("click", () => toggleSidebar());
  if (token()) showApp().catch(report);
  else showAuth();
}

boot();
