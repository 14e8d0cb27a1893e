// HTTP for the page: JSON requests with the CSRF token, the server's refusals as HttpError, and
// the rooms API (/api/rooms/...) that the channel and the page share.

export class HttpError extends Error {
  constructor(status, data) {
    super((data && data.detail) || `HTTP ${status}`);
    this.status = status;
    this.code = (data && data.error) || (status >= 500 ? "server_error" : "bad_request");
    this.retryAfter = data && data.retry_after;
  }
}

function cookie(name) {
  const match = document.cookie.match(new RegExp("(?:^|; )" + name + "=([^;]*)"));
  return match ? decodeURIComponent(match[1]) : "";
}

import { _ } from "./i18n.js";

// The cookie is the current token (Django rotates it at login); the page's form has the one it
// was rendered with, for when the cookie cannot be read.
export function csrfToken(fallback) {
  return cookie("csrftoken") || fallback;
}

// Every JSON request of the page goes through here: the answer's data, or an HttpError (a
// TypeError from fetch when the server was not reached, an AbortError when `signal` ended it).
export async function request(method, url, { data = null, signal, csrf } = {}) {
  const headers = { Accept: "application/json" };
  if (csrf) headers["X-CSRFToken"] = csrf;
  if (data !== null) headers["Content-Type"] = "application/json";
  const response = await fetch(url, {
    method,
    credentials: "same-origin",
    headers,
    cache: "no-store",
    signal,
    body: data === null ? undefined : JSON.stringify(data),
  });
  if (response.status === 204) return null;
  let answer = null;
  try {
    answer = await response.json();
  } catch (err) {
    answer = null;
  }
  if (!response.ok) throw new HttpError(response.status, answer);
  return answer;
}

// A GET of the JSON API, for a page without a channel (the rooms index).
export function getJson(url, signal) {
  return request("GET", url, { signal });
}

// A failed request in the shape the socket's `error` events have, so that the page handles a
// refusal the same way whichever transport carried it.
export function failure(err) {
  const network = !(err instanceof HttpError);
  return {
    code: network ? "network" : err.code,
    detail: network ? _("The server could not be reached; try again.") : err.message,
    retry_after: err.retryAfter,
  };
}

export class Api {
  // roomsUrl: the /api/rooms/ prefix; csrfFallback: the token the page was rendered with.
  constructor(roomsUrl, csrfFallback) {
    this.roomsUrl = roomsUrl;
    this.csrfFallback = csrfFallback;
  }

  csrf() {
    return csrfToken(this.csrfFallback);
  }

  // A path of the rooms API, e.g. `general/messages`.
  url(path) {
    return this.roomsUrl + path;
  }

  send(method, url, data = null, signal = undefined) {
    return request(method, url, { data, signal, csrf: this.csrf() });
  }

  get(path, signal) {
    return this.send("GET", this.url(path), null, signal);
  }
}
