// Gift animations shared by the viewer page and the OBS overlay (styles in gifts.css).

import { el, fmt, giftArt } from "./giftwire.js";

export const BIG_TIER_MIN = 3; // tiers 1-2 scroll in the strip, 3-4 play full screen

export function isBig(event) {
  return (event.tier ?? 1) >= BIG_TIER_MIN;
}

function initials(name) {
  return (name || "?").trim().slice(0, 1).toUpperCase();
}

/**
 * Small gifts as rows of a strip, one row per (sender, gift) while the combo goes on: a
 * hundred Roses from one viewer are one row whose counter climbs, not a hundred rows.
 */
export class GiftStrip {
  constructor(root, { rowsMax = 5, lingerMs = 6000 } = {}) {
    this.root = root;
    this.rowsMax = rowsMax;
    this.lingerMs = lingerMs;
    this.rows = new Map(); // key -> {node, timer, comboNode}
  }

  show(event) {
    const key = `${event.sender_id}:${event.gift_id}`;
    let row = this.rows.get(key);
    if (!row) {
      const comboNode = el("span", { class: "combo" });
      const node = el(
        "div",
        { class: "strip-row", "data-testid": "strip-row", "data-gift": event.gift_id },
        el("span", { class: "avatar", text: initials(event.sender_name) }),
        el(
          "span",
          { class: "line" },
          el("span", { class: "who", text: event.sender_name }),
          el("span", { class: "what", text: `sent ${event.gift_name ?? event.gift_id}` }),
        ),
        giftArt(event.gift_id),
        comboNode,
      );
      row = { node, comboNode, timer: null };
      this.rows.set(key, row);
      this.root.append(node);
      this._trim();
    }
    row.node.dataset.seq = String(event.seq);
    row.comboNode.textContent = `×${fmt.format(event.combo ?? event.count)}`;
    row.comboNode.classList.remove("bump");
    void row.comboNode.offsetWidth; // restart the bump animation
    row.comboNode.classList.add("bump");
    clearTimeout(row.timer);
    row.timer = setTimeout(() => this._remove(key), this.lingerMs);
  }

  _trim() {
    while (this.rows.size > this.rowsMax) {
      const [oldest] = this.rows.keys();
      this._remove(oldest, true);
    }
  }

  _remove(key, now = false) {
    const row = this.rows.get(key);
    if (!row) return;
    this.rows.delete(key);
    clearTimeout(row.timer);
    if (now) {
      row.node.remove();
      return;
    }
    row.node.classList.add("leaving");
    setTimeout(() => row.node.remove(), 500);
  }
}

/**
 * Big gifts, played one at a time, most valuable first: the queue is ordered by coins (then
 * by arrival), so a Universe is never stuck behind a hundred Lions. When the queue is full
 * the least valuable waiting gift is dropped, and a long queue plays faster.
 */
export class BigGiftQueue {
  constructor(root, { queueMax = 40, playMs = 3200, fastPlayMs = 1600 } = {}) {
    this.root = root;
    this.queueMax = queueMax;
    this.playMs = playMs;
    this.fastPlayMs = fastPlayMs;
    this.waiting = [];
    this.playing = null;
  }

  push(event) {
    this.waiting.push(event);
    this.waiting.sort((a, b) => b.coins - a.coins || a.seq - b.seq);
    if (this.waiting.length > this.queueMax) this.waiting.pop();
    if (!this.playing) this._next();
    else this._updateCount();
  }

  _next() {
    this.root.replaceChildren();
    const event = this.waiting.shift();
    this.playing = event ?? null;
    if (!event) {
      delete this.root.dataset.seq;
      return;
    }
    const playMs = this.waiting.length > 3 ? this.fastPlayMs : this.playMs;
    const sparks = el("div", { class: "sparks" });
    for (let i = 0; i < 12; i += 1) {
      const spark = giftArt(event.gift_id, "spark");
      spark.style.setProperty("--angle", `${i * 30}deg`);
      spark.style.setProperty("--delay", `${0.25 + (i % 3) * 0.12}s`);
      sparks.append(spark);
    }
    const count = event.count > 1 ? ` ×${fmt.format(event.count)}` : "";
    const caption = el("div", { class: "caption" });
    caption.append(
      el("b", { text: event.sender_name }),
      ` sent ${event.gift_name ?? event.gift_id}${count}`,
      el("span", { class: "queue-count", "data-testid": "big-waiting" }),
    );
    const scene = el(
      "div",
      { class: `scene tier-${event.tier}`, "data-testid": "big-gift", "data-gift": event.gift_id },
      ...(event.tier >= 4 ? [el("div", { class: "rays" })] : []),
      sparks,
      giftArt(event.gift_id, "hero"),
      caption,
    );
    scene.style.setProperty("--play-ms", `${playMs}ms`);
    this.root.dataset.seq = String(event.seq);
    this.root.append(scene);
    this._updateCount();
    setTimeout(() => this._next(), playMs);
  }

  _updateCount() {
    // In the caption, so that it never lands on what the page has in its corners.
    const badge = this.root.querySelector(".queue-count");
    if (!this.playing || !badge) return;
    badge.textContent = this.waiting.length === 0 ? "" : `+${fmt.format(this.waiting.length)} waiting`;
  }
}
