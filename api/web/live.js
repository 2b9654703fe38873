// Keeping one chat up to date: the event stream (EventSource with a short-lived token) when
// the API offers it, else polling the messages with If-None-Match every second while a reply
// is pending. While streaming, a pending reply is still polled now and then (cheap 304s), so
// a stream that goes quiet cannot leave a reply spinning forever.

import { call } from "./api.js";

const TICK_MS = 1000;
/** While streaming, how often a pending chat is read anyway. */
const STREAMING_POLL_MS = 10000;
/** Refused connections in a row before polling takes over for a while. */
const MAX_FAILURES = 3;
/** How long polling lasts after the stream kept failing, before it is tried again. */
const RETRY_STREAM_MS = 30000;

const EVENTS = [
  "message.created",
  "message.delta",
  "message.reset",
  "message.snapshot",
  "message.completed",
  "message.failed",
];

export class Live {
  /**
   * handlers: onEvent(type, data), sync() (read the chat again; returns a promise),
   * hasPending() (a reply is pending), onMode(mode) ("connecting" | "streaming" | "polling"),
   * onError(error) (a call failed in a way the user must hear about: a 401 or a suspended
 * account, which end the sign-in; the chat gone).
   */
  constructor(chatId, handlers) {
    this.chatId = chatId;
    this.handlers = handlers;
    this.source = null;
    this.failures = 0;
    this.mode = null;
    this.lastSync = 0;
    this.stopped = true;
    this.timers = [];
  }

  start() {
    this.stopped = false;
    this.timers.push(setInterval(() => this.tick(), TICK_MS));
    this.connect();
  }

  stop() {
    this.stopped = true;
    for (const t of this.timers) clearInterval(t);
    this.timers = [];
    this.closeSource();
  }

  setMode(mode) {
    if (this.mode === mode) return;
    this.mode = mode;
    this.handlers.onMode(mode);
  }

  closeSource() {
    if (this.source) {
      this.source.close();
      this.source = null;
    }
  }

  /** Polls when a reply is pending: every tick unless streaming, now and then if streaming. */
  tick() {
    if (this.stopped || !this.handlers.hasPending()) return;
    const every = this.mode === "streaming" ? STREAMING_POLL_MS : TICK_MS;
    if (Date.now() - this.lastSync < every) return;
    this.lastSync = Date.now();
    this.handlers.sync();
  }

  async connect() {
    if (this.stopped) return;
    this.closeSource();
    this.setMode("connecting");
    let token;
    try {
      const { data } = await call("POST", `/api/chats/${this.chatId}/events/token`);
      token = data.token;
    } catch (e) {
      if (this.stopped) return;
      if (e.status === 401 || e.code === "account_suspended" || e.code === "chat_not_found") {
        this.handlers.onError(e);
        this.stop();
      } else if (e.status === 404 || e.status === 405) {
        // This API has no event stream: polling it is, for as long as the chat is open.
        this.setMode("polling");
      } else {
        this.failed();
      }
      return;
    }
    if (this.stopped) return;
    const url = `/api/chats/${this.chatId}/events?token=${encodeURIComponent(token)}`;
    const source = new EventSource(url);
    this.source = source;
    source.onopen = () => {
      this.failures = 0;
      this.setMode("streaming");
      // Whatever happened while not connected is read once.
      this.lastSync = Date.now();
      this.handlers.sync();
    };
    for (const type of EVENTS) {
      source.addEventListener(type, (event) => {
        let data;
        try {
          data = JSON.parse(event.data);
        } catch (e) {
          return;
        }
        this.handlers.onEvent(type, data);
      });
    }
    source.onerror = () => {
      if (this.source !== source) return;
      if (source.readyState === EventSource.CLOSED) {
        // Refused (an expired token's 401, a 404, not an event stream): EventSource gives up;
        // a new token and a new EventSource, unless that keeps failing.
        this.closeSource();
        this.failed();
      } else {
        // EventSource reconnects by itself, sending Last-Event-ID; polling covers the gap.
        this.setMode("connecting");
      }
    };
  }

  failed() {
    this.failures += 1;
    if (this.failures >= MAX_FAILURES) {
      this.failures = 0;
      this.setMode("polling");
      this.timers.push(setTimeout(() => this.connect(), RETRY_STREAM_MS));
    } else {
      this.setMode("connecting");
      this.timers.push(setTimeout(() => this.connect(), 1000 * this.failures));
    }
  }
}
