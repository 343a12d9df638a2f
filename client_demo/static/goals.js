// Stream goals and gifter level badges, shared by the viewer page, the creator dashboard
// and the OBS overlay (styles in goals.css).
//
// Goal progress is absolute: the welcome and each `goals` message carry every goal, each
// `gift` the new totals of the goals it advanced. A total below the one shown is an older
// gift (history read after the welcome) and is ignored; a `goals` message replaces all.

import { el, fmt, levelBadge } from "./giftwire.js";

export { levelBadge }; // defined beside topRow, which every leaderboard uses

export class GoalBoard {
  /**
   * @param root the element that holds one `.goal` per goal
   * @param giftName id -> display name of a gift (for "gift" goals)
   */
  constructor(root, { giftName = (id) => id, onDelete = null } = {}) {
    this.root = root;
    this.giftName = giftName;
    this.onDelete = onDelete;
    this.goals = new Map(); // goal id -> {goal, node, fill, count}
  }

  set(goals) {
    this.goals.clear();
    this.root.replaceChildren();
    for (const goal of goals ?? []) this._add({ ...goal });
    this.root.hidden = this.goals.size === 0 && !this.onDelete;
    this.root.dataset.count = String(this.goals.size);
  }

  all() {
    return [...this.goals.values()].map((entry) => entry.goal);
  }

  /** The `goals` list of a gift event: the new totals of the goals it advanced. */
  progress(list) {
    for (const { goal_id: id, progress } of list ?? []) {
      const entry = this.goals.get(id);
      if (!entry || progress <= entry.goal.progress) continue;
      entry.goal.progress = progress;
      this._paint(entry);
    }
  }

  /** A `goal_reached` event: celebrate once (a CSS animation, none under reduced motion). */
  reached(event) {
    const entry = this.goals.get(event.goal_id);
    if (!entry) return;
    entry.goal.progress = Math.max(entry.goal.progress, event.progress);
    this._paint(entry);
    entry.node.classList.remove("just-reached");
    void entry.node.offsetWidth;
    entry.node.classList.add("just-reached");
  }

  _add(goal) {
    const fill = el("span", { class: "goal-fill" });
    const count = el("span", { class: "goal-count", "data-testid": "goal-count" });
    const what = goal.kind === "gift" ? this.giftName(goal.gift_id) : "coins";
    const node = el(
      "div",
      { class: "goal", "data-testid": "goal", "data-goal": goal.goal_id },
      el(
        "div",
        { class: "goal-head" },
        el("span", { class: "goal-title", text: goal.title || `${fmt.format(goal.target)} ${what}` }),
        count,
      ),
      el("span", { class: "goal-bar", role: "progressbar", "aria-valuemin": "0" }, fill),
    );
    if (this.onDelete) {
      node.append(el("button", {
        class: "goal-delete", "data-testid": "goal-delete", "aria-label": `delete goal ${goal.goal_id}`,
        text: "×", onclick: () => this.onDelete(goal.goal_id),
      }));
    }
    const entry = { goal, node, fill, count, what };
    this.goals.set(goal.goal_id, entry);
    this.root.append(node);
    this._paint(entry);
  }

  _paint(entry) {
    const { goal, node, fill, count, what } = entry;
    const share = Math.min(1, goal.progress / goal.target);
    fill.style.width = `${(share * 100).toFixed(1)}%`;
    count.textContent = `${fmt.format(goal.progress)} / ${fmt.format(goal.target)} ${what}`;
    const bar = node.querySelector(".goal-bar");
    bar.setAttribute("aria-valuemax", String(goal.target));
    bar.setAttribute("aria-valuenow", String(Math.min(goal.progress, goal.target)));
    node.dataset.progress = String(goal.progress);
    node.classList.toggle("reached", goal.progress >= goal.target);
  }
}
