// The admin page: the managed catalog (reprice, retire, add, now or at a time; the
// schedule, with cancel) and minors' spending caps. Everything goes through the admin API
// (docs/protocol.md, "The managed catalog"); the server decides and bounds it all.

import { Api, el, fmt, giftArt, pageConfig } from "./giftwire.js";

const config = pageConfig();
const $ = (id) => document.getElementById(id);
const api = new Api(config.server, config.token);
const state = { version: null, gifts: [] };

function showError(text) {
  $("error").textContent = text;
  $("error").hidden = !text;
}

function errorOf(reply) {
  const error = reply.body?.error;
  return error ? `${error.code}: ${error.message}` : `HTTP ${reply.status}`;
}

// When the next edit applies: now, or the chosen local time as Unix ms.
function when() {
  if ($("when-mode").value !== "at") return null;
  const at = new Date($("when-at").value).getTime();
  return Number.isFinite(at) ? at : NaN;
}

async function submit(changes) {
  const at = when();
  if (Number.isNaN(at)) {
    showError("Choose the time the change applies at.");
    return;
  }
  const edit = { expect_version: state.version, changes };
  if (at !== null) Object.assign(edit, { at_ms: at, id: `edit-${Date.now().toString(36)}` });
  const reply = await api.editCatalog(edit);
  showError(reply.ok ? "" : errorOf(reply));
  await load();
}

function row(gift) {
  const price = el("input", {
    type: "number", min: "1", value: String(gift.price_coins), "data-testid": `price-${gift.id}`,
  });
  return el(
    "tr",
    { "data-gift": gift.id },
    el("td", {}, giftArt(gift.id)),
    el("td", { class: "id", text: gift.id }),
    el("td", { text: gift.name }),
    el("td", { text: String(gift.tier) }),
    el("td", {}, price),
    el(
      "td",
      { class: "actions" },
      el("button", {
        class: "btn", text: "Reprice", "data-testid": `reprice-${gift.id}`,
        onclick: () => submit([{ op: "reprice", id: gift.id, price_coins: Number(price.value) }]),
      }),
      " ",
      el("button", {
        class: "btn danger", text: "Retire", "data-testid": `retire-${gift.id}`,
        onclick: () => submit([{ op: "retire", id: gift.id }]),
      }),
    ),
  );
}

function describe(change) {
  if (change.op === "add") return `add ${change.gift.id} at ${fmt.format(change.gift.price_coins)}`;
  if (change.op === "reprice") return `${change.id} → ${fmt.format(change.price_coins)}`;
  return `${change.op} ${change.id}`;
}

function renderScheduled(scheduled) {
  const list = $("scheduled");
  list.replaceChildren();
  if (scheduled.length === 0) list.append(el("li", { class: "empty", text: "Nothing scheduled." }));
  for (const edit of scheduled) {
    list.append(el(
      "li",
      { "data-edit": edit.id },
      el("b", { text: new Date(edit.at_ms).toLocaleString() }),
      el("span", { text: edit.changes.map(describe).join(", ") }),
      el("button", {
        class: "btn", text: "Cancel",
        onclick: async () => {
          const reply = await api.cancelScheduled(edit.id);
          showError(reply.ok ? "" : errorOf(reply));
          await load();
        },
      }),
    ));
  }
}

async function load() {
  const reply = await api.adminCatalog();
  if (!reply.ok) {
    showError(reply.status === 403 ? "This page needs an admin token." : errorOf(reply));
    return;
  }
  state.version = reply.body.version;
  state.gifts = reply.body.gifts;
  $("version").textContent = `version ${reply.body.version}`;
  $("version").dataset.version = String(reply.body.version);
  $("rows").replaceChildren(...[...state.gifts].sort((a, b) => a.price_coins - b.price_coins).map(row));
  renderScheduled(reply.body.scheduled);
}

async function protect(minor) {
  const user = $("minor-user").value.trim();
  const body = { minor };
  if (minor) {
    for (const [field, input] of [["day_cap", "minor-day"], ["month_cap", "minor-month"]]) {
      if ($(input).value !== "") body[field] = Number($(input).value);
    }
  }
  const reply = await api.protectAccount(user, body);
  if (!reply.ok) {
    $("minor-status").textContent = errorOf(reply);
    return;
  }
  const s = reply.body;
  const cap = (n) => (n === 0 ? "none" : fmt.format(n));
  $("minor-status").textContent = s.minor
    ? `${s.user_id} is a minor: caps ${cap(s.day.cap)} a day, ${cap(s.month.cap)} a month.`
    : `${s.user_id} is not marked a minor.`;
}

function main() {
  $("when-mode").addEventListener("change", () => {
    $("when-at").hidden = $("when-mode").value !== "at";
  });
  $("add").addEventListener("click", () => {
    const gift = {
      id: $("add-id").value.trim(), name: $("add-name").value.trim() || $("add-id").value.trim(),
      price_coins: Number($("add-price").value), tier: Number($("add-tier").value),
    };
    submit([{ op: "add", gift }]);
  });
  $("minor-mark").addEventListener("click", () => protect(true));
  $("minor-clear").addEventListener("click", () => protect(false));
  window.giftwireAdmin = { load, state };
  load();
}

main();
