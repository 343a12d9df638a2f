// The viewer page: join a stream, see the balance, tap gifts, watch everyone's gifts.

import {
  Api, GiftSocket, el, errorText, fmt, giftArt, pageConfig, plural, topRow,
} from "./giftwire.js";
import { BattleBar } from "./battle.js";
import { BigGiftQueue, GiftStrip, isBig } from "./gifts.js";
import { GoalBoard, levelBadge } from "./goals.js";
import { SpendingPanel } from "./spending.js";

const COMBO_WINDOW_MS = 5000; // the server's default GIFTWIRE_COMBO_WINDOW_MS
const ERROR_SHOWN_MS = 8000;
const NOTICE_SHOWN_MS = 5000;
const NOTICES_MAX = 3;

const config = pageConfig();
const $ = (id) => document.getElementById(id);
const NARROW = matchMedia("(max-width: 899px)").matches;

// Where "Buy coins" goes: the platform's checkout (?coins_url=https://…); http(s) only.
function checkoutUrl() {
  try {
    const url = new URL(config.query.get("coins_url") ?? "", location.href);
    return config.query.has("coins_url") && /^https?:$/.test(url.protocol) ? url.href : null;
  } catch {
    return null;
  }
}

const state = {
  catalog: new Map(), // gift id -> {id, name, price_coins, animation, tier}
  catalogVersion: null, // the version of the prices shown, sent with each gift
  coins: null,
  balanceSeq: 0, // the stream sequence of the ack that set `coins`
  names: new Map(), // user id -> display name, learned from gift events
  top: [],
  count: 1,
  last: null, // {gift, count} of the last tap, for the combo button
  ended: false,
  joined: false, // a welcome came: the stream's state is known
  blocked: false, // bad token or no such stream: nothing can be sent
  connected: false, // welcomed on an open socket: gifts can go out now
  errorTimer: null,
};

const api = new Api(config.server, config.token);
const strip = new GiftStrip($("strip"), { rowsMax: NARROW ? 3 : 4 });
const big = new BigGiftQueue($("big"));
const goals = new GoalBoard($("goals"), { giftName: (id) => state.catalog.get(id)?.name ?? id });
let socket = null;
let me = null;

function showMyLevel(level) {
  const badge = levelBadge(level);
  $("my-level").replaceChildren(...(badge ? [badge] : []));
  $("my-level").dataset.level = String(level ?? 0);
}

// A short line over the stage for a level-up or a goal reached; a few at most.
function notice(text, kind) {
  const node = el("div", { class: `level-up notice-${kind}`, "data-testid": `notice-${kind}`, text });
  $("notices").append(node);
  while ($("notices").children.length > NOTICES_MAX) $("notices").firstElementChild.remove();
  setTimeout(() => node.remove(), NOTICE_SHOWN_MS);
}

const spending = new SpendingPanel({ api, meter: $("spend-meter"), sheet: $("spend-sheet") });
const battle = new BattleBar($("battle"), config.stream, { names: state.names });

// The guest picker: the host, each guest on stage, or every guest (split between them).
function renderGuests(guests) {
  const select = $("to");
  const chosen = select.value;
  const on = guests.filter((g) => g.state === "on");
  for (const g of guests) state.names.set(g.user_id, g.name);
  select.replaceChildren(el("option", { value: "", text: "the host" }));
  for (const g of on) select.append(el("option", { value: g.user_id, text: g.name }));
  if (on.length > 1) select.append(el("option", { value: "*", text: `all ${on.length} guests` }));
  select.value = [...select.options].some((o) => o.value === chosen) ? chosen : "";
  $("guest-picker").hidden = on.length === 0;
}

async function loadGuests() {
  const response = await api.guests(config.stream);
  if (response.ok) renderGuests(response.body.guests);
}

function setBalance(coins, { animate = false } = {}) {
  state.coins = coins;
  const node = $("balance");
  node.textContent = fmt.format(coins);
  node.dataset.coins = String(coins);
  $("coins-word").textContent = coins === 1 ? "coin" : "coins";
  if (animate) {
    node.classList.remove("drop");
    void node.offsetWidth;
    node.classList.add("drop");
  }
  for (const card of document.querySelectorAll(".gift-card")) {
    const gift = state.catalog.get(card.dataset.gift);
    const short = !canAfford(gift, state.count);
    card.classList.toggle("unaffordable", short);
    card.dataset.affordable = String(!short);
  }
}

function canAfford(gift, count) {
  return state.coins === null || gift.price_coins * count <= state.coins;
}

function openCoins(want) {
  const need = $("coins-need");
  if (want) {
    const price = want.gift.price_coins * want.count;
    const times = want.count > 1 ? ` ×${want.count}` : "";
    need.textContent = `${want.gift.name}${times} costs ${plural(price, "coin")};`
      + ` you have ${plural(state.coins ?? 0, "coin")}.`;
  } else {
    need.textContent = `You have ${plural(state.coins ?? 0, "coin")}.`;
  }
  const buy = checkoutUrl();
  $("coins-buy").hidden = buy === null;
  if (buy) $("coins-buy").href = buy;
  $("coins-demo").hidden = buy !== null;
  $("coins-sheet").hidden = false;
}

function closeCoins() {
  $("coins-sheet").hidden = true;
}

async function refreshWallet() {
  const wallet = await api.wallet();
  if (wallet.ok) {
    setBalance(wallet.body.coins);
    state.balanceSeq = 0;
  }
}

function showError(text, { info = false, code = "" } = {}) {
  const node = $("error");
  node.textContent = text;
  node.dataset.code = code;
  node.classList.toggle("info", info);
  node.hidden = false;
  clearTimeout(state.errorTimer);
  state.errorTimer = setTimeout(() => { node.hidden = true; }, ERROR_SHOWN_MS);
}

function clearError() {
  $("error").hidden = true;
  clearTimeout(state.errorTimer);
}

function showPending() {
  const count = socket ? socket.pending.size : 0;
  const node = $("pending");
  node.dataset.count = String(count);
  node.textContent = count === 0 ? "" : `sending ${count} gift${count === 1 ? "" : "s"}…`;
}

function renderTop() {
  const list = $("top");
  list.replaceChildren();
  if (state.top.length === 0) {
    list.append(el("li", { class: "empty", text: "No gifts yet: be the first!" }));
    return;
  }
  state.top.slice(0, 5).forEach((row, i) => {
    list.append(topRow(i + 1, row, state.names));
  });
}

function renderCatalog(gifts) {
  const grid = $("gifts");
  grid.replaceChildren();
  state.catalog.clear();
  for (const gift of gifts) {
    state.catalog.set(gift.id, gift);
    grid.append(
      el(
        "button",
        {
          class: `gift-card tier-${gift.tier}`,
          "data-gift": gift.id,
          "data-testid": `gift-${gift.id}`,
          title: `${gift.name}: ${plural(gift.price_coins, "coin")} each`,
          onclick: (e) => tap(gift.id, state.count, e.currentTarget),
        },
        giftArt(gift.id),
        el("span", { class: "gift-name", text: gift.name }),
        el("span", { class: "gift-price coin", text: fmt.format(gift.price_coins) }),
      ),
    );
  }
  if (state.coins !== null) setBalance(state.coins);
  setEnded(state.ended);
}

function tap(giftId, count, card) {
  if (!socket || state.ended || state.blocked || !state.connected) return;
  const gift = state.catalog.get(giftId);
  if (gift && !canAfford(gift, count)) {
    openCoins({ gift, count }); // the server would refuse it: nothing is sent
    return;
  }
  clearError();
  closeCoins();
  socket.sendGift(giftId, count, state.catalogVersion, $("to").value || null);
  state.last = { gift: giftId, count };
  if (card) {
    card.classList.remove("tapped");
    void card.offsetWidth;
    card.classList.add("tapped");
  }
  updateCombo(null);
  showPending();
}

function updateCombo(ack) {
  const button = $("combo");
  if (!state.last) return;
  const gift = state.catalog.get(state.last.gift);
  button.disabled = state.ended || !state.connected;
  const combo = ack && ack.gift === state.last.gift ? ` · combo ×${fmt.format(ack.combo)}` : "";
  $("combo-label").textContent =
    `Again: ${gift?.name ?? state.last.gift} ×${state.last.count}${combo}`;
  const art = button.querySelector(".gift-art");
  if (art?.dataset.art !== state.last.gift) {
    art?.remove();
    button.insertBefore(giftArt(state.last.gift), $("combo-label"));
  }
  if (ack) {
    button.style.setProperty("--window-ms", `${COMBO_WINDOW_MS}ms`);
    button.classList.remove("counting");
    void button.offsetWidth;
    button.classList.add("counting");
  }
}

function setEnded(ended) {
  state.ended = ended;
  $("ended").hidden = !ended;
  if (state.joined) {
    $("live").textContent = ended ? "ended" : "live";
    $("live").className = `pill ${ended ? "ended" : "live"}`;
    $("host-sub").textContent = ended ? "has ended" : "is live";
  }
  const off = ended || state.blocked || !state.connected;
  for (const card of document.querySelectorAll(".gift-card")) card.disabled = off;
  if (off) $("combo").disabled = true;
  else if (state.last) $("combo").disabled = false;
}

function onGift(event) {
  state.names.set(event.sender_id, event.sender_name);
  goals.progress(event.goals);
  if (event.sender_id === me && event.level !== undefined) showMyLevel(event.level);
  if (event.to && event.to !== "*") event.to_name = state.names.get(event.to);
  if (isBig(event)) big.push(event);
  else strip.show(event);
}

function onAck(ack) {
  if (ack.replayed) {
    // A receipt replayed after a reconnect carries the balance of its time: ask again.
    refreshWallet();
  } else if (ack.seq > state.balanceSeq) {
    state.balanceSeq = ack.seq;
    setBalance(ack.balance, { animate: true });
  }
  if (state.last && ack.gift === state.last.gift) updateCombo(ack);
  spending.soon();
  showPending();
}

function onRefused(error, pending) {
  const gift = state.catalog.get(pending.gift);
  let text = errorText(error.code, error.message);
  if (error.code === "insufficient_funds" && gift) {
    const price = gift.price_coins * pending.count;
    const times = pending.count > 1 ? ` ×${pending.count}` : "";
    text = `Not enough coins: ${gift.name}${times} costs ${plural(price, "coin")},`
      + ` you have ${plural(state.coins ?? 0, "coin")}.`;
  }
  if (error.code === "stream_not_live") setEnded(true);
  if (error.code === "catalog_changed") loadCatalog({ announce: false }); // said below
  if (error.code === "spending_limit") {
    text = SpendingPanel.refusalText(error.detail) ?? text;
    spending.refresh();
  }
  showError(text, { code: error.code });
  showPending();
}

function onMessage(message) {
  if (battle.onMessage(message)) return;
  switch (message.type) {
    case "guests":
      renderGuests(message.guests);
      break;
    case "stats":
      $("viewers").textContent = fmt.format(message.viewers);
      break;
    case "leaderboard":
      state.top = message.top;
      renderTop();
      break;
    case "stream":
      setEnded(message.state === "ended");
      break;
    case "goals":
      goals.set(message.goals);
      break;
    case "goal_reached":
      goals.reached(message);
      notice(`Goal reached: ${message.title || message.goal_id}, thanks to ${message.sender_name}!`, "goal");
      break;
    case "level_up":
      notice(`${message.user_name} reached level ${message.level}!`, "level");
      if (message.user_id === me) showMyLevel(message.level);
      break;
    case "catalog":
      showCatalog(message);
      break;
    case "error":
      if (message.retrying) showError(errorText(message.code), { info: true, code: message.code });
      else showError(errorText(message.code, message.message), { code: message.code });
      break;
    default:
      break;
  }
}

async function learnNames(lastSeq) {
  // The leaderboard names user ids; recent gift events carry their display names.
  const recent = await api.gifts(config.stream, Math.max(0, lastSeq - 100), 100);
  if (!recent.ok) return;
  for (const event of recent.body.events) {
    if (!state.names.has(event.sender_id)) state.names.set(event.sender_id, event.sender_name);
  }
  renderTop();
}

function onWelcome(welcome, { reconnected }) {
  if (!reconnected) learnNames(welcome.last_seq);
  state.joined = true;
  state.blocked = false;
  $("title").textContent = welcome.stream.title || welcome.stream.id;
  const host = welcome.stream.creator_name || welcome.stream.creator_id;
  $("host-name").textContent = host;
  $("host-avatar").textContent = host.trim().slice(0, 1).toUpperCase();
  $("me").textContent = welcome.you.display_name;
  $("viewers").textContent = fmt.format(welcome.viewers);
  state.names.set(welcome.you.user_id, welcome.you.display_name);
  me = welcome.you.user_id;
  showMyLevel(welcome.you.level);
  goals.set(welcome.goals);
  state.balanceSeq = 0;
  setBalance(welcome.balance.coins);
  state.top = welcome.top;
  renderTop();
  setEnded(welcome.stream.state === "ended");
  showPending();
}

const STATE_TEXT = {
  connecting: "connecting…",
  live: "connected",
  reconnecting: "reconnecting…",
  "no-stream": "no such stream",
  denied: "not signed in",
  stopped: "stopped",
};

function onState(name, detail) {
  const status = $("status");
  status.dataset.state = name;
  status.textContent = STATE_TEXT[name] ?? name;
  // Gifts go out only on a live connection: anything else pauses the panel, plainly.
  state.connected = name === "live";
  const waiting = name === "connecting" || name === "reconnecting";
  $("offline").hidden = !waiting;
  $("offline-title").textContent = name === "connecting" ? "Connecting…" : "Reconnecting…";
  setEnded(state.ended);
  if (name === "denied" || name === "no-stream") {
    state.blocked = true;
    setEnded(state.ended);
    const code = detail?.code ?? "unauthorized";
    showError(errorText(code), { code });
    clearTimeout(state.errorTimer); // this one stays: nothing works until it is fixed
  }
}

function showNotice(html) {
  $("app").replaceChildren(el("div", { class: "notice" }));
  $("app").firstChild.innerHTML = html;
  $("app").className = "";
}

async function main() {
  if (!config.token) {
    $("status").dataset.state = "denied";
    $("status").textContent = "no token";
    showNotice(
      "<h2>Open this page with a token</h2><p>Add <code>#token=…</code> to the address: "
      + "<code>giftwire demo</code> prints ready-made links, and "
      + "<code>giftwire token --user NAME</code> makes more.</p>",
    );
    return;
  }
  socket = new GiftSocket({
    server: config.server,
    stream: config.stream,
    token: config.token,
    callbacks: { onState, onWelcome, onGift, onAck, onRefused, onMessage },
  });
  window.giftwire = { socket, state, big, battle, goals }; // for the console (and the browser tests)
  for (const chip of document.querySelectorAll(".count-chip")) {
    chip.addEventListener("click", () => {
      for (const other of document.querySelectorAll(".count-chip")) other.classList.remove("selected");
      chip.classList.add("selected");
      state.count = Number(chip.dataset.count);
      if (state.coins !== null) setBalance(state.coins);
    });
  }
  $("combo").addEventListener("click", () => {
    if (state.last) tap(state.last.gift, state.last.count, null);
  });
  $("get-coins-button").addEventListener("click", () => openCoins(null));
  $("coins-close").addEventListener("click", closeCoins);
  $("coins-refresh").addEventListener("click", async () => {
    await refreshWallet();
    openCoins(null);
  });
  renderTop();
  socket.start();
  battle.load(api);
  loadGuests();
  spending.refresh();
  await loadCatalog();
}

async function loadCatalog({ announce = true } = {}) {
  const catalog = await api.catalog();
  if (!catalog.ok) {
    showError("Could not load the gift catalog; reload the page.");
    return;
  }
  showCatalog(catalog.body, { announce });
}

// A catalog version (from GET /api/catalog or a live `catalog` message): the panel shows
// its gifts and prices, and gifts are sent with its version, so the server charges what
// is shown or refuses (catalog_changed). An older version than the one shown is ignored.
function showCatalog(catalog, { announce = true } = {}) {
  if (state.catalogVersion !== null && catalog.version < state.catalogVersion) return;
  const changed = state.catalogVersion !== null && catalog.version !== state.catalogVersion;
  state.catalogVersion = catalog.version;
  $("gifts").dataset.version = String(catalog.version);
  renderCatalog([...catalog.gifts].sort((a, b) => a.price_coins - b.price_coins));
  goals.set(goals.all()); // gift goals get their gift's name
  // A refusal (catalog_changed) on show already says so: do not talk over it.
  const said = !$("error").hidden && $("error").dataset.code === "catalog_changed";
  if (changed && announce && !said) {
    showError("The gifts and prices were updated.", { info: true, code: "catalog" });
  }
}

main();
