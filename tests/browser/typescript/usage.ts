// Compiled with `tsc --noEmit --strict` by tests/browser/test_builds.py: the
// declarations say what docs/client.rst says, and are not `any`.
import SSEKeepalive, {
  EventStreamParser,
  SSEKeepalive as Named,
  type SSEKeepaliveOptions,
  type SSEKeepaliveState,
} from "../../../flask_sse_keepalive/static/sse-keepalive";

const options: SSEKeepaliveOptions = {
  lastEventId: "e1-7",
  persist: true,
  withCredentials: false,
  resumeVia: "auto",
  retry: 3000,
  maxRetry: 30000,
  heartbeat: "auto",
  heartbeatMin: 1,
  heartbeatBase: null,
  stableIntervals: 10,
  heartbeatInterval: null,
  watchdogFactor: 2.5,
  connectTimeout: 30000,
  stopOn: [204, 400, 401, 403, 404],
  headers: () => ({ Authorization: "Bearer x" }),
  pauseOffline: true,
  failover: ["https://backup.example/stream", new URL("https://other.example/stream")],
  failoverAfter: 3,
  onReset: (event) => event.data.length,
  fetch: (input, init) => fetch(input, init),
};

const client: Named = new SSEKeepalive("/stream?channel=prices", options);
const state: SSEKeepaliveState = client.state;
const ready: 0 | 1 | 2 = client.readyState;
const counts: number = client.stats.connects + client.stats.failovers + client.stats.resets;
const where: string = client.currentUrl + client.url + client.lastEventId;
const interval: number | null = client.heartbeatInterval;
const retry: number = client.retry;

client.addEventListener("tick", (event) => JSON.parse(event.data));
client.addEventListener("message", (event) => event.lastEventId + event.origin);
client.addEventListener("stream-reset", (event) => event.data);
client.addEventListener("statechange", (event) => {
  const now: SSEKeepaliveState = event.state;
  if (event.state === "reconnecting") return [event.delay, event.attempt, event.url, now];
  return event.reason === "heartbeat" || event.reason === "online";
});
client.addEventListener("error", (event) => event.willRetry && event.reason === "watchdog");
client.addEventListener("heartbeat", (event) => event.count);
client.addEventListener("offline", (event) => event.willRetry);
client.onmessage = (event) => event.data;
client.onerror = (event) => event.status;
client.onopen = (event) => event.state;
client.onreset = null;
client.close();

const version: string = SSEKeepalive.version;
const closed: 2 = SSEKeepalive.CLOSED;
const same: typeof SSEKeepalive = SSEKeepalive.SSEKeepalive;
const wait: number | null = SSEKeepalive.parseRetryAfter("120");

const parser = new SSEKeepalive.EventStreamParser({
  onEvent: (type, data, lastEventId) => type + data + lastEventId,
  onComment: (text) => text,
  onRetry: (ms) => ms * 2,
  onLastEventId: (id) => id,
});
parser.feed(new Uint8Array([100, 97, 116, 97, 10, 10]));
parser.feed("data: x\n\n");
parser.end();
const alsoParser: EventStreamParser = new EventStreamParser();
const lastId: string = alsoParser.lastEventId;

// @ts-expect-error: an option that does not exist
new SSEKeepalive("/stream", { heartbeats: "auto" });
// @ts-expect-error: heartbeat is "auto", seconds or false
new SSEKeepalive("/stream", { heartbeat: "fast" });
// @ts-expect-error: not a state
const wrong: SSEKeepaliveState = "paused";
// @ts-expect-error: read-only
client.state = "open";
// @ts-expect-error: a state event has no data
client.addEventListener("reconnecting", (event) => event.data);

export { counts, interval, lastId, ready, retry, same, state, version, wait, where, closed, wrong };
