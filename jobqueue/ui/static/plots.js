"use strict";
// Results plots: each metric's last value against each parameter (SVG scatter, one point per job, the mean per
// value), parallel coordinates of parameters -> metric (SVG, one line per job), and learning curves (uPlot).

const Plots = (() => {
  const {el, svg} = JQ;
  const W = 300, H = 200, M = {left: 52, right: 12, top: 14, bottom: 34};
  const PALETTE = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac"];

  const key = (v) => (typeof v === "object" && v !== null ? JSON.stringify(v) : String(v));

  /** A scale for values: numeric (log when positive and spread over decades) or categorical. A parameter's few
   *  values (seeds, a grid of learning rates) are labelled themselves; a metric's get round numbers. */
  function axisFor(values, labelValues = true) {
    const numeric = values.every((v) => typeof v === "number" && Number.isFinite(v));
    if (numeric) {
      const lo = Math.min(...values), hi = Math.max(...values);
      const log = lo > 0 && hi / lo >= 10;
      const f = log ? Math.log10 : (v) => v;
      const a = f(lo), b = f(hi);
      const pos = (v) => (b === a ? 0.5 : (f(v) - a) / (b - a));
      const distinct = [...new Set(values)].sort((p, q) => p - q);
      const ticks = labelValues && distinct.length <= 6 ? distinct.map((v) => [JQ.fmtNumber(v, 3), pos(v)]) : niceTicks(lo, hi, log);
      return {numeric: true, log, lo, hi, pos, ticks};
    }
    const cats = [...new Set(values.map(key))].sort((p, q) => p.localeCompare(q, undefined, {numeric: true}));
    const index = new Map(cats.map((c, i) => [c, i]));
    return {numeric: false, cats, pos: (v) => (cats.length === 1 ? 0.5 : index.get(key(v)) / (cats.length - 1)),
            ticks: cats.map((c) => [c, cats.length === 1 ? 0.5 : index.get(c) / (cats.length - 1)])};
  }

  function niceTicks(lo, hi, log) {
    if (lo === hi) return [[JQ.fmtNumber(lo, 3), 0.5]];
    if (log) {
      const ticks = [];
      for (let e = Math.ceil(Math.log10(lo)); e <= Math.floor(Math.log10(hi)); e++) {
        ticks.push([JQ.fmtNumber(10 ** e, 3), (e - Math.log10(lo)) / (Math.log10(hi) - Math.log10(lo))]);
      }
      return ticks.length >= 2 ? ticks : [[JQ.fmtNumber(lo, 3), 0], [JQ.fmtNumber(hi, 3), 1]];
    }
    const raw = (hi - lo) / 4, mag = 10 ** Math.floor(Math.log10(raw));
    const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => (hi - lo) / s <= 5);
    const ticks = [];
    for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) ticks.push([JQ.fmtNumber(t, 3), (t - lo) / (hi - lo)]);
    return ticks;
  }

  /** Jobs with a finite last value of `metric`, as [job, value]. */
  function withValues(data, metric) {
    return data.jobs.map((j) => [j, JQ.num(j.last[metric])]).filter(([, v]) => Number.isFinite(v));
  }

  /** The parameters worth plotting: those whose values differ between jobs (all of them if none do). */
  function varying(data) {
    const vary = data.params.filter((p) => new Set(data.jobs.map((j) => key(j.params[p]))).size > 1);
    return vary.length ? vary : data.params;
  }

  function jitter(id) { // the same small offset for a job at every poll
    const s = Math.sin(id * 12.9898) * 43758.5453;
    return (s - Math.floor(s) - 0.5) * 0.5;
  }

  function scatter(container, data, metric) {
    const jobs = withValues(data, metric);
    if (!jobs.length) {
      JQ.replace(container, el("p", {class: "hint"}, `No job has a number for ${metric} yet.`));
      return;
    }
    const ys = jobs.map(([, v]) => v);
    const yAxis = axisFor(ys, false);
    const charts = varying(data).map((param) => {
      const present = jobs.filter(([j]) => param in j.params);
      const xAxis = axisFor(present.map(([j]) => j.params[param]));
      const px = (v) => M.left + xAxis.pos(v) * (W - M.left - M.right);
      const py = (v) => H - M.bottom - yAxis.pos(v) * (H - M.top - M.bottom);
      const chart = svg("svg", {class: "scatter", width: W, height: H, viewBox: `0 0 ${W} ${H}`, "data-param": param});
      chart.appendChild(frame(xAxis, yAxis, px, py));
      const groups = new Map();
      const gap = xAxis.numeric ? 0 : (W - M.left - M.right) / Math.max(2, xAxis.cats.length) / 2;
      for (const [job, v] of present) {
        const value = job.params[param];
        const g = groups.get(key(value)) || {value, sum: 0, n: 0};
        g.sum += v; g.n += 1;
        groups.set(key(value), g);
        chart.appendChild(svg("circle", {class: "pt", cx: (px(value) + jitter(job.id) * gap).toFixed(1), cy: py(v).toFixed(1),
          r: 3, "data-job": job.id}, svg("title", {}, `${job.name}: ${metric} ${JQ.fmtNumber(v, 6)}`)));
      }
      const means = [...groups.values()].sort((a, b) => xAxis.pos(a.value) - xAxis.pos(b.value));
      chart.appendChild(svg("polyline", {class: "mean-line",
        points: means.map((g) => `${px(g.value).toFixed(1)},${py(g.sum / g.n).toFixed(1)}`).join(" ")}));
      for (const g of means) {
        const cx = px(g.value), cy = py(g.sum / g.n);
        chart.appendChild(svg("line", {class: "mean", x1: cx - 9, x2: cx + 9, y1: cy, y2: cy},
          svg("title", {}, `mean of ${g.n} jobs: ${JQ.fmtNumber(g.sum / g.n, 6)}`)));
      }
      chart.appendChild(svg("text", {class: "axis-title", x: (M.left + W - M.right) / 2, y: H - 4, "text-anchor": "middle"},
        param + (xAxis.log ? " (log)" : "")));
      chart.appendChild(svg("text", {class: "axis-title", x: 12, y: (H - M.bottom + M.top) / 2, "text-anchor": "middle",
        transform: `rotate(-90 12 ${(H - M.bottom + M.top) / 2})`}, metric));
      return el("figure", {class: "plot"}, chart);
    });
    JQ.replace(container, charts);
  }

  function frame(xAxis, yAxis, px, py) {
    const g = svg("g", {class: "axis"});
    g.appendChild(svg("rect", {class: "plot-area", x: M.left, y: M.top, width: W - M.left - M.right, height: H - M.top - M.bottom}));
    for (const [label, at] of xAxis.ticks) {
      const x = M.left + at * (W - M.left - M.right);
      g.appendChild(svg("text", {class: "tick-label", x, y: H - M.bottom + 13, "text-anchor": "middle"}, label.length > 10 ? label.slice(0, 9) + "…" : label));
    }
    for (const [label, at] of yAxis.ticks) {
      const y = H - M.bottom - at * (H - M.top - M.bottom);
      g.appendChild(svg("line", {class: "grid", x1: M.left, x2: W - M.right, y1: y, y2: y}));
      g.appendChild(svg("text", {class: "tick-label", x: M.left - 4, y: y + 3, "text-anchor": "end"}, label));
    }
    return g;
  }

  /** Low values blue, high yellow (viridis' ends), for the parallel coordinates' lines. */
  function color(t) {
    const stops = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
    const at = Math.min(0.9999, Math.max(0, t)) * (stops.length - 1), i = Math.floor(at), f = at - i;
    const c = stops[i].map((v, k) => Math.round(v + f * (stops[i + 1][k] - v)));
    return `rgb(${c.join(",")})`;
  }

  function parallel(container, data, metric) {
    const jobs = withValues(data, metric);
    if (!jobs.length) {
      JQ.replace(container);
      return;
    }
    const params = varying(data);
    const axes = [...params.map((p) => ({name: p, value: (j) => j.params[p]})), {name: metric, value: (j, v) => v}];
    axes.forEach((a, i) => {
      a.scale = axisFor(jobs.map(([j, v]) => a.value(j, v)).filter((v) => v !== undefined), i < params.length);
    });
    const width = Math.max(480, container.clientWidth || 900), height = 260, top = 28, bottom = 26;
    const step = (width - 120) / Math.max(1, axes.length - 1);
    const ax = (i) => 60 + i * step;
    const ay = (a, v) => height - bottom - a.scale.pos(v) * (height - top - bottom);
    const chart = svg("svg", {class: "parallel", width, height, viewBox: `0 0 ${width} ${height}`});
    const m = axes[axes.length - 1].scale;
    for (const [job, v] of jobs) {
      const points = axes.map((a, i) => {
        const value = a.value(job, v);
        return value === undefined ? null : `${ax(i).toFixed(1)},${ay(a, value).toFixed(1)}`;
      }).filter(Boolean);
      chart.appendChild(svg("polyline", {class: "pc-line", points: points.join(" "), stroke: color(m.pos(v)), "data-job": job.id},
        svg("title", {}, `${job.name}: ${metric} ${JQ.fmtNumber(v, 6)}`)));
    }
    axes.forEach((a, i) => {
      const g = svg("g", {class: "axis"});
      g.appendChild(svg("line", {class: "pc-axis", x1: ax(i), x2: ax(i), y1: top, y2: height - bottom}));
      g.appendChild(svg("text", {class: "axis-title", x: ax(i), y: top - 10, "text-anchor": "middle"}, a.name));
      for (const [label, at] of a.scale.ticks) {
        g.appendChild(svg("text", {class: "tick-label", x: ax(i) + 4, y: height - bottom - at * (height - top - bottom) + 3}, label));
      }
      chart.appendChild(g);
    });
    JQ.replace(container, chart);
  }

  /** Learning curves of some jobs, one uPlot series each; `data.jobs` from /api/curves. */
  function curves(container, data, chartRef) {
    if (chartRef.chart) { chartRef.chart.destroy(); chartRef.chart = null; }
    const series = data.jobs.filter((j) => j.steps.length);
    container.setAttribute("data-series", String(series.length));
    if (!series.length) {
      JQ.replace(container, el("p", {class: "hint"}, `No points of ${data.key} for these jobs yet.`));
      return;
    }
    JQ.replace(container);
    const aligned = uPlot.join(series.map((j) => [j.steps, j.values.map((v) => { const x = JQ.num(v); return Number.isFinite(x) ? x : null; })]));
    const opts = {
      width: Math.max(480, container.clientWidth || 900), height: 300,
      scales: {x: {time: false}},
      axes: [{label: "step"}, {label: data.key}],
      series: [{label: "step"}, ...series.map((j, i) => ({label: `${j.id} ${j.name}`, stroke: PALETTE[i % PALETTE.length],
        width: 1.5, spanGaps: true, points: {show: false}}))],
      legend: {live: true},
    };
    chartRef.chart = new uPlot(opts, aligned, container);
  }

  return {scatter, parallel, curves, varying};
})();
