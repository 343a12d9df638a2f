// Gift animations shared by the viewer page and the OBS overlay (styles in gifts.css): the
// strip of small gifts and the queue of big ones (each played by show.js).

import { el, fmt, giftArt, levelBadge } from "./giftwire.js";
import { Show, prefersReducedMotion } from "./show.js";

// " to Gina" / " to all guests" for a gift that guests received (its `to`); names when the
// page set them on the event (`to_name`), else the user ids.
export function recipientText(event) {
  if (!event.to) return "";
  if (event.to === "*") return " to all guests";
  return ` to ${event.to_name ?? event.to}`;
}

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
          el("span", { class: "what", text: `sent ${event.gift_name ?? event.gift_id}${recipientText(event)}` }),
        ),
        giftArt(event.gift_id),
        comboNode,
      );
      row = { node, comboNode, timer: null, badge: null };
      this.rows.set(key, row);
      this.root.append(node);
      this._trim();
    }
    row.node.dataset.seq = String(event.seq);
    // The sender's gifter level after this gift, beside the name (it may have climbed).
    const badge = levelBadge(event.level);
    if (badge) {
      if (row.badge) row.badge.replaceWith(badge);
      else row.node.querySelector(".who").append(" ", badge);
      row.badge = badge;
    }
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
 * the least valuable waiting gift is dropped, and a long queue plays faster (each show at
 * `playMs / fastPlayMs` times the speed). Each gift plays as a Show (show.js): entrance,
 * loop, exit; the next starts when its clock ends. `pause`, `seek` and `resume` hold the
 * current show for the browser tests.
 */
export class BigGiftQueue {
  constructor(root, { queueMax = 40, playMs = 3200, fastPlayMs = 1600, reduced = prefersReducedMotion } = {}) {
    this.root = root;
    this.queueMax = queueMax;
    this.playMs = playMs;
    this.fastPlayMs = fastPlayMs;
    this.reduced = reduced;
    this.waiting = [];
    this.playing = null;
    this.show = null;
  }

  push(event) {
    this.waiting.push(event);
    this.waiting.sort((a, b) => b.coins - a.coins || a.seq - b.seq);
    if (this.waiting.length > this.queueMax) this.waiting.pop();
    if (!this.playing) this._next();
    else this._updateCount();
  }

  _next() {
    this.show?.dispose();
    this.show = null;
    this.root.replaceChildren();
    const event = this.waiting.shift();
    this.playing = event ?? null;
    if (!event) {
      delete this.root.dataset.seq;
      return;
    }
    const rate = this.waiting.length > 3 ? this.playMs / this.fastPlayMs : 1;
    this.root.dataset.seq = String(event.seq);
    let show;
    try {
      show = new Show(this.root, event, {
        playMs: this.playMs, rate, reduced: this.reduced(), waiting: this._waitingText(),
      });
    } catch (error) {
      // A show that cannot be built must not stall the queue behind it.
      console.error("big gift", event.gift_id, error);
      setTimeout(() => this._next(), 0);
      return;
    }
    this.show = show;
    show.finished.then(() => {
      if (this.show === show) this._next();
    });
  }

  _waitingText() {
    return this.waiting.length === 0 ? "" : `+${fmt.format(this.waiting.length)} waiting`;
  }

  _updateCount() {
    // In the caption, so that it never lands on what the page has in its corners.
    this.show?.updateWaiting(this._waitingText());
  }

  /** The current show's phases, {entrance: [from, to], loop: …, exit: …} in ms, or null. */
  phases() {
    return this.show?.phases ?? null;
  }

  pause() { this.show?.pause(); }
  seek(ms) { this.show?.seek(ms); }
  resume() { this.show?.resume(); }
}
