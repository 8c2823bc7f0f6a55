// CronCommander console: live updates over the listener's event stream.
// Everything from the server is put into the page with textContent, never
// as HTML. No inline script anywhere (the Content-Security-Policy allows
// this file only).
"use strict";

function text(el, value) {
  if (el) el.textContent = value === undefined || value === null ? "—" : String(value);
}

function stateClass(status, exit) {
  if (status === "done") return exit === 0 ? "ok" : "bad";
  if (status === "lost" || status === "expired") return "bad";
  return "muted";
}

function stream(query, onEvent) {
  // EventSource resumes by itself with Last-Event-ID when the link drops.
  const es = new EventSource("/ui/events" + query);
  es.addEventListener("job", (m) => {
    try {
      onEvent(JSON.parse(m.data));
    } catch (e) {
      console.error("event", e);
    }
  });
  return es;
}

async function json(url) {
  const r = await fetch(url, { credentials: "same-origin" });
  if (!r.ok) throw new Error(url + ": " + r.status);
  return r.json();
}

function fillReport(job) {
  const r = job.report;
  const state = document.getElementById("state");
  text(state, job.status);
  if (state) state.className = stateClass(job.status, r ? r.exitCode : undefined);
  if (!r) return;
  text(document.getElementById("exit"), r.exitCode);
  const user = document.getElementById("user");
  if (user) {
    user.textContent = "";
    if (r.executingUid === 0) {
      const s = document.createElement("strong");
      s.className = "bad";
      s.textContent = "root";
      user.append(s, " (uid 0)");
    } else {
      user.textContent = r.executingUser + " (uid " + r.executingUid + ")";
    }
  }
  text(document.getElementById("started"), r.startTime);
  text(document.getElementById("duration"), r.durationMs + " ms");
  text(document.getElementById("warning"), r.warning || "—");
  text(document.getElementById("stdout"), r.stdout);
  text(document.getElementById("stderr"), r.stderr);
}

function jobPage(el) {
  const id = el.dataset.job;
  const changes = document.getElementById("changes");
  const es = stream("?job=" + encodeURIComponent(id), async (e) => {
    const li = document.createElement("li");
    li.textContent = e.at + " " + e.status + (e.exitCode !== undefined && e.exitCode !== null ? " (exit " + e.exitCode + ")" : "");
    changes.append(li);
    const state = document.getElementById("state");
    text(state, e.status);
    if (state) state.className = stateClass(e.status, e.exitCode);
    if (e.status === "done" || e.status === "lost" || e.status === "expired") {
      fillReport(await json("/ui/jobs/" + encodeURIComponent(id) + "/json"));
      el.dataset.status = e.status;
      es.close();
    }
  });
}

function updateRow(row, e) {
  const st = row.querySelector('[data-field="status"]');
  text(st, e.status);
  if (st) st.className = stateClass(e.status, e.exitCode);
  if (e.exitCode !== undefined && e.exitCode !== null) {
    text(row.querySelector('[data-field="exit"]'), e.exitCode);
  }
}

function fillCounts(el, counts) {
  el.textContent = "";
  for (const [state, n] of Object.entries(counts)) {
    const s = document.createElement("span");
    s.className = "count";
    s.textContent = state + " " + n;
    el.append(s, " ");
  }
}

function runPage(table) {
  const id = table.dataset.run;
  const counts = document.getElementById("run-counts");
  stream("?run=" + encodeURIComponent(id), async (e) => {
    const row = table.querySelector('tr[data-job="' + CSS.escape(e.jobId) + '"]');
    if (row) updateRow(row, e);
    fillCounts(counts, (await json("/ui/runs/" + encodeURIComponent(id) + "/json")).counts);
  });
}

function runsPage(main) {
  const since = main.dataset.since || "0";
  stream("?since=" + encodeURIComponent(since), async (e) => {
    const job = document.querySelector('tr[data-job="' + CSS.escape(e.jobId) + '"]');
    if (job) updateRow(job, e);
    if (!e.runId) return;
    const run = document.querySelector('tr[data-run="' + CSS.escape(e.runId) + '"]');
    if (!run) return;
    const r = await json("/ui/runs/" + encodeURIComponent(e.runId) + "/json");
    fillCounts(run.querySelector('[data-field="counts"]'), r.counts);
    const failed = run.querySelector('[data-field="failed"]');
    text(failed, r.failed);
    if (failed) failed.className = r.failed > 0 ? "bad" : "";
  });
}

document.addEventListener("DOMContentLoaded", () => {
  const job = document.getElementById("job");
  if (job && job.dataset.status !== "done" && job.dataset.status !== "lost" && job.dataset.status !== "expired") {
    jobPage(job);
  }
  const hosts = document.getElementById("run-hosts");
  if (hosts) runPage(hosts);
  const runs = document.getElementById("runs-page");
  if (runs) runsPage(runs);
});
