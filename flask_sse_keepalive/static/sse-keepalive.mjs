/*!
 * sse-keepalive - the browser client of flask-sse-keepalive.
 *
 * An EventSource-like object that reads the stream with fetch(), so it can do
 * what EventSource cannot: see heartbeats (and reconnect when they stop), see
 * status codes (stop on 400/401/403/404, honour Retry-After on 503), send
 * Last-Event-ID on a page's first connect, back off with jitter, wait while
 * the browser is offline, shorten the heartbeat on a bad network and fail
 * over to backup URLs.
 *
 * This ES module is the source; it imports nothing and defines no global:
 *   import { SSEKeepalive } from "/stream/static/sse-keepalive.mjs";
 * sse-keepalive.js is the same code as a classic script, generated from it:
 *   <script src="/stream/static/sse-keepalive.js"></script>   -> window.SSEKeepalive
 *   const SSEKeepalive = require("./sse-keepalive.js");      (CommonJS, bundlers)
 * sse-keepalive.d.ts declares the API for TypeScript.
 *
 * License: MIT, as the package.
 */

var GLOBAL = typeof globalThis !== "undefined" ? globalThis : self;
var VERSION = "0.2.0";
var CONNECTING = 0;
var OPEN = 1;
var CLOSED = 2;
var LF = 10;
var CR = 13;
var ONLY_DIGITS = /^[0-9]+$/;
var INTERVAL_COMMENT = /^sse-keepalive heartbeat-interval=([0-9]+(?:\.[0-9]+)?)$/;

// ---------------------------------------------------------------------------
// The text/event-stream parser (WHATWG HTML, "Server-sent events",
// section "Parsing an event stream" and "Interpreting an event stream").
// ---------------------------------------------------------------------------

/**
 * A push parser for one connection's byte stream.
 *
 * handlers.onEvent(type, data, lastEventId)   an event to dispatch
 * handlers.onComment(text)                    a comment line (":" removed,
 *                                             one leading space removed)
 * handlers.onRetry(ms)                        a valid "retry" field
 * handlers.onLastEventId(id)                  a blank line: the source's last
 *                                             event ID becomes the buffer's
 *                                             value (even if nothing is dispatched)
 *
 * `lastEventId` seeds the last event ID buffer. The standard initialises it
 * to "" for every stream; browsers (Chromium, Firefox) seed it with the
 * source's last event ID instead, so that an event without an "id" after a
 * reconnect does not erase the resume point. We do as browsers do.
 */
function EventStreamParser(handlers, lastEventId) {
  this._handlers = handlers || {};
  // ignoreBOM keeps U+FEFF in the text so that exactly one leading BOM is
  // stripped here, for bytes and strings alike.
  this._decoder = typeof TextDecoder !== "undefined"
    ? new TextDecoder("utf-8", { ignoreBOM: true })
    : null;
  this._started = false; // the first character (a possible BOM) was seen
  this._pending = ""; // an incomplete line
  this._skipLF = false; // the previous chunk ended with CR: drop a leading LF
  this._data = "";
  this._type = "";
  this.lastEventId = lastEventId || "";
}

/** Feed bytes (Uint8Array / ArrayBuffer) or already-decoded text. */
EventStreamParser.prototype.feed = function (chunk) {
  var text;
  if (typeof chunk === "string") {
    text = chunk;
  } else {
    if (!this._decoder) throw new Error("TextDecoder is required to feed bytes");
    text = this._decoder.decode(chunk, { stream: true });
  }
  this._text(text);
};

/** End of the stream: an event without its blank line is discarded. */
EventStreamParser.prototype.end = function () {
  if (this._decoder) this._text(this._decoder.decode());
  this._pending = "";
  this._data = "";
  this._type = "";
};

EventStreamParser.prototype._text = function (text) {
  if (!text) return;
  if (!this._started) {
    this._started = true;
    if (text.charCodeAt(0) === 0xfeff) {
      text = text.slice(1);
      if (!text) return;
    }
  }
  var start = 0;
  if (this._skipLF) {
    this._skipLF = false;
    if (text.charCodeAt(0) === LF) start = 1;
  }
  // `_pending` holds no line break, so only the new text is scanned: a long
  // line arriving in many chunks costs linear time, not quadratic.
  var buffer = this._pending;
  var scanFrom = buffer.length;
  buffer += start ? text.slice(start) : text;
  var lineStart = 0;
  var length = buffer.length;
  for (var i = scanFrom; i < length; i++) {
    var code = buffer.charCodeAt(i);
    if (code !== CR && code !== LF) continue;
    var line = buffer.slice(lineStart, i);
    if (code === CR) {
      if (i + 1 < length) {
        if (buffer.charCodeAt(i + 1) === LF) i++;
      } else {
        // CR at the end of a chunk: the line is complete, but a LF at the
        // start of the next chunk belongs to this line break.
        this._skipLF = true;
      }
    }
    lineStart = i + 1;
    this._line(line);
  }
  this._pending = lineStart === 0 ? buffer : buffer.slice(lineStart);
};

EventStreamParser.prototype._line = function (line) {
  if (line === "") {
    this._dispatch();
    return;
  }
  var colon = line.indexOf(":");
  if (colon === 0) {
    if (this._handlers.onComment) {
      var comment = line.slice(1);
      this._handlers.onComment(comment.charCodeAt(0) === 0x20 ? comment.slice(1) : comment);
    }
    return;
  }
  var field;
  var value;
  if (colon > 0) {
    field = line.slice(0, colon);
    value = line.slice(colon + 1);
    if (value.charCodeAt(0) === 0x20) value = value.slice(1);
  } else {
    field = line;
    value = "";
  }
  switch (field) {
    case "event":
      this._type = value;
      break;
    case "data":
      this._data += value + "\n";
      break;
    case "id":
      if (value.indexOf("\u0000") === -1) {
        this.lastEventId = value;
      }
      break;
    case "retry":
      if (ONLY_DIGITS.test(value) && this._handlers.onRetry) {
        this._handlers.onRetry(parseInt(value, 10));
      }
      break;
    default:
      // Unknown fields are ignored.
      break;
  }
};

EventStreamParser.prototype._dispatch = function () {
  var data = this._data;
  var type = this._type;
  this._data = "";
  this._type = "";
  if (this._handlers.onLastEventId) this._handlers.onLastEventId(this.lastEventId);
  if (data === "") return;
  if (data.charCodeAt(data.length - 1) === LF) data = data.slice(0, -1);
  if (this._handlers.onEvent) this._handlers.onEvent(type || "message", data, this.lastEventId);
};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

function makeEvent(type, props) {
  var event = new Event(type);
  if (props) {
    for (var key in props) {
      if (Object.prototype.hasOwnProperty.call(props, key)) {
        Object.defineProperty(event, key, { value: props[key], enumerable: true });
      }
    }
  }
  return event;
}

function makeMessage(type, data, lastEventId, origin) {
  if (typeof MessageEvent === "function") {
    return new MessageEvent(type, { data: data, lastEventId: lastEventId, origin: origin });
  }
  return makeEvent(type, { data: data, lastEventId: lastEventId, origin: origin });
}

function baseURL() {
  return typeof location !== "undefined" && location.href ? location.href : undefined;
}

/** Retry-After as milliseconds (delta-seconds or an HTTP date), or null. */
function parseRetryAfter(value) {
  if (value == null) return null;
  value = String(value).trim();
  if (ONLY_DIGITS.test(value)) return parseInt(value, 10) * 1000;
  var when = Date.parse(value);
  if (isNaN(when)) return null;
  return Math.max(0, when - Date.now());
}

function storage() {
  try {
    return typeof sessionStorage !== "undefined" ? sessionStorage : null;
  } catch (e) {
    // Access can throw (sandboxed iframes, storage disabled).
    return null;
  }
}

/** Close enough to count as the same interval (the server prints it with 6 digits). */
function sameInterval(a, b) {
  return Math.abs(a - b) <= 1e-3 * Math.max(a, b);
}

/** Seconds, to the millisecond: what a query parameter can say exactly. */
function roundSeconds(seconds) {
  return Math.round(seconds * 1000) / 1000;
}

function isOffline() {
  return typeof navigator !== "undefined" && navigator.onLine === false;
}

// ---------------------------------------------------------------------------
// The client
// ---------------------------------------------------------------------------

var DEFAULTS = {
  lastEventId: null,
  withCredentials: false,
  headers: null,
  token: null,
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
  resumeVia: "auto",
  persist: false,
  pauseOffline: true,
  failover: [],
  failoverAfter: 3,
  onReset: null,
  fetch: null,
};

/** Why a connection was lost, when the line itself is to blame: a shorter heartbeat may help. */
var MISSES = { watchdog: true, timeout: true, network: true };
/** Back online, clients of one network come back within this spread (ms), not all at once. */
var ONLINE_JITTER = 500;

/**
 * new SSEKeepalive(url, options)
 *
 * Events: "message" and any server event type (MessageEvent), "open",
 * "error", and the connection states "connecting", "open", "reconnecting",
 * "offline", "closed" (each also fires "statechange"); "heartbeat" on each
 * heartbeat; "stream-reset" when the server could not resume without a gap.
 */
class SSEKeepalive extends EventTarget {
  constructor(url, options) {
    super();
    var opts = Object.assign({}, DEFAULTS, options || {});
    this._opts = opts;
    this._url = new URL(String(url), baseURL()).href;
    /** The URLs tried in turn, each with its own backoff. */
    this._targets = [this._url].concat(opts.failover || []).map(function (each) {
      return { url: new URL(String(each), baseURL()).href, attempt: 0, failures: 0 };
    });
    this._targetIndex = 0;
    this._withCredentials = !!opts.withCredentials;
    this._readyState = CONNECTING;
    this._state = "connecting";
    this._storageKey = opts.persist
      ? typeof opts.persist === "string" ? opts.persist : "sse-keepalive:" + this._url
      : null;
    var stored = this._storageKey ? this._load() : null;
    this._lastEventId = opts.lastEventId != null ? String(opts.lastEventId) : stored || "";
    /** Reconnection time in ms: the base of the backoff; the server's `retry:` sets it. */
    this.retry = opts.retry;
    /** Heartbeat interval in seconds, as the server announced it (or the option). */
    this.heartbeatInterval = opts.heartbeatInterval;
    /** Counters a page can show. */
    this.stats = {
      connects: 0, reconnects: 0, heartbeats: 0, messages: 0, resets: 0, failovers: 0,
    };
    // The adaptive heartbeat (heartbeat: "auto"): the interval to come back
    // to, whether that is the server's default (then it is not asked for),
    // the shortest the server grants, what the next attempt asks for (null:
    // nothing, the server's default) and what the current one asked for.
    this._heartbeatBase = typeof opts.heartbeatBase === "number" ? opts.heartbeatBase : null;
    this._baseIsDefault = this._heartbeatBase === null;
    this._heartbeatFloor = opts.heartbeatMin || 0;
    this._heartbeatAsk = this._heartbeatBase;
    this._heartbeatAsked = null;
    this._generation = 0; // bumped on every drop: late callbacks of old connections are ignored
    this._tokenRenewed = false; // a 401 was answered by asking the token function again
    this._abort = null;
    this._retryTimer = null;
    this._watchdogTimer = null;
    this._stableTimer = null;
    this._lastByteAt = 0;
    this._openedAt = 0;
    this._origin = "";

    this.onopen = null;
    this.onmessage = null;
    this.onerror = null;
    this.onreset = typeof opts.onReset === "function" ? opts.onReset : null;
    var self = this;
    [["open", "onopen"], ["message", "onmessage"], ["error", "onerror"],
      ["stream-reset", "onreset"]].forEach(function (pair) {
      self.addEventListener(pair[0], function (event) {
        var handler = self[pair[1]];
        if (typeof handler === "function") handler.call(self, event);
      });
    });

    this._onOnline = function () { self._online(); };
    this._onOffline = function () { self._offline(); };
    if (typeof GLOBAL.addEventListener === "function") {
      GLOBAL.addEventListener("online", this._onOnline);
      GLOBAL.addEventListener("offline", this._onOffline);
    }
    // Start after the caller had a chance to add listeners (as EventSource).
    Promise.resolve().then(function () {
      if (self._readyState !== CLOSED) self._connect();
    });
  }

  /** The URL given to the constructor (as EventSource's `url`). */
  get url() { return this._url; }
  /** The URL of the current or next attempt: `url`, or one of `failover`. */
  get currentUrl() { return this._targets[this._targetIndex].url; }
  get withCredentials() { return this._withCredentials; }
  get readyState() { return this._readyState; }
  /** "connecting", "open", "reconnecting", "offline" or "closed". */
  get state() { return this._state; }
  get lastEventId() { return this._lastEventId; }

  /** Stop for good: no more events, no reconnection. */
  close() {
    if (this._readyState === CLOSED) return;
    this._stop();
    this._finish({ reason: "close" }, false);
  }

  // -- internals -----------------------------------------------------------

  _setState(state, props) {
    this._state = state;
    this._readyState = state === "open" ? OPEN : state === "closed" ? CLOSED : CONNECTING;
    var detail = Object.assign({ state: state }, props || {});
    this.dispatchEvent(makeEvent(state, detail));
    this.dispatchEvent(makeEvent("statechange", detail));
  }

  _load() {
    var store = storage();
    try {
      return store ? store.getItem(this._storageKey) : null;
    } catch (e) {
      return null;
    }
  }

  _save() {
    var store = storage();
    if (!store) return;
    try {
      store.setItem(this._storageKey, this._lastEventId);
    } catch (e) {
      // Quota or privacy mode: persistence is best effort.
    }
  }

  /**
   * Where the resume point goes: the Last-Event-ID header, or the
   * last_event_id query parameter. That header is not CORS-safelisted, so
   * cross-origin it would cost a preflight on every connect: "auto" uses the
   * header on the page's own origin and the query parameter elsewhere.
   */
  _resumeInQuery() {
    var via = this._opts.resumeVia;
    if (via === "auto") {
      var page = baseURL();
      return !!page && new URL(page).origin !== new URL(this.currentUrl).origin;
    }
    return via === "query";
  }

  /** The `?heartbeat=` this attempt asks for, or null. */
  _heartbeatParam() {
    var fixed = this._opts.heartbeat;
    if (typeof fixed === "number") return fixed;
    return this._adaptive() ? this._heartbeatAsk : null;
  }

  _adaptive() {
    return this._opts.heartbeat === "auto" && this._opts.heartbeatInterval == null;
  }

  _requestURL(token) {
    var heartbeat = this._heartbeatParam();
    var inQuery = this._resumeInQuery();
    this._heartbeatAsked = heartbeat;
    // The URL is rebuilt only when a parameter is added: as given otherwise.
    if (!inQuery && heartbeat == null && token == null) return this.currentUrl;
    var url = new URL(this.currentUrl);
    if (token != null) url.searchParams.set("token", String(token));
    if (inQuery) {
      url.searchParams.delete("last_event_id");
      if (this._lastEventId) url.searchParams.set("last_event_id", this._lastEventId);
    }
    if (heartbeat != null) url.searchParams.set("heartbeat", String(heartbeat));
    return url.href;
  }

  _requestHeaders() {
    var headers = { Accept: "text/event-stream" };
    var extra = typeof this._opts.headers === "function" ? this._opts.headers() : this._opts.headers;
    if (extra) Object.assign(headers, extra);
    if (this._lastEventId && !this._resumeInQuery()) {
      headers["Last-Event-ID"] = this._lastEventId;
    }
    return headers;
  }

  async _connect(isReconnect) {
    if (this._state === "connecting") {
      this._setState("connecting"); // the first attempt
      if (this._readyState === CLOSED) return; // a "connecting" listener closed us
    }
    if (this._opts.pauseOffline && isOffline()) {
      // No attempt can succeed: wait for the "online" event instead.
      this._stop();
      this._setState("offline", { reason: "offline", willRetry: true });
      return;
    }
    if (isReconnect) this.stats.reconnects += 1;
    var generation = ++this._generation;
    var controller = new AbortController();
    this._abort = controller;
    this._lastByteAt = Date.now();
    this._armWatchdog(this._opts.connectTimeout);
    var doFetch = this._opts.fetch || fetch;
    var response;
    try {
      // Inside the try: a throwing `headers` or `token` function (or a
      // rejected promise of a token) counts as a failed attempt.
      var token = this._opts.token;
      if (typeof token === "function") token = await token();
      if (generation !== this._generation) return; // closed while the token came
      response = await doFetch(this._requestURL(token), {
        method: "GET",
        headers: this._requestHeaders(),
        credentials: this._withCredentials ? "include" : "same-origin",
        cache: "no-store",
        signal: controller.signal,
      });
    } catch (error) {
      if (generation === this._generation) this._drop({ reason: "network", cause: error });
      return;
    }
    if (generation !== this._generation) return;
    var status = response.status;
    var contentType = (response.headers.get("Content-Type") || "").toLowerCase();
    if (status === 200 && contentType.indexOf("text/event-stream") === 0) {
      this._tokenRenewed = false;
      await this._read(response, generation);
      return;
    }
    if (status === 401 && typeof this._opts.token === "function" && !this._tokenRenewed) {
      // The token expired or was revoked: ask for a fresh one, at once, once.
      this._tokenRenewed = true;
      if (response.body) response.body.cancel().catch(function () {});
      this._drop({ reason: "http", status: status }, 0);
      return;
    }
    var message = "";
    if (status === 200) {
      message = "not an event stream: Content-Type " + (contentType || "missing");
    }
    if (status === 200 || this._opts.stopOn.indexOf(status) !== -1) {
      // The server will not change its mind: stop, as EventSource does.
      try {
        message = message || (await response.text()).slice(0, 500);
      } catch (e) {
        message = message || "";
      }
      if (generation !== this._generation) return;
      this._stop();
      this._finish({ reason: "http", status: status, message: message }, true);
      return;
    }
    var retryAfter = status === 503 || status === 429
      ? parseRetryAfter(response.headers.get("Retry-After"))
      : null;
    if (response.body) response.body.cancel().catch(function () {});
    this._drop({ reason: "http", status: status }, retryAfter);
  }

  async _read(response, generation) {
    var self = this;
    this._origin = new URL(response.url || this.currentUrl).origin;
    this._openedAt = Date.now();
    this._lastByteAt = this._openedAt;
    this.stats.connects += 1;
    // Until the first bytes, the connect timeout still guards the line.
    this._armWatchdog(this._watchdogLimit() || this._opts.connectTimeout);
    this._setState("open", { url: this.currentUrl }); // also the EventSource "open" event
    if (generation !== this._generation) return; // an "open" listener closed us
    var parser = new EventStreamParser({
      onEvent: function (type, data, lastEventId) {
        if (generation === self._generation) self._deliver(type, data, lastEventId);
      },
      onLastEventId: function (lastEventId) {
        if (generation === self._generation) self._setLastEventId(lastEventId);
      },
      onComment: function (text) {
        if (generation === self._generation) self._comment(text);
      },
      onRetry: function (ms) {
        self.retry = ms;
      },
    }, this._lastEventId);
    var reader = null;
    var first = true;
    try {
      reader = response.body.getReader();
      for (;;) {
        var result = await reader.read();
        if (generation !== this._generation) return;
        if (result.done) break;
        this._lastByteAt = Date.now();
        parser.feed(result.value);
        if (generation !== this._generation) return;
        if (first) {
          first = false;
          // Bytes flow and no heartbeat interval was announced (not a
          // flask-sse-keepalive server?): no watchdog rather than a wrong one.
          if (!this._watchdogLimit()) this._armWatchdog(null);
        }
      }
      parser.end();
      if (generation === this._generation) this._drop({ reason: "eof" });
    } catch (error) {
      if (generation === this._generation) this._drop({ reason: "network", cause: error });
    } finally {
      if (reader && generation !== this._generation) {
        reader.cancel().catch(function () {});
      }
    }
  }

  _setLastEventId(lastEventId) {
    // As EventSource: the last event ID is taken at each blank line.
    if (lastEventId !== this._lastEventId) {
      this._lastEventId = lastEventId;
      if (this._storageKey) this._save();
    }
  }

  _deliver(type, data, lastEventId) {
    this.stats.messages += 1;
    if (type === "stream-reset") this.stats.resets += 1;
    this.dispatchEvent(makeMessage(type, data, lastEventId, this._origin));
  }

  _comment(text) {
    if (text === "heartbeat") {
      this.stats.heartbeats += 1;
      this.dispatchEvent(makeEvent("heartbeat", { count: this.stats.heartbeats }));
      return;
    }
    var match = INTERVAL_COMMENT.exec(text);
    if (match && this._opts.heartbeatInterval == null) {
      this.heartbeatInterval = parseFloat(match[1]);
      this._armWatchdog(null);
      if (this._adaptive()) this._granted(this.heartbeatInterval);
    }
  }

  /**
   * The server announced the interval it keeps for this connection: what it
   * granted is the truth. Granted more than asked: that is the server's
   * minimum. Less: its maximum. Asked nothing: its default, the base.
   */
  _granted(interval) {
    var asked = this._heartbeatAsked;
    if (asked == null) {
      if (this._heartbeatBase === null) this._heartbeatBase = interval;
    } else if (interval > asked && !sameInterval(interval, asked)) {
      this._heartbeatFloor = Math.max(this._heartbeatFloor, interval);
    } else if (interval < asked && !sameInterval(interval, asked)) {
      this._heartbeatBase = Math.min(this._heartbeatBase || interval, interval);
    }
    this._heartbeatAsk = asked == null ? null : interval;
    var base = this._heartbeatBase;
    var every = this._opts.stableIntervals;
    if (base === null || !every || interval >= base || sameInterval(interval, base)) return;
    // Below the base: `stableIntervals` intervals without a miss prove the
    // line, and a longer heartbeat saves battery and server work. Time alone
    // proves nothing: while a heartbeat is overdue (the line may be dead and
    // the watchdog not yet sure), the proof waits.
    var self = this;
    var generation = this._generation;
    var ms = interval * 1000;
    var check = function () {
      self._stableTimer = null;
      if (generation !== self._generation) return;
      if (Date.now() - self._lastByteAt > 1.5 * ms) {
        self._stableTimer = setTimeout(check, ms);
      } else {
        self._lengthenHeartbeat(interval);
      }
    };
    this._stableTimer = setTimeout(check, every * ms);
  }

  /** A miss (watchdog, timeout, network): ask for half the interval, down to the floor. */
  _shortenHeartbeat() {
    var current = this._heartbeatAsk != null ? this._heartbeatAsk : this._heartbeatBase;
    if (current == null) return; // nothing announced yet: nothing to halve
    var half = roundSeconds(Math.max(this._heartbeatFloor, current / 2));
    this._heartbeatAsk = Math.min(current, half);
  }

  /** Stable at `interval`: reconnect at once asking for twice that, up to the base. */
  _lengthenHeartbeat(interval) {
    var base = this._heartbeatBase;
    var next = Math.min(base, interval * 2);
    var atBase = next >= base || sameInterval(next, base);
    this._heartbeatAsk = atBase && this._baseIsDefault ? null : roundSeconds(next);
    this._stop();
    this._openedAt = 0;
    var target = this._targets[this._targetIndex];
    target.attempt = 0;
    target.failures = 0;
    // Not an error: the connection was healthy. The new one resumes from the
    // last id, so nothing is lost in the switch.
    this._setState("reconnecting", {
      reason: "heartbeat", willRetry: true, delay: 0, attempt: 0, url: target.url,
    });
    if (this._readyState === CLOSED) return; // a listener closed us
    this._reconnect();
  }

  /** The silence (ms) after which the connection is presumed dead. */
  _watchdogLimit() {
    if (!this.heartbeatInterval || !this._opts.watchdogFactor) return null;
    return this.heartbeatInterval * 1000 * this._opts.watchdogFactor;
  }

  /**
   * One timer per connection, re-armed lazily: bytes only stamp
   * `_lastByteAt`, and the timer, when it fires early, sleeps again for the
   * rest of the limit. `limit` null means "the heartbeat limit".
   */
  _armWatchdog(limit) {
    var self = this;
    if (this._watchdogTimer !== null) clearTimeout(this._watchdogTimer);
    this._watchdogTimer = null;
    var ms = limit != null ? limit : this._watchdogLimit();
    if (!ms) return;
    var generation = this._generation;
    var check = function () {
      self._watchdogTimer = null;
      if (generation !== self._generation) return;
      var silent = Date.now() - self._lastByteAt;
      if (silent >= ms) {
        self._drop({ reason: self._readyState === OPEN ? "watchdog" : "timeout" });
      } else {
        self._watchdogTimer = setTimeout(check, ms - silent);
      }
    };
    this._watchdogTimer = setTimeout(check, Math.max(0, ms - (Date.now() - this._lastByteAt)));
  }

  /** Abandon the current connection (if any) and every timer. */
  _stop() {
    this._generation += 1;
    if (this._abort) {
      this._abort.abort();
      this._abort = null;
    }
    if (this._watchdogTimer !== null) clearTimeout(this._watchdogTimer);
    if (this._retryTimer !== null) clearTimeout(this._retryTimer);
    if (this._stableTimer !== null) clearTimeout(this._stableTimer);
    this._watchdogTimer = null;
    this._retryTimer = null;
    this._stableTimer = null;
  }

  /** Exponential backoff with full jitter, from the server's retry time. */
  _backoff(target) {
    // A floor of 100 ms keeps "retry: 0" from spinning when a server crash-loops.
    var base = Math.max(this.retry, 100);
    var ceiling = Math.min(this._opts.maxRetry, base * Math.pow(2, target.attempt));
    return Math.random() * ceiling;
  }

  /** The connection was lost or refused: schedule a reconnect. */
  _drop(info, retryAfter) {
    this._stop();
    if (this._opts.pauseOffline && isOffline()) {
      // Not the server's fault nor the URL's: no backoff, no failover, no
      // shorter heartbeat. Wait for the "online" event.
      this._openedAt = 0;
      this._readyState = CONNECTING;
      this._state = "offline";
      this.dispatchEvent(makeEvent("error", Object.assign({ willRetry: true }, info)));
      if (this._readyState === CLOSED) return; // an error listener closed us
      this._setState("offline", Object.assign({ willRetry: true }, info));
      return;
    }
    var target = this._targets[this._targetIndex];
    var lived = this._openedAt ? Date.now() - this._openedAt : 0;
    // A connection that stayed up for a while proves the server healthy: the
    // backoff starts over. One that dies at once (a crash loop) keeps growing it.
    var healthy = !!this._openedAt && lived >= Math.max(1000, this.retry);
    this._openedAt = 0;
    if (healthy) {
      target.attempt = 0;
      target.failures = 0;
    } else {
      target.failures += 1;
    }
    if (MISSES[info.reason] && this._adaptive()) this._shortenHeartbeat();
    var delay;
    var failover = false;
    if (this._targets.length > 1 && target.failures >= Math.max(1, this._opts.failoverAfter)) {
      // This URL keeps failing: the next one, with its own backoff. A
      // Retry-After was this server's word, not the next one's.
      target.failures = 0;
      this._targetIndex = (this._targetIndex + 1) % this._targets.length;
      target = this._targets[this._targetIndex];
      target.failures = 0;
      this.stats.failovers += 1;
      failover = true;
      delay = this._backoff(target);
    } else if (retryAfter != null) {
      // The server said when: wait that long, plus up to 20% so that the
      // clients it turned away do not all come back in the same instant.
      delay = retryAfter * (1 + 0.2 * Math.random());
    } else {
      delay = this._backoff(target);
    }
    target.attempt += 1;
    delay = Math.round(delay);
    var props = Object.assign(
      { willRetry: true, delay: delay, attempt: target.attempt, url: target.url, failover: failover },
      info
    );
    this._readyState = CONNECTING;
    this._state = "reconnecting";
    this.dispatchEvent(makeEvent("error", props));
    if (this._readyState === CLOSED) return; // an error listener closed us
    this._schedule(delay);
    this._setState("reconnecting", props);
  }

  _schedule(delay) {
    var generation = this._generation;
    var self = this;
    this._retryTimer = setTimeout(function () {
      self._retryTimer = null;
      if (generation === self._generation) self._reconnect();
    }, delay);
  }

  _reconnect() {
    this._connect(true);
  }

  /** The browser went offline: a waiting retry would fail, so it waits for "online". */
  _offline() {
    if (!this._opts.pauseOffline || this._retryTimer === null) return;
    this._stop();
    this._setState("offline", { reason: "offline", willRetry: true });
  }

  /** Back online: reconnect at once, after a small jitter. */
  _online() {
    if (this._state !== "offline" && this._retryTimer === null) return;
    this._stop();
    var delay = Math.round(Math.random() * ONLINE_JITTER);
    var target = this._targets[this._targetIndex];
    this._schedule(delay);
    this._setState("reconnecting", {
      reason: "online", willRetry: true, delay: delay, attempt: target.attempt, url: target.url,
    });
  }

  _finish(info, isError) {
    if (typeof GLOBAL.removeEventListener === "function") {
      GLOBAL.removeEventListener("online", this._onOnline);
      GLOBAL.removeEventListener("offline", this._onOffline);
    }
    this._readyState = CLOSED;
    this._state = "closed";
    if (isError) this.dispatchEvent(makeEvent("error", Object.assign({ willRetry: false }, info)));
    this._setState("closed", info);
  }
}

SSEKeepalive.CONNECTING = CONNECTING;
SSEKeepalive.OPEN = OPEN;
SSEKeepalive.CLOSED = CLOSED;
SSEKeepalive.prototype.CONNECTING = CONNECTING;
SSEKeepalive.prototype.OPEN = OPEN;
SSEKeepalive.prototype.CLOSED = CLOSED;
SSEKeepalive.EventStreamParser = EventStreamParser;
SSEKeepalive.parseRetryAfter = parseRetryAfter;
SSEKeepalive.version = VERSION;
SSEKeepalive.SSEKeepalive = SSEKeepalive;

export { SSEKeepalive, EventStreamParser };
export default SSEKeepalive;
