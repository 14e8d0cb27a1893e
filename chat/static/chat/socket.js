// One WebSocket connection, from opening to closing. It counts as working ("alive") once the
// server answers its first frame, is pinged so that a connection that died without a close is
// found, and is closed before API Gateway's two-hour limit would end it mid-conversation. What a
// close means (reconnect, fall back, probe again later) is the channel's to decide; this only
// says how it ended.

export class Socket {
  // url: the WebSocket URL with its token. onAlive(socket): the first frame arrived.
  // onEvent(event): every frame, parsed. onClose(socket): called once, however it ended; then
  // `alive` says whether it ever worked and `timedOut` whether it never answered.
  constructor(url, timings, { onAlive, onEvent, onClose }) {
    this.t = timings;
    this.onAlive = onAlive;
    this.onEvent = onEvent;
    this.onClose = onClose;
    this.alive = false;
    this.timedOut = false;
    this.closed = false;
    this.timers = {};
    this.ws = new WebSocket(url); // throws on a URL the browser refuses
    this.later("open", this.t.wsTimeout, () => {
      if (this.alive) return;
      this.timedOut = true;
      this.drop();
    });
    this.ws.onopen = () => this.ws.send(JSON.stringify({ action: "ping" }));
    this.ws.onmessage = (e) => this.frame(e.data);
    this.ws.onclose = () => this.closedNow();
  }

  get ready() {
    return !this.closed && this.alive && this.ws.readyState === WebSocket.OPEN;
  }

  send(frame) {
    if (this.closed || this.ws.readyState !== WebSocket.OPEN) return false;
    this.ws.send(JSON.stringify(frame));
    return true;
  }

  // Given up on from this side: the close is handled now, not when the browser gets to it.
  drop() {
    try {
      this.ws.close(4000, "client closing");
    } catch (err) {
      // already closed
    }
    this.closedNow();
  }

  frame(text) {
    if (this.closed) return;
    let event;
    try {
      event = JSON.parse(text);
    } catch (err) {
      return;
    }
    this.clear("pong");
    if (!this.alive) {
      this.alive = true;
      this.clear("open");
      this.heartbeat();
      this.later("rotate", this.t.maxLifetime, () => this.ws.close(4000, "rotating before the gateway's limit"));
      this.onAlive(this);
    }
    this.onEvent(event);
  }

  heartbeat() {
    this.later("ping", this.t.heartbeat, () => {
      this.send({ action: "ping" });
      // Any frame clears this; the first unanswered ping starts the count.
      if (!this.timers.pong) this.later("pong", this.t.pongTimeout, () => this.drop());
      this.heartbeat();
    });
  }

  closedNow() {
    if (this.closed) return;
    this.closed = true;
    for (const name of Object.keys(this.timers)) this.clear(name);
    this.onClose(this);
  }

  clear(name) {
    clearTimeout(this.timers[name]);
    delete this.timers[name];
  }

  later(name, ms, fn) {
    this.clear(name);
    this.timers[name] = setTimeout(() => {
      delete this.timers[name];
      fn();
    }, ms);
  }
}
