// The open rooms and their cursors: the `seq` of the last event each has passed to the page.
//
// Whatever carries them (a socket, a long-poll, a resume, a POST answer), a room's events reach
// the page in seq order and each once: what the cursor already covers is dropped, a hole is read
// from the database before what follows it, and a cursor too old to resume makes the page reload
// its history ("resync") and go on from the room's seq.

export class Rooms {
  // emit(type, detail): "message" for each event in order, "resync" when history must be read
  // again. onHole(slug): a hole could not be read; whoever carries the events should ask again
  // from the cursor.
  constructor({ api, emit, onHole }) {
    this.api = api;
    this.emit = emit;
    this.onHole = onHole;
    this.rooms = new Map(); // slug -> {cursor, chain}
  }

  // Whether the room was not open yet.
  open(slug, cursor) {
    if (this.rooms.has(slug)) return false;
    this.rooms.set(slug, { cursor, chain: Promise.resolve() });
    return true;
  }

  close(slug) {
    return this.rooms.delete(slug);
  }

  get(slug) {
    return this.rooms.get(slug);
  }

  slugs() {
    return this.rooms.keys();
  }

  cursor(slug) {
    const room = this.rooms.get(slug);
    return room ? room.cursor : null;
  }

  // Deliveries of a room run one after another, so a gap fill finishes before the next event.
  deliver(slug, events) {
    const room = this.rooms.get(slug);
    if (!room) return Promise.resolve();
    room.chain = room.chain.then(() => this.apply(slug, room, events)).catch(() => {});
    return room.chain;
  }

  // Our own message from the POST answer: shown at once if it is next, else the poll brings it.
  deliverOwn(event) {
    const room = this.rooms.get(event.room);
    if (room && event.seq === room.cursor + 1) this.deliver(event.room, [event]);
  }

  resync(slug, seq) {
    const room = this.rooms.get(slug);
    if (!room) return Promise.resolve();
    room.chain = room.chain.then(() => this.reset(slug, room, seq)).catch(() => {});
    return room.chain;
  }

  async apply(slug, room, events) {
    for (const event of events) {
      if (event.seq <= room.cursor) continue; // already seen: a resume or fill overlap
      if (event.seq > room.cursor + 1) {
        // Something between was lost on the way: read it from the database, then go on.
        if (!(await this.fill(slug, room))) {
          // Not read: nothing moves past the hole. Ask again from the cursor; the answer brings
          // the hole and these events. (A long-poll loop does so anyway with its next request.)
          if (this.rooms.get(slug) === room) this.onHole(slug);
          return;
        }
        if (event.seq <= room.cursor) continue;
      }
      room.cursor = event.seq;
      this.emit("message", event);
    }
  }

  // Whether the events after the cursor could be read.
  async fill(slug, room) {
    let answer;
    try {
      answer = await this.api.get(`${slug}/messages?after=${room.cursor}`);
    } catch (err) {
      return false;
    }
    if (answer.resync) {
      this.reset(slug, room, answer.seq);
      return true;
    }
    for (const event of answer.messages) {
      if (event.seq <= room.cursor) continue;
      room.cursor = event.seq;
      this.emit("message", event);
    }
    room.cursor = Math.max(room.cursor, answer.seq);
    return true;
  }

  // The cursor is too old to resume: the page reloads history, and events go on after `seq`.
  reset(slug, room, seq) {
    room.cursor = seq;
    this.emit("resync", { room: slug, seq });
  }
}
