// The OBS overlay: gift alerts and the top gifters over the creator's video.
//
// Query string options (all optional):
//   stream=ID            the stream (default "demo")
//   alerts=all|big|none  which gifts raise an alert card (big: tiers 3-4)       default all
//   animations=1|0       play big gifts full screen                             default 1
//   min_coins=N          only gifts worth at least N coins (price × count)      default 1
//   gifts=rose,lion      only these gift ids                                   default any
//   position=P           where alerts stack: top-left, top-right, bottom-left,
//                        bottom-right, center                                  default top-left
//   top=N                top gifters shown (0 hides the list)                   default 5
//   top_position=P       where the list sits                                   default top-right
//   duration_s=S         how long an alert stays                               default 5
//   battle=1|0           the battle bar while a battle runs (and its result)  default 1
//   battle_position=P    top or bottom                                         default top
//   goals=1|0            show the stream's goals with their progress            default 1
//   goal_ids=a,b         only these goals (ids from the dashboard or the API)   default all
//   goals_position=P     where the goals sit (as position)                     default bottom-left
//   test=1               show sample alerts, to place the source in OBS
// The token comes in the fragment (#token=…): use the creator's.

import { BattleBar } from "./battle.js";
import { Api, GiftSocket, el, fmt, giftArt, pageConfig, topRow } from "./giftwire.js";
import { BigGiftQueue, isBig } from "./gifts.js";
import { GoalBoard } from "./goals.js";

const POSITIONS = new Set(["top-left", "top-right", "bottom-left", "bottom-right", "center"]);
const ALERTS_MAX = 4;

const config = pageConfig();
const q = config.query;
const intParam = (name, fallback, low, high) => {
  const value = Number.parseInt(q.get(name) ?? "", 10);
  return Number.isFinite(value) ? Math.min(high, Math.max(low, value)) : fallback;
};
const options = {
  alerts: ["all", "big", "none"].includes(q.get("alerts")) ? q.get("alerts") : "all",
  animations: q.get("animations") !== "0",
  minCoins: intParam("min_coins", 1, 0, 1e13),
  gifts: q.get("gifts") ? new Set(q.get("gifts").split(",").map((s) => s.trim())) : null,
  position: POSITIONS.has(q.get("position")) ? q.get("position") : "top-left",
  top: intParam("top", 5, 0, 20),
  topPosition: POSITIONS.has(q.get("top_position")) ? q.get("top_position") : "top-right",
  durationMs: intParam("duration_s", 5, 1, 120) * 1000,
  goals: q.get("goals") !== "0",
  goalIds: q.get("goal_ids") ? new Set(q.get("goal_ids").split(",").map((s) => s.trim())) : null,
  goalsPosition: POSITIONS.has(q.get("goals_position")) ? q.get("goals_position") : "bottom-left",
  test: q.get("test") === "1",
  battle: q.get("battle") !== "0",
  battlePosition: q.get("battle_position") === "bottom" ? "bottom" : "top",
};

const $ = (id) => document.getElementById(id);
const names = new Map();
const cards = new Map(); // sender:gift -> {node, timer, combo}
const big = new BigGiftQueue($("big"));
let top = [];
const giftNames = new Map(); // gift id -> name, for gift goals (the catalog, then events)
const goalBoard = new GoalBoard($("goals"), { giftName: (id) => giftNames.get(id) ?? id });

async function loadGiftNames() {
  const catalog = await new Api(config.server, null).catalog().catch(() => null);
  if (!catalog?.ok) return;
  for (const gift of catalog.body.gifts) giftNames.set(gift.id, gift.name);
  goalBoard.set(goalBoard.all());
}

function showGoals(goals) {
  const shown = options.goals ? (goals ?? []).filter((g) => !options.goalIds || options.goalIds.has(g.goal_id)) : [];
  goalBoard.set(shown);
  $("goals").hidden = shown.length === 0;
}
let liveFrom = null; // gifts up to the first welcome's sequence are history: names only
const battle = new BattleBar($("battle"), config.stream, { names });

function wanted(event) {
  if (event.coins < options.minCoins) return false;
  if (options.gifts && !options.gifts.has(event.gift_id)) return false;
  return true;
}

function alertFor(event) {
  const key = `${event.sender_id}:${event.gift_id}`;
  let card = cards.get(key);
  if (!card) {
    const combo = el("span", { class: "combo" });
    const node = el(
      "div",
      { class: `alert-card tier-${event.tier ?? 1}`, "data-testid": "alert", "data-gift": event.gift_id },
      giftArt(event.gift_id),
      el(
        "span",
        {},
        el("div", { class: "who", text: event.sender_name }),
        el("div", { class: "what", text: `sent ${event.gift_name ?? event.gift_id}` }),
      ),
      combo,
    );
    card = { node, combo, timer: null };
    cards.set(key, card);
    $("alerts").append(node);
    while (cards.size > ALERTS_MAX) removeCard(cards.keys().next().value, true);
  }
  card.node.dataset.seq = String(event.seq);
  card.combo.textContent = (event.combo ?? event.count) > 1 ? `×${fmt.format(event.combo ?? event.count)}` : "";
  clearTimeout(card.timer);
  card.timer = setTimeout(() => removeCard(key), options.durationMs);
}

function removeCard(key, now = false) {
  const card = cards.get(key);
  if (!card) return;
  cards.delete(key);
  clearTimeout(card.timer);
  if (now) card.node.remove();
  else {
    card.node.classList.add("leaving");
    setTimeout(() => card.node.remove(), 600);
  }
}

function renderTop() {
  const list = $("top");
  list.replaceChildren();
  for (const [i, row] of top.slice(0, options.top).entries()) {
    list.append(topRow(i + 1, row, names, { amountClass: "amount" }));
  }
  $("top-box").hidden = options.top === 0 || top.length === 0;
}

function onGift(event) {
  names.set(event.sender_id, event.sender_name);
  goalBoard.progress(event.goals);
  if (liveFrom !== null && event.seq <= liveFrom) {
    renderTop();
    return;
  }
  if (!wanted(event)) return;
  const bigGift = isBig(event);
  if (options.alerts === "all" || (options.alerts === "big" && bigGift)) alertFor(event);
  if (bigGift && options.animations) big.push(event);
}

function onMessage(message) {
  if (options.battle && battle.onMessage(message)) return;
  if (message.type === "leaderboard") {
    top = message.top;
    renderTop();
  } else if (message.type === "goals") {
    showGoals(message.goals);
  } else if (message.type === "goal_reached") {
    goalBoard.reached(message);
  }
}

function onHistoryChanged(change) {
  // The true gifts from from_seq on follow: they are live gifts even where their numbers
  // fall among what was history when the overlay opened.
  if (liveFrom !== null) liveFrom = Math.min(liveFrom, change.from_seq - 1);
}

function onWelcome(welcome) {
  liveFrom ??= welcome.last_seq;
  top = welcome.top;
  renderTop();
  showGoals(welcome.goals);
}

function onState(name) {
  $("status").dataset.state = name;
}

function showSamples() {
  const samples = [
    ["Alice", "rose", "Rose", 1, 12, 12],
    ["Bob", "corgi", "Corgi", 2, 1, 299],
    ["Carol", "universe", "Universe", 4, 1, 34999],
  ];
  samples.forEach(([name, animation, giftName, tier, combo, coins], i) => {
    const event = {
      seq: i + 1, sender_id: name.toLowerCase(), sender_name: name, gift_id: animation,
      gift_name: giftName, animation, tier, count: 1, combo, coins, diamonds: coins / 2,
    };
    setTimeout(() => onGift(event), i * 700);
  });
  top = [
    { user_id: "carol", name: "Carol", coins: 34999, level: 9 },
    { user_id: "bob", name: "Bob", coins: 299, level: 3 },
    { user_id: "alice", name: "Alice", coins: 12, level: 1 },
  ];
  showGoals([
    { goal_id: "roses", kind: "gift", gift_id: "rose", target: 1000, title: "1,000 Roses", progress: 640 },
    { goal_id: "coins", kind: "coins", gift_id: "", target: 50000, title: "50,000 coins", progress: 50210 },
  ]);
  for (const [name] of samples) names.set(name.toLowerCase(), name);
  renderTop();
}

function main() {
  $("alerts").dataset.pos = options.position;
  $("top-box").dataset.pos = options.topPosition;
  $("goals").dataset.pos = options.goalsPosition;
  $("battle").dataset.pos = options.battlePosition;
  renderTop();
  if (options.test) {
    window.giftwire = { big, options };
    onState("test");
    showSamples();
    return;
  }
  if (!config.token) {
    onState("denied");
    return;
  }
  loadGiftNames();
  // Ordered: after a reconnect the overlay resumes where it was, so no alert plays twice
  // and none is skipped. The recent history is read for the gifters' names only: gifts sent
  // before the overlay opened raise no alerts.
  const socket = new GiftSocket({
    server: config.server,
    stream: config.stream,
    token: config.token,
    ordered: true,
    historyEvents: 100,
    callbacks: { onGift, onHistoryChanged, onMessage, onWelcome, onState },
  });
  window.giftwire = { socket, options, big, battle };
  socket.start();
  if (options.battle) battle.load(new Api(config.server, config.token));
}

main();
