// giftwire.js: what the demo pages share. Plain ES module, no build step.
//
//   pageConfig()   the stream id from ?stream=, the token from the URL fragment (#token=…).
//                  A fragment is never sent to the server, so the token stays out of access
//                  logs and Referer headers.
//   Api            the HTTP API, with the token in the Authorization header.
//   GiftSocket     one WebSocket to a stream that reconnects by itself, never sends a gift
//                  twice (each gift keeps its client id until it is acked or refused) and,
//                  in `ordered` mode, hands over gift events strictly in sequence across
//                  reconnects by resuming from the last sequence it saw (with the epoch
//                  that sequence belongs to), and follows `history_changed`.
//
// The protocol is in docs/protocol.md; this file is meant to be copied.

// Gift artwork ships with the pages, one SVG per catalog gift id (gifts/<id>.svg), so no
// gift depends on an emoji font. A gift added to the catalog without its picture shows a
// plain gift box (icons/gift.svg) until its SVG is dropped in.
const ART_FALLBACK = new URL("icons/gift.svg", import.meta.url).href;

export function artFor(giftId) {
  return new URL(`gifts/${encodeURIComponent(giftId ?? "gift")}.svg`, import.meta.url).href;
}

/** An <img> of a gift's artwork; decorative (the gift's name is always written next to it). */
export function giftArt(giftId, className = "gift-art") {
  const img = el("img", {
    class: className, src: artFor(giftId), alt: "", draggable: "false", "data-art": giftId ?? "",
  });
  img.addEventListener("error", () => {
    if (img.src !== ART_FALLBACK) img.src = ART_FALLBACK;
  }, { once: true });
  return img;
}

/** "1 coin", "2 coins", "1,000 coins". */
export function plural(count, word) {
  return `${fmt.format(count)} ${word}${count === 1 ? "" : "s"}`;
}

export const ERROR_TEXT = {
  insufficient_funds: "Not enough coins for this gift.",
  rate_limited: "Too much too quickly: slow down a little, then try again.",
  stream_not_live: "The stream has ended: gifts are no longer accepted.",
  unknown_gift: "That gift is no longer in the catalog.",
  catalog_changed: "Prices changed: the gifts show the new ones now. Tap again to send.",
  self_gift: "Creators cannot send gifts to their own stream.",
  spending_limit: "Your spending limit is reached.",
  spending_cap: "This account's spending is capped by the platform below that limit.",
  unknown_stream: "There is no stream with this id.",
  unauthorized: "This link's token is missing or invalid: ask for a new link.",
  token_expired: "This link's token has expired: ask for a new link.",
  forbidden: "This page is not allowed here.",
  too_many_connections: "Too many open tabs for this account: close one.",
  stream_exists: "That stream id is taken (or has ended): pick another.",
  not_stream_owner: "Only the stream's creator can do that.",
  unavailable: "The server is busy; retrying…",
  guest_left: "That guest has left the stage.",
  not_a_guest: "That user is not on stage.",
  no_guests: "Nobody is on stage right now.",
  guest_limit: "The stage is full (8 guests).",
  invite_pending: "You already have a battle invitation waiting for an answer.",
  invitee_busy: "That stream has too many invitations waiting.",
  battle_running: "A battle is already running.",
  unknown_invite: "That invitation is no longer pending.",
  unknown_battle: "There is no battle to end.",
  self_battle: "You cannot battle your own stream.",
};

export function errorText(code, fallback) {
  return ERROR_TEXT[code] ?? fallback ?? code;
}

export function pageConfig() {
  const query = new URLSearchParams(location.search);
  const fragment = new URLSearchParams(location.hash.slice(1));
  return {
    query,
    token: fragment.get("token") || "",
    stream: query.get("stream") || "demo",
    // Pages may be hosted apart from the server (the server must then list the page's
    // origin in GIFTWIRE_ALLOWED_ORIGINS).
    server: (query.get("server") || location.origin).replace(/\/+$/, ""),
  };
}

export const fmt = new Intl.NumberFormat("en-US");

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value);
  }
  for (const child of children) node.append(child);
  return node;
}

// Colour bands of the 0-50 gifter level ladder (server/domain/levels.py).
const LEVEL_BANDS = [[40, "legend"], [30, "gold"], [20, "purple"], [10, "blue"], [1, "green"]];

// A gifter's level badge ("Lv 12"), or null for level 0 (never gifted this creator).
export function levelBadge(level) {
  const band = LEVEL_BANDS.find(([low]) => (level ?? 0) >= low);
  if (!band) return null;
  return el("span", {
    class: `level-badge band-${band[1]}`,
    "data-testid": "level-badge",
    "data-level": String(level),
    title: `gifter level ${level}`,
    text: `Lv ${level}`,
  });
}

// One leaderboard row: rank, the gifter's display name (the row's, else one learned from
// gift events, else the user id) with their level badge, coins.
export function topRow(rank, row, names, { amountClass = "amount coin", attrs = {} } = {}) {
  const who = el("span", { class: "who", text: row.name ?? names.get(row.user_id) ?? row.user_id });
  const badge = levelBadge(row.level);
  if (badge) who.append(" ", badge);
  return el(
    "li",
    attrs,
    el("span", { class: "rank", text: String(rank) }),
    who,
    el("span", { class: amountClass, text: fmt.format(row.coins) }),
  );
}

// Client ids must match [A-Za-z0-9_.:-]{1,64}. crypto.randomUUID() exists only in secure
// contexts (https, localhost); getRandomValues works everywhere.
export function newClientId(prefix = "web") {
  const bytes = crypto.getRandomValues(new Uint8Array(10));
  const random = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  return `${prefix}-${Date.now().toString(36)}-${random}`;
}

export class Api {
  constructor(server, token) {
    this.server = server;
    this.token = token;
  }

  async request(method, path, body) {
    const headers = { accept: "application/json" };
    if (this.token) headers.authorization = `Bearer ${this.token}`;
    if (body !== undefined) headers["content-type"] = "application/json";
    let response;
    try {
      response = await fetch(this.server + path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        cache: "no-store",
      });
    } catch {
      // No answer (the server restarting, the network): a reply that is not ok, status 0,
      // so every caller's refusal path covers it and no page throws on a timer.
      return { status: 0, ok: false, body: null };
    }
    let data = null;
    try {
      data = await response.json();
    } catch {
      data = null;
    }
    return { status: response.status, ok: response.ok, body: data };
  }

  catalog() { return this.request("GET", "/api/catalog"); }
  wallet() { return this.request("GET", "/api/me/wallet"); }
  spending() { return this.request("GET", "/api/me/spending"); }
  setSpending(limits) { return this.request("PUT", "/api/me/spending", limits); }
  adminCatalog() { return this.request("GET", "/api/admin/catalog"); }
  editCatalog(edit) { return this.request("POST", "/api/admin/catalog", edit); }
  cancelScheduled(id) {
    return this.request("DELETE", `/api/admin/catalog/scheduled/${encodeURIComponent(id)}`);
  }
  accountSpending(user) {
    return this.request("GET", `/api/admin/accounts/${encodeURIComponent(user)}/spending`);
  }
  protectAccount(user, body) {
    return this.request("PUT", `/api/admin/accounts/${encodeURIComponent(user)}/spending`, body);
  }
  stream(id) { return this.request("GET", `/api/streams/${encodeURIComponent(id)}`); }
  gifts(id, after, limit) {
    return this.request("GET", `/api/streams/${encodeURIComponent(id)}/gifts?after=${after}&limit=${limit}`);
  }
  leaderboard(id) { return this.request("GET", `/api/streams/${encodeURIComponent(id)}/leaderboard`); }
  startStream(id, title) { return this.request("POST", "/api/streams", { stream_id: id, title }); }
  endStream(id) { return this.request("POST", `/api/streams/${encodeURIComponent(id)}/end`); }
  goals(id) { return this.request("GET", `/api/streams/${encodeURIComponent(id)}/goals`); }
  addGoal(id, goal) { return this.request("POST", `/api/streams/${encodeURIComponent(id)}/goals`, goal); }
  deleteGoal(id, goalId) {
    return this.request("DELETE", `/api/streams/${encodeURIComponent(id)}/goals/${encodeURIComponent(goalId)}`);
  }
  guests(id) { return this.request("GET", `/api/streams/${encodeURIComponent(id)}/guests`); }
}

const RETRY_DELAYS_MS = [250, 500, 1000, 2000, 4000, 8000];
const RESEND_AFTER_MS = 4000; // no answer: the outcome is unknown, send again, same id
const RETRIES_ON_REFUSAL_MAX = 3; // rate_limited and unavailable are retried, same id
const HOLE_WAIT_MS = 1500; // ordered mode: how long an out-of-order event may wait
const HELD_EVENTS_MAX = 5000;
const PING_EVERY_MS = 15000;
const PONG_WAIT_MS = 10000;

/**
 * One WebSocket to one stream, reconnecting with backoff.
 *
 * Callbacks (all optional): onState(state, detail), onWelcome(welcome, {reconnected}),
 * onGift(event), onAck(ack, pendingGift), onRefused(error, pendingGift), onGap(gap),
 * onHistoryChanged(change): the gifts handed over from change.from_seq on were not true
 * (the server's Redis went back in time); the true ones follow through onGift, reusing
 * those numbers. onMessage(message) for everything else (stats, leaderboard, stream,
 * errors without id).
 *
 * States: "connecting", "live", "reconnecting", "no-stream", "denied" (bad token: stops),
 * "stopped".
 */
export class GiftSocket {
  constructor({ server, stream, token, ordered = false, historyEvents = 0, callbacks = {} }) {
    this.url = server.replace(/^http/, "ws") + `/ws/streams/${encodeURIComponent(stream)}`;
    this.api = new Api(server, token);
    this.stream = stream;
    this.token = token;
    this.ordered = ordered;
    this.historyEvents = historyEvents;
    this.cb = callbacks;
    this.ws = null;
    this.state = "stopped";
    this.lastSeq = null; // the highest gift sequence handed over
    this.epoch = null; // the history lastSeq counts in (docs/protocol.md, "Epochs")
    this.held = new Map(); // ordered mode: seq -> event waiting for the hole before it
    this.holeTimer = null;
    this.pending = new Map(); // client id -> {gift, count, sentAt, refusals}
    this.attempt = 0;
    this.welcomed = false;
    this.retryTimer = null;
    this.tickTimer = null;
    this.pingSentAt = null;
    this.lastPingAt = 0;
  }

  start() {
    if (this.state !== "stopped" && this.state !== "no-stream") return;
    this._connect();
    this.tickTimer ??= setInterval(() => this._tick(), 1000);
  }

  stop() {
    this._setState("stopped");
    clearTimeout(this.retryTimer);
    clearInterval(this.tickTimer);
    this.tickTimer = null;
    if (this.ws) this.ws.close(1000);
  }

  /** Send a new gift: a fresh client id per tap, kept until the gift is acked or refused. */
  sendGift(gift, count = 1, catalogVersion = null, to = null) {
    const id = newClientId();
    // The catalog version whose prices the user saw: the server charges those or refuses.
    // `to`: a guest on stage, or "*" for every guest; null: the host.
    this.pending.set(id, { id, gift, count, catalogVersion, to, sentAt: 0, refusals: 0 });
    this._sendPending(id);
    return id;
  }

  _send(message) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN && this.welcomed) {
      this.ws.send(JSON.stringify(message));
      return true;
    }
    return false;
  }

  _sendPending(id) {
    const p = this.pending.get(id);
    if (!p) return;
    // Always the same id: if the first attempt was applied, the server replays its receipt.
    const message = { type: "send_gift", id, gift: p.gift, count: p.count };
    if (p.catalogVersion) message.catalog_version = p.catalogVersion;
    if (p.to) message.to = p.to;
    if (this._send(message)) {
      p.sentAt = Date.now();
    }
  }

  _setState(state, detail) {
    this.state = state;
    this.cb.onState?.(state, detail);
  }

  _connect() {
    this._setState(this.attempt === 0 && this.lastSeq === null ? "connecting" : "reconnecting");
    this.welcomed = false;
    let ws;
    try {
      ws = new WebSocket(this.url, ["giftwire.json", `bearer.${this.token}`]);
    } catch (error) {
      this._setState("denied", { code: "invalid_request", message: String(error) });
      return;
    }
    this.ws = ws;
    ws.onmessage = (e) => {
      if (ws !== this.ws) return;
      let message;
      try {
        message = JSON.parse(e.data);
      } catch {
        return;
      }
      this._receive(message);
    };
    ws.onclose = (e) => {
      if (ws !== this.ws) return;
      this.ws = null;
      this._closed(e);
    };
  }

  async _closed(event) {
    const welcomed = this.welcomed;
    this.welcomed = false;
    this.pingSentAt = null;
    if (this.state === "stopped") return;
    if (welcomed) this.attempt = 0;
    this.attempt += 1;
    this._setState("reconnecting", { code: event.code, reason: event.reason });
    if (!welcomed) {
      // A refused handshake reaches the page only as close code 1006; ask the HTTP API why.
      const why = await this._diagnose();
      if (this.state === "stopped") return;
      if (why === "unauthorized" || why === "token_expired") {
        this._setState("denied", { code: why });
        return;
      }
      if (why === "unknown_stream") {
        this._setState("no-stream", { code: why });
        return;
      }
    }
    const base = RETRY_DELAYS_MS[Math.min(this.attempt - 1, RETRY_DELAYS_MS.length - 1)];
    const delay = event.code === 4029 ? 10000 : base * (0.75 + Math.random() / 2);
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => this._connect(), delay);
  }

  async _diagnose() {
    try {
      const wallet = await this.api.wallet();
      if (wallet.status === 401) return wallet.body?.error?.code ?? "unauthorized";
      const stream = await this.api.stream(this.stream);
      if (stream.status === 404) return "unknown_stream";
    } catch {
      // The server is down: keep retrying.
    }
    return null;
  }

  _receive(message) {
    switch (message.type) {
      case "welcome":
        return this._welcome(message);
      case "gift":
        return this._gifts([message]);
      case "gifts":
        return this._gifts(message.events);
      case "gift_ack":
        return this._ack(message);
      case "error":
        if (message.id && this.pending.has(message.id)) return this._refused(message);
        return this.cb.onMessage?.(message);
      case "gap":
        return this._gap(message);
      case "lag":
        // Frames were dropped for us: fill the hole from the feed.
        if (this.ordered && this.lastSeq !== null) this._send(this._resume());
        return this.cb.onMessage?.(message);
      case "history_changed":
        return this._historyChanged(message);
      case "pong":
        this.pingSentAt = null;
        return undefined;
      default:
        return this.cb.onMessage?.(message);
    }
  }

  _welcome(welcome) {
    this.welcomed = true;
    const reconnected = this.lastSeq !== null;
    const otherHistory = this.epoch !== null && (welcome.epoch ?? null) !== this.epoch;
    if (this.ordered) {
      if (this.lastSeq === null) {
        this.lastSeq = Math.max(0, welcome.last_seq - this.historyEvents);
        this.epoch = welcome.epoch ?? null;
      }
      // In another epoch the server says whether what we handed over is still true.
      if (this.lastSeq < welcome.last_seq || otherHistory) this._send(this._resume());
    } else {
      // Viewers watch live: what played while they were away is not replayed. A sequence
      // of another epoch says nothing about this one.
      this.lastSeq = otherHistory ? welcome.last_seq : Math.max(this.lastSeq ?? 0, welcome.last_seq);
      this.epoch = welcome.epoch ?? null;
    }
    this._setState("live");
    this.cb.onWelcome?.(welcome, { reconnected });
    for (const id of this.pending.keys()) this._sendPending(id);
  }

  _gifts(events) {
    for (const event of events) {
      if (event.seq <= (this.lastSeq ?? 0)) continue; // a duplicate: already handed over
      if (!this.ordered || event.seq === this.lastSeq + 1) {
        this.lastSeq = event.seq;
        if (event.epoch) this.epoch = event.epoch;
        this.cb.onGift?.(event);
      } else if (this.held.size < HELD_EVENTS_MAX) {
        this.held.set(event.seq, event);
      }
    }
    this._drainHeld();
  }

  _drainHeld() {
    if (!this.ordered) return;
    for (;;) {
      const next = this.held.get(this.lastSeq + 1);
      if (!next) break;
      this.held.delete(next.seq);
      this.lastSeq = next.seq;
      if (next.epoch) this.epoch = next.epoch;
      this.cb.onGift?.(next);
    }
    for (const seq of this.held.keys()) if (seq <= this.lastSeq) this.held.delete(seq);
    if (this.held.size === 0) {
      clearTimeout(this.holeTimer);
      this.holeTimer = null;
    } else if (this.holeTimer === null) {
      // Events after a hole: the resume we sent (or the next one) fills it.
      this.holeTimer = setTimeout(() => {
        this.holeTimer = null;
        if (this.held.size > 0) this._send(this._resume());
      }, HOLE_WAIT_MS);
    }
  }

  /** A resume from the last sequence handed over, in the epoch it belongs to. */
  _resume() {
    const message = { type: "resume", since: this.lastSeq };
    if (this.epoch) message.epoch = this.epoch;
    return message;
  }

  _historyChanged(change) {
    // Forget what was handed over from from_seq on (and what waits after a hole there):
    // the true gifts from there come next, with those numbers.
    this.epoch = change.epoch;
    if (this.lastSeq !== null && change.from_seq <= this.lastSeq) this.lastSeq = change.from_seq - 1;
    for (const seq of this.held.keys()) if (seq >= change.from_seq) this.held.delete(seq);
    this.cb.onHistoryChanged?.(change);
  }

  _gap(gap) {
    if (this.lastSeq !== null && gap.from_seq <= this.lastSeq + 1 && gap.to_seq > this.lastSeq) {
      this.lastSeq = gap.to_seq;
      this.cb.onGap?.(gap);
      this._drainHeld();
    }
  }

  _ack(ack) {
    const p = this.pending.get(ack.id);
    if (!p) return; // the answer to a re-send whose first answer already came
    this.pending.delete(ack.id);
    this.cb.onAck?.(ack, p);
  }

  _refused(error) {
    const p = this.pending.get(error.id);
    // rate_limited and unavailable change nothing (or nothing yet): retry, same id.
    if ((error.code === "rate_limited" || error.code === "unavailable")
        && p.refusals < RETRIES_ON_REFUSAL_MAX) {
      p.refusals += 1;
      const wait = error.detail?.retry_after_ms ?? 500 * p.refusals;
      p.sentAt = Date.now() + wait; // hold the timed re-send off until then
      setTimeout(() => this._sendPending(error.id), wait);
      this.cb.onMessage?.({ ...error, retrying: true });
      return;
    }
    this.pending.delete(error.id);
    this.cb.onRefused?.(error, p);
  }

  _tick() {
    if (!this.welcomed) return;
    const now = Date.now();
    // No answer yet (a message the server never read, say): same id again, never a new one.
    for (const p of this.pending.values()) {
      if (p.sentAt === 0 || now - p.sentAt > RESEND_AFTER_MS) this._sendPending(p.id);
    }
    if (this.pingSentAt !== null && now - this.pingSentAt > PONG_WAIT_MS) {
      this.ws?.close(4000, "no pong"); // a dead connection: reconnect
    } else if (this.pingSentAt === null && now - this.lastPingAt > PING_EVERY_MS) {
      this.lastPingAt = now;
      if (this._send({ type: "ping", id: "keepalive" })) this.pingSentAt = now;
    }
  }
}
