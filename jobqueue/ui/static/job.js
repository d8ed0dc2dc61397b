"use strict";
// A job's page: its parameters, command (copyable), attempts with exit codes and reasons, and the log of an
// attempt, following its tail while it runs.

(() => {
  const {el, replace} = JQ;
  const boot = JQ.boot();
  const jobId = boot.job.id;
  const LOG_KEPT = 2_000_000; // characters of log the page holds; older ones are dropped from the top
  let job = boot.job;
  const log = {attempt: null, offset: null, follow: true, pinned: false};

  function exitText(x) {
    if (x.signal !== null && x.signal !== undefined) return `signal ${x.signal}`;
    return x.exit_code === null || x.exit_code === undefined ? "" : `exit code ${x.exit_code}`;
  }

  function drawJob() {
    document.title = `jq ui: ${job.name}`;
    JQ.header(["/ ", el("a", {href: `/runs/${job.run_id}`, id: "run-link"}, job.run), " / ", el("span", {}, `job ${job.id}`)]);
    const facts = [
      ["experiment", job.experiment], ["tries", `${job.attempts} of at most ${job.max_attempts}`], ["result", exitText(job)],
      ["started", JQ.fmtTime(job.started_at)], ["ended", JQ.fmtTime(job.ended_at)],
      ["timeout", job.timeout ? JQ.fmtDuration(job.timeout) : ""],
    ].filter(([, v]) => v);
    replace(document.getElementById("job"),
      el("h1", {}, el("span", {id: "job-name"}, job.name), " ", JQ.stateBadge(job.state)),
      el("div", {class: "facts"}, facts.map(([k, v]) => el("span", {class: "fact"}, el("span", {class: "k"}, k), " ", v))));
    replace(document.getElementById("params"), el("tbody", {}, Object.entries(job.params).map(([k, v]) =>
      el("tr", {}, el("th", {}, k), el("td", {class: "param-value"}, JQ.fmtValue(v))))));
    document.getElementById("command").textContent = job.cmd;
    document.getElementById("cwd").textContent = `runs in ${job.cwd}`;
    const head = ["#", "state", "host", "worker", "slot", "gpus", "pid", "started", "ended", "duration", "result", "reason", "log"];
    const rows = job.tries.map((a) => el("tr", {"data-attempt": a.number},
      el("td", {class: "num"}, String(a.number)), el("td", {}, JQ.stateBadge(a.state)), el("td", {}, a.host),
      el("td", {class: "num"}, a.worker_id === null ? "" : String(a.worker_id)), el("td", {class: "num"}, a.slot === null ? "" : String(a.slot)),
      el("td", {}, a.gpus || ""), el("td", {class: "num"}, a.pid === null ? "" : String(a.pid)),
      el("td", {}, JQ.fmtTime(a.started_at)), el("td", {}, JQ.fmtTime(a.ended_at)), el("td", {class: "num"}, JQ.fmtDuration(a.duration_s)),
      el("td", {}, exitText(a)), el("td", {class: "reason"}, a.reason || ""),
      el("td", {}, a.has_log ? el("button", {onclick: () => showAttempt(a.number, true)}, "show") : "")));
    replace(document.getElementById("attempts"), el("thead", {}, el("tr", {}, head.map((h) => el("th", {}, h)))),
      el("tbody", {}, rows.length ? rows : el("tr", {}, el("td", {colspan: head.length, class: "hint"}, "Not run yet."))));
    drawLogTools();
  }

  function drawLogTools() {
    const choose = el("select", {id: "log-attempt", onchange: (e) => showAttempt(Number(e.target.value), true)},
      job.tries.map((a) => el("option", {value: a.number, selected: a.number === log.attempt}, `attempt ${a.number} (${a.state})`)));
    const follow = el("label", {}, el("input", {type: "checkbox", id: "follow", checked: log.follow,
      onchange: (e) => { log.follow = e.target.checked; }}), " follow the end");
    replace(document.getElementById("log-tools"), job.tries.length ? choose : null, follow);
  }

  function showAttempt(number, pinned) {
    log.attempt = number;
    log.pinned = pinned;
    log.offset = null;
    document.getElementById("log").textContent = "";
    drawLogTools();
    return readLog();
  }

  async function readLog() {
    if (!job.tries.length) {
      document.getElementById("log-note").textContent = "No log yet: the job has not started.";
      return;
    }
    const attempt = log.attempt;
    const piece = await JQ.getJSON(`/api/jobs/${jobId}/log${JQ.query({attempt, offset: log.offset})}`);
    if (attempt !== log.attempt) return; // another attempt was chosen meanwhile
    const pre = document.getElementById("log");
    const note = document.getElementById("log-note");
    if (piece.missing) {
      note.textContent = `The log file ${piece.path || ""} is not there (deleted, or on another machine).`;
      return;
    }
    if (log.offset === null || piece.offset !== log.offset) { // first read, or the file was truncated
      pre.textContent = "";
      note.textContent = piece.offset > 0 ? `${piece.path}: from byte ${piece.offset} (its last lines)` : piece.path;
    }
    if (piece.text) {
      pre.appendChild(document.createTextNode(piece.text));
      if (pre.textContent.length > LOG_KEPT) pre.textContent = pre.textContent.slice(-LOG_KEPT);
      if (log.follow) pre.scrollTop = pre.scrollHeight;
    }
    log.offset = piece.next_offset;
    if (piece.text && piece.next_offset < piece.size) await readLog(); // more than one piece behind: catch up now
  }

  async function step() {
    job = await JQ.getJSON(`/api/jobs/${jobId}`);
    const newest = job.tries.length ? job.tries[job.tries.length - 1].number : null;
    if (!log.pinned && newest !== log.attempt) {
      drawJob();
      await showAttempt(newest, false);
      return;
    }
    drawJob();
    await readLog();
  }

  document.getElementById("copy").addEventListener("click", async () => {
    const button = document.getElementById("copy");
    try {
      await navigator.clipboard.writeText(job.cmd);
      button.textContent = "copied";
    } catch (error) {
      const range = document.createRange();
      range.selectNodeContents(document.getElementById("command"));
      window.getSelection().removeAllRanges();
      window.getSelection().addRange(range);
      button.textContent = "selected: Ctrl-C";
    }
    setTimeout(() => { button.textContent = "copy"; }, 2000);
  });

  log.attempt = job.tries.length ? job.tries[job.tries.length - 1].number : null;
  drawJob();
  readLog().catch((error) => { document.getElementById("log-note").textContent = error.message; });
  JQ.poll(step, boot.interval);
})();
