"use strict";
// A run's page: its progress, its jobs (filter by state, sort by any column or metric, page, select for the
// learning curves), the attempt timeline, and the results plots. Polls small JSON endpoints every few seconds.

(() => {
  const {el, replace} = JQ;
  const boot = JQ.boot();
  const runId = boot.run.id;
  const RESULTS_EVERY = Math.max(5, boot.interval) * 1000; // ms between re-reads of the plots' data while jobs run
  const CURVES_DEFAULT = 5;
  const view = {state: null, sort: "id", desc: false, limit: boot.jobs.limit, offset: 0};
  let run = boot.run, page = boot.jobs;
  // The columns of the first page's jobs, until the run's own arrive (reading them all takes longer than the page).
  let columns = {
    params: [...new Set(page.jobs.flatMap((j) => Object.keys(j.params)))],
    metrics: [...new Set(page.jobs.flatMap((j) => Object.keys(j.metrics)))],
  };
  let shownMetrics = columns.metrics.slice(0, 3);
  const selected = new Set();
  // The plots' data is re-read no more than a tenth of the time: reading every job's results takes seconds on a
  // million-job run.
  const plot = {metric: columns.metrics[0] || null, lowerIsBetter: null, data: null, readAt: 0, readDone: -1, took: 0};
  const curveChart = {chart: null};
  const timeline = new Timeline(document.getElementById("timeline"));

  // --- summary -----------------------------------------------------------------------------------

  function etaText() {
    if (run.done >= run.total) return run.total ? "done" : "no jobs";
    if (run.eta_s === null) return run.counts.running ? "estimating" : "waiting for workers";
    return JQ.fmtDuration(run.eta_s);
  }

  function drawSummary() {
    document.title = `jq ui: ${run.name}`;
    JQ.header(["/ ", el("span", {id: "run-title"}, run.name)]);
    const chips = JQ.STATES.map((s) => el("button", {class: `chip${view.state === s ? " on" : ""}`, "data-state": s,
      onclick: () => setFilter(view.state === s ? null : s)}, el("span", {class: `swatch state-bg-${s}`}), `${s} `,
      el("b", {class: `count-${s}`}, String(run.counts[s] || 0))));
    const facts = [
      ["sweep", run.sweep], ["backend", run.backend || "not launched"], ["enqueued", JQ.fmtTime(run.created_at)],
      ["started", JQ.fmtTime(run.started_at) || "not yet"], ["mean job", JQ.fmtDuration(run.mean_s)],
      ["running at once", run.parallel ? String(run.parallel) : ""],
    ].filter(([, v]) => v);
    replace(document.getElementById("summary"),
      el("h1", {id: "run-name"}, run.name),
      el("div", {class: "facts"}, facts.map(([k, v]) => el("span", {class: "fact"}, el("span", {class: "k"}, k), " ", v))),
      el("div", {class: "progress-line"}, JQ.progressBar(run.counts, run.total),
        el("span", {id: "done"}, `${run.done}/${run.total} done`), el("span", {id: "eta"}, `ETA ${etaText()}`)),
      el("div", {class: "chips"}, chips),
      run.submissions.length ? el("div", {class: "submissions"}, run.submissions.map((s) => el("div", {class: "submission"},
        `${s.backend} ${s.mode} submission ${s.external_id || "-"}`, s.mode === "workers" ? ` (${s.tasks} workers)` : ` (job ${s.job_id})`,
        ": ", el("span", {class: "sub-state"}, s.state)))) : null);
  }

  // --- jobs table --------------------------------------------------------------------------------

  function jobColumns() {
    const exit = (j) => (j.signal !== null ? `sig${j.signal}` : j.exit_code === null ? "" : String(j.exit_code));
    return [
      {label: "id", sort: "id", num: true, cell: (j) => String(j.id)},
      {label: "name", sort: "name", cell: (j) => el("a", {href: `/jobs/${j.id}`, class: "job-name"}, j.name)},
      {label: "state", sort: "state", cell: (j) => JQ.stateBadge(j.state)},
      {label: "tries", sort: "attempts", num: true, cell: (j) => String(j.attempts)},
      {label: "exit", sort: "exit_code", num: true, cell: exit},
      {label: "started", sort: "started_at", cell: (j) => JQ.fmtTime(j.started_at)},
      {label: "duration", sort: "duration", num: true, cell: (j) => JQ.fmtDuration(j.duration_s)},
      ...columns.params.map((p) => ({label: p, sort: `param:${p}`, param: true, cell: (j) => JQ.fmtValue(j.params[p])})),
      ...shownMetrics.map((m) => ({label: m, sort: `metric:${m}`, num: true, metric: true,
        cell: (j) => (m in j.metrics ? JQ.fmtNumber(j.metrics[m], 5) : "")})),
    ];
  }

  function drawJobs() {
    const cols = jobColumns();
    const head = el("tr", {}, el("th", {class: "pick", title: "select for the learning curves"}, "✓"), cols.map((c) => {
      const arrow = view.sort === c.sort ? (view.desc ? " ▼" : " ▲") : "";
      return el("th", {class: [c.num ? "num" : "", c.param ? "param" : "", c.metric ? "metric" : ""].join(" ").trim() || null,
        "data-sort": c.sort}, el("button", {class: "sort", onclick: () => sortBy(c)}, c.label + arrow));
    }));
    const rows = page.jobs.map((j) => el("tr", {"data-job": j.id, "data-state": j.state, class: selected.has(j.id) ? "picked" : null},
      el("td", {class: "pick"}, el("input", {type: "checkbox", checked: selected.has(j.id), "aria-label": `select job ${j.id}`,
        onchange: (e) => toggle(j.id, e.target.checked)})),
      cols.map((c) => el("td", {class: c.num ? "num" : null}, c.cell(j)))));
    replace(document.getElementById("jobs"), el("thead", {}, head), el("tbody", {}, rows));
    if (!page.jobs.length) {
      document.querySelector("#jobs tbody").appendChild(el("tr", {}, el("td", {colspan: cols.length + 1, class: "hint"},
        view.state ? `No ${view.state} jobs.` : "No jobs.")));
    }
    drawPager();
    drawJobTools();
  }

  function drawPager() {
    const total = page.total, first = total ? page.offset + 1 : 0, last = Math.min(page.offset + page.jobs.length, total);
    const lastOffset = Math.max(0, Math.floor((total - 1) / view.limit) * view.limit);
    const go = (offset) => { view.offset = Math.max(0, Math.min(offset, lastOffset)); refreshJobs(); };
    replace(document.getElementById("pager"),
      el("button", {onclick: () => go(0), disabled: view.offset === 0}, "« first"),
      el("button", {onclick: () => go(view.offset - view.limit), disabled: view.offset === 0}, "‹ prev"),
      el("span", {id: "page-info"}, `rows ${first}–${last} of ${total}`),
      el("button", {onclick: () => go(view.offset + view.limit), disabled: last >= total}, "next ›"),
      el("button", {onclick: () => go(lastOffset), disabled: last >= total}, "last »"));
  }

  function drawJobTools() {
    const stateSelect = el("select", {id: "state-filter", onchange: (e) => setFilter(e.target.value || null)},
      el("option", {value: ""}, "all states"),
      JQ.STATES.map((s) => el("option", {value: s, selected: view.state === s}, s)));
    const sizeSelect = el("select", {id: "page-size", onchange: (e) => { view.limit = Number(e.target.value); view.offset = 0; refreshJobs(); }},
      boot.page_sizes.map((n) => el("option", {value: n, selected: n === view.limit}, `${n} per page`)));
    const metricPicker = columns.metrics.length ? el("details", {class: "picker"}, el("summary", {}, `metric columns (${shownMetrics.length})`),
      columns.metrics.map((m) => el("label", {}, el("input", {type: "checkbox", checked: shownMetrics.includes(m),
        onchange: (e) => { shownMetrics = e.target.checked ? [...shownMetrics, m] : shownMetrics.filter((x) => x !== m); drawJobs(); }}), m))) : null;
    const picked = selected.size ? el("span", {class: "picked-info"}, `${selected.size} selected for the learning curves `,
      el("button", {onclick: () => { selected.clear(); drawJobs(); refreshCurves(); }}, "clear")) : null;
    const tools = document.getElementById("job-tools");
    const open = tools.querySelector("details") && tools.querySelector("details").open;
    replace(tools, stateSelect, sizeSelect, metricPicker, picked);
    if (open && metricPicker) metricPicker.open = true;
  }

  function setFilter(state) {
    view.state = state;
    view.offset = 0;
    drawSummary();
    refreshJobs();
  }

  function sortBy(column) {
    if (view.sort === column.sort) view.desc = !view.desc;
    else { view.sort = column.sort; view.desc = Boolean(column.metric); }
    view.offset = 0;
    refreshJobs();
  }

  function toggle(jobId, on) {
    if (on) selected.add(jobId); else selected.delete(jobId);
    drawJobs();
    refreshCurves();
  }

  function jobsURL() {
    return `/api/runs/${runId}/jobs${JQ.query({state: view.state, sort: view.sort, order: view.desc ? "desc" : "asc",
      limit: view.limit, offset: view.offset})}`;
  }

  async function refreshJobs(force = true) {
    const url = jobsURL();
    const answer = await JQ.getJSON(url);
    if (url !== jobsURL()) return; // a later click asked for another page meanwhile
    const same = JSON.stringify(answer) === JSON.stringify(page);
    page = answer;
    if (!same || force) drawJobs(); // redrawn only when it changed: a click is not lost to a redraw

  }

  // --- timeline ----------------------------------------------------------------------------------

  async function refreshTimeline(first) {
    const url = first ? `/api/runs/${runId}/attempts`
      : `/api/runs/${runId}/attempts${JQ.query({after: timeline.maxId, open: timeline.openIds().join(",")})}`;
    timeline.merge(await JQ.getJSON(url), first);
  }

  // --- results -----------------------------------------------------------------------------------

  const guessLower = (key) => /loss|err|regret|cost|time|perplexity/i.test(key);

  function drawPlotTools() {
    const metric = el("select", {id: "plot-metric", onchange: (e) => { plot.metric = e.target.value; plot.lowerIsBetter = null; drawPlots(); refreshCurves(); }},
      columns.metrics.map((m) => el("option", {value: m, selected: m === plot.metric}, m)));
    const better = el("select", {id: "plot-better", onchange: (e) => { plot.lowerIsBetter = e.target.value === "lowest"; refreshCurves(); }},
      ["highest", "lowest"].map((b) => el("option", {value: b, selected: lower() === (b === "lowest")}, `best is ${b}`)));
    replace(document.getElementById("plot-tools"), el("label", {}, "metric ", metric), better);
  }

  const lower = () => (plot.lowerIsBetter === null ? guessLower(plot.metric || "") : plot.lowerIsBetter);

  function drawPlots() {
    if (!plot.data || !plot.metric) return;
    drawPlotTools();
    Plots.scatter(document.getElementById("scatter"), plot.data, plot.metric);
    Plots.parallel(document.getElementById("parallel"), plot.data, plot.metric);
  }

  async function refreshResults() {
    plot.readAt = Date.now();
    plot.readDone = run.done;
    const fresh = await JQ.getJSON(`/api/runs/${runId}/columns`);
    const changed = JSON.stringify(fresh) !== JSON.stringify(columns);
    columns = fresh;
    if (changed) {
      shownMetrics = shownMetrics.filter((m) => columns.metrics.includes(m));
      if (!shownMetrics.length) shownMetrics = columns.metrics.slice(0, 3);
      drawJobs();
    }
    if (!columns.metrics.length) return;
    if (!plot.metric || !columns.metrics.includes(plot.metric)) plot.metric = columns.metrics[0];
    document.getElementById("results").hidden = false;
    const started = Date.now();
    plot.data = await JQ.getJSON(`/api/runs/${runId}/results`);
    plot.took = Date.now() - started;
    document.getElementById("scatter-title").textContent = plot.data.sampled
      ? `Last value against each parameter (a sample of ${plot.data.jobs.length} jobs)` : "Last value against each parameter";
    drawPlots();
    await refreshCurves();
  }

  /** The jobs whose curves show: those selected in the table, else the best few on the plotted metric. */
  function curveJobs() {
    if (selected.size) return [...selected].slice(0, 20);
    const ranked = plot.data.jobs.map((j) => [j.id, JQ.num(j.last[plot.metric])]).filter(([, v]) => Number.isFinite(v));
    ranked.sort((a, b) => (lower() ? a[1] - b[1] : b[1] - a[1]));
    return ranked.slice(0, CURVES_DEFAULT).map(([id]) => id);
  }

  async function refreshCurves() {
    if (!plot.data || !plot.metric) return;
    const ids = curveJobs();
    document.getElementById("curves-title").textContent = selected.size
      ? `Learning curves of the ${ids.length} selected jobs`
      : `Learning curves of the best ${ids.length} jobs on ${plot.metric} (select jobs in the table to compare others)`;
    const container = document.getElementById("curves");
    if (!ids.length) {
      Plots.curves(container, {key: plot.metric, jobs: []}, curveChart);
      return;
    }
    Plots.curves(container, await JQ.getJSON(`/api/curves${JQ.query({key: plot.metric, jobs: ids.join(",")})}`), curveChart);
  }

  // --- polling -----------------------------------------------------------------------------------

  async function step() {
    const [summary] = await Promise.all([JQ.getJSON(`/api/runs/${runId}`), refreshJobs(false), refreshTimeline(false)]);
    if (JSON.stringify(summary) !== JSON.stringify(run)) {
      run = summary;
      drawSummary();
    }
    // A job's end shows in the plots at the next poll, running jobs' new points every RESULTS_EVERY.
    const ended = run.done !== plot.readDone;
    const every = Math.max(ended ? boot.interval * 1000 : RESULTS_EVERY, 10 * plot.took);
    if ((ended || run.counts.running > 0) && Date.now() - plot.readAt >= every) await refreshResults();
  }

  // Marks for benchmarks/ui.py: the time from navigation to each part drawn (performance.getEntriesByName).
  drawSummary();
  drawJobs();
  requestAnimationFrame(() => performance.mark("jq:table")); // before the frame that shows the table
  refreshTimeline(true).then(() => performance.mark("jq:timeline")).catch(() => {});
  refreshResults().then(() => performance.mark("jq:plots")).catch(() => {});
  JQ.poll(step, boot.interval);
})();
