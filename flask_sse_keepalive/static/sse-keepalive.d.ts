// Type declarations for sse-keepalive.mjs (and sse-keepalive.js, whose
// CommonJS export is the same class, carrying the same names as properties).
// Written by hand: docs/client.rst is the reference; a test checks that every
// option, event and method it documents is declared here.

/** The connection states, in `state` and in each state event's `state`. */
export type SSEKeepaliveState = "connecting" | "open" | "reconnecting" | "offline" | "closed";

/** Why a connection was lost or refused (`reason` of "error" and "reconnecting"). */
export type SSEKeepaliveErrorReason = "network" | "eof" | "watchdog" | "timeout" | "http";

/** `reason` of a state event: a loss, or why the client moved on its own. */
export type SSEKeepaliveStateReason =
  | SSEKeepaliveErrorReason
  | "close"
  | "offline"
  | "online"
  | "heartbeat";

export interface SSEKeepaliveOptions {
  /** Resume from this id on the first connect. */
  lastEventId?: string | null;
  /** Keep the last event id in sessionStorage: `true` (key "sse-keepalive:" + url) or a key. */
  persist?: boolean | string;
  /** Send cookies cross-origin (credentials: "include"). */
  withCredentials?: boolean;
  /** Where the resume point goes. Default "auto": the header same-origin, the query elsewhere. */
  resumeVia?: "auto" | "header" | "query";
  /** Reconnection time in ms until the server sends its own. Default 3000. */
  retry?: number;
  /** The cap of the backoff, in ms. Default 30000. */
  maxRetry?: number;
  /**
   * "auto" (the default): ask for a shorter heartbeat after a lost line and
   * return to the base once stable. A number: always ask for that many
   * seconds. `false`: never ask (the server's default).
   */
  heartbeat?: "auto" | number | false;
  /** Seconds: "auto" never asks for less (nor less than the server grants). Default 1. */
  heartbeatMin?: number;
  /** Seconds: the interval "auto" returns to. Default: the server's, as first announced. */
  heartbeatBase?: number | null;
  /** Heartbeat intervals without a miss after which "auto" doubles back. Default 10. */
  stableIntervals?: number;
  /** Seconds, for a server that does not announce its interval. */
  heartbeatInterval?: number | null;
  /** Heartbeat intervals of silence that mean a dead line; 0 turns the watchdog off. Default 2.5. */
  watchdogFactor?: number;
  /** Milliseconds to wait for the response and its first bytes. Default 30000. */
  connectTimeout?: number;
  /** Statuses that stop the client for good. Default [204, 400, 401, 403, 404]. */
  stopOn?: number[];
  /** Extra request headers, or a function returning them, evaluated on every connect. */
  headers?: Record<string, string> | (() => Record<string, string>) | null;
  /**
   * A subscribe token (sse.token() on the server), sent as ?token=, or a
   * function returning one or a promise of one, called before every connect;
   * after a 401 a function is called once more, at once. Default null.
   */
  token?: string | (() => string | Promise<string>) | null;
  /** While navigator.onLine is false, wait for "online" instead of retrying. Default true. */
  pauseOffline?: boolean;
  /** URLs to fail over to, in order, after the current one keeps failing. */
  failover?: Array<string | URL>;
  /** Failed attempts in a row that make a URL "keep failing". Default 3. */
  failoverAfter?: number;
  /** Called with the "stream-reset" event; the same as setting `onreset`. */
  onReset?: ((this: SSEKeepalive, event: MessageEvent<string>) => void) | null;
  /** The fetch to use. */
  fetch?: typeof fetch | null;
}

export interface SSEKeepaliveStats {
  /** Streams opened. */
  connects: number;
  /** Attempts after the first. */
  reconnects: number;
  heartbeats: number;
  /** Events dispatched. */
  messages: number;
  resets: number;
  /** Moves to the next URL of `failover`. */
  failovers: number;
}

/** "connecting", "open", "reconnecting", "offline", "closed" and "statechange". */
export interface SSEKeepaliveStateEvent extends Event {
  readonly state: SSEKeepaliveState;
  readonly reason?: SSEKeepaliveStateReason;
  /** Milliseconds until the next attempt ("reconnecting"). */
  readonly delay?: number;
  /** Attempts on this URL since it last worked ("reconnecting"). */
  readonly attempt?: number;
  /** The URL of the next attempt ("reconnecting") or of the stream ("open"). */
  readonly url?: string;
  /** This attempt goes to the next URL of `failover` ("reconnecting"). */
  readonly failover?: boolean;
  readonly willRetry?: boolean;
  /** The HTTP status of a refusal. */
  readonly status?: number;
  /** The start of the server's plain-text reason ("closed" after a refusal). */
  readonly message?: string;
}

/** "error", as EventSource fires it: a connection was lost or refused. */
export interface SSEKeepaliveErrorEvent extends Event {
  readonly reason: SSEKeepaliveErrorReason;
  readonly willRetry: boolean;
  readonly status?: number;
  readonly message?: string;
  readonly delay?: number;
  readonly attempt?: number;
  readonly url?: string;
  readonly failover?: boolean;
  readonly cause?: unknown;
}

export interface SSEKeepaliveHeartbeatEvent extends Event {
  /** Heartbeats so far. */
  readonly count: number;
}

export interface SSEKeepaliveEventMap {
  message: MessageEvent<string>;
  "stream-reset": MessageEvent<string>;
  error: SSEKeepaliveErrorEvent;
  heartbeat: SSEKeepaliveHeartbeatEvent;
  connecting: SSEKeepaliveStateEvent;
  open: SSEKeepaliveStateEvent;
  reconnecting: SSEKeepaliveStateEvent;
  offline: SSEKeepaliveStateEvent;
  closed: SSEKeepaliveStateEvent;
  statechange: SSEKeepaliveStateEvent;
}

export declare class SSEKeepalive extends EventTarget {
  constructor(url: string | URL, options?: SSEKeepaliveOptions);

  static readonly CONNECTING: 0;
  static readonly OPEN: 1;
  static readonly CLOSED: 2;
  readonly CONNECTING: 0;
  readonly OPEN: 1;
  readonly CLOSED: 2;
  /** The client's version, the package's. */
  static readonly version: string;
  static readonly SSEKeepalive: typeof SSEKeepalive;
  static readonly EventStreamParser: typeof EventStreamParser;
  /** Retry-After (delta-seconds or an HTTP date) as milliseconds, or null. */
  static parseRetryAfter(value: string | null | undefined): number | null;

  /** The URL given to the constructor. */
  readonly url: string;
  /** The URL of the current or next attempt: `url`, or one of `failover`. */
  readonly currentUrl: string;
  readonly withCredentials: boolean;
  readonly readyState: 0 | 1 | 2;
  readonly state: SSEKeepaliveState;
  readonly lastEventId: string;
  /** Counters a page can show. */
  readonly stats: SSEKeepaliveStats;
  /** Seconds: the current stream's heartbeat interval, as the server announced it. */
  heartbeatInterval: number | null;
  /** Milliseconds: the reconnection time, the server's `retry:`. */
  retry: number;

  onopen: ((this: SSEKeepalive, event: SSEKeepaliveStateEvent) => void) | null;
  onmessage: ((this: SSEKeepalive, event: MessageEvent<string>) => void) | null;
  onerror: ((this: SSEKeepalive, event: SSEKeepaliveErrorEvent) => void) | null;
  onreset: ((this: SSEKeepalive, event: MessageEvent<string>) => void) | null;

  /** Stop for good: the current request is aborted, no retry is scheduled. */
  close(): void;

  addEventListener<K extends keyof SSEKeepaliveEventMap>(
    type: K,
    listener: (this: SSEKeepalive, event: SSEKeepaliveEventMap[K]) => void,
    options?: boolean | AddEventListenerOptions,
  ): void;
  /** A server event type: a MessageEvent. */
  addEventListener(
    type: string,
    listener: (this: SSEKeepalive, event: MessageEvent<string>) => void,
    options?: boolean | AddEventListenerOptions,
  ): void;
  addEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | AddEventListenerOptions,
  ): void;
  removeEventListener<K extends keyof SSEKeepaliveEventMap>(
    type: K,
    listener: (this: SSEKeepalive, event: SSEKeepaliveEventMap[K]) => void,
    options?: boolean | EventListenerOptions,
  ): void;
  removeEventListener(
    type: string,
    listener: (this: SSEKeepalive, event: MessageEvent<string>) => void,
    options?: boolean | EventListenerOptions,
  ): void;
  removeEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | EventListenerOptions,
  ): void;
}

export interface EventStreamHandlers {
  /** An event to dispatch: its type ("message" if none), data and last event id. */
  onEvent?: (type: string, data: string, lastEventId: string) => void;
  /** A comment line, ":" and one leading space removed. */
  onComment?: (text: string) => void;
  /** A valid `retry` field, in ms. */
  onRetry?: (ms: number) => void;
  /** A blank line: the source's last event id is now `lastEventId`. */
  onLastEventId?: (lastEventId: string) => void;
}

/** The text/event-stream parser, by the WHATWG HTML rules. */
export declare class EventStreamParser {
  constructor(handlers?: EventStreamHandlers, lastEventId?: string);
  /** The last event id buffer. */
  lastEventId: string;
  /** Feed bytes, or text already decoded. */
  feed(chunk: Uint8Array | ArrayBuffer | string): void;
  /** The end of the stream: an event without its blank line is discarded. */
  end(): void;
}

export default SSEKeepalive;
