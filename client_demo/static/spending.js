// Responsible spending on the viewer page: a meter under the wallet (spent today and this
// month against the limits in force) and a sheet to change one's own limits. The server
// decides everything (GET/PUT /api/me/spending, docs/protocol.md): lowering is at once,
// a raise waits out the cooling-off, a minor's cap cannot be passed.

import { fmt, plural } from "./giftwire.js";

const REFRESH_AFTER_ACK_MS = 400;
const PERIOD_WORD = { day: "daily", month: "monthly" };

function limitText(limit) {
  return limit === 0 ? "no limit" : plural(limit, "coin");
}

function whenText(fromMs, nowMs) {
  const minutes = Math.max(1, Math.round((fromMs - nowMs) / 60000));
  const wait = minutes >= 60 ? `${Math.floor(minutes / 60)} h ${minutes % 60} min` : `${minutes} min`;
  const at = new Date(fromMs).toLocaleString(undefined, {
    weekday: "short", hour: "2-digit", minute: "2-digit",
  });
  return `${at} (in ${wait})`;
}

export class SpendingPanel {
  constructor({ api, meter, sheet }) {
    this.api = api;
    this.meter = meter;
    this.sheet = sheet;
    this.status = null;
    this.shown = {}; // period -> the input's value when the sheet was filled
    this.timer = null;
    meter.addEventListener("click", () => this.open());
    sheet.querySelector("#spend-close").addEventListener("click", () => this.close());
    sheet.querySelector("#spend-save").addEventListener("click", () => this.save());
  }

  // Never throws: the meter is refreshed after acks in the background, and a server that
  // is restarting (the socket reconnects by itself) must not raise an uncaught rejection.
  async refresh() {
    let reply;
    try {
      reply = await this.api.spending();
    } catch {
      return false;
    }
    if (reply.ok) this.render(reply.body);
    return reply.ok;
  }

  // After a gift: the spend moved; ask again once the burst of acks settles.
  soon() {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.refresh(), REFRESH_AFTER_ACK_MS);
  }

  render(status) {
    this.status = status;
    const part = (label, p) => {
      const near = p.limit > 0 && p.spent >= p.limit * 0.8 ? " near" : "";
      const limit = p.limit === 0 ? "" : ` / ${fmt.format(p.limit)}`;
      return `<span class="${near.trim()}">${label} <b>${fmt.format(p.spent)}</b>${limit}</span>`;
    };
    const pending = status.day.pending || status.month.pending;
    this.meter.innerHTML = part("Today", status.day) + part("Month", status.month)
      + (pending ? '<span class="pending-dot">raise pending</span>' : "");
    this.meter.dataset.daySpent = String(status.day.spent);
    this.meter.dataset.monthSpent = String(status.month.spent);
    this.meter.hidden = false;
    const minor = this.sheet.querySelector("#spend-minor");
    minor.hidden = !status.minor;
    minor.textContent = status.minor
      ? `The platform caps this account: ${limitText(status.day.cap)} a day,`
        + ` ${limitText(status.month.cap)} a month.`
      : "";
    for (const name of ["day", "month"]) this.renderPeriod(name, status[name], status.now_ms);
  }

  renderPeriod(name, p, nowMs) {
    const box = this.sheet.querySelector(`[data-period="${name}"]`);
    const role = (r) => box.querySelector(`[data-role="${r}"]`);
    role("figures").textContent = p.limit === 0
      ? `${plural(p.spent, "coin")} spent · no limit`
      : `${fmt.format(p.spent)} of ${plural(p.limit, "coin")}`
        + (p.set_by === "platform" ? " (platform cap)" : "");
    const bar = role("bar");
    const ratio = p.limit === 0 ? 0 : Math.min(1, p.spent / p.limit);
    bar.style.width = `${Math.round(ratio * 100)}%`;
    bar.classList.toggle("full", ratio >= 1);
    if (name === "month" && p.month) role("when").textContent = `${p.month}, UTC`;
    const pending = role("pending");
    pending.hidden = !p.pending;
    pending.textContent = p.pending
      ? `Raise to ${limitText(p.pending.limit)} from ${whenText(p.pending.from_ms, nowMs)}.`
      : "";
    const input = role("input");
    if (document.activeElement !== input) {
      input.value = p.own === 0 ? "" : String(p.own);
      this.shown[name] = input.value;
    }
    if (p.cap > 0) input.max = String(p.cap);
  }

  async open() {
    this.sheet.querySelector("#spend-result").textContent = "";
    this.sheet.hidden = false;
    await this.refresh();
  }

  close() {
    this.sheet.hidden = true;
  }

  async save() {
    const body = {};
    for (const name of ["day", "month"]) {
      const input = this.sheet.querySelector(`[data-period="${name}"] [data-role="input"]`);
      const value = input.value.trim();
      if (value === this.shown[name]) continue;
      const coins = value === "" ? 0 : Number(value);
      if (!Number.isInteger(coins) || coins < 0) {
        this.say(`The ${PERIOD_WORD[name]} limit must be a whole number of coins (empty: none).`);
        return;
      }
      body[name] = coins;
    }
    if (Object.keys(body).length === 0) {
      this.say("Nothing to change.");
      return;
    }
    let reply;
    try {
      reply = await this.api.setSpending(body);
    } catch {
      this.say("The server could not be reached: check the limits shown, then try again.");
      return;
    }
    if (!reply.ok) {
      const error = reply.body?.error ?? {};
      if (error.code === "spending_cap") {
        const { period, cap } = error.detail ?? {};
        this.say(`The platform caps this account's ${PERIOD_WORD[period] ?? ""} spending at`
          + ` ${limitText(cap)}: choose that or less.`);
      } else {
        this.say(error.message ?? "Could not save the limits; try again.");
      }
      return;
    }
    this.render(reply.body);
    this.say(this.outcome(reply.body));
  }

  outcome(status) {
    const lines = [];
    for (const name of ["day", "month"]) {
      const how = status.applied?.[name];
      const p = status[name];
      const word = PERIOD_WORD[name];
      if (how === "now") lines.push(`New ${word} limit: ${limitText(p.limit)}, in force now.`);
      if ((how === "pending" || how === "kept") && p.pending) {
        lines.push(`Your ${word} limit rises to ${limitText(p.pending.limit)} on`
          + ` ${whenText(p.pending.from_ms, status.now_ms)}; until then it stays`
          + ` ${limitText(p.limit)}.`);
      }
    }
    return lines.join(" ");
  }

  say(text) {
    this.sheet.querySelector("#spend-result").textContent = text;
  }

  // The words for a gift refused with spending_limit (its detail: period, limit, spent).
  static refusalText(detail) {
    if (!detail) return null;
    const span = detail.period === "month" ? "this month" : "in the last 24 hours";
    const whose = detail.set_by === "platform" ? "the platform's cap" : "your limit";
    return `Spending limit reached: ${plural(detail.spent, "coin")} spent ${span},`
      + ` ${whose} is ${plural(detail.limit, "coin")}.`;
  }
}
