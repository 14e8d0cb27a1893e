// Long-polling, for networks where WebSockets do not work: one loop per open room asks for the
// events after the room's cursor. The server answers at once when there are some, else holds the
// request and answers empty before any gateway would time out; a cursor too old gets "resync".

import { jitter } from "./timing.js";

export class LongPoll {
  // rooms: the cursors (cursors.js). active(): whether long-polling carries the events now.
  // dispatch(event): an event that is not a message, as if it came on a socket.
  // onAnswer() / onTrouble(): the server answered / did not answer twice in a row.
  // emit(type, detail): "error" when the room is gone or closed to this user.
  constructor({ api, rooms, timings, active, dispatch, onAnswer, onTrouble, emit }) {
    this.api = api;
    this.rooms = rooms;
    this.t = timings;
    this.active = active;
    this.dispatch = dispatch;
    this.onAnswer = onAnswer;
    this.onTrouble = onTrouble;
    this.emit = emit;
    this.loops = new Map(); // slug -> {gen, abort}: the newest loop of the room, and its request
  }

  stop(slug) {
    const loop = this.loops.get(slug);
    if (!loop) return;
    loop.gen += 1;
    if (loop.abort) loop.abort.abort();
    loop.abort = null;
  }

  stopAll() {
    for (const slug of this.loops.keys()) this.stop(slug);
  }

  // A newer loop (after a stop or a switch) makes the older one end.
  async start(slug) {
    const room = this.rooms.get(slug);
    if (!room) return;
    if (!this.loops.has(slug)) this.loops.set(slug, { gen: 0, abort: null });
    const loop = this.loops.get(slug);
    loop.gen += 1;
    const gen = loop.gen;
    const current = () => this.rooms.get(slug) === room && loop.gen === gen && this.active();
    let errors = 0;
    try {
      while (current()) {
        const abort = new AbortController();
        loop.abort = abort;
        // Wait for any delivery in progress (a gap fill) so the cursor is current.
        await room.chain;
        if (!current()) break;
        const query = `after=${room.cursor}&timeout=${this.t.pollTimeout}`;
        try {
          const answer = await this.api.get(`${slug}/poll?${query}`, abort.signal);
          errors = 0;
          if (!current()) break;
          this.onAnswer();
          await this.handle(slug, answer);
        } catch (err) {
          if (abort.signal.aborted || !current()) break;
          if (err.status === 404 || err.status === 403) {
            this.emit("error", { code: err.code, detail: err.message, room: slug });
            break;
          }
          errors += 1;
          if (errors > 1) this.onTrouble();
          await new Promise((r) => setTimeout(r, jitter(Math.min(10000, 500 * 2 ** errors))));
        }
      }
    } finally {
      if (loop.gen === gen) loop.abort = null;
    }
  }

  async handle(slug, answer) {
    if (answer.resync) {
      await this.rooms.resync(slug, answer.seq);
    } else {
      const messages = answer.events.filter((e) => e.type === "message");
      for (const event of answer.events) {
        // answer.room and answer.presence (below) are the latest of these
        if (event.type === "message") continue;
        if (event.type === "room" && answer.room) continue;
        if (event.type === "presence" && answer.presence) continue;
        this.dispatch(event);
      }
      if (messages.length) await this.rooms.deliver(slug, messages);
    }
    // Every answer carries the room's state: a lock or rename published between two polls
    // reached nobody, and no cursor replays it.
    if (answer.room) this.dispatch(answer.room);
    // ...and who is online, which a quiet room would otherwise never tell a poller.
    if (answer.presence) this.dispatch(answer.presence);
  }
}
