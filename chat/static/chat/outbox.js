// The outbox: messages written on this page that the server has not stored yet, keyed by their
// client_id. Every attempt, on any transport, carries the same client_id, so the server stores
// each exactly once however often it is retried.
//
// The queue is kept in sessionStorage, so a reload keeps it too. A File cannot go there: after a
// reload an upload that had not finished has to be attached again. An item is
//
//   pending    waiting for a connection (or for its next try)
//   uploading  its file is going up (a message with a file is sent once the file is checked)
//   sending    sent; waiting for the ack
//   failed     refused or unanswered: tried again later, unless `manual` (the user decides)
//
// A reply keeps what it answers in `quote` (the id, author and excerpt the page showed), so every
// attempt names the same parent and the message waiting to be sent can draw its quote.

import { failure } from "./http.js";
import { _ } from "./i18n.js";
import { jitter } from "./timing.js";

// Sending these again would fail the same way.
const PERMANENT = new Set(["bad_request", "forbidden", "not_found", "too_large", "unauthorized"]);

const LOST_FILE = _("The page was reloaded before the file was uploaded; attach it again.");

export function newClientId() {
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

export class Outbox {
  // link: what the outbox needs to know of the connection:
  //   offline()        no network: nothing is tried
  //   socket()         the working Socket (socket.js), or null
  //   polling()        long-polling carries the events, so messages are posted over HTTP
  //   delivered(event) our own message, from the answer to its POST
  // emit(type, detail): "outgoing" when an item changes, "ack" when the server has stored one.
  constructor({ user, timings, api, uploads, link, emit }) {
    this.t = timings;
    this.api = api;
    this.uploads = uploads;
    this.link = link;
    this.emit = emit;
    this.storageKey = `chat.outbox.${user || ""}`;
    this.items = this.load();
    this.timers = new Map(); // client_id -> the timer of its next automatic try
    this.flushing = false;
    this.ended = new Map(); // room (or "*" for every room) -> why it can take no more messages
  }

  // The server ended this user's access (a ban, a removal): what waits for the room, or for
  // every room when `room` is null, fails with the reason, and nothing more is tried there.
  end(room, reason) {
    this.ended.set(room || "*", reason);
    for (const item of this.items) {
      if (room && item.room !== room) continue;
      clearTimeout(this.timers.get(item.client_id));
      this.timers.delete(item.client_id);
      if (item.file) this.uploads.abort(item.file);
      Object.assign(item, { state: "failed", manual: true, error: reason, via: null });
      this.emit("outgoing", item);
    }
    this.save();
  }

  endedFor(room) {
    return this.ended.get(room) || this.ended.get("*") || null;
  }

  // `file` (optional) is uploaded first; the message then carries its attachment. `quote`
  // (optional) is the message it answers: {id, author, excerpt}.
  add(slug, body, file = null, quote = null) {
    const item = { client_id: newClientId(), room: slug, body, state: "pending", attempts: 0 };
    if (quote) item.quote = quote;
    if (file) {
      item.file = file;
      item.fileInfo = { name: file.name, size: file.size, content_type: file.type };
    }
    const ended = this.endedFor(slug);
    if (ended) Object.assign(item, { state: "failed", manual: true, error: ended });
    this.items.push(item);
    this.save();
    this.emit("outgoing", item);
    this.flush();
    return item;
  }

  forRoom(slug) {
    return this.items.filter((item) => item.room === slug);
  }

  find(clientId) {
    return this.items.find((item) => item.client_id === clientId);
  }

  retry(clientId) {
    const item = this.find(clientId);
    if (!item) return;
    if (needsUpload(item) && !item.file) {
      item.error = LOST_FILE;
      this.emit("outgoing", item);
      return;
    }
    const ended = this.endedFor(item.room);
    if (ended) {
      item.error = ended; // the server would refuse it again
      this.emit("outgoing", item);
      return;
    }
    item.state = "pending";
    item.error = null;
    item.nextTry = 0;
    item.manual = false;
    this.save();
    this.emit("outgoing", item);
    this.flush();
  }

  discard(clientId) {
    const item = this.find(clientId);
    if (item && item.file) this.uploads.abort(item.file);
    this.items = this.items.filter((i) => i.client_id !== clientId);
    this.save();
  }

  // A new connection: what waits for a retry goes now (except what the user must decide on).
  retryNow() {
    for (const item of this.items) if (!item.manual) item.nextTry = 0;
  }

  // Offline: nothing is tried until a connection is back, and that one sends everything due.
  pause() {
    for (const timer of this.timers.values()) clearTimeout(timer);
    this.timers.clear();
  }

  // What was sent on a socket that closed gets no ack now: it goes again on the next connection.
  socketClosed(socket) {
    for (const item of this.items) if (item.state === "sending" && item.via === socket) item.state = "pending";
  }

  flush() {
    if (this.link.offline()) return;
    // Uploads go over HTTP whatever carries the events. A text sent while a file uploads does not
    // wait for it: the message with the file is posted, and takes its place, when the file is ready.
    for (const item of this.items) {
      if (needsUpload(item) && item.state === "pending" && item.file) this.upload(item);
    }
    if (this.flushing) return;
    const now = Date.now();
    const ready = this.items.filter((i) => due(i, now));
    if (!ready.length) return;
    const socket = this.link.socket();
    if (socket) {
      // Frames on one socket are handled in order, so the queue goes out at once.
      for (const item of ready) {
        item.state = "sending";
        item.via = socket;
        item.attempts += 1;
        const frame = { action: "sendmessage", room: item.room, body: item.body, client_id: item.client_id };
        if (item.attachment) frame.attachment = item.attachment.id;
        if (item.quote) frame.reply_to = item.quote.id;
        socket.send(frame);
        setTimeout(() => {
          if (item.state === "sending" && item.via === socket) {
            this.failed(item.client_id, { code: "timeout", detail: _("No answer from the server.") });
          }
        }, this.t.ackTimeout);
      }
    } else if (this.link.polling()) {
      this.flushHttp();
    }
  }

  // Over HTTP one at a time, so the messages keep their order.
  async flushHttp() {
    this.flushing = true;
    try {
      for (;;) {
        const now = Date.now();
        const item = this.items.find((i) => due(i, now));
        if (!item || this.link.socket() || this.link.offline()) break;
        item.state = "sending";
        item.via = "http";
        item.attempts += 1;
        try {
          const data = { body: item.body, client_id: item.client_id };
          if (item.attachment) data.attachment = item.attachment.id;
          if (item.quote) data.reply_to = item.quote.id;
          const event = await this.api.send("POST", this.api.url(`${item.room}/messages`), data);
          this.acked(item.client_id, event);
          this.link.delivered(event);
        } catch (err) {
          this.failed(item.client_id, failure(err));
        }
      }
    } finally {
      this.flushing = false;
    }
    // Upgraded to a socket in the meantime: what is left goes that way.
    if (this.link.socket()) this.flush();
  }

  // A failed upload is the user's to retry or discard: sending a large file again on its own
  // could cost a lot of data, and most failures (type, size, quota) would only repeat.
  async upload(item) {
    item.state = "uploading";
    item.progress = 0;
    item.error = null;
    this.emit("outgoing", item);
    try {
      const attachment = await this.uploads.upload(item.file, item.fileInfo, (fraction) => {
        item.progress = fraction;
        this.emit("outgoing", item);
      });
      if (!this.items.includes(item)) return; // discarded meanwhile
      item.attachment = attachment;
      item.file = null;
      item.state = "pending";
      item.progress = null;
      this.save();
      this.emit("outgoing", item);
      this.flush();
    } catch (err) {
      if (!this.items.includes(item)) return;
      item.state = "failed";
      item.manual = true;
      item.progress = null;
      item.error = err.message || _("The file could not be uploaded.");
      this.save();
      this.emit("outgoing", item);
    }
  }

  // Whether the ack was for one of ours.
  acked(clientId, ack) {
    const item = this.find(clientId);
    if (!item) return false;
    this.items = this.items.filter((i) => i !== item);
    this.save();
    this.emit("ack", { ...ack, client_id: clientId, room: item.room });
    return true;
  }

  failed(clientId, error) {
    const item = this.find(clientId);
    if (!item) return;
    item.state = "failed";
    item.error = error.detail || error.code;
    item.via = null;
    if (PERMANENT.has(error.code)) {
      // The user decides (edit, retry or discard).
      item.manual = true;
    } else {
      const backoff = error.retry_after
        ? error.retry_after * 1000
        : Math.min(this.t.retryMax, this.t.retryMin * 2 ** Math.min(item.attempts - 1, 10));
      item.nextTry = Date.now() + jitter(backoff);
      this.later(clientId, item.nextTry - Date.now());
    }
    this.save();
    this.emit("outgoing", item);
  }

  later(clientId, ms) {
    clearTimeout(this.timers.get(clientId));
    this.timers.set(
      clientId,
      setTimeout(() => {
        this.timers.delete(clientId);
        this.flush();
      }, ms),
    );
  }

  load() {
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

  save() {
    try {
      const keep = this.items.map(({ client_id, room, body, manual, error, fileInfo, attachment, quote }) => ({
        client_id,
        room,
        body,
        manual,
        error,
        fileInfo,
        attachment,
        quote,
      }));
      sessionStorage.setItem(this.storageKey, JSON.stringify(keep));
    } catch (err) {
      // storage full or disabled: the queue still lives in memory
    }
  }
}
