// One big gift on screen: a show in three phases (entrance, loop, exit) on one timeline.
//
// Every moving part is a Web Animation (element.animate) of `transform` or `opacity` only, so
// the browser can run it on the compositor; particles are drawn on a canvas (particles.js)
// from the same clock. A show owns a silent master animation whose time is the show's time:
// `pause()` and `seek(ms)` move every part together (the browser tests take their pictures
// that way, never by waiting), and the master's end is the show's end. `dispose()` cancels
// every animation and the one requestAnimationFrame loop: nothing keeps running after a show.
//
// What each gift does in its phases is in choreography.js; the queue is in gifts.js.

import { el, fmt, giftArt } from "./giftwire.js";
import { Particles } from "./particles.js";
import { CHOREOGRAPHY_TABLE, choreographyFor } from "./choreography.js";

// Shares of the play time: the entrance, the loop, then the exit.
const ENTRANCE_SHARE = 0.25;
const EXIT_SHARE = 0.22;

export function prefersReducedMotion() {
  return matchMedia("(prefers-reduced-motion: reduce)").matches;
}

export class Show {
  /**
   * Build the scene of `event` inside `root` and start it. `playMs` is the length at normal
   * speed; `rate` > 1 plays it faster (a long queue). With `reduced`, the gift shows still,
   * with a gentle fade in and out, and no particles.
   */
  constructor(root, event, { playMs = 3200, rate = 1, reduced = false, waiting = "" } = {}) {
    this.event = event;
    this.rate = rate;
    this.reduced = reduced;
    const entrance = Math.round(playMs * ENTRANCE_SHARE);
    const exit = Math.round(playMs * EXIT_SHARE);
    this.total = playMs;
    this.phases = {
      entrance: [0, entrance],
      loop: [entrance, playMs - exit],
      exit: [playMs - exit, playMs],
    };
    this.animations = [];
    this.particles = null;
    this.frameId = null;
    this.disposed = false;

    const name = reduced ? "still" : choreographyFor(event);
    this.actor = el("div", { class: "actor" }, giftArt(event.gift_id, "hero"));
    this.hero = this.actor.firstChild;
    this.caption = captionFor(event, waiting);
    this.scene = el(
      "div",
      {
        class: `scene tier-${event.tier ?? 3} anim-${name}`,
        "data-testid": "big-gift",
        "data-gift": event.gift_id,
        "data-animation": name,
        "data-motion": reduced ? "reduced" : "full",
      },
      el("div", { class: "glow" }),
      this.actor,
      this.caption,
    );
    root.append(this.scene);

    // The master clock: no target, no keyframes, just the show's time.
    this.clock = new Animation(new KeyframeEffect(null, [], { duration: playMs, fill: "forwards" }));
    this.finished = this.clock.finished.then(() => undefined, () => undefined);

    if (reduced) stillChoreography(this);
    else CHOREOGRAPHY_TABLE[name](this);
    this._common();
    for (const animation of [this.clock, ...this.animations]) {
      animation.playbackRate = rate;
      animation.play();
    }
    if (this.particles) this._frame();
  }

  get E() { return this.phases.entrance[1]; }
  get X() { return this.phases.exit[0]; }

  /** An element positioned around the hero's centre, `size` % of the hero (behind it). */
  layer(className, { size = 100, front = false, parent = this.actor, children = [] } = {}) {
    const node = el("div", { class: `layer ${className}` }, ...children);
    const offset = `${(100 - size) / 2}%`;
    Object.assign(node.style, { width: `${size}%`, height: `${size}%`, left: offset, top: offset });
    if (front) parent.append(node);
    else parent.insertBefore(node, parent === this.actor ? this.hero : parent.firstChild);
    return node;
  }

  /**
   * Animate `node` from `at` ms for `duration` ms of the show. Keyframes may name
   * `transform` and `opacity` only (the browser test holds every show to that).
   * Fill rule, so that phases hand over cleanly on one element: an animation that starts at
   * 0 (the entrance) fills both ways, later ones (the exit) fill forwards only, and a loop
   * passes `fill: "none"`.
   */
  animate(node, keyframes, { at = 0, duration, iterations = 1, easing = "ease-out", fill, direction } = {}) {
    const timing = {
      delay: at,
      duration,
      iterations,
      easing,
      fill: fill ?? (at === 0 ? "both" : "forwards"),
      direction: direction ?? "normal",
    };
    const animation = new Animation(new KeyframeEffect(node, keyframes, timing));
    this.animations.push(animation);
    return animation;
  }

  /** Repeat `keyframes` on `node` through the loop phase, `periodMs` a round. */
  loop(node, keyframes, periodMs, { easing = "ease-in-out", from = this.E, to = this.X } = {}) {
    return this.animate(node, keyframes, {
      at: from, duration: periodMs, iterations: Math.max(1, (to - from) / periodMs), easing, fill: "none",
    });
  }

  /** Particles on a canvas behind the actor (or in front with `front`). */
  emit(emitters, { front = false } = {}) {
    const canvas = el("canvas", { class: `particles${front ? " front" : ""}`, "data-testid": "particles" });
    this.scene.insertBefore(canvas, front ? this.caption : this.actor);
    this.particles = new Particles(canvas, emitters, { seed: (this.event.seq ?? 1) * 7919 });
    const box = this.hero.getBoundingClientRect();
    const origin = canvas.getBoundingClientRect();
    this.particles.layout({
      x: box.left - origin.left + box.width / 2,
      y: box.top - origin.top + box.height / 2,
      u: Math.max(40, box.width),
    });
    return canvas;
  }

  // The glow and the caption come and go the same way in every show.
  _common() {
    const glow = this.scene.querySelector(".glow");
    this.animate(glow, [{ opacity: 0 }, { opacity: 1 }], { duration: this.E * 0.6 });
    this.animate(glow, [{ opacity: 1 }, { opacity: 0 }], { at: this.X, duration: this.total - this.X });
    // With reduced motion the caption only fades; otherwise it also grows into place.
    const grow = (scale) => (this.reduced ? {} : { transform: scale });
    this.animate(
      this.caption,
      [{ opacity: 0, ...grow("scale(0.85)") }, { opacity: 1, ...grow("none") }],
      { at: this.E * 0.35, duration: 360, fill: "both", easing: "cubic-bezier(0.2, 0.9, 0.3, 1.2)" },
    );
    this.animate(
      this.caption,
      [{ opacity: 1, ...grow("none") }, { opacity: 0, ...grow("scale(0.92)") }],
      { at: this.total - 380, duration: 380, easing: "ease-in" },
    );
  }

  _frame() {
    this.frameId = null;
    if (this.disposed || !this.particles) return;
    this.particles.draw(this.time());
    this.frameId = requestAnimationFrame(() => this._frame());
  }

  /** The show's time in ms (0 until the clock has started). */
  time() {
    return Number(this.clock.currentTime ?? 0);
  }

  /** Hold every part where it is (the browser tests). */
  pause() {
    for (const animation of [this.clock, ...this.animations]) animation.pause();
  }

  /** Carry on from where `pause()` held it (held at its very end, the show ends). */
  resume() {
    // play() at the end would rewind to the start: finish instead.
    const atEnd = this.time() >= this.total;
    for (const animation of [this.clock, ...this.animations]) {
      if (atEnd) animation.finish();
      else animation.play();
    }
  }

  /** Put every part (and the particles) at `ms` into the show; call `pause()` first. */
  seek(ms) {
    const t = Math.max(0, Math.min(this.total, ms));
    for (const animation of [this.clock, ...this.animations]) animation.currentTime = t;
    this.particles?.draw(t);
  }

  updateWaiting(text) {
    const badge = this.caption.querySelector(".queue-count");
    if (badge) badge.textContent = text;
  }

  /** Cancel every animation and the frame loop, and take the scene off the page. */
  dispose() {
    this.disposed = true;
    if (this.frameId !== null) cancelAnimationFrame(this.frameId);
    this.frameId = null;
    for (const animation of [this.clock, ...this.animations]) animation.cancel();
    this.animations = [];
    this.particles = null;
    this.scene.remove();
  }
}

function captionFor(event, waiting) {
  const count = event.count > 1 ? ` ×${fmt.format(event.count)}` : "";
  const caption = el("div", { class: "caption" });
  caption.append(
    el("b", { text: event.sender_name }),
    ` sent ${event.gift_name ?? event.gift_id}${count}`,
    el("span", { class: "queue-count", "data-testid": "big-waiting", text: waiting }),
  );
  return caption;
}

// Reduced motion: the picture does not move, grow or spin; it fades in, stays, fades out.
function stillChoreography(show) {
  const fade = 300;
  show.animate(show.actor, [{ opacity: 0 }, { opacity: 1 }], { duration: fade, easing: "linear" });
  show.animate(show.actor, [{ opacity: 1 }, { opacity: 0 }], { at: show.total - fade, duration: fade, easing: "linear" });
}
