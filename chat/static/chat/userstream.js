// The user's own stream: `notify` events about rooms the page does not have open (mentions,
// direct messages, unread counts), each with its place in the stream, `user_seq`.
//
// The rooms list (GET /api/rooms/) says where the stream was when the counts were read; from there
// each event is passed on once and in order, whichever transport brought it: a WebSocket receives
// them without subscribing, and `resume_user` replays what it missed while it was away; a page
// without one long-polls GET /api/me/poll. An event at or below the cursor is a repeat (a replay
// overlapping live events, another tab's resume) and is dropped; one past a hole asks for the hole
// first. A cursor too old to replay reads the rooms list again ("resync").

import { request } from "./http.js";
import { jitter } from "./timing.js";

export class UserStream {
  // api: the rooms API (http.js Api); pollUrl: /api/me/poll; timings: pollTimeout (seconds).
  // send(frame): put a frame on the socket, false when there is none ready.
  // polling(): whether long-polling carries the events now.
  // emit(type, detail): "rooms" after every (re)load ({rooms, askedAt}: the list, and the
  // performance.now() it was asked at), "notify" for each event.
  constructor({ api, pollUrl, timings, send, polling, emit }) {
    this.api = api;
    this.pollUrl = pollUrl;
    this.t = timings;
    this.send = send;
    this.polling = polling;
    this.emit = emit;
    this.cursor = null; // the last user_seq passed on; null until the rooms list is read
    this.held = []; // events that came before the rooms list
    this.loading = null;
    this.asked = null; // the cursor a resume_user was sent from, until its answer
    this.gen = 0; // the newest poll loop
    this.abort = null;
  }

  // The rooms list, and the stream's position with it. Retried until it is read: without it the
  // page has no counts and no cursor to go on from.
  load() {
    if (this.loading) return this.loading;
    this.cursor = null;
    this.loading = (async () => {
      for (let attempt = 1; ; attempt += 1) {
        try {
          const askedAt = performance.now();
          const answer = await this.api.get("");
          this.cursor = answer.user_seq;
          this.emit("rooms", { rooms: answer.rooms, askedAt });
          break;
        } catch (err) {
          await new Promise((r) => setTimeout(r, jitter(Math.min(30000, 500 * 2 ** attempt))));
        }
      }
      this.loading = null;
      const held = this.held;
      this.held = [];
      for (const event of held) this.deliver(event);
      // What happened between the list and the socket's connect comes with a resume.
      this.resume();
    })();
    return this.loading;
  }

  // From a socket or a poll answer.
  deliver(event) {
    if (this.cursor == null) {
      this.held.push(event);
      return;
    }
    if (event.user_seq <= this.cursor) return;
    if (event.user_seq > this.cursor + 1) {
      // Lost on the way (the live path is at most once): the replay brings it and this one.
      if (this.asked !== this.cursor) this.resume();
      return;
    }
    this.cursor = event.user_seq;
    this.emit("notify", event);
  }

  // A socket is up (or a hole was found): ask for everything after the cursor.
  resume() {
    if (this.cursor == null || this.polling()) return;
    if (this.send({ action: "resume_user", after: this.cursor })) this.asked = this.cursor;
  }

  // The answer to resume_user: the replay follows, or the cursor is too old for one.
  resumed(event) {
    this.asked = null;
    if (event.reason === "resync") this.load();
  }

  socketClosed() {
    this.asked = null;
  }

  // Long-polling: one loop, from the cursor, until stop() or a switch to WebSocket.
  async poll() {
    this.gen += 1;
    const gen = this.gen;
    const current = () => gen === this.gen && this.polling();
    let errors = 0;
    while (current()) {
      if (this.cursor == null) await this.load();
      if (!current()) break;
      const abort = new AbortController();
      this.abort = abort;
      const url = `${this.pollUrl}?after=${this.cursor}&timeout=${this.t.pollTimeout}`;
      try {
        const answer = await request("GET", url, { signal: abort.signal });
        errors = 0;
        if (!current()) break;
        if (answer.resync) {
          await this.load();
          continue;
        }
        for (const event of answer.events) this.deliver(event);
        if (this.cursor != null && answer.user_seq > this.cursor) this.cursor = answer.user_seq;
      } catch (err) {
        if (abort.signal.aborted || !current()) break;
        errors += 1;
        await new Promise((r) => setTimeout(r, jitter(Math.min(10000, 500 * 2 ** errors))));
      }
    }
  }

  stop() {
    this.gen += 1;
    if (this.abort) this.abort.abort();
    this.abort = null;
  }
}
