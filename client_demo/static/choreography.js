// What each big gift does in its three phases (the engine is show.js, the queue gifts.js).
//
// A choreography is a function of a Show: it adds layers around the hero (the gift's own SVG,
// which ships with the pages), animates them with `show.animate` / `show.loop` on the show's
// timeline (E = end of the entrance, X = start of the exit, T = the end) and may add
// particles with `show.emit`. Only `transform` and `opacity` are animated. The catalog's
// `animation` name picks one; a gift without an entry gets one by its tier.

import { el } from "./giftwire.js";

const BY_ANIMATION = {
  lion: "roar",
  universe: "orbit",
  fireworks: "fireworks",
  whale: "dive",
  "sports-car": "dash",
  motorcycle: "dash",
  "private-jet": "flight",
  falcon: "flight",
  interstellar: "flight",
  galaxy: "swirl",
  nebula: "swirl",
};

export function choreographyFor(event) {
  return BY_ANIMATION[event.animation ?? event.gift_id] ?? "swirl";
}

const GOLD = ["#ffd43b", "#ffa94d", "#fff3bf", "#ffe066"];
const SPACE = ["#ffffff", "#d0bfff", "#a5d8ff", "#ffd8a8"];
const WATER = ["#a5d8ff", "#74c0fc", "#e7f5ff", "#4dabf7"];
const FIRE = [
  ["#ff6b6b", "#ffa8a8", "#fff5f5"],
  ["#ffd43b", "#fff3bf", "#ffa94d"],
  ["#74c0fc", "#d0ebff", "#ffffff"],
  ["#b197fc", "#e5dbff", "#f783ac"],
  ["#69db7c", "#d3f9d8", "#ffffff"],
  ["#ff922b", "#ffd8a8", "#ffe066"],
];

function enter(show, node, keyframes, easing = "cubic-bezier(0.2, 0.8, 0.3, 1)") {
  return show.animate(node, keyframes, { duration: show.E, easing });
}

function leave(show, node, keyframes, easing = "cubic-bezier(0.5, 0, 0.9, 0.6)") {
  return show.animate(node, keyframes, { at: show.X, duration: show.total - show.X, easing });
}

// A layer that fades in with the entrance and out with the exit, at `opacity` meanwhile.
function present(show, node, opacity = 1) {
  show.animate(node, [{ opacity: 0 }, { opacity }], { duration: show.E * 0.8 });
  leave(show, node, [{ opacity }, { opacity: 0 }], "ease-in");
}

function spin(show, node, degrees) {
  show.animate(node, [{ transform: "rotate(0deg)" }, { transform: `rotate(${degrees}deg)` }], {
    duration: show.total, easing: "linear",
  });
}

/** The Lion leaps in, roars (shock rings, a burst of sparks), breathes, and bounds away. */
function roar(show) {
  const { E, X, actor, hero } = show;
  const rays = show.layer("rays", { size: 560 });
  spin(show, rays, 70);
  present(show, rays);
  const mane = show.layer("mane", { size: 190 });
  show.animate(mane, [{ opacity: 0 }, { opacity: 0.6 }], { duration: E });
  show.loop(mane, [
    { opacity: 0.6, transform: "scale(0.92)" },
    { opacity: 1, transform: "scale(1.14)" },
    { opacity: 0.6, transform: "scale(0.92)" },
  ], 560);
  leave(show, mane, [{ opacity: 0.6 }, { opacity: 0 }]);
  for (let i = 0; i < 4; i += 1) {
    const ring = show.layer("ring", { size: 120 });
    show.animate(ring, [
      { opacity: 0.95, transform: "scale(0.7)" },
      { opacity: 0, transform: "scale(3.4)" },
    ], { at: E - 80 + i * 360, duration: 900, fill: "none", easing: "cubic-bezier(0.1, 0.6, 0.3, 1)" });
  }
  enter(show, actor, [
    { opacity: 0, transform: "translateY(75%) scale(0.25) rotate(-8deg)" },
    { opacity: 1, transform: "translateY(-14%) scale(1.2) rotate(3deg)", offset: 0.55 },
    { opacity: 1, transform: "translateY(3%) scale(0.95)", offset: 0.8 },
    { opacity: 1, transform: "none" },
  ]);
  show.animate(hero, [
    { transform: "none" },
    { transform: "scale(1.14) rotate(-5deg)", offset: 0.25 },
    { transform: "scale(1.12) rotate(5deg)", offset: 0.5 },
    { transform: "scale(1.13) rotate(-3deg)", offset: 0.75 },
    { transform: "none" },
  ], { at: E, duration: 560, fill: "none" });
  show.loop(hero, [{ transform: "none" }, { transform: "scale(1.05) translateY(-2%)" }, { transform: "none" }], 560, {
    from: E + 560,
  });
  leave(show, actor, [
    { opacity: 1, transform: "none" },
    { opacity: 1, transform: "translateY(10%) scale(0.9, 0.82)", offset: 0.3 },
    { opacity: 0, transform: "translateY(-160%) scale(0.75, 1.1)" },
  ]);
  show.emit([
    { count: 44, at: E - 60, spread: 90, life: [500, 800], speed: [2.6, 4.2], drag: 2.4, size: [0.008, 0.016], colors: GOLD, shape: "spark" },
    { count: 90, at: E, spread: X - E, life: [900, 1400], jitter: 0.25, speed: [0.4, 1.4], gravity: 0.5, drag: 1.1, size: [0.012, 0.028], colors: GOLD, shape: "star", twinkle: true },
    { count: 40, at: X, spread: 160, life: [500, 700], offset: { x: 0, y: 0.45 }, angle: [200, 340], speed: [1.2, 2.4], gravity: 2, drag: 1, size: [0.01, 0.022], colors: ["#e9ecef", "#ffe8cc"], shape: "dot" },
  ]);
}

/** The Universe: a sun at the centre, three tilted orbits unfold, planets circle, all collapse. */
function orbit(show) {
  const { E, X, total, actor, hero } = show;
  const tilt = 0.34;
  const halo = show.layer("halo", { size: 330 });
  present(show, halo, 0.85);
  spin(show, halo, -40);
  const orbits = [
    { size: 170, turn: 520, start: 20 },
    { size: 235, turn: 340, start: 160 },
    { size: 310, turn: 210, start: 290 },
  ];
  orbits.forEach(({ size, turn, start }, i) => {
    const planet = el("div", { class: `planet planet-${i}` });
    const arm = el("div", { class: "arm" }, planet);
    const plane = el("div", { class: "plane" }, el("div", { class: "ring-line" }), arm);
    plane.style.transform = `rotate(-14deg) scaleY(${tilt})`; // fixed: only the arm turns
    const wrap = show.layer("orbit", { size, children: [plane] });
    const turning = { duration: total, easing: "linear" };
    show.animate(arm, [{ transform: `rotate(${start}deg)` }, { transform: `rotate(${start + turn}deg)` }], turning);
    // The planet turns back as much as its arm and undoes the tilt's squash: it stays round.
    const upright = (deg) => `translate(-50%, -50%) rotate(${-deg}deg) scaleY(${1 / tilt})`;
    show.animate(planet, [{ transform: upright(start) }, { transform: upright(start + turn) }], turning);
    show.animate(wrap, [
      { opacity: 0, transform: "scale(0.15) rotate(-120deg)" },
      { opacity: 1, transform: "none" },
    ], { at: 120 + i * 150, duration: E - 120, fill: "both", easing: "cubic-bezier(0.2, 0.9, 0.3, 1.15)" });
    show.animate(wrap, [
      { opacity: 1, transform: "none" },
      { opacity: 0, transform: "scale(0.05) rotate(240deg)" },
    ], { at: X + (2 - i) * 70, duration: total - X - 140, easing: "cubic-bezier(0.6, 0, 0.9, 0.5)" });
  });
  enter(show, actor, [
    { opacity: 0, transform: "scale(0) rotate(-220deg)" },
    { opacity: 1, transform: "scale(1.12) rotate(8deg)", offset: 0.7 },
    { opacity: 1, transform: "none" },
  ]);
  show.animate(hero, [{ transform: "rotate(0deg)" }, { transform: "rotate(60deg)" }], {
    at: E, duration: X - E, easing: "linear", fill: "forwards",
  });
  leave(show, actor, [
    { opacity: 1, transform: "none" },
    { opacity: 1, transform: "scale(1.3)", offset: 0.35 },
    { opacity: 0, transform: "scale(0)" },
  ]);
  const flash = show.layer("flash", { size: 420, front: true });
  show.animate(flash, [{ opacity: 0 }, { opacity: 0.95, offset: 0.3 }, { opacity: 0 }], {
    at: X + (total - X) * 0.45, duration: (total - X) * 0.55, fill: "none",
  });
  show.emit([
    { count: 110, at: 0, spread: 700, origin: "area", life: [2300, 2900], speed: [0.02, 0.08], size: [0.006, 0.016], colors: SPACE, shape: "star", twinkle: true },
    { count: 60, at: 0, spread: E * 0.7, life: [450, 750], speed: [3, 6], drag: 0.6, size: [0.006, 0.012], colors: SPACE, shape: "spark" },
    { count: 50, at: X + (total - X) * 0.5, spread: 60, life: [450, 650], speed: [3, 5.5], drag: 1.4, size: [0.008, 0.016], colors: ["#fff", "#ffe066", "#d0bfff"], shape: "spark" },
  ]);
}

/** Fireworks: rockets climb and burst in colours across the screen, a double finale. */
function fireworks(show) {
  const { E, X, actor, hero } = show;
  enter(show, actor, [
    { opacity: 0, transform: "translateY(60%) scale(0.5)" },
    { opacity: 1, transform: "none" },
  ]);
  show.loop(hero, [{ transform: "rotate(-5deg)" }, { transform: "rotate(5deg)" }, { transform: "rotate(-5deg)" }], 850);
  leave(show, actor, [{ opacity: 1, transform: "none" }, { opacity: 0, transform: "scale(0.6)" }]);
  const climb = 380;
  const bursts = [
    [E * 0.55, 0.28, 0.3], [E * 1.1, 0.72, 0.24], [E + 550, 0.5, 0.16],
    [E + 950, 0.2, 0.42], [E + 1300, 0.8, 0.4], [X + 60, 0.38, 0.22], [X + 60, 0.64, 0.3],
  ];
  const emitters = [];
  bursts.forEach(([at, x, y], i) => {
    const colors = FIRE[i % FIRE.length];
    emitters.push(
      { count: 1, at: at - climb, life: [climb, climb], origin: { x: x + 0.04, y: 1.02 }, to: { x, y }, size: [0.02, 0.02], colors: ["#fff3bf"], shape: "spark" },
      { count: 1, at, life: [420, 420], origin: { x, y }, speed: [0, 0], size: [0.9, 0.9], colors: [colors[0]], shape: "glow" },
      { count: 26, at, spread: 30, life: [900, 1300], origin: { x, y }, speed: [1.8, 3.2], gravity: 0.9, drag: 1.7, size: [0.016, 0.028], colors, shape: "spark" },
      { count: 4, at: at + 120, spread: 200, life: [600, 900], origin: { x, y }, jitter: 0.6, speed: [0.05, 0.2], gravity: 0.3, size: [0.01, 0.02], colors, shape: "star", twinkle: true },
    );
  });
  show.emit(emitters, { front: true });
}

/** A car or a motorbike: it races in from the left, idles with speed lines, and shoots off. */
function dash(show, rise = 0) {
  const { E, X, actor, hero } = show;
  for (let i = 0; i < 6; i += 1) {
    const streak = show.layer("streak", { size: 130 });
    Object.assign(streak.style, { top: `${15 + i * 13}%`, height: "2.5%" });
    show.animate(streak, [
      { opacity: 0, transform: "translateX(140%) scaleX(0.4)" },
      { opacity: 0.8, transform: "translateX(0) scaleX(1)", offset: 0.5 },
      { opacity: 0, transform: "translateX(-160%) scaleX(0.4)" },
    ], { at: E * 0.4 + i * 90, duration: 520, iterations: Math.floor((X - E * 0.4) / 520), easing: "linear", fill: "none" });
  }
  const tilt = rise ? -18 * rise : 0;
  enter(show, actor, [
    { opacity: 0, transform: `translate(-190%, ${rise * 70}%) rotate(${tilt}deg) skewX(-14deg) scale(0.7)` },
    { opacity: 1, transform: `translate(8%, ${-rise * 4}%) skewX(6deg)`, offset: 0.72 },
    { opacity: 1, transform: "none" },
  ], "cubic-bezier(0.15, 0.85, 0.3, 1)");
  show.loop(hero, [
    { transform: "none" },
    { transform: `translateY(-3%) rotate(${rise ? -2 : -1}deg)` },
    { transform: "none" },
  ], 420);
  leave(show, actor, [
    { opacity: 1, transform: "none" },
    { opacity: 1, transform: "translateX(-8%) skewX(5deg)", offset: 0.25 },
    { opacity: 0, transform: `translate(270%, ${-rise * 120}%) rotate(${tilt}deg) skewX(-18deg) scale(1.1)` },
  ]);
  const back = 180 - 16 * rise; // behind the vehicle, lower for a climb
  show.emit([
    { count: 110, at: E * 0.6, spread: X - E * 0.6, life: [450, 750], offset: { x: -0.45, y: rise ? 0.05 : 0.32 }, jitter: 0.08, angle: [back - 12, back + 12], speed: [1.4, 2.6], drag: 1.6, size: [0.012, 0.03], colors: rise ? ["#ffffff", "#e7f5ff", "#d0ebff"] : ["#ced4da", "#ffd8a8", "#ffa94d"], shape: rise ? "dot" : "spark" },
    { count: 50, at: X + 80, spread: 200, life: [350, 550], offset: { x: -0.3, y: 0 }, jitter: 0.3, angle: [172, 188], speed: [3.5, 6], drag: 1, size: [0.006, 0.012], colors: ["#ffffff", "#fff3bf"], shape: "spark" },
  ]);
}

/** A jet, a falcon, a starship: the same race, climbing. */
function flight(show) {
  dash(show, 1);
}

/** The Whale breaches from below with a splash, blows, swims in place, and dives back. */
function dive(show) {
  const { E, X, actor, hero } = show;
  const waves = show.layer("waves", { size: 260 });
  present(show, waves, 0.9);
  show.loop(waves, [{ transform: "translateX(-3%)" }, { transform: "translateX(3%)" }, { transform: "translateX(-3%)" }], 850);
  enter(show, actor, [
    { opacity: 0, transform: "translateY(130%) rotate(-28deg) scale(0.8)" },
    { opacity: 1, transform: "translateY(-12%) rotate(6deg) scale(1.06)", offset: 0.7 },
    { opacity: 1, transform: "none" },
  ]);
  show.loop(hero, [
    { transform: "rotate(-4deg) translateY(2%)" },
    { transform: "rotate(4deg) translateY(-3%)" },
    { transform: "rotate(-4deg) translateY(2%)" },
  ], 850);
  leave(show, actor, [
    { opacity: 1, transform: "none" },
    { opacity: 1, transform: "translateY(-12%) rotate(-12deg)", offset: 0.3 },
    { opacity: 0, transform: "translateY(160%) rotate(32deg) scale(0.8)" },
  ]);
  const splash = { life: [700, 1000], offset: { x: 0, y: 0.5 }, jitter: 0.2, angle: [-160, -20], speed: [1.4, 2.8], gravity: 3.4, drag: 0.5, size: [0.012, 0.03], colors: WATER, shape: "dot" };
  show.emit([
    { ...splash, count: 70, at: E * 0.5, spread: 140 },
    { count: 60, at: E + 150, spread: X - E - 300, life: [600, 900], offset: { x: 0.12, y: -0.42 }, angle: [-112, -68], speed: [1.3, 2.1], gravity: 3.2, size: [0.01, 0.022], colors: WATER, shape: "dot" },
    { ...splash, count: 70, at: X + 260, spread: 140 },
  ]);
}

/** A galaxy or a nebula (and any big gift without its own): it spirals in, glitters, spins out. */
function swirl(show) {
  const { E, X, actor, hero } = show;
  const spiral = show.layer("spiral", { size: 330 });
  spin(show, spiral, 200);
  present(show, spiral, 0.9);
  if ((show.event.tier ?? 3) >= 4) {
    const rays = show.layer("rays", { size: 520 });
    spin(show, rays, -60);
    present(show, rays);
  }
  enter(show, actor, [
    { opacity: 0, transform: "scale(0.1) rotate(-320deg)" },
    { opacity: 1, transform: "scale(1.1) rotate(12deg)", offset: 0.75 },
    { opacity: 1, transform: "none" },
  ]);
  show.loop(hero, [{ transform: "none" }, { transform: "translateY(-4%) scale(1.04)" }, { transform: "none" }], 850);
  leave(show, actor, [{ opacity: 1, transform: "none" }, { opacity: 0, transform: "scale(0.2) rotate(320deg)" }]);
  show.emit([
    { count: 120, at: E * 0.4, spread: X - E * 0.4, life: [900, 1400], jitter: 0.3, speed: [0.4, 1.2], drag: 0.8, size: [0.01, 0.026], colors: SPACE, shape: "star", twinkle: true },
    { count: 60, at: X + 100, spread: 120, life: [400, 650], speed: [2.5, 4.5], drag: 1.5, size: [0.006, 0.014], colors: SPACE, shape: "spark" },
  ]);
}

export const CHOREOGRAPHY_TABLE = { roar, orbit, fireworks, dash, flight, dive, swirl };
