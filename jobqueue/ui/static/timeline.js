"use strict";
// The attempt timeline: a Gantt chart in SVG, one lane per worker slot, one bar per attempt, coloured by how the
// attempt ended (lost and interrupted attempts stand out). Polls merge the attempts opened or ended since.

const Timeline = (() => {
  const {el, svg} = JQ;
  const ATTEMPT_STATES = ["succeeded", "failed", "timeout", "interrupted", "lost", "cancelled", "running"];
  const LANE = 16, BAR = 12, LABEL = 210, AXIS = 22, RIGHT = 12;
  const STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 172800, 604800];

  const ms = (iso) => (iso ? Date.parse(iso) : NaN);

  function laneKey(a) {
    return a.worker_id === null ? `host:${a.host}:${a.slot}` : `${a.worker_id}:${a.slot}`;
  }

  function laneLabel(a) {
    let label = a.worker_id === null ? a.host : `${a.host} · worker ${a.worker_id}`;
    if (a.slurm_job_id) label += ` · slurm ${a.slurm_job_id}${a.slurm_array_task_id !== null ? `_${a.slurm_array_task_id}` : ""}`;
    if (a.slot !== null) label += ` · slot ${a.slot}`;
    if (a.gpus) label += ` · gpu ${a.gpus}`;
    return label;
  }

  function describe(a, start, end) {
    const how = a.state === "running" ? "running" : a.state;
    let text = `${a.job} · attempt ${a.number} · ${how} · ${JQ.fmtDuration((end - start) / 1000)}`;
    if (a.signal !== null) text += ` · signal ${a.signal}`;
    else if (a.exit_code !== null) text += ` · exit code ${a.exit_code}`;
    if (a.reason) text += ` · ${a.reason}`;
    return text;
  }

  class Timeline {
    constructor(container) {
      this.container = container;
      this.attempts = new Map(); // id -> attempt
      this.now = null;
      this.older = false; // the first read left older attempts out
      this.maxId = 0;
    }

    /** The newest attempts (a first load), or those opened or ended since (a poll). */
    merge(data, first) {
      if (!first && !data.attempts.length && !this.openIds().length) return; // nothing new, nothing running
      if (first) this.attempts.clear();
      for (const a of data.attempts) {
        this.attempts.set(a.id, a);
        this.maxId = Math.max(this.maxId, a.id);
      }
      if (first) this.older = data.older;
      this.now = data.now;
      this.draw();
    }

    openIds() {
      return [...this.attempts.values()].filter((a) => a.state === "running").map((a) => a.id);
    }

    draw() {
      const attempts = [...this.attempts.values()];
      if (!attempts.length) {
        JQ.replace(this.container, el("p", {class: "hint"}, "No attempt has started yet."));
        return;
      }
      const now = ms(this.now);
      const lanes = new Map();
      const workerStart = new Map();
      let t0 = Infinity, t1 = -Infinity;
      for (const a of attempts) {
        const start = ms(a.started_at), end = a.ended_at ? ms(a.ended_at) : Math.max(now, start);
        t0 = Math.min(t0, start); t1 = Math.max(t1, end);
        const key = laneKey(a);
        if (!lanes.has(key)) lanes.set(key, {label: laneLabel(a), worker: a.worker_id, slot: a.slot, bars: []});
        lanes.get(key).bars.push([a, start, end]);
        workerStart.set(a.worker_id, Math.min(workerStart.get(a.worker_id) ?? Infinity, start));
      }
      if (t1 <= t0) t1 = t0 + 1000;
      // The workers in the order they started; each worker's slots in order.
      const order = [...lanes.values()].sort((x, y) =>
        workerStart.get(x.worker) - workerStart.get(y.worker) || (x.worker ?? 0) - (y.worker ?? 0) || (x.slot ?? 0) - (y.slot ?? 0));
      const width = Math.max(480, (this.container.clientWidth || 900) - 4);
      const plot = width - LABEL - RIGHT;
      const x = (t) => LABEL + ((t - t0) / (t1 - t0)) * plot;
      const height = AXIS + order.length * LANE + 4;
      const chart = svg("svg", {class: "timeline", width, height, viewBox: `0 0 ${width} ${height}`, role: "img",
        "aria-label": `${attempts.length} attempts on ${order.length} worker slots`});
      chart.appendChild(this.axis(t0, t1, x, height));
      order.forEach((lane, i) => {
        const y = AXIS + i * LANE;
        chart.appendChild(svg("text", {class: "lane-label", x: LABEL - 6, y: y + BAR - 1, "text-anchor": "end"}, lane.label));
        chart.appendChild(svg("line", {class: "lane-rule", x1: LABEL, x2: width - RIGHT, y1: y + LANE - 1, y2: y + LANE - 1}));
        for (const [a, start, end] of lane.bars) {
          const bar = svg("rect", {class: `bar state-fill-${a.state}`, x: x(start).toFixed(1), y: y + 1,
            width: Math.max(1, x(end) - x(start)).toFixed(1), height: BAR, "data-attempt": a.id, "data-job": a.job_id,
            "data-state": a.state}, svg("title", {}, describe(a, start, end)));
          bar.addEventListener("click", () => { window.location.href = `/jobs/${a.job_id}`; });
          chart.appendChild(bar);
        }
      });
      const legend = el("div", {class: "legend"}, ATTEMPT_STATES.map((s) =>
        el("span", {class: "legend-item"}, el("span", {class: `swatch state-bg-${s}`}), s)));
      const shown = this.older ? el("span", {class: "hint"}, ` the newest ${attempts.length} attempts (older ones are not drawn)`) : null;
      JQ.replace(this.container, legend, shown, el("div", {class: "timeline-scroll"}, chart));
    }

    axis(t0, t1, x, height) {
      const group = svg("g", {class: "axis"});
      const span = (t1 - t0) / 1000;
      const step = STEPS.find((s) => span / s <= 8) || STEPS[STEPS.length - 1];
      const first = Math.ceil(t0 / 1000 / step) * step;
      for (let t = first; t * 1000 <= t1; t += step) {
        const px = x(t * 1000);
        const d = new Date(t * 1000);
        const label = step >= 86400 ? d.toLocaleDateString() : d.toLocaleTimeString([], {hour12: false});
        group.appendChild(svg("line", {class: "tick", x1: px, x2: px, y1: AXIS - 4, y2: height}));
        group.appendChild(svg("text", {class: "tick-label", x: px, y: AXIS - 8, "text-anchor": "middle"}, label));
      }
      return group;
    }
  }

  return Timeline;
})();
