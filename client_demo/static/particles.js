// A canvas particle system for the big gifts (see gifts.js). Written for three properties:
//
//   * Bounded. One system holds at most PARTICLES_MAX particles (emitters past the budget are
//     thinned, not added), and its canvas at most CANVAS_PIXELS_MAX device pixels, so a
//     Universe on a 4K overlay costs what it costs on a phone.
//   * A pure function of time. Every particle's path is drawn from a seeded generator when
//     the system is made and its position is computed from its age (no state carried from
//     frame to frame), so `draw(t)` can be called for any t: seeking a paused show (the
//     browser tests, a dropped frame) shows exactly what playing would have shown.
//   * Nothing left running. The system draws only when asked; the show that owns it runs the
//     one requestAnimationFrame loop and cancels it when the show ends.
//
// Units: positions are fractions of the canvas, "area" (anywhere on it) or "hero" (the centre
// of the gift's picture), offsets,
// lengths and speeds are in hero widths (u, u/s, u/s²), times in ms of the show's timeline.

export const PARTICLES_MAX = 240;
export const CANVAS_PIXELS_MAX = 2_500_000;
const TRAIL_MS = 70; // a spark is drawn as a line from where it was this long ago

/** A small, fast, seeded generator (mulberry32): the same seed draws the same show. */
export function seeded(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const between = (random, [low, high]) => low + (high - low) * random();
const pick = (random, list) => list[Math.floor(random() * list.length) % list.length];

export class Particles {
  /**
   * `emitters`: [{count, at, spread, life, origin, speed, angle, gravity, drag, size,
   * colors, shape, twinkle}], see the top of this file; `origin` is "hero" or {x, y}.
   */
  constructor(canvas, emitters, { seed = 1 } = {}) {
    this.canvas = canvas;
    this.context = canvas.getContext("2d");
    this.random = seeded(seed);
    this.emitters = emitters;
    this.particles = [];
    this.drawnAt = null;
  }

  /** Size the canvas to its box and place the particles around `hero` ({x, y, u} in px). */
  layout(hero) {
    const { width, height } = this.canvas.getBoundingClientRect();
    const wanted = Math.min(window.devicePixelRatio || 1, 2);
    const ratio = Math.min(wanted, Math.sqrt(CANVAS_PIXELS_MAX / Math.max(1, width * height)));
    this.canvas.width = Math.max(1, Math.round(width * ratio));
    this.canvas.height = Math.max(1, Math.round(height * ratio));
    this.context.setTransform(ratio, 0, 0, ratio, 0, 0);
    this.width = width;
    this.height = height;
    this.u = hero.u;
    this.particles = [];
    const asked = this.emitters.reduce((sum, e) => sum + e.count, 0);
    const thin = Math.min(1, PARTICLES_MAX / Math.max(1, asked));
    for (const emitter of this.emitters) {
      const count = Math.floor(emitter.count * thin);
      for (let i = 0; i < count; i += 1) this.particles.push(this._spawn(emitter, i, count, hero));
    }
    this.canvas.dataset.particles = String(this.particles.length);
    this.drawnAt = null;
  }

  _spawn(emitter, i, count, hero) {
    const r = this.random;
    const origin = this._place(emitter.origin, hero);
    const offset = emitter.offset ?? { x: 0, y: 0 }; // u from the origin
    const jitter = emitter.jitter ?? 0; // u around the origin
    const angle = (between(r, emitter.angle ?? [0, 360]) * Math.PI) / 180;
    const speed = between(r, emitter.speed ?? [0.5, 1.5]) * this.u;
    const life = between(r, emitter.life ?? [700, 1100]);
    const x = origin.x + (offset.x + (r() - 0.5) * 2 * jitter) * this.u;
    const y = origin.y + (offset.y + (r() - 0.5) * 2 * jitter) * this.u;
    // A particle with a target (a rocket) flies straight to it in its lifetime.
    const to = emitter.to ? this._place(emitter.to, hero) : null;
    return {
      born: emitter.at + (emitter.spread ?? 0) * (count > 1 ? i / (count - 1) : 0) * (0.85 + 0.3 * r()),
      life,
      x,
      y,
      vx: to ? ((to.x - x) * 1000) / life : Math.cos(angle) * speed,
      vy: to ? ((to.y - y) * 1000) / life : Math.sin(angle) * speed,
      gravity: (emitter.gravity ?? 0) * this.u,
      drag: emitter.drag ?? 0,
      size: between(r, emitter.size ?? [0.02, 0.04]) * this.u,
      color: pick(r, emitter.colors ?? ["#ffd43b"]),
      shape: emitter.shape ?? "dot",
      twinkle: emitter.twinkle ? 0.004 + 0.006 * r() : 0,
      phase: r() * Math.PI * 2,
    };
  }

  // "hero" (its centre), "area" (anywhere on the canvas) or {x, y} in fractions of it.
  _place(where, hero) {
    if (where === "area") return { x: this.random() * this.width, y: this.random() * this.height };
    if (where && typeof where === "object") return { x: where.x * this.width, y: where.y * this.height };
    return { x: hero.x, y: hero.y };
  }

  static at(p, ageMs) {
    const a = ageMs / 1000;
    const travel = p.drag > 0 ? (1 - Math.exp(-p.drag * a)) / p.drag : a;
    return [p.x + p.vx * travel, p.y + p.vy * travel + 0.5 * p.gravity * a * a];
  }

  /** Draw the frame of time `t` (ms into the show); a repeated t draws nothing new. */
  draw(t) {
    if (t === this.drawnAt) return;
    this.drawnAt = t;
    const ctx = this.context;
    ctx.clearRect(0, 0, this.width, this.height);
    ctx.globalCompositeOperation = "lighter";
    ctx.lineCap = "round";
    for (const p of this.particles) {
      const age = t - p.born;
      if (age < 0 || age > p.life) continue;
      const fade = Math.min(1, age / 80) * (1 - age / p.life);
      const glint = p.twinkle ? 0.55 + 0.45 * Math.sin(age * p.twinkle * Math.PI * 2 + p.phase) : 1;
      ctx.globalAlpha = Math.max(0, fade * glint);
      const [x, y] = Particles.at(p, age);
      if (p.shape === "spark") {
        const [px, py] = Particles.at(p, Math.max(0, age - TRAIL_MS));
        ctx.strokeStyle = p.color;
        ctx.lineWidth = p.size;
        ctx.beginPath();
        ctx.moveTo(px, py);
        ctx.lineTo(x, y);
        ctx.stroke();
      } else if (p.shape === "star") {
        ctx.fillStyle = p.color;
        const s = p.size * 2;
        ctx.beginPath();
        ctx.moveTo(x, y - s);
        ctx.lineTo(x + s * 0.28, y - s * 0.28);
        ctx.lineTo(x + s, y);
        ctx.lineTo(x + s * 0.28, y + s * 0.28);
        ctx.lineTo(x, y + s);
        ctx.lineTo(x - s * 0.28, y + s * 0.28);
        ctx.lineTo(x - s, y);
        ctx.lineTo(x - s * 0.28, y - s * 0.28);
        ctx.closePath();
        ctx.fill();
      } else if (p.shape === "glow") {
        // A soft flash (a burst's light): a radial gradient, only a few per show.
        const light = ctx.createRadialGradient(x, y, 0, x, y, p.size);
        light.addColorStop(0, p.color);
        light.addColorStop(1, "rgba(0, 0, 0, 0)");
        ctx.fillStyle = light;
        ctx.fillRect(x - p.size, y - p.size, p.size * 2, p.size * 2);
      } else {
        ctx.fillStyle = p.color;
        ctx.beginPath();
        ctx.arc(x, y, p.size, 0, Math.PI * 2);
        ctx.fill();
      }
    }
    ctx.globalAlpha = 1;
    ctx.globalCompositeOperation = "source-over";
  }
}
