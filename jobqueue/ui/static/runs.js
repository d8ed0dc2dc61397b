"use strict";
// The runs page: every run with its progress, counts, ETA, backend and submissions, polled every few seconds.

(() => {
  const {el, replace} = JQ;
  const boot = JQ.boot();
  const table = document.getElementById("runs");

  function etaText(run) {
    if (run.done >= run.total) return run.total ? "done" : "";
    if (run.eta_s === null || run.eta_s === undefined) return run.counts.running ? "estimating" : "waiting for workers";
    return JQ.fmtDuration(run.eta_s);
  }

  function submissionsCell(run) {
    return run.submissions.map((s) => el("div", {class: "submission"},
      `${s.backend} ${s.mode} ${s.external_id || "-"}`, s.mode === "workers" ? ` (${s.tasks} workers)` : ` (job ${s.job_id})`,
      ": ", el("span", {class: "sub-state"}, s.state)));
  }

  function draw(runs) {
    document.getElementById("no-runs").hidden = runs.length > 0;
    const anySubmissions = runs.some((run) => run.submissions.length);
    const head = el("tr", {}, ["run", "progress", "done", ...JQ.STATES, "ETA", "backend", "started", anySubmissions ? "submissions" : null]
      .filter(Boolean).map((h) => el("th", {class: JQ.STATES.includes(h) || h === "done" ? "num" : null}, h)));
    const rows = runs.map((run) => el("tr", {"data-run": run.id},
      el("td", {}, el("a", {href: `/runs/${run.id}`, class: "run-name"}, run.name)),
      el("td", {class: "bar-cell"}, JQ.progressBar(run.counts, run.total)),
      el("td", {class: "num done"}, `${run.done}/${run.total}`),
      JQ.STATES.map((s) => el("td", {class: `num count-${s}`, "data-state": s}, String(run.counts[s] || 0))),
      el("td", {class: "eta"}, etaText(run)),
      el("td", {}, run.backend || ""),
      el("td", {title: `enqueued ${JQ.fmtTime(run.created_at)}`}, JQ.fmtTime(run.started_at) || "not yet"),
      anySubmissions ? el("td", {}, submissionsCell(run)) : null));
    replace(table, el("thead", {}, head), el("tbody", {}, rows));
  }

  draw(boot.runs);
  JQ.poll(async () => draw(await JQ.getJSON("/api/runs")), boot.interval);
})();
