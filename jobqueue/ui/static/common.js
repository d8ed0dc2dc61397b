"use strict";
// What the dashboard's pages share: building elements, fetching JSON, polling, and formatting.
// Every value from the DB goes into the page as text (text nodes, textContent, attribute values): never as HTML.

const JQ = (() => {
  const SVG_NS = "http://www.w3.org/2000/svg";
  const STATES = ["succeeded", "failed", "timeout", "cancelled", "running", "queued"];
  const DONE = ["succeeded", "failed", "timeout", "cancelled"];

  function fill(node, attrs, children) {
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "text") node.textContent = String(value);
      else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
      else node.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined) continue;
      node.appendChild(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  /** An HTML element: el("a", {href: "/", class: "x"}, "text", otherNode). Strings become text nodes. */
  const el = (tag, attrs, ...children) => fill(document.createElement(tag), attrs, children);
  /** An SVG element, the same way. */
  const svg = (tag, attrs, ...children) => fill(document.createElementNS(SVG_NS, tag), attrs, children);

  function boot() {
    return JSON.parse(document.getElementById("boot").textContent);
  }

  async function getJSON(url) {
    const response = await fetch(url, {cache: "no-store"});
    const body = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
    return body;
  }

  function query(params) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(params)) if (v !== null && v !== undefined && v !== "") q.set(k, v);
    const text = q.toString();
    return text ? `?${text}` : "";
  }

  /** Run step() now and then every `seconds` after each run ends; a failure shows in the header and the next
   *  poll tries again. Returns a function that runs a poll at once. */
  function poll(step, seconds) {
    let timer = null;
    let running = false;
    const banner = document.getElementById("conn");
    async function tick() {
      clearTimeout(timer);
      if (running) return;
      running = true;
      try {
        await step();
        if (banner) { banner.textContent = ""; banner.className = "conn"; }
      } catch (error) {
        if (banner) { banner.textContent = `not updating: ${error.message}`; banner.className = "conn bad"; }
      } finally {
        running = false;
        timer = setTimeout(tick, seconds * 1000);
      }
    }
    timer = setTimeout(tick, seconds * 1000);
    return tick;
  }

  /** A number from the API: NaN and the infinities come as strings. */
  const num = (v) => (v === null || v === undefined ? NaN : Number(v));

  function fmtNumber(v, digits = 4) {
    if (v === null || v === undefined) return "";
    const x = num(v);
    if (Number.isNaN(x)) return "NaN";
    if (!Number.isFinite(x)) return x > 0 ? "Infinity" : "-Infinity";
    if (Number.isInteger(x) && Math.abs(x) < 1e9) return String(x);
    return Number(x.toPrecision(digits)).toString();
  }

  function fmtDuration(seconds) {
    if (seconds === null || seconds === undefined || Number.isNaN(seconds)) return "";
    const s = Math.max(0, Math.round(seconds));
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
    if (h) return `${h}h${String(m).padStart(2, "0")}m`;
    if (m) return `${m}m${String(r).padStart(2, "0")}s`;
    return seconds < 10 && seconds > 0 && seconds !== s ? `${seconds.toFixed(1)}s` : `${r}s`;
  }

  const toDate = (iso) => (iso ? new Date(iso) : null);

  function fmtTime(iso) {
    const d = toDate(iso);
    if (!d) return "";
    const today = new Date().toDateString() === d.toDateString();
    return today ? d.toLocaleTimeString([], {hour12: false}) : d.toLocaleString([], {hour12: false});
  }

  function fmtValue(v) {
    if (typeof v === "number") return fmtNumber(v, 6);
    if (v === null || v === undefined) return "";
    if (typeof v === "object") return JSON.stringify(v);
    return String(v);
  }

  /** A bar of the run's jobs per state, each state its width and colour. */
  function progressBar(counts, total) {
    const bar = el("div", {class: "progress", role: "img"});
    const parts = [];
    for (const state of STATES) {
      const n = counts[state] || 0;
      if (!n) continue;
      bar.appendChild(el("span", {class: `seg state-bg-${state}`, style: `width:${(100 * n) / total}%`, title: `${n} ${state}`}));
      parts.push(`${n} ${state}`);
    }
    bar.setAttribute("aria-label", parts.join(", ") || "no jobs");
    return bar;
  }

  function stateBadge(state) {
    return el("span", {class: `badge state-bg-${state}`}, state);
  }

  function replace(node, ...children) {
    node.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined));
    return node;
  }

  function header(parts) {
    replace(document.getElementById("crumb"), parts);
  }

  return {STATES, DONE, el, svg, boot, getJSON, query, poll, num, fmtNumber, fmtDuration, fmtTime, fmtValue,
          toDate, progressBar, stateBadge, replace, header};
})();
