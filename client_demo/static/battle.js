// The battle bar, shared by the viewer page, the creator dashboard and the OBS overlay:
// both sides' scores as one split bar, the countdown to the battle's end, each side's top
// gifters, and the result (winner or draw, each side's MVP) once it is over.
//
// The server sends `battle` (started), `battle_score` (both sides, every 0.5 s while it
// changes) and `battle_end` (the result) to both rooms; `GET /api/streams/{id}/battle`
// gives the state to a page that opens mid-battle. The countdown runs on this clock,
// corrected by the server's `now`, to `ends_at`.

import { el, fmt } from "./giftwire.js";

const RESULT_SHOWN_MS = 60_000;

export class BattleBar {
  constructor(node, stream, { names = new Map(), tops = true } = {}) {
    this.node = node;
    this.stream = stream;
    this.names = names;
    this.tops = tops;
    this.battle = null; // the last battle / battle_score document
    this.result = null;
    this.offsetMs = 0; // server clock - this clock
    this.timer = null;
    this.hideTimer = null;
    node.hidden = true;
  }

  async load(api) {
    const response = await api.request("GET", `/api/streams/${encodeURIComponent(this.stream)}/battle`);
    if (!response.ok || !response.body?.battle) return response.body;
    const battle = response.body.battle;
    if (battle.state === "running") this.onMessage({ type: "battle_score", now: Date.now(), ...battle });
    return response.body;
  }

  /** Handle a message; true when it was a battle message. */
  onMessage(message) {
    switch (message.type) {
      case "battle":
      case "battle_score":
        if (this.result?.battle_id === message.battle_id) return true; // late: it is over
        this.battle = message;
        this.result = null;
        if (message.now) this.offsetMs = message.now - Date.now();
        this.render();
        this.tick();
        return true;
      case "battle_end":
        this.result = message;
        this.battle = message;
        clearInterval(this.timer);
        this.timer = null;
        this.render();
        clearTimeout(this.hideTimer);
        this.hideTimer = setTimeout(() => { this.node.hidden = true; }, RESULT_SHOWN_MS);
        return true;
      default:
        return false;
    }
  }

  sides() {
    const sides = this.battle?.sides ?? [];
    const ours = sides.find((s) => s.stream_id === this.stream) ?? sides[0];
    const theirs = sides.find((s) => s !== ours);
    return [ours, theirs];
  }

  tick() {
    if (this.timer === null) this.timer = setInterval(() => this.tick(), 250);
    const left = Math.max(0, (this.battle?.ends_at ?? 0) - (Date.now() + this.offsetMs));
    const clock = this.node.querySelector(".battle-clock");
    if (clock) {
      const s = Math.ceil(left / 1000);
      clock.textContent = `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
      clock.dataset.leftMs = String(left);
    }
  }

  render() {
    const [ours, theirs] = this.sides();
    if (!ours || !theirs) return;
    clearTimeout(this.hideTimer);
    this.node.hidden = false;
    const total = ours.score + theirs.score;
    const share = total === 0 ? 50 : Math.round((ours.score / total) * 1000) / 10;
    const over = this.result !== null;
    this.node.dataset.state = over ? "ended" : "running";
    this.node.dataset.battle = this.battle.battle_id;
    const label = (side) => side.creator_name ?? this.names.get(side.creator_id) ?? side.creator_id;
    const headline = over
      ? el("div", { class: "battle-result", "data-testid": "battle-result" }, this.resultText(ours))
      : el("div", { class: "battle-clock", "data-testid": "battle-countdown", text: "…" });
    this.node.replaceChildren(
      el(
        "div",
        { class: "battle-head" },
        el("span", { class: "battle-name ours", text: label(ours) }),
        el("span", { class: "battle-vs", text: "VS" }),
        headline,
        el("span", { class: "battle-name theirs", text: label(theirs) }),
      ),
      el(
        "div",
        { class: "battle-track", style: `--ours: ${share}%` },
        el("div", { class: "battle-fill ours" }, el("b", { "data-testid": "battle-score-ours", "data-score": String(ours.score), text: fmt.format(ours.score) })),
        el("div", { class: "battle-fill theirs" }, el("b", { "data-testid": "battle-score-theirs", "data-score": String(theirs.score), text: fmt.format(theirs.score) })),
      ),
      this.tops ? el("div", { class: "battle-tops" }, this.topList(ours, "ours"), this.topList(theirs, "theirs")) : "",
    );
    if (!over) this.tick();
  }

  topList(side, which) {
    const list = el("ol", { class: `battle-top ${which}`, "data-testid": `battle-top-${which}` });
    for (const row of (side.top ?? []).slice(0, 3)) {
      list.append(el("li", {}, el("span", { text: this.names.get(row.user_id) ?? row.user_id }), el("b", { class: "coin", text: fmt.format(row.coins) })));
    }
    return list;
  }

  resultText(ours) {
    const r = this.result;
    const outcome = r.draw ? "Draw!" : r.winner === ours.stream_id ? "Victory!" : "Defeat";
    const mvp = ours.mvp ? ` · MVP ${this.names.get(ours.mvp.user_id) ?? ours.mvp.user_id}` : "";
    return `${outcome}${mvp}`;
  }
}
