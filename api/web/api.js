// The REST client: JSON in and out, the bearer token kept in localStorage, and the API's
// error shape ({"error": {"code", "message"}}) turned into an ApiError.

const TOKEN_KEY = "sluice.token";

/**
 * An answer that was not 2xx/304, with the API's code and readable message. `bearer` is the
 * token the request was sent with (null if none): a 401 for a token this page no longer holds
 * (replaced by a password change, or signed out meanwhile) is stale, and ends nothing.
 */
export class ApiError extends Error {
  constructor(status, code, message, retryAfter, bearer = null) {
    super(message);
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
    this.bearer = bearer;
  }
}

export function token() {
  return localStorage.getItem(TOKEN_KEY);
}

export function setToken(value) {
  if (value) localStorage.setItem(TOKEN_KEY, value);
  else localStorage.removeItem(TOKEN_KEY);
}

/**
 * Calls the API. Resolves to {status, data, etag}; data is null for 204 and 304. Rejects with
 * an ApiError for any other status (or a network failure, status 0). `idempotencyKey` is sent
 * as `Idempotency-Key` (message posts and retries).
 */
export async function call(method, path, { body, etag, idempotencyKey } = {}) {
  const headers = { accept: "application/json" };
  const bearer = token();
  if (bearer) headers.authorization = `Bearer ${bearer}`;
  if (body !== undefined) headers["content-type"] = "application/json";
  if (etag) headers["if-none-match"] = etag;
  if (idempotencyKey) headers["idempotency-key"] = idempotencyKey;
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      // The ETag dance is ours: the browser's cache must not answer 304s for us.
      cache: "no-store",
    });
  } catch (e) {
    throw new ApiError(0, "network", "The server cannot be reached. Check your connection.", undefined, bearer);
  }
  const tag = response.headers.get("etag");
  if (response.status === 304 || response.status === 204) {
    return { status: response.status, data: null, etag: tag };
  }
  let data = null;
  const text = await response.text();
  if (text) {
    try {
      data = JSON.parse(text);
    } catch (e) {
      data = null;
    }
  }
  if (!response.ok) {
    const error = data && data.error ? data.error : {};
    const retry = Number(response.headers.get("retry-after")) || undefined;
    throw new ApiError(
      response.status,
      error.code || "http_" + response.status,
      error.message || `The server answered ${response.status}.`,
      retry,
      bearer,
    );
  }
  return { status: response.status, data, etag: tag };
}

/** The error an answer that was not 2xx carries, as an ApiError. */
async function errorOf(response, bearer) {
  let error = {};
  try {
    const data = JSON.parse(await response.text());
    if (data && data.error) error = data.error;
  } catch (e) {
    // Not JSON: the status says enough.
  }
  const retry = Number(response.headers.get("retry-after")) || undefined;
  return new ApiError(
    response.status,
    error.code || "http_" + response.status,
    error.message || `The server answered ${response.status}.`,
    retry,
    bearer,
  );
}

/** The file name a Content-Disposition header gives (RFC 6266: filename* first), or null. */
export function filenameOf(disposition) {
  if (!disposition) return null;
  const extended = disposition.match(/filename\*\s*=\s*(?:UTF-8|utf-8)''([^;]+)/);
  if (extended) {
    try {
      return decodeURIComponent(extended[1].trim());
    } catch (e) {
      // Badly encoded: try the plain one.
    }
  }
  const plain = disposition.match(/filename\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^;\s]+))/);
  if (!plain) return null;
  return (plain[1] !== undefined ? plain[1].replace(/\\(.)/g, "$1") : plain[2]) || null;
}

/**
 * GETs a file the API sends as a download (it needs the bearer token, so a plain link cannot
 * fetch it). Resolves to {blob, filename} (filename from Content-Disposition, else null);
 * rejects with an ApiError like `call`.
 */
export async function download(path) {
  const bearer = token();
  const headers = { accept: "*/*" };
  if (bearer) headers.authorization = `Bearer ${bearer}`;
  let response;
  try {
    response = await fetch(path, { headers, cache: "no-store" });
  } catch (e) {
    throw new ApiError(0, "network", "The server cannot be reached. Check your connection.", undefined, bearer);
  }
  if (!response.ok) throw await errorOf(response, bearer);
  const blob = await response.blob();
  return { blob, filename: filenameOf(response.headers.get("content-disposition")) };
}

/** Every item of a paged list ({items, next}), following `next`. */
export async function all(path) {
  const items = [];
  let after = null;
  for (let page = 0; page < 100; page += 1) {
    const sep = path.includes("?") ? "&" : "?";
    const url = after ? `${path}${sep}after=${encodeURIComponent(after)}` : path;
    const { data } = await call("GET", url);
    items.push(...data.items);
    if (!data.next) break;
    after = data.next;
  }
  return items;
}

/**
 * A fresh Idempotency-Key. randomUUID exists only in secure contexts (https, localhost);
 * elsewhere the request goes without one.
 */
export function newKey() {
  return globalThis.crypto && crypto.randomUUID ? crypto.randomUUID() : undefined;
}
