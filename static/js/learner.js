// Learner page: one line per training run over the picked time window (learner/dashboard.py), restarts marked by a
// dashed line; `learner.metrics` events add points live. A restart's first point says which saved step it resumed
// from: the run's points beyond that step were lost with the process and are dropped, so a line never runs back.
(function () {
  "use strict";
  const data = JSON.parse(document.getElementById("learner-curves").textContent);
  const win = data.window;
  const widthMs = data.width_seconds * 1000;
  const clockOffset = Date.parse(win.now) - Date.now();
  const config = {displayModeBar: false, responsive: true};
  const runs = data.runs;  // [{id, label, status, points, restarts}], oldest first
  const versions = data.versions;
  const COLORS = ["#2456c7", "#c0392b", "#1f8a4c", "#b7791f", "#7b3fb5", "#17202b", "#0e8a8a", "#d0587e"];
  let revision = 0, renderTimer = null;

  const serverNow = () => Date.now() + clockOffset;
  const iso = (ms) => new Date(ms).toISOString();
  // The window, whatever the data covers; a 2 % margin after its end keeps the newest point off the frame.
  function xRange() {
    const width = Date.parse(win.end) - Date.parse(win.start);
    const end = win.moving ? serverNow() : Date.parse(win.end);
    return [iso(end - width), iso(end + width / 50)];
  }
  function tasksOf(run) {
    const names = new Set();
    run.points.forEach((p) => Object.keys(p.tasks || {}).forEach((t) => names.add(t)));
    return Array.from(names).sort();
  }
  function restartMarks() {  // a dashed line and a label at every restart, on every time chart
    const shapes = [], annotations = [];
    runs.forEach((run) => run.restarts.forEach((r) => {
      shapes.push({type: "line", xref: "x", yref: "paper", x0: r.at, x1: r.at, y0: 0, y1: 1,
                   line: {color: "#c0392b", width: 1.5, dash: "dash"}});
      annotations.push({x: r.at, xref: "x", y: 1, yref: "paper", yanchor: "bottom", showarrow: false,
                        text: "restart", font: {size: 10, color: "#c0392b"},
                        hovertext: `${run.label} resumed from step ${r.resumed_from}; ${r.lost} steps lost and trained again`});
    }));
    return {shapes, annotations};
  }
  function layout(title, yTitle, extra) {
    const marks = restartMarks();
    return Object.assign({
      title: {text: title, x: 0, xanchor: "left", font: {size: 14}}, height: 300, datarevision: revision,
      margin: {t: 50, r: 10, b: 50, l: 60}, showlegend: true, shapes: marks.shapes, annotations: marks.annotations,
      legend: {x: 1.02, xanchor: "left", y: 1, yanchor: "top"},
      xaxis: {type: "date", range: xRange(), autorange: false, title: {text: "time (UTC)"}},
      yaxis: {title: {text: yTitle}},
    }, extra || {});
  }
  function line(run, color, name, y, dash) {
    return {name, legendgroup: "run" + run.id, mode: "lines", x: run.points.map((p) => p.at), y,
            line: {color: COLORS[color % COLORS.length], dash: dash || "solid"},
            customdata: run.points.map((p) => p.step), hovertemplate: "%{fullData.name}<br>%{y}<br>step %{customdata}<extra></extra>"};
  }
  function render() {
    renderTimer = null;
    revision += 1;
    // Single curves take the run's colour; per-task curves the task's (runs follow one another in time, and each
    // trace's name says its run).
    const loss = [], share = [], buffer = [], staleness = [], sps = [];
    const allTasks = Array.from(new Set(runs.flatMap(tasksOf))).sort();
    runs.forEach((run, i) => {
      const pts = run.points;
      loss.push(line(run, i, run.label, pts.map((p) => p.loss)));
      sps.push(line(run, i, run.label, pts.map((p) => p.samples_per_second)));
      staleness.push(line(run, i, run.label + " mean", pts.map((p) => p.staleness_mean)));
      staleness.push(line(run, i, run.label + " max", pts.map((p) => p.staleness_max), "dot"));
      tasksOf(run).forEach((t) => {
        const k = allTasks.indexOf(t);
        share.push(line(run, k, `${run.label} ${t}`, pts.map((p) => (p.tasks[t] || {}).w_on)));
        const positive = pts.map((p) => (p.tasks[t] || {}).positive_share);
        if (positive.some((v) => v != null)) {  // RECAP: online frames its threshold found positive
          share.push(line(run, k, `${run.label} ${t} positive`, positive, "dash"));
        }
        buffer.push(line(run, k, `${run.label} ${t} online`, pts.map((p) => ((p.tasks[t] || {}).buffer || {}).online)));
        buffer.push(line(run, k, `${run.label} ${t} offline`, pts.map((p) => ((p.tasks[t] || {}).buffer || {}).offline), "dot"));
      });
    });
    Plotly.react("chart-loss", loss, layout("Training loss", "loss"), config);
    Plotly.react("chart-share", share, layout("Online share ω_on per task (dashed: RECAP's positive share)", "share",
                                              {yaxis: {title: {text: "share"}, range: [0, 1]}}), config);
    Plotly.react("chart-buffer", buffer, layout("Buffer per task and source", "frames"), config);
    Plotly.react("chart-staleness", staleness, layout("Staleness of sampled online frames", "versions behind"), config);
    Plotly.react("chart-sps", sps, layout("Samples per second", "samples / s"), config);
    Plotly.react("chart-versions", [{x: versions.map((v) => v.at), y: versions.map((v) => v.number), mode: "markers",
      name: "published versions", text: versions.map((v) => `${v.algorithm}, ${v.state}, step ${v.train_steps}`),
      hovertemplate: "v%{y}: %{text}<extra></extra>"}], layout("Published versions", "version number"), config);
  }
  function scheduleRender() { if (renderTimer == null) renderTimer = setTimeout(render, 500); }

  function updateKpis() {
    const run = runs[runs.length - 1];
    const p = run && run.points[run.points.length - 1];
    if (!p) return;
    document.getElementById("kpi-run").textContent = `${run.label}, ${run.status}`;
    document.getElementById("kpi-step").textContent = p.step;
    document.getElementById("kpi-loss").textContent = p.loss.toFixed(4);
    document.getElementById("kpi-sps").textContent = p.samples_per_second;
    document.getElementById("kpi-steps").textContent =
      run.batch_size ? (p.samples_per_second / run.batch_size).toFixed(1) : "—";
    document.getElementById("kpi-staleness").textContent =
      `${p.staleness_mean == null ? "—" : p.staleness_mean.toFixed(1)} / ${p.staleness_max == null ? "—" : p.staleness_max}`;
    document.getElementById("kpi-restarts").textContent = runs.reduce((n, r) => n + r.restarts.length, 0);
  }

  function trim() {  // a moving window keeps what lies inside it
    if (!win.moving) return;
    const start = serverNow() - (Date.parse(win.end) - Date.parse(win.start));
    runs.forEach((run) => {
      while (run.points.length > 1 && Date.parse(run.points[0].at) < start) run.points.shift();
      run.restarts = run.restarts.filter((r) => Date.parse(r.at) >= start);
    });
    while (versions.length && Date.parse(versions[0].at) < start) versions.shift();
  }

  function onPoint(p) {
    if (!win.live) return;  // a past window does not move
    let run = runs.find((r) => r.id === p.run);
    if (!run) {
      run = {id: p.run, label: `run ${p.run}`, status: "active", points: [], restarts: [],
             batch_size: runs.length ? runs[runs.length - 1].batch_size : null};
      runs.push(run);
    }
    if (p.resumed_from != null) {  // a restart: what the run trained beyond its saved step was lost
      const before = run.points.length ? run.points[run.points.length - 1].step : p.resumed_from;
      run.points = run.points.filter((q) => q.step <= p.resumed_from);
      run.restarts.push({at: p.at, step: p.step, resumed_from: p.resumed_from, lost: Math.max(0, before - p.resumed_from)});
    }
    // As on the server: the last point of each time bucket.
    const last = run.points[run.points.length - 1];
    if (last && Math.floor(Date.parse(last.at) / widthMs) === Math.floor(Date.parse(p.at) / widthMs)) run.points.pop();
    run.points.push(p);
    trim();
    updateKpis();
    scheduleRender();
  }

  render();
  SopLive.on("learner.metrics", onPoint);
  SopLive.on("version.state", (d) => {
    if (d.state === "checkpoint" && win.live) {
      versions.push({number: d.number, state: d.state, algorithm: "", at: iso(serverNow()), train_steps: ""});
      scheduleRender();
    }
  });
  if (win.moving) setInterval(() => { trim(); scheduleRender(); }, 10000);  // the axis slides with the clock
})();
