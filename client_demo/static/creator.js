// The creator dashboard: the live gift feed with running totals, the leaderboard, and the
// start/end control. The feed is gapless and duplicate-free across reconnects: the socket
// runs in ordered mode and resumes from the last sequence it handed over.

import { BattleBar } from "./battle.js";
import { Api, GiftSocket, el, errorText, fmt, giftArt, levelBadge, newClientId, pageConfig, topRow } from "./giftwire.js";
import { GoalBoard } from "./goals.js";

const HISTORY_EVENTS = 50; // gifts shown from before the page was opened
const FEED_ROWS_MAX = 200;
const MINUTE_MS = 60_000;
const END_CONFIRM_MS = 4000;

const config = pageConfig();
const $ = (id) => document.getElementById(id);
const api = new Api(config.server, config.token);

const state = {
  stream: config.stream,
  totals: { seq: -1, diamonds: 0, coins: 0, gifts: 0 },
  wallet: { seq: -1, diamonds: null },
  recent: [], // {ts, count} of the last minute's gifts
  names: new Map(),
  top: [],
  live: false,
  ended: false,
  endArmed: null,
  role: null,
};
let socket = null;
const giftNames = new Map();
const goals = new GoalBoard($("goals"), {
  giftName: (id) => giftNames.get(id) ?? id,
  onDelete: async (goalId) => {
    const response = await api.deleteGoal(state.stream, goalId);
    if (!response.ok) showMessage(errorText(response.body?.error?.code, response.body?.error?.message), true);
  },
});

// The creator's goals: added and deleted over HTTP; the room (this page too) gets `goals`.
async function addGoal(event) {
  event.preventDefault();
  const kind = $("goal-kind").value;
  const goal = {
    goal_id: newClientId("goal"),
    kind,
    target: Number.parseInt($("goal-target").value, 10),
    title: $("goal-title").value.trim(),
  };
  if (kind === "gift") goal.gift_id = $("goal-gift").value;
  const response = await api.addGoal(state.stream, goal);
  if (!response.ok) {
    showMessage(errorText(response.body?.error?.code, response.body?.error?.message), true);
    return;
  }
  hideMessage();
  $("goal-title").value = "";
}

async function loadGoalGifts() {
  const catalog = await api.catalog();
  if (!catalog.ok) return;
  const select = $("goal-gift");
  select.replaceChildren();
  for (const gift of [...catalog.body.gifts].sort((a, b) => a.price_coins - b.price_coins)) {
    giftNames.set(gift.id, gift.name);
    select.append(el("option", { value: gift.id, text: `${gift.name} (${fmt.format(gift.price_coins)})` }));
  }
  goals.set(goals.all());
}

let battle = null;

// Battles and guests: each button is one HTTP call; the rooms hear the outcome as
// battle_invite / battle / battle_end / guests messages, which re-render these panels.

async function call(method, path, body) {
  const response = await api.request(method, path, body);
  if (!response.ok) {
    const error = response.body?.error ?? {};
    showMessage(errorText(error.code, error.message), true);
  }
  return response;
}

function renderInvites(state_) {
  const list = $("invites");
  list.replaceChildren();
  const out = state_.outgoing;
  if (out) {
    list.append(el("li", { "data-testid": "invite-outgoing" },
      el("span", { text: `Waiting for ${out.to_stream} (${out.duration_s / 60} min)` }),
      el("button", { class: "btn", text: "Withdraw", onclick: () => answer(out, "decline") })));
  }
  for (const invite of state_.incoming ?? []) {
    list.append(el("li", { "data-testid": "invite-incoming", "data-from": invite.from_stream },
      el("span", { text: `${invite.from_stream} invites you (${invite.duration_s / 60} min)` }),
      el("button", { class: "btn primary", "data-testid": "battle-accept", text: "Accept", onclick: () => answer(invite, "accept") }),
      el("button", { class: "btn", text: "Decline", onclick: () => answer(invite, "decline") })));
  }
}

async function refreshBattle() {
  const body = await battle.load(api);
  if (body) renderInvites(body);
  const running = battle.battle && !battle.result && body?.battle?.state === "running";
  $("battle-end").hidden = !running;
  if (body?.battle?.result) showResult(body.battle.result);
}

function showResult(result) {
  const ours = result.sides.find((s) => s.stream_id === state.stream) ?? result.sides[0];
  const outcome = result.draw ? "a draw" : result.winner === state.stream ? "you won" : "you lost";
  const scores = result.sides.map((s) => `${s.stream_id} ${fmt.format(s.score)}`).join(" vs ");
  const mvp = ours.mvp ? `, MVP ${state.names.get(ours.mvp.user_id) ?? ours.mvp.user_id}` : "";
  $("battle-last").textContent = `Last battle: ${scores}: ${outcome}${mvp}`;
}

async function answer(invite, action) {
  await call("POST", `/api/battles/${encodeURIComponent(invite.battle_id)}/${action}`,
    { from_stream: invite.from_stream, to_stream: invite.to_stream });
  refreshBattle();
}

async function inviteBattle(event) {
  event.preventDefault();
  const rival = $("battle-rival").value.trim();
  if (!rival) return;
  const response = await call("POST", "/api/battles",
    { from_stream: state.stream, to_stream: rival, duration_s: Number($("battle-minutes").value) });
  if (response.ok) hideMessage();
  refreshBattle();
}

function renderStage(guests) {
  const list = $("stage");
  list.replaceChildren();
  for (const g of guests) {
    state.names.set(g.user_id, g.name);
    list.append(el("li", { "data-testid": "stage-guest", "data-user": g.user_id, "data-state": g.state },
      el("span", { text: `${g.name} · ${g.state === "on" ? "on stage" : "invited"} · ${fmt.format(g.coins)} coins` }),
      el("button", { class: "btn", text: "Remove", onclick: async () => {
        await call("POST", `/api/streams/${encodeURIComponent(state.stream)}/guests/leave`, { user_id: g.user_id });
      } })));
  }
  if (guests.length === 0) list.append(el("li", { class: "feed-empty", text: "Invite up to 8 guests." }));
}

// A gift to guests changes what each received: read the stage again, at most once a second.
let stageReload = null;
function reloadStageSoon() {
  stageReload ??= setTimeout(async () => {
    stageReload = null;
    const response = await api.guests(state.stream);
    if (response.ok) renderStage(response.body.guests);
  }, 1000);
}

async function inviteGuest(event) {
  event.preventDefault();
  const user = $("guest-user").value.trim();
  if (!user) return;
  const response = await call("POST", `/api/streams/${encodeURIComponent(state.stream)}/guests`, { user_id: user });
  if (response.ok) {
    $("guest-user").value = "";
    renderStage(response.body.guests);
  }
}

function setValue(id, value, { bump = false } = {}) {
  const node = $(id);
  const text = fmt.format(value);
  if (node.textContent === text) return;
  node.textContent = text;
  node.dataset.value = String(value);
  if (bump) {
    node.classList.remove("bump");
    void node.offsetWidth;
    node.classList.add("bump");
  }
}

function renderTotals(bump = false) {
  setValue("diamonds", state.totals.diamonds, { bump });
  setValue("coins-total", state.totals.coins, { bump });
  setValue("gifts-total", state.totals.gifts, { bump });
  if (state.wallet.diamonds !== null) setValue("wallet", state.wallet.diamonds);
  $("last-seq").textContent = socket?.lastSeq ? `up to #${socket.lastSeq}` : "";
}

function renderPerMinute() {
  const since = Date.now() - MINUTE_MS;
  state.recent = state.recent.filter((r) => r.ts > since);
  setValue("per-minute", state.recent.reduce((sum, r) => sum + r.count, 0));
}

function renderTop() {
  const list = $("top");
  list.replaceChildren();
  if (state.top.length === 0) {
    list.append(el("li", { class: "empty", text: "No gifts yet." }));
    return;
  }
  state.top.slice(0, 10).forEach((row, i) => {
    list.append(topRow(i + 1, row, state.names, { attrs: { "data-user": row.user_id } }));
  });
}

function timeOf(ms) {
  return new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23" });
}

function addFeedRow(row) {
  const feed = $("feed");
  feed.querySelector(".feed-empty")?.remove();
  feed.prepend(row);
  while (feed.children.length > FEED_ROWS_MAX) feed.lastElementChild.remove();
}

function onGift(event) {
  state.names.set(event.sender_id, event.sender_name);
  goals.progress(event.goals);
  if (event.recipients) reloadStageSoon();
  if (event.seq > state.totals.seq) {
    state.totals.seq = event.seq;
    state.totals.diamonds += event.diamonds;
    state.totals.coins += event.coins;
    state.totals.gifts += event.count;
  }
  // A gift to guests credits them, not the creator's wallet.
  if (event.seq > state.wallet.seq && state.wallet.diamonds !== null && !event.recipients) {
    state.wallet.seq = event.seq;
    state.wallet.diamonds += event.diamonds;
    walletSoon();
  }
  if (event.ts > Date.now() - MINUTE_MS) state.recent.push({ ts: event.ts, count: event.count });
  const combo = event.combo > event.count ? el("span", { class: "combo", text: `combo ×${fmt.format(event.combo)}` }) : "";
  const count = event.count > 1 ? ` ×${fmt.format(event.count)}` : "";
  const to = event.recipients
    ? ` to ${event.recipients.map((r) => state.names.get(r.user_id) ?? r.user_id).join(", ")}`
    : "";
  const badge = levelBadge(event.level);
  const text = el("span", { class: "text" }, el("b", { text: event.sender_name }), ...(badge ? [" ", badge] : []), ` sent ${event.gift_name ?? event.gift_id}${count}${to}`, combo);
  addFeedRow(
    el(
      "li",
      {
        class: `${(event.tier ?? 1) >= 3 ? "big " : ""}tier-${event.tier ?? 1}`,
        "data-testid": "feed-row",
        "data-seq": String(event.seq),
        "data-gift": event.gift_id,
        "data-sender": event.sender_id,
      },
      el("span", { class: "time", text: timeOf(event.ts) }),
      giftArt(event.gift_id),
      text,
      el("span", { class: "earn" }, el("span", { class: "diamond", text: `+${fmt.format(event.diamonds)}` }), el("small", { text: `#${event.seq}` })),
    ),
  );
  renderTotals(true);
  renderPerMinute();
  renderTop();
}

function onGap(gap) {
  const n = gap.to_seq - gap.from_seq + 1;
  addFeedRow(el("li", { class: "gap", "data-testid": "feed-gap", text: `⋯ ${fmt.format(n)} older gift${n === 1 ? "" : "s"} (#${gap.from_seq}–#${gap.to_seq}) are no longer in the feed` }));
}

function onHistoryChanged(change) {
  // The server's Redis went back in time: the gifts from #from_seq on were not true. Their
  // rows go (the true gifts follow, reusing those numbers), the stream's totals are read
  // again, and the wallet, which counted them too, shows nothing until the next welcome.
  for (const row of [...$("feed").querySelectorAll("[data-testid=feed-row]")]) {
    if (Number(row.dataset.seq) >= change.from_seq) row.remove();
  }
  state.totals.seq = Math.min(state.totals.seq, change.from_seq - 1);
  state.wallet = { seq: -1, diamonds: null };
  $("wallet").textContent = "…";
  delete $("wallet").dataset.value;
  addFeedRow(el("li", { class: "gap", "data-testid": "feed-history-changed", text: `⋯ the server lost gifts from #${change.from_seq} on: the true ones follow` }));
  refreshTotals();
  renderTotals();
}

function onWelcome(welcome, { reconnected }) {
  $("title").textContent = welcome.stream.title || welcome.stream.id;
  $("stream-title").value ||= welcome.stream.title;
  state.role = welcome.you.role;
  if (!reconnected) {
    state.totals = { seq: welcome.last_seq, diamonds: welcome.stream.diamonds, coins: 0, gifts: 0 };
    refreshTotals();
  }
  // The wallet at welcome already holds every gift up to welcome.last_seq.
  state.wallet = { seq: welcome.last_seq, diamonds: welcome.balance.diamonds };
  refreshWallet();
  state.top = welcome.top;
  goals.set(welcome.goals);
  setLive(welcome.stream.state === "live");
  renderTotals();
  renderTop();
  $("viewers").textContent = fmt.format(welcome.viewers);
  if (state.role === "viewer") showMessage("This link has a viewer's token: going live and ending need a creator's.", true);
}

// This month's earnings from the durable record (GET /api/creators/me/statements): shown
// only when the server has a record and the token is a creator's; it trails the live
// totals by the archive lag, so it is refreshed now and then, not per gift.
const STATEMENT_REFRESH_MS = 60_000;

function statementPath(format) {
  const month = new Date().toISOString().slice(0, 7); // YYYY-MM, UTC like the statement
  return `/api/creators/me/statements?month=${month}${format === "csv" ? "&format=csv" : ""}`;
}

async function refreshStatement() {
  let response;
  try {
    response = await api.request("GET", statementPath("json"));
  } catch {
    return; // offline: the next refresh tries again
  }
  if (!response.ok || !response.body?.totals) return;
  const totals = response.body.totals;
  $("statement-diamonds").textContent = fmt.format(totals.diamonds);
  $("statement-cash").textContent = `$${(totals.cents / 100).toFixed(2)}`;
  renderStatementRows(response.body);
  $("statement").hidden = false;
}

const STATEMENT_ROWS_MAX = 31; // the newest days shown; the CSV has them all

function renderStatementRows(doc) {
  const rows = [...doc.rows].reverse().slice(0, STATEMENT_ROWS_MAX);
  $("statement-rows").replaceChildren(
    ...rows.map((r) => el(
      "tr",
      {},
      el("td", { text: r.period.slice(5) }), // MM-DD of this month
      el("td", { text: r.stream_id, title: r.stream_id }),
      el("td", { text: fmt.format(r.gifts) }),
      el("td", { class: "diamond", text: fmt.format(r.diamonds) }),
      el("td", { text: `$${(r.cents / 100).toFixed(2)}` }),
    )),
  );
  const clawbacks = doc.clawbacks;
  const node = $("statement-clawbacks");
  node.hidden = !clawbacks?.count;
  if (clawbacks?.count) {
    node.textContent = `Charged back within the hold: −${fmt.format(clawbacks.diamonds)} diamonds`
      + ` (${fmt.format(clawbacks.count)}×)`;
  }
}

// Held vs withdrawable (GET /api/me/wallet): diamonds from gifts stay held for the payout
// hold (GIFTWIRE_PAYOUT_HOLD_DAYS) before a cash-out may take them. Read again shortly
// after gifts arrive (not per gift) and now and then, as a day's diamonds are released.
const WALLET_REFRESH_MS = 30_000;
const WALLET_AFTER_GIFT_MS = 1_000;
let walletTimer = null;

async function refreshWallet() {
  walletTimer = null;
  let response;
  try {
    response = await api.wallet();
  } catch {
    return;
  }
  const w = response.body;
  if (!response.ok || typeof w?.withdrawable_diamonds !== "number") return;
  setValue("wallet-withdrawable", w.withdrawable_diamonds);
  setValue("wallet-held", w.held_diamonds);
  $("wallet-release").textContent = w.next_release_ms
    ? `next release ${new Date(w.next_release_ms).toISOString().slice(0, 16).replace("T", " ")} UTC`
    : "";
  $("hold").hidden = false;
}

function walletSoon() {
  walletTimer ??= setTimeout(refreshWallet, WALLET_AFTER_GIFT_MS);
}

async function downloadStatement(event) {
  // A plain link cannot carry the bearer token: fetch the CSV and hand it over as a file.
  event.preventDefault();
  const response = await fetch(config.server + statementPath("csv"), {
    headers: { authorization: `Bearer ${config.token}` },
    cache: "no-store",
  });
  if (!response.ok) return;
  const link = el("a", {
    href: URL.createObjectURL(await response.blob()),
    download: `giftwire-statement-${statementPath("json").slice(-7)}.csv`,
  });
  link.click();
  URL.revokeObjectURL(link.href);
}

async function refreshTotals() {
  // Coins and gift counts are not in the welcome; the stream's totals are.
  const response = await api.stream(state.stream);
  if (response.ok && response.body.last_seq >= state.totals.seq) {
    const s = response.body;
    state.totals = { seq: s.last_seq, diamonds: s.diamonds, coins: s.coins, gifts: s.gifts };
    renderTotals();
  }
}

function onMessage(message) {
  if (battle?.onMessage(message)) {
    if (message.type === "battle_end") showResult(message);
    $("battle-end").hidden = message.type === "battle_end";
    if (message.type === "battle") renderInvites({});
    return;
  }
  switch (message.type) {
    case "battle_invite":
      refreshBattle();
      break;
    case "guests":
      renderStage(message.guests);
      break;
    case "stats":
      setValue("viewers", message.viewers);
      if (message.last_seq >= state.totals.seq) {
        state.totals = { seq: message.last_seq, diamonds: message.diamonds, coins: message.coins, gifts: message.gifts };
        renderTotals();
      }
      break;
    case "leaderboard":
      state.top = message.top;
      renderTop();
      break;
    case "stream":
      setLive(message.state === "live");
      break;
    case "goals":
      goals.set(message.goals);
      break;
    case "goal_reached":
      goals.reached(message);
      break;
    case "error":
      showMessage(errorText(message.code, message.message), true);
      break;
    default:
      break;
  }
}

function setLive(live) {
  state.live = live;
  state.ended = !live;
  const pill = $("live");
  pill.textContent = live ? "live" : "ended";
  pill.className = `pill ${live ? "live" : "ended"}`;
  $("start").disabled = live;
  $("end").disabled = !live;
  $("stream-id").disabled = live;
  if (!live) {
    $("end").textContent = "End stream";
    showMessage("The stream has ended. To go live again, pick a new stream id.", false);
    $("stream-id").value = `${state.stream.replace(/-[a-z0-9]+$/, "")}-${Date.now().toString(36)}`.slice(0, 64);
  } else {
    hideMessage();
  }
}

function showMessage(text, isError) {
  const node = $("message");
  node.textContent = text;
  node.classList.toggle("info", !isError);
  node.hidden = false;
}

function hideMessage() {
  $("message").hidden = true;
}

const STATE_TEXT = {
  connecting: "connecting…",
  live: "connected",
  reconnecting: "reconnecting…",
  "no-stream": "not live",
  denied: "not signed in",
  stopped: "stopped",
};

function onState(name, detail) {
  $("status").dataset.state = name;
  $("status").textContent = STATE_TEXT[name] ?? name;
  if (name === "no-stream") {
    $("live").textContent = "offline";
    $("live").className = "pill";
    $("start").disabled = false;
    $("end").disabled = true;
    $("stream-id").disabled = false;
    showMessage(`Stream “${state.stream}” has not started. Give it a title and go live.`, false);
  } else if (name === "denied") {
    showMessage(errorText(detail?.code ?? "unauthorized"), true);
  }
}

function connect(streamId) {
  socket?.stop();
  state.stream = streamId;
  state.totals = { seq: -1, diamonds: 0, coins: 0, gifts: 0 };
  state.recent = [];
  state.top = [];
  $("feed").replaceChildren(el("li", { class: "feed-empty", text: "Gifts show up here the moment they are sent." }));
  $("stream-id").value = streamId;
  socket = new GiftSocket({
    server: config.server,
    stream: streamId,
    token: config.token,
    ordered: true,
    historyEvents: HISTORY_EVENTS,
    callbacks: { onState, onWelcome, onGift, onGap, onHistoryChanged, onMessage },
  });
  battle = new BattleBar($("battle"), streamId, { names: state.names });
  window.giftwire = { socket, state, battle };
  renderTotals();
  renderTop();
  socket.start();
  refreshBattle();
  api.guests(streamId).then((r) => { if (r.ok) renderStage(r.body.guests); });
}

async function start() {
  const id = $("stream-id").value.trim();
  if (!/^[A-Za-z0-9_.:-]{1,64}$/.test(id)) {
    showMessage("A stream id is 1-64 letters, digits or _ . : -", true);
    return;
  }
  $("start").disabled = true;
  const response = await api.startStream(id, $("stream-title").value.trim());
  if (!response.ok) {
    $("start").disabled = false;
    const error = response.body?.error ?? {};
    showMessage(errorText(error.code, error.message), true);
    return;
  }
  hideMessage();
  if (id !== state.stream) {
    const url = new URL(location.href);
    url.searchParams.set("stream", id);
    history.replaceState(null, "", url); // the fragment (the token) stays as it is
    connect(id);
  } else {
    socket.start();
  }
}

async function end() {
  const button = $("end");
  if (!state.endArmed) {
    button.textContent = "Click again to end";
    state.endArmed = setTimeout(() => {
      state.endArmed = null;
      button.textContent = "End stream";
    }, END_CONFIRM_MS);
    return;
  }
  clearTimeout(state.endArmed);
  state.endArmed = null;
  button.disabled = true;
  button.textContent = "End stream";
  const response = await api.endStream(state.stream);
  if (!response.ok) {
    button.disabled = false;
    const error = response.body?.error ?? {};
    showMessage(errorText(error.code, error.message), true);
    return;
  }
  setLive(false);
}

function main() {
  if (!config.token) {
    $("status").dataset.state = "denied";
    $("status").textContent = "no token";
    $("app").replaceChildren(el("div", { class: "notice" }));
    $("app").firstChild.innerHTML =
      "<h2>Open this page with a creator token</h2><p>Add <code>#token=…</code> to the address: "
      + "<code>giftwire demo</code> prints a ready-made link, and "
      + "<code>giftwire token --user NAME --role creator</code> makes more.</p>";
    $("app").className = "";
    return;
  }
  $("start").addEventListener("click", start);
  $("end").addEventListener("click", end);
  $("goal-form").addEventListener("submit", addGoal);
  $("goal-kind").addEventListener("change", () => { $("goal-gift").hidden = $("goal-kind").value !== "gift"; });
  loadGoalGifts();
  $("battle-form").addEventListener("submit", inviteBattle);
  $("guest-form").addEventListener("submit", inviteGuest);
  $("battle-end").addEventListener("click", async () => {
    await call("POST", `/api/streams/${encodeURIComponent(state.stream)}/battle/end`, {});
  });
  setInterval(renderPerMinute, 1000);
  $("statement-csv").addEventListener("click", downloadStatement);
  refreshStatement();
  setInterval(refreshStatement, STATEMENT_REFRESH_MS);
  setInterval(refreshWallet, WALLET_REFRESH_MS);
  connect(config.stream);
}

main();
