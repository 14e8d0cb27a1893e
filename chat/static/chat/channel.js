// The channel: the page's one connection to the chat, whatever the network allows.
//
// It knows nothing about the page. The page tells it which rooms are open (with their cursor, the
// last `seq` it has) and what to send; it emits the protocol's events (shared/protocol.md) in `seq`
// order, without gaps or duplicates (cursors.js), and the connection state for the badge:
//
//   connecting    the first attempt, right after the page loads
//   live          a WebSocket is up (the token endpoint says where: Channels or API Gateway)
//   fallback      WebSockets do not work here; long-polling carries the same events
//   reconnecting  trying to get either back
//   offline       the browser says there is no network; nothing is tried until it comes back
//   ended         the server ended this user's connections for good (a site ban): nothing more
//                 is tried, and what waits to be sent fails with the server's reason
//
// A ban or removal from one room ends only that room ("ended" with its `room`): its pending
// messages fail with the reason, and the connection carries on for the rest.
//
// WebSocket first. An attempt that gets no frame back within `wsTimeout`, or two failures in a row,
// switches to long-polling; WebSocket is then probed in the background (exponential backoff, full
// jitter) and the channel upgrades back as soon as a probe answers. On every connection or switch
// each open room is resumed from its cursor, and the outbox (outbox.js) sends what waits.
//
// The user's own stream (userstream.js) rides on the same connection: a socket receives it
// without subscribing and resumes it with `resume_user`; long-polling adds one loop for it.

import { Rooms } from "./cursors.js";
import { Api, failure } from "./http.js";
import { _ } from "./i18n.js";
import { LongPoll } from "./longpoll.js";
import { Outbox, newClientId } from "./outbox.js";
import { Socket } from "./socket.js";
import { DEFAULT_TIMINGS, jitter } from "./timing.js";
import { Uploads } from "./uploads.js";
import { UserStream } from "./userstream.js";

export class Channel extends EventTarget {
  // options: tokenUrl, roomsUrl (the /api/rooms/ prefix), userPollUrl (/api/me/poll),
  // attachmentsUrl, completeUrl (see uploads.js), csrfToken, user, timings (see timing.js),
  // forcePoll
  constructor(options) {
    super();
    this.options = options;
    this.t = { ...DEFAULT_TIMINGS, ...(options.timings || {}) };
    this.state = "connecting";
    this.mode = "ws"; // "ws" | "poll": what carries the events now
    this.socket = null;
    this.connecting = false; // a token is being asked for
    this.failures = 0;
    this.probes = 0;
    this.timers = {};
    this.started = false;
    // client_id -> {resolve, reject, timer, socket} of a report, edit or delete sent on a socket
    this.requests = new Map();
    const emit = (type, detail) => this._emit(type, detail);
    this.api = new Api(options.roomsUrl, options.csrfToken);
    this.rooms = new Rooms({
      api: this.api,
      emit,
      onHole: (slug) => this._ready() && this._subscribe(slug),
    });
    this.poll = new LongPoll({
      api: this.api,
      rooms: this.rooms,
      timings: this.t,
      active: () => this.mode === "poll" && this.state !== "offline",
      dispatch: (event) => this._dispatch(event),
      onAnswer: () => this._setState("fallback"),
      onTrouble: () => this._setState("reconnecting"),
      // A poll refused with 403 is the same ban as a socket's error event.
      emit: (type, detail) =>
        type === "error" && detail.code === "forbidden" && detail.room ? this._ended(detail) : emit(type, detail),
    });
    // Emits "rooms" (the rooms list, at start and after a resync) and "notify".
    this.user = new UserStream({
      api: this.api,
      pollUrl: options.userPollUrl,
      timings: this.t,
      send: (frame) => this._ready() && this.socket.send(frame),
      polling: () => this.mode === "poll" && this.state !== "offline",
      emit,
    });
    this.outbox = new Outbox({
      user: options.user,
      timings: this.t,
      api: this.api,
      uploads: new Uploads(this.api, options),
      link: {
        offline: () => this.state === "offline",
        socket: () => (this._ready() ? this.socket : null),
        polling: () => this.mode === "poll",
        delivered: (event) => this.rooms.deliverOwn(event),
      },
      emit,
    });
  }

  // --- for the page ---

  start() {
    if (this.started) return;
    this.started = true;
    window.addEventListener("online", () => this._online());
    window.addEventListener("offline", () => this._offline());
    this.user.load();
    if (navigator.onLine === false) {
      this._setState("offline");
      return;
    }
    if (this.options.forcePoll) this._fallback();
    else this._connect();
  }

  // Receive a room's events from `cursor` on (the room's seq when its history was read).
  open(slug, cursor) {
    if (!this.rooms.open(slug, cursor)) return;
    if (this._ready()) this._subscribe(slug);
    else if (this.mode === "poll" && this.state !== "offline") this.poll.start(slug);
  }

  close(slug) {
    if (!this.rooms.close(slug)) return;
    this.poll.stop(slug);
    if (this._ready()) this.socket.send({ action: "unsubscribe", room: slug });
  }

  cursor(slug) {
    return this.rooms.cursor(slug);
  }

  // `file` (optional) is uploaded first; the message then carries its attachment. `quote`
  // (optional) is the message it answers, {id, author, excerpt}: it goes as `reply_to`.
  send(slug, body, file = null, quote = null) {
    return this.outbox.add(slug, body, file, quote);
  }

  pending(slug) {
    return this.outbox.forRoom(slug);
  }

  retry(clientId) {
    this.outbox.retry(clientId);
  }

  discard(clientId) {
    this.outbox.discard(clientId);
  }

  // Report someone's message to the room's moderators. Resolves when the server has it; rejects
  // with {code, detail} otherwise. Not queued: the user is looking at the answer.
  report(slug, id, reason) {
    if (this._ready()) return this._request({ action: "report", room: slug, id, reason });
    return this._overHttp("POST", `${slug}/messages/${id}/report`, { reason });
  }

  // Edit or delete one's own message. Resolves with the server's answer: over a socket an `ack`
  // (its `seq` is the change's; the changed `message` event follows, as for every subscriber),
  // over HTTP the changed `message` event itself (the poll brings it too). Rejects with
  // {code, detail}. Not queued either: a change that waited for the network could land after the
  // edit window, or after the user stopped looking, and the server's refusal would reach nobody.
  edit(slug, id, body) {
    if (this._ready()) return this._request({ action: "editmessage", room: slug, id, body });
    return this._overHttp("PATCH", `${slug}/messages/${id}`, { body });
  }

  remove(slug, id) {
    if (this._ready()) return this._request({ action: "deletemessage", room: slug, id });
    return this._overHttp("DELETE", `${slug}/messages/${id}`);
  }

  // Toggle one's reaction; resolves like edit (an ack, or the message event over HTTP).
  react(slug, id, emoji) {
    if (this._ready()) return this._request({ action: "react", room: slug, id, emoji });
    return this._overHttp("POST", `${slug}/messages/${id}/reactions`, { emoji });
  }

  typing(slug) {
    if (this._ready()) this.socket.send({ action: "typing", room: slug });
    else if (this.state === "fallback") this.api.send("POST", this.api.url(`${slug}/typing`), {}).catch(() => {});
  }

  read(slug, seq) {
    if (this._ready()) this.socket.send({ action: "read", room: slug, seq });
    else if (this.state !== "offline") this.api.send("POST", this.api.url(`${slug}/read`), { seq }).catch(() => {});
  }

  // The JSON API, for the page (history pages, the rooms list).
  get(path, signal) {
    return this.api.get(path, signal);
  }

  // --- state ---

  _setState(state) {
    if (this.state === state) return;
    this.state = state;
    this._emit("state", { state, mode: this.mode });
    // The one place a new connection sends what waits.
    if (state === "live" || state === "fallback") this.outbox.flush();
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
    this.outbox.pause();
    this.poll.stopAll();
    this.user.stop();
    if (this.socket) this.socket.drop();
  }

  _online() {
    if (this.state !== "offline" || this.fatal) return;
    this.failures = 0;
    this.mode = "ws";
    this._setState("reconnecting");
    // Try WebSocket first again: the new network may allow it.
    this._connect();
  }

  // --- WebSocket ---

  _ready() {
    return Boolean(this.socket && this.socket.ready);
  }

  // One attempt. As the main connection (`probe` false) a failure counts towards falling back;
  // as a background probe while long-polling, it only schedules the next probe.
  async _connect(probe = false) {
    if (this.state === "offline" || this.fatal || this.socket || this.connecting) return;
    if (!probe && this.state !== "connecting") this._setState("reconnecting");
    let info;
    this.connecting = true;
    try {
      info = await this.api.send("POST", this.options.tokenUrl);
    } catch (err) {
      this.connecting = false;
      if (err.status === 403) {
        // A site ban: no token, now or later.
        this._ended({ code: "forbidden", detail: err.message || _("You are banned."), fatal: true });
        return;
      }
      if (err.status === 401) {
        this._setState("offline");
        this._emit("error", { code: "unauthorized", detail: _("Log in again.") });
        return;
      }
      this._failed(probe);
      return;
    }
    this.connecting = false;
    if (this.state === "offline" || this.socket) return;
    const url = new URL(info.ws_url, location.href);
    url.searchParams.set("token", info.token);
    try {
      this.socket = new Socket(url.href, this.t, {
        onAlive: (socket) => this._upgraded(socket),
        onEvent: (event) => this._dispatch(event),
        onClose: (socket) => this._closed(socket, probe),
      });
    } catch (err) {
      this._failed(probe);
    }
  }

  // The socket answered: it carries everything from now on.
  _upgraded(socket) {
    this.outbox.retryNow();
    this.failures = 0;
    this.probes = 0;
    this.mode = "ws";
    this._clear("probe");
    this._clear("reconnect");
    this.poll.stopAll();
    this.user.stop();
    this._setState("live");
    for (const slug of this.rooms.slugs()) this._subscribe(slug);
    this.user.resume();
    this._emit("connected", { mode: "ws" });
  }

  _closed(socket, probe) {
    if (this.socket === socket) this.socket = null;
    this.outbox.socketClosed(socket);
    this.user.socketClosed();
    // A report, edit or delete sent on this socket gets no answer now: the user hears so at once.
    for (const [clientId, waiting] of this.requests) {
      if (waiting.socket !== socket) continue;
      this._answered(clientId, { code: "network", detail: _("The connection was lost; try again.") }, "reject");
    }
    if (this.state === "offline" || this.fatal) return;
    if (socket.alive) {
      // A working socket went away (server restart, API Gateway's 2-hour limit, rotation):
      // reconnect at once; it only counts as a failure if the next attempt fails too.
      this.failures = 0;
      this.mode = "ws";
      this._setState("reconnecting");
      this._later("reconnect", jitter(500), () => this._connect());
      return;
    }
    if (socket.timedOut && this.mode === "ws") {
      // A socket that cannot open within seconds is a network that holds WebSockets: do not
      // make the user wait for a second attempt.
      this._fallback();
      return;
    }
    this._failed(probe || this.mode === "poll");
  }

  _failed(probe) {
    if (this.state === "offline" || this.fatal) return;
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

  _subscribe(slug) {
    this.socket.send({ action: "subscribe", room: slug, after: this.rooms.cursor(slug) });
  }

  // A frame that the server answers to this client alone: an `ack` or an `error` with its
  // client_id. The socket closing answers it too (a network error).
  _request(frame) {
    const clientId = newClientId();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.requests.delete(clientId);
        reject({ code: "timeout", detail: _("No answer from the server; try again.") });
      }, this.t.ackTimeout);
      this.requests.set(clientId, { resolve, reject, timer, socket: this.socket });
      this.socket.send({ ...frame, client_id: clientId });
    });
  }

  _answered(clientId, event, how) {
    const waiting = clientId && this.requests.get(clientId);
    if (!waiting) return false;
    this.requests.delete(clientId);
    clearTimeout(waiting.timer);
    waiting[how](event);
    return true;
  }

  // Protocol events from the socket (and, except messages, from long-poll answers), by type.
  _dispatch(event) {
    switch (event.type) {
      case "message":
        this.rooms.deliver(event.room, [event]);
        break;
      case "subscribed":
        if (event.reason === "resync") this.rooms.resync(event.room, event.seq);
        break;
      case "ack":
        if (this._answered(event.client_id, event, "resolve")) break;
        this.outbox.acked(event.client_id, event);
        break;
      case "error":
        if (this._answered(event.client_id, event, "reject")) break;
        if (event.client_id) this.outbox.failed(event.client_id, event);
        // A ban (fatal), a room that refuses this user (banned from it, or no longer a member).
        else if (event.fatal || (event.code === "forbidden" && event.room)) this._ended(event);
        else this._emit("error", event);
        break;
      case "notify":
        this.user.deliver(event);
        break;
      case "user_resumed":
        this.user.resumed(event);
        break;
      case "pong":
        break;
      default:
        // typing, presence, room, unsubscribed: ephemeral, straight to the page
        this._emit(event.type, event);
    }
  }

  // The user's stream said this user was removed from `room`: ended as the server's own refusal
  // would end it (which may come later, or not at all on this page, and is then not told twice).
  endRoom(room, reason) {
    this._ended({ code: "forbidden", detail: reason, room });
  }

  // The server ended this user's access: to one room (with `room`), or to everything (a site
  // ban, or a fatal error without a room). Emits "ended" {room, code, detail}.
  _ended(event) {
    const room = event.room || null;
    const reason = event.detail || _("The server closed the connection.");
    if (!room && event.code === "unauthorized") {
      this._emit("error", event); // serverless "reconnect with a new token": reconnecting does
      return;
    }
    if (this.fatal || (room && this.outbox.ended.has(room))) return; // told already
    this.outbox.end(room, reason);
    if (room) {
      this.close(room);
    } else {
      // Nothing is tried again: a new token or socket would be refused the same way.
      this.fatal = event;
      for (const name of Object.keys(this.timers)) this._clear(name);
      this.poll.stopAll();
      this.user.stop();
      if (this.socket) this.socket.drop();
      this._setState("ended");
    }
    this._emit("ended", { room, code: event.code, detail: reason });
  }

  // --- long-polling ---

  _fallback() {
    this.outbox.retryNow();
    this.mode = "poll";
    this._setState("fallback");
    this._emit("connected", { mode: "poll" });
    for (const slug of this.rooms.slugs()) this.poll.start(slug);
    this.user.poll();
    this.probes = 0;
    if (!this.options.forcePoll) this._failed(true);
  }

  _overHttp(method, path, data = null) {
    return this.api.send(method, this.api.url(path), data).catch((err) => {
      throw failure(err);
    });
  }
}
