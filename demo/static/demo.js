// The live board: one SSEKeepalive stream feeds the ticker, the chat and the
// connection panel. Plain JS, no build step.
(() => {
  "use strict";

  const $ = (selector) => document.querySelector(selector);
  const streamUrl = document.body.dataset.stream;
  const chatUrl = document.body.dataset.chat;
  const MAX_MESSAGES = 100;
  const MAX_LOG = 40;
  const MAX_EVENTS = 5000;

  // What the page saw, for the curious (open the console: `demo`).
  const demo = { client: null, events: [], states: [] };
  window.demo = demo;

  const chat = new Map(); // event id -> message; ids make reloads and replays idempotent

  // -- connection ------------------------------------------------------------

  function connect(lastEventId) {
    const client = new SSEKeepalive(streamUrl, {
      persist: true, // a reload resumes from the last event it saw
      lastEventId: lastEventId,
      onReset: () => loadChat(), // a gap we cannot replay: refetch the state
    });
    demo.client = client;

    client.addEventListener("statechange", (event) => {
      demo.states.push(event.state);
      showState(event);
      showStats();
    });
    client.addEventListener("heartbeat", showStats);
    client.addEventListener("tick", (event) => {
      remember(event);
      showTick(JSON.parse(event.data));
    });
    client.addEventListener("chat", (event) => {
      remember(event);
      addMessage({ ...JSON.parse(event.data), id: event.lastEventId });
    });
    client.addEventListener("stream-reset", (event) => {
      remember(event);
      const { reason } = JSON.parse(event.data);
      log(`stream reset (${reason}): reloading the chat`, "warn");
    });
    return client;
  }

  function remember(event) {
    demo.events.push({ type: event.type, id: event.lastEventId, data: event.data });
    if (demo.events.length > MAX_EVENTS) demo.events.splice(0, demo.events.length - MAX_EVENTS);
    showStats();
  }

  function showState(event) {
    const element = $("#state");
    let text = event.state;
    if (event.state === "reconnecting") {
      const why = event.status ? `HTTP ${event.status}` : event.reason;
      text = `reconnecting in ${(event.delay / 1000).toFixed(1)} s`;
      log(`connection lost (${why}); retrying in ${(event.delay / 1000).toFixed(1)} s`, "warn");
    } else if (event.state === "closed" && event.status) {
      log(`refused with HTTP ${event.status}: ${event.message || ""}`, "error");
    } else {
      log(event.state);
    }
    element.textContent = text;
    element.className = `state state-${event.state}`;
    $("#toggle").textContent = event.state === "closed" ? "Connect" : "Disconnect";
  }

  function showStats() {
    const client = demo.client;
    if (!client) return;
    $("#last-id").textContent = client.lastEventId || "–";
    $("#events").textContent = client.stats.messages;
    $("#heartbeats").textContent = client.stats.heartbeats;
    $("#reconnects").textContent = client.stats.reconnects;
    $("#resets").textContent = client.stats.resets;
    if (client.heartbeatInterval) $("#interval").textContent = `${client.heartbeatInterval} s`;
  }

  function log(text, level = "info") {
    const item = document.createElement("li");
    item.className = `log-${level}`;
    const time = document.createElement("time");
    time.textContent = new Date().toLocaleTimeString();
    item.append(time, " ", text);
    const list = $("#log");
    list.prepend(item);
    while (list.children.length > MAX_LOG) list.lastElementChild.remove();
  }

  // -- ticker ----------------------------------------------------------------

  let ticks = 0;

  function showTick(tick) {
    ticks += 1;
    $("#tick-count").textContent = ticks;
    $("#tick-time").textContent = new Date(tick.time * 1000).toLocaleTimeString();
    const body = $("#quotes");
    body.querySelector(".placeholder")?.remove();
    for (const quote of tick.quotes || []) {
      let row = body.querySelector(`tr[data-symbol="${CSS.escape(quote.symbol)}"]`);
      if (!row) {
        row = document.createElement("tr");
        row.dataset.symbol = quote.symbol;
        row.innerHTML = '<th scope="row"></th><td class="num price"></td><td class="num change"></td>';
        row.firstElementChild.textContent = quote.symbol;
        body.append(row);
      }
      const direction = quote.change > 0 ? "up" : quote.change < 0 ? "down" : "flat";
      row.querySelector(".price").textContent = quote.price.toFixed(2);
      const change = row.querySelector(".change");
      const arrow = { up: "▲", down: "▼", flat: "·" }[direction];
      change.textContent = `${arrow} ${Math.abs(quote.change).toFixed(2)}`;
      change.className = `num change ${direction}`;
      row.classList.remove("flash-up", "flash-down");
      void row.offsetWidth; // restart the flash animation
      if (direction !== "flat") row.classList.add(`flash-${direction}`);
    }
  }

  // -- chat ------------------------------------------------------------------

  function addMessage(message) {
    if (chat.has(message.id)) return; // already shown (replayed, or loaded with the page)
    chat.set(message.id, message);
    renderChat();
  }

  function renderChat() {
    const messages = [...chat.values()].sort((a, b) => a.time - b.time).slice(-MAX_MESSAGES);
    const list = $("#messages");
    list.replaceChildren(
      ...messages.map((message) => {
        const item = document.createElement("li");
        const name = document.createElement("strong");
        name.textContent = message.name;
        const time = document.createElement("time");
        time.textContent = new Date(message.time * 1000).toLocaleTimeString();
        const text = document.createElement("span");
        text.textContent = message.text;
        item.append(name, " ", text, time);
        return item;
      }),
    );
    if (!messages.length) {
      const empty = document.createElement("li");
      empty.className = "placeholder";
      empty.textContent = "No messages yet. Open this page in a second window and say hello.";
      list.append(empty);
    }
    list.scrollTop = list.scrollHeight;
  }

  async function loadChat() {
    try {
      const response = await fetch(chatUrl, { cache: "no-store" });
      const { messages } = await response.json();
      for (const message of messages) chat.set(message.id, message);
      renderChat();
    } catch (error) {
      log(`could not load the chat: ${error}`, "error");
    }
  }

  async function sendMessage(event) {
    event.preventDefault();
    const name = $("#chat-name");
    const text = $("#chat-text");
    if (!text.value.trim()) return;
    sessionStorage.setItem("demo:name", name.value);
    const response = await fetch(chatUrl, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ name: name.value, text: text.value }),
    });
    if (response.ok) {
      text.value = "";
    } else {
      const { error } = await response.json().catch(() => ({ error: response.statusText }));
      log(`message not sent: ${error}`, "error");
    }
    text.focus();
  }

  // -- start -----------------------------------------------------------------

  $("#chat-name").value = sessionStorage.getItem("demo:name") || "";
  $("#chat-form").addEventListener("submit", sendMessage);
  $("#toggle").addEventListener("click", () => {
    const client = demo.client;
    if (client.readyState === SSEKeepalive.CLOSED) {
      // Resume where the old stream stopped: what was missed is replayed.
      connect(client.lastEventId);
    } else {
      client.close();
    }
  });
  renderChat();
  loadChat();
  connect();
})();
