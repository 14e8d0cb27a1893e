// The transport layer: one connection to the chat, whatever the network allows.
//
// It knows nothing about the page. The page tells it which rooms are open (with their cursor, the
// last `seq` it has) and what to send; it emits the protocol's events (shared/protocol.md) in `seq`
// order, without gaps or duplicates, and the connection state for the badge:
//
//   connecting    the first attempt, right after the page loads
//   live          a WebSocket is up (the token endpoint says where: Channels or API Gateway)
//   fallback      WebSockets do not work here; long-polling carries the same events
//   reconnecting  trying to get either back
//   offline       the browser says there is no network; nothing is tried until it comes back
//
// WebSocket first. An attempt that gets no frame back within `wsTimeout`, or two failures in a row,
// switches to long-polling; WebSocket is then probed in the background (exponential backoff, full
// jitter) and the transport upgrades back as soon as a probe answers. On every connection or switch
// each open room is resumed from its cursor. Outgoing messages wait in a queue (kept in
// sessionStorage, so a reload keeps them too) until acknowledged; every attempt, on any transport,
// carries the same client_id, so the server stores each exactly once.
//
// A message with a file is uploaded first (over HTTP whatever carries the events: sockets do not
// carry files), then sent like any other with the attachment's id. The File itself cannot go into
// sessionStorage, so after a reload an upload that had not finished has to be attached again.

const PERMANENT = new Set(["bad_request", "forbidden", "not_found", "too_large", "unauthorized"]);

const DEFAULT_TIMINGS = {
  wsTimeout: 4000, // ms from opening a socket to its first frame
  wsFailures: 2, // failures in a row before falling back
  probeMin: 3000, // first background WebSocket probe after falling back
  probeMax: 120000, // probes back off to this
  pollTimeout: 25, // seconds a long-poll may wait (the server caps it below 29 s)
  // Ping this often: finds dead sockets within a minute and keeps API Gateway's 10-minute idle
  // timeout away. Each ping is a Lambda invocation there, so a serverless page may set it higher.
  heartbeat: 60000,
  pongTimeout: 10000, // no frame this long after a ping: the socket is dead
  maxLifetime: 110 * 60000, // API Gateway ends every connection after 2 hours: rotate before
  ackTimeout: 10000, // a send without an answer this long is retried
  retryMin: 1000, // automatic resend backoff: retryMin, doubling per attempt, up to retryMax
  retryMax: 30000,
};

function jitter(ms) {
  return Math.round(ms / 2 + Math.random() * (ms / 2));
}

function newClientId() {
  if (window.crypto && crypto.randomUUID) return crypto.randomUUID().replace(/-/g, "");
  return Date.now().toString(36) + Math.random().toString(36).slice(2);
}

// A message whose file is not uploaded and checked yet: it cannot be sent before.
function needsUpload(item) {
  return Boolean(item.fileInfo && !item.attachment);
}

function due(item, now) {
  return (
    (item.state === "pending" || (item.state === "failed" && !item.manual)) &&
    (item.nextTry || 0) <= now &&
    !needsUpload(item)
  );
}

// The page renders the attachment's complete URL for this id; the real one goes in its place.
const NIL_ID = "00000000-0000-0000-0000-000000000000";

const LOST_FILE = "The page was reloaded before the file was uploaded; attach it again.";

function cookie(name) {
  const match = document.cookie.match(new RegExp("(?:^|; )" + name + "=([^;]*)"));
  return match ? decodeURIComponent(match[1]) : "";
}

class HttpError extends Error {
  constructor(status, data) {
    super((data && data.detail) || `HTTP ${status}`);
    this.status = status;
    this.code = (data && data.error) || (status >= 500 ? "server_error" : "bad_request");
    this.retryAfter = data && data.retry_after;
  }
}

// Every JSON request of the page goes through here: the answer's data, or an HttpError (a
// TypeError from fetch when the server was not reached, an AbortError when `signal` ended it).
async function request(method, url, { data = null, signal, csrf } = {}) {
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

// A GET of the JSON API, for a page without a transport (the rooms index).
export function getJson(url, signal) {
  return request("GET", url, { signal });
}

export class Transport extends EventTarget {
  // options: tokenUrl, roomsUrl (the /api/rooms/ prefix), attachmentsUrl (the room's
  // /api/rooms/<slug>/attachments), completeUrl (for the attachment id NIL_ID),
  // csrfToken, user, timings, forcePoll
  constructor(options) {
    super();
    this.options = options;
    this.t = { ...DEFAULT_TIMINGS, ...(options.timings || {}) };
    this.rooms = new Map(); // slug -> {cursor, chain, pollAbort}
    this.state = "connecting";
    this.mode = "ws"; // "ws" | "poll": what carries the events now
    this.ws = null;
    this.failures = 0;
    this.probes = 0;
    this.timers = {};
    this.storageKey = `chat.outbox.${options.user || ""}`;
    this.outbox = this._loadOutbox();
    this.uploads = new Map(); // File -> its XMLHttpRequest while it uploads
    // client_id -> {resolve, reject, timer, ws} of a report, edit or delete sent on the socket
    this.requests = new Map();
    this.started = false;
  }

  // --- public API ---

  start() {
    if (this.started) return;
    this.started = true;
    window.addEventListener("online", () => this._online());
    window.addEventListener("offline", () => this._offline());
    if (navigator.onLine === false) {
      this._setState("offline");
      return;
    }
    if (this.options.forcePoll) this._fallback();
    else this._connect();
  }

  // Receive a room's events from `cursor` on (the room's seq when its history was read).
  open(slug, cursor) {
    if (this.rooms.has(slug)) return;
    this.rooms.set(slug, { cursor, chain: Promise.resolve(), pollAbort: null, pollGen: 0 });
    if (this._wsReady()) this._subscribe(slug);
    else if (this.mode === "poll" && this.state !== "offline") this._pollLoop(slug);
  }

  close(slug) {
    const room = this.rooms.get(slug);
    if (!room) return;
    this.rooms.delete(slug);
    if (room.pollAbort) room.pollAbort.abort();
    if (this._wsReady()) this._wsSend({ action: "unsubscribe", room: slug });
  }

  cursor(slug) {
    const room = this.rooms.get(slug);
    return room ? room.cursor : null;
  }

  // `file` (optional) is uploaded first; the message then carries its attachment.
  send(slug, body, file = null) {
    const item = { client_id: newClientId(), room: slug, body, state: "pending", attempts: 0 };
    if (file) {
      item.file = file;
      item.fileInfo = { name: file.name, size: file.size, content_type: file.type };
    }
    this.outbox.push(item);
    this._saveOutbox();
    this._emit("outgoing", item);
    this._flush();
    return item;
  }

  pending(slug) {
    return this.outbox.filter((item) => item.room === slug);
  }

  retry(clientId) {
    const item = this.outbox.find((i) => i.client_id === clientId);
    if (!item) return;
    if (needsUpload(item) && !item.file) {
      item.error = LOST_FILE;
      this._emit("outgoing", item);
      return;
    }
    item.state = "pending";
    item.error = null;
    item.nextTry = 0;
    item.manual = false;
    this._saveOutbox();
    this._emit("outgoing", item);
    this._flush();
  }

  discard(clientId) {
    const item = this.outbox.find((i) => i.client_id === clientId);
    if (item && item.file && this.uploads.has(item.file)) this.uploads.get(item.file).abort();
    this.outbox = this.outbox.filter((i) => i.client_id !== clientId);
    this._saveOutbox();
  }

  // Report someone's message to the room's moderators. Resolves when the server has it; rejects
  // with {code, detail} otherwise. Not queued: the user is looking at the answer.
  report(slug, id, reason) {
    if (this._wsReady()) return this._request({ action: "report", room: slug, id, reason });
    return this._answer(this._send("POST", this._api(`${slug}/messages/${id}/report`), { reason }));
  }

  // Edit or delete one's own message. Resolves with the server's answer: over a socket an `ack`
  // (its `seq` is the change's; the changed `message` event follows, as for every subscriber),
  // over HTTP the changed `message` event itself (the poll brings it too). Rejects with
  // {code, detail}. Not queued either: a change that waited for the network could land after the
  // edit window, or after the user stopped looking, and the server's refusal would reach nobody.
  edit(slug, id, body) {
    if (this._wsReady()) return this._request({ action: "editmessage", room: slug, id, body });
    return this._changeOverHttp("PATCH", slug, id, { body });
  }

  remove(slug, id) {
    if (this._wsReady()) return this._request({ action: "deletemessage", room: slug, id });
    return this._changeOverHttp("DELETE", slug, id);
  }

  typing(slug) {
    if (this._wsReady()) this._wsSend({ action: "typing", room: slug });
    else if (this.state === "fallback") this._send("POST", this._api(`${slug}/typing`), {}).catch(() => {});
  }

  read(slug, seq) {
    if (this._wsReady()) this._wsSend({ action: "read", room: slug, seq });
    else if (this.state !== "offline") this._send("POST", this._api(`${slug}/read`), { seq }).catch(() => {});
  }

  // The JSON API, for the page (history pages) and for the fallback.
  get(path, signal) {
    return this._send("GET", this._api(path), null, signal);
  }

  // --- state ---

  _setState(state) {
    if (this.state === state) return;
    this.state = state;
    this._emit("state", { state, mode: this.mode });
    // The one place a new connection sends what waits.
    if (state === "live" || state === "fallback") this._flush();
  }

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  _clear(name) {
    clearTimeout(this.timers[name]);
    delete this.timers[name];
  }

  _later(name, ms, fn) {
    this._clear(name);
    this.timers[name] = setTimeout(() => {
      delete this.timers[name];
      fn();
    }, ms);
  }

  _offline() {
    this._setState("offline");
    for (const name of Object.keys(this.timers)) this._clear(name);
    this._stopPolling();
    this._dropSocket();
  }

  _online() {
    if (this.state !== "offline") return;
    this.failures = 0;
    this.mode = "ws";
    this._setState("reconnecting");
    // Try WebSocket first again: the new network may allow it.
    this._connect();
  }

  // --- WebSocket ---

  _wsReady() {
    return this.ws && this.ws.alive && this.ws.readyState === WebSocket.OPEN;
  }

  _token() {
    return this._send("POST", this.options.tokenUrl);
  }

  // One attempt. As the main connection (`probe` false) a failure counts towards falling back;
  // as a background probe while long-polling, it only schedules the next probe.
  async _connect(probe = false) {
    if (this.state === "offline" || this.ws || this.connecting) return;
    if (!probe && this.state !== "connecting") this._setState("reconnecting");
    let info;
    this.connecting = true;
    try {
      info = await this._token();
    } catch (err) {
      this.connecting = false;
      if (err.status === 401 || err.status === 403) {
        this._setState("offline");
        this._emit("error", { code: "unauthorized", detail: "Log in again." });
        return;
      }
      this._wsFailed(probe);
      return;
    }
    this.connecting = false;
    if (this.state === "offline" || this.ws) return;
    const url = new URL(info.ws_url, location.href);
    url.searchParams.set("token", info.token);
    let ws;
    try {
      ws = new WebSocket(url.href);
    } catch (err) {
      this._wsFailed(probe);
      return;
    }
    ws.alive = false;
    this.ws = ws;
    this._later("wsOpen", this.t.wsTimeout, () => {
      if (this.ws !== ws || ws.alive) return;
      ws.timedOut = true;
      this._dropSocket();
    });
    ws.onopen = () => ws.send(JSON.stringify({ action: "ping" }));
    ws.onmessage = (e) => this._onFrame(ws, e.data);
    ws.onclose = () => this._onClose(ws, probe);
  }

  _dropSocket() {
    const ws = this.ws;
    if (!ws) return;
    ws.dropped = true;
    try {
      ws.close(4000, "client closing");
    } catch (err) {
      // already closed
    }
    this._onClose(ws, false);
  }

  _onClose(ws, probe) {
    if (ws.closedHandled) return;
    ws.closedHandled = true;
    if (this.ws === ws) this.ws = null;
    this._clear("wsOpen");
    this._clear("ping");
    this._clear("pong");
    this._clear("rotate");
    for (const item of this.outbox) if (item.state === "sending" && item.via === ws) item.state = "pending";
    // A report, edit or delete sent on this socket gets no answer now: the user hears so at once.
    for (const [clientId, waiting] of this.requests) {
      if (waiting.ws !== ws) continue;
      this._answered(clientId, { code: "network", detail: "The connection was lost; try again." }, "reject");
    }
    if (this.state === "offline") return;
    if (ws.alive) {
      // A working socket went away (server restart, API Gateway's 2-hour limit, rotation):
      // reconnect at once; it only counts as a failure if the next attempt fails too.
      this.failures = 0;
      this.mode = "ws";
      this._setState("reconnecting");
      this._later("reconnect", jitter(500), () => this._connect());
      return;
    }
    if (ws.timedOut && this.mode === "ws") {
      // A socket that cannot open within seconds is a network that holds WebSockets: do not
      // make the user wait for a second attempt.
      this._fallback();
      return;
    }
    this._wsFailed(probe || this.mode === "poll");
  }

  _wsFailed(probe) {
    if (this.state === "offline") return;
    if (probe) {
      this.probes += 1;
      const delay = Math.min(this.t.probeMax, this.t.probeMin * 2 ** (this.probes - 1));
      this._later("probe", jitter(delay), () => this._connect(true));
      return;
    }
    this.failures += 1;
    if (this.failures >= this.t.wsFailures) {
      this._fallback();
    } else {
      this._setState("reconnecting");
      this._later("reconnect", jitter(1000), () => this._connect());
    }
  }

  _onFrame(ws, text) {
    if (this.ws !== ws) return;
    let event;
    try {
      event = JSON.parse(text);
    } catch (err) {
      return;
    }
    this._clear("pong");
    if (!ws.alive) {
      ws.alive = true;
      this._clear("wsOpen");
      this._upgraded(ws);
    }
    this._dispatch(event);
  }

  // The socket answered: it carries everything from now on.
  _upgraded(ws) {
    this._retryNow();
    this.failures = 0;
    this.probes = 0;
    this.mode = "ws";
    this._clear("probe");
    this._clear("reconnect");
    this._stopPolling();
    this._setState("live");
    for (const slug of this.rooms.keys()) this._subscribe(slug);
    this._heartbeat(ws);
    this._later("rotate", this.t.maxLifetime, () => {
      if (this.ws === ws) ws.close(4000, "rotating before the gateway's limit");
    });
    this._emit("connected", { mode: "ws" });
  }

  _heartbeat(ws) {
    this._later("ping", this.t.heartbeat, () => {
      if (this.ws !== ws) return;
      this._wsSend({ action: "ping" });
      // Any frame clears this; the first unanswered ping starts the count.
      if (!this.timers.pong) {
        this._later("pong", this.t.pongTimeout, () => {
          if (this.ws === ws) this._dropSocket();
        });
      }
      this._heartbeat(ws);
    });
  }

  _wsSend(frame) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return false;
    this.ws.send(JSON.stringify(frame));
    return true;
  }

  _subscribe(slug) {
    const room = this.rooms.get(slug);
    this._wsSend({ action: "subscribe", room: slug, after: room.cursor });
  }

  // A frame that the server answers to this client alone: an `ack` or an `error` with its
  // client_id. The socket closing answers it too (a network error).
  _request(frame) {
    const clientId = newClientId();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.requests.delete(clientId);
        reject({ code: "timeout", detail: "No answer from the server; try again." });
      }, this.t.ackTimeout);
      this.requests.set(clientId, { resolve, reject, timer, ws: this.ws });
      this._wsSend({ ...frame, client_id: clientId });
    });
  }

  _changeOverHttp(method, slug, id, data = null) {
    return this._answer(this._send(method, this._api(`${slug}/messages/${id}`), data));
  }

  // An HTTP failure in the shape the socket's `error` events have.
  _failure(err) {
    const network = !(err instanceof HttpError);
    return {
      code: network ? "network" : err.code,
      detail: network ? "The server could not be reached; try again." : err.message,
      retry_after: err.retryAfter,
    };
  }

  _answer(promise) {
    return promise.catch((err) => {
      throw this._failure(err);
    });
  }

  _dispatch(event) {
    switch (event.type) {
      case "message":
        this._deliver(event.room, [event]);
        break;
      case "subscribed":
        if (event.reason === "resync") this._resync(event.room, event.seq);
        break;
      case "ack":
        if (this._answered(event.client_id, event, "resolve")) break;
        this._acked(event.client_id, event);
        break;
      case "error":
        if (this._answered(event.client_id, event, "reject")) break;
        if (event.client_id) this._sendFailed(event.client_id, event);
        else this._emit("error", event);
        break;
      case "pong":
        break;
      default:
        // typing, presence, room, unsubscribed: ephemeral, straight to the page
        this._emit(event.type, event);
    }
  }

  _answered(clientId, event, how) {
    const waiting = clientId && this.requests.get(clientId);
    if (!waiting) return false;
    this.requests.delete(clientId);
    clearTimeout(waiting.timer);
    waiting[how](event);
    return true;
  }

  // --- long-polling ---

  _fallback() {
    this._retryNow();
    this.mode = "poll";
    this._setState("fallback");
    this._emit("connected", { mode: "poll" });
    for (const slug of this.rooms.keys()) this._pollLoop(slug);
    this.probes = 0;
    if (!this.options.forcePoll) this._wsFailed(true);
  }

  _stopPolling() {
    for (const room of this.rooms.values()) {
      room.pollGen += 1;
      if (room.pollAbort) room.pollAbort.abort();
      room.pollAbort = null;
    }
  }

  // One loop per room; a newer loop (after a stop or a switch) makes the older one end.
  async _pollLoop(slug) {
    const room = this.rooms.get(slug);
    if (!room) return;
    room.pollGen += 1;
    const gen = room.pollGen;
    const current = () =>
      this.rooms.get(slug) === room && room.pollGen === gen && this.mode === "poll" && this.state !== "offline";
    let errors = 0;
    try {
      while (current()) {
        const abort = new AbortController();
        room.pollAbort = abort;
        // Wait for any delivery in progress (a gap fill) so the cursor is current.
        await room.chain;
        if (!current()) break;
        const query = `after=${room.cursor}&timeout=${this.t.pollTimeout}`;
        try {
          const answer = await this.get(`${slug}/poll?${query}`, abort.signal);
          errors = 0;
          if (!current()) break;
          this._setState("fallback");
          if (answer.resync) {
            await this._resync(slug, answer.seq);
          } else {
            const messages = answer.events.filter((e) => e.type === "message");
            for (const event of answer.events) {
              // answer.room and answer.presence (below) are the latest of these
              if (event.type === "message") continue;
              if (event.type === "room" && answer.room) continue;
              if (event.type === "presence" && answer.presence) continue;
              this._dispatch(event);
            }
            if (messages.length) await this._deliver(slug, messages);
          }
          // Every answer carries the room's state: a lock or rename published between two polls
          // reached nobody, and no cursor replays it.
          if (answer.room) this._dispatch(answer.room);
          // ...and who is online, which a quiet room would otherwise never tell a poller.
          if (answer.presence) this._dispatch(answer.presence);
        } catch (err) {
          if (abort.signal.aborted || !current()) break;
          if (err.status === 404 || err.status === 403) {
            this._emit("error", { code: err.code, detail: err.message, room: slug });
            break;
          }
          errors += 1;
          if (errors > 1) this._setState("reconnecting");
          await new Promise((r) => setTimeout(r, jitter(Math.min(10000, 500 * 2 ** errors))));
        }
      }
    } finally {
      if (room.pollGen === gen) room.pollAbort = null;
    }
  }

  // --- events in seq order, exactly once ---

  // Deliveries of a room run one after another, so a gap fill finishes before the next event.
  _deliver(slug, events) {
    const room = this.rooms.get(slug);
    if (!room) return Promise.resolve();
    room.chain = room.chain.then(() => this._apply(slug, room, events)).catch(() => {});
    return room.chain;
  }

  async _apply(slug, room, events) {
    for (const event of events) {
      if (event.seq <= room.cursor) continue; // already seen: a resume or fill overlap
      if (event.seq > room.cursor + 1) {
        // Something between was lost on the way: read it from the database, then go on.
        if (!(await this._fill(slug, room))) {
          // Not read: nothing moves past the hole. Ask again from the cursor; the answer brings
          // the hole and these events. (A long-poll loop does so anyway with its next request.)
          if (this.rooms.get(slug) === room && this._wsReady()) this._subscribe(slug);
          return;
        }
        if (event.seq <= room.cursor) continue;
      }
      room.cursor = event.seq;
      this._emit("message", event);
    }
  }

  // Whether the events after the cursor could be read.
  async _fill(slug, room) {
    let answer;
    try {
      answer = await this.get(`${slug}/messages?after=${room.cursor}`);
    } catch (err) {
      return false;
    }
    if (answer.resync) {
      this._resetRoom(slug, room, answer.seq);
      return true;
    }
    for (const event of answer.messages) {
      if (event.seq <= room.cursor) continue;
      room.cursor = event.seq;
      this._emit("message", event);
    }
    room.cursor = Math.max(room.cursor, answer.seq);
    return true;
  }

  _resync(slug, seq) {
    const room = this.rooms.get(slug);
    if (!room) return Promise.resolve();
    room.chain = room.chain.then(() => this._resetRoom(slug, room, seq)).catch(() => {});
    return room.chain;
  }

  // The cursor is too old to resume: the page reloads history, and events go on after `seq`.
  _resetRoom(slug, room, seq) {
    room.cursor = seq;
    this._emit("resync", { room: slug, seq });
  }

  // --- sending ---

  _loadOutbox() {
    try {
      const items = JSON.parse(sessionStorage.getItem(this.storageKey) || "[]");
      return items.map((item) => {
        if (needsUpload(item)) return { ...item, attempts: 0, state: "failed", manual: true, error: LOST_FILE };
        return { ...item, attempts: 0, state: item.manual ? "failed" : "pending" };
      });
    } catch (err) {
      return [];
    }
  }

  _saveOutbox() {
    try {
      const keep = this.outbox.map(({ client_id, room, body, manual, error, fileInfo, attachment }) => ({
        client_id,
        room,
        body,
        manual,
        error,
        fileInfo,
        attachment,
      }));
      sessionStorage.setItem(this.storageKey, JSON.stringify(keep));
    } catch (err) {
      // storage full or disabled: the queue still lives in memory
    }
  }

  _flush() {
    if (this.state === "offline") return;
    // Uploads go over HTTP whatever carries the events. A text sent while a file uploads does not
    // wait for it: the message with the file is posted, and takes its place, when the file is ready.
    for (const item of this.outbox) {
      if (needsUpload(item) && item.state === "pending" && item.file) this._upload(item);
    }
    if (this.flushing) return;
    const now = Date.now();
    const ready = this.outbox.filter((i) => due(i, now));
    if (!ready.length) return;
    if (this._wsReady()) {
      // Frames on one socket are handled in order, so the queue goes out at once.
      for (const item of ready) {
        item.state = "sending";
        item.via = this.ws;
        item.attempts += 1;
        const frame = { action: "sendmessage", room: item.room, body: item.body, client_id: item.client_id };
        if (item.attachment) frame.attachment = item.attachment.id;
        this._wsSend(frame);
        const ws = this.ws;
        setTimeout(() => {
          if (item.state === "sending" && item.via === ws) {
            this._sendFailed(item.client_id, { code: "timeout", detail: "No answer from the server." });
          }
        }, this.t.ackTimeout);
      }
    } else if (this.mode === "poll") {
      this._flushHttp();
    }
  }

  // A new connection: what waits for a retry goes now (except what the user must decide on).
  _retryNow() {
    for (const item of this.outbox) if (!item.manual) item.nextTry = 0;
  }

  // Over HTTP one at a time, so the messages keep their order.
  async _flushHttp() {
    this.flushing = true;
    try {
      for (;;) {
        const now = Date.now();
        const item = this.outbox.find((i) => due(i, now));
        if (!item || this._wsReady() || this.state === "offline") break;
        item.state = "sending";
        item.via = "http";
        item.attempts += 1;
        try {
          const data = { body: item.body, client_id: item.client_id };
          if (item.attachment) data.attachment = item.attachment.id;
          const event = await this._send("POST", this._api(`${item.room}/messages`), data);
          this._acked(item.client_id, event);
          this._deliverOwn(event);
        } catch (err) {
          this._sendFailed(item.client_id, this._failure(err));
        }
      }
    } finally {
      this.flushing = false;
    }
    // Upgraded to a socket in the meantime: what is left goes that way.
    if (this._wsReady()) this._flush();
  }

  // --- uploading ---

  // Create the attachment, send the file where the server says (our own upload view, or an S3
  // presigned POST), then have the server check it. A failure is the user's to retry or discard:
  // sending a large file again on its own could cost a lot of data, and most failures (type, size,
  // quota) would only repeat.
  async _upload(item) {
    item.state = "uploading";
    item.progress = 0;
    item.error = null;
    this._emit("outgoing", item);
    try {
      const info = item.fileInfo;
      const created = await this._send("POST", this.options.attachmentsUrl, {
        name: info.name,
        size: info.size,
        content_type: info.content_type || "application/octet-stream",
      });
      await this._sendFile(created.upload, item.file, (fraction) => {
        item.progress = fraction;
        this._emit("outgoing", item);
      });
      const completeUrl = this.options.completeUrl.replace(NIL_ID, encodeURIComponent(created.attachment.id));
      const done = await this._send("POST", completeUrl, {});
      if (!this.outbox.includes(item)) return; // discarded meanwhile
      item.attachment = done.attachment;
      item.file = null;
      item.state = "pending";
      item.progress = null;
      this._saveOutbox();
      this._emit("outgoing", item);
      this._flush();
    } catch (err) {
      if (!this.outbox.includes(item)) return;
      item.state = "failed";
      item.manual = true;
      item.progress = null;
      item.error = err.message || "The file could not be uploaded.";
      this._saveOutbox();
      this._emit("outgoing", item);
    }
  }

  _sendFile(upload, file, onProgress) {
    return new Promise((resolve, reject) => {
      const url = new URL(upload.url, location.href);
      // Every field of the presigned form first: S3 ignores fields after the file.
      const form = new FormData();
      for (const [name, value] of Object.entries(upload.fields || {})) form.append(name, value);
      form.append("file", file, file.name);
      // XMLHttpRequest rather than fetch: fetch reports no upload progress.
      const xhr = new XMLHttpRequest();
      this.uploads.set(file, xhr);
      xhr.addEventListener("loadend", () => this.uploads.delete(file));
      xhr.open("POST", url.href);
      if (url.origin === location.origin) {
        // Our own upload view: the session cookie goes by default, and it needs the CSRF token.
        xhr.setRequestHeader("X-CSRFToken", this._csrf());
        xhr.setRequestHeader("Accept", "application/json");
      } else {
        // The bucket: the presigned fields are the credentials; our cookie and token stay here.
        xhr.withCredentials = false;
      }
      xhr.upload.addEventListener("progress", (e) => {
        if (e.lengthComputable && e.total) onProgress(e.loaded / e.total);
      });
      xhr.addEventListener("load", () => {
        if (xhr.status >= 200 && xhr.status < 300) {
          resolve();
          return;
        }
        let data = null;
        try {
          data = JSON.parse(xhr.responseText);
        } catch (err) {
          data = null; // S3 answers XML; the status says enough
        }
        reject(new HttpError(xhr.status, data));
      });
      const network = () => reject(new HttpError(0, { error: "network", detail: "The upload was interrupted." }));
      xhr.addEventListener("error", network);
      xhr.addEventListener("abort", network);
      xhr.send(form);
    });
  }

  // Our own message from the POST answer: shown at once if it is next, else the poll brings it.
  _deliverOwn(event) {
    const room = this.rooms.get(event.room);
    if (room && event.seq === room.cursor + 1) this._deliver(event.room, [event]);
  }

  _acked(clientId, ack) {
    const item = this.outbox.find((i) => i.client_id === clientId);
    if (!item) return;
    this.outbox = this.outbox.filter((i) => i !== item);
    this._saveOutbox();
    this._emit("ack", { ...ack, client_id: clientId, room: item.room });
  }

  _sendFailed(clientId, error) {
    const item = this.outbox.find((i) => i.client_id === clientId);
    if (!item) return;
    item.state = "failed";
    item.error = error.detail || error.code;
    item.via = null;
    if (PERMANENT.has(error.code)) {
      // Sending it again would fail the same way: the user decides (edit, retry or discard).
      item.manual = true;
    } else {
      const backoff = error.retry_after
        ? error.retry_after * 1000
        : Math.min(this.t.retryMax, this.t.retryMin * 2 ** Math.min(item.attempts - 1, 10));
      item.nextTry = Date.now() + jitter(backoff);
      this._later(`retry-${clientId}`, item.nextTry - Date.now(), () => this._flush());
    }
    this._saveOutbox();
    this._emit("outgoing", item);
  }

  // --- HTTP ---

  // The cookie is the current token (Django rotates it at login); the page's form has the one it
  // was rendered with, for when the cookie cannot be read.
  _csrf() {
    return cookie("csrftoken") || this.options.csrfToken;
  }

  // A path of the rooms API (under /api/rooms/).
  _api(path) {
    return this.options.roomsUrl + path;
  }

  _send(method, url, data = null, signal = undefined) {
    return request(method, url, { data, signal, csrf: this._csrf() });
  }
}
