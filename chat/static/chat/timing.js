// How long the client waits for what, in one place. The page may override any of these (room.js
// reads them from the query string; the browser tests use short ones).

export const DEFAULT_TIMINGS = {
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

// Somewhere between half the delay and all of it, so that the clients a server restart cut off
// together do not all come back in the same instant.
export function jitter(ms) {
  return Math.round(ms / 2 + Math.random() * (ms / 2));
}
