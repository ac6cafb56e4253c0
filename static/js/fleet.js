// Fleet page. The server renders it complete (tiles, KPIs) and embeds the chart points it computed
// (fleet/dashboard.py: fleet_series); the socket's deltas then patch tiles and add chart points computed here by the
// same definition (`figures`, over the same rolling span); a reconnect refetches the snapshot. Every KPI is the
// last point of its chart.
(function () {
  "use strict";
  const VERSION_TRACES = 6;
  const script = document.getElementById("fleet-script");
  const tiles = document.getElementById("robots");
  const config = {displayModeBar: false, responsive: true};
  const COUNTS = ["episodes", "autonomous_successes", "assisted_successes", "steps", "success_steps",
                  "intervention_steps", "interventions"];
  let win, bucketMs, span, clockOffset, taskNames, versionNumbers, series, buckets, lastPoint, revision = 0,
      renderTimer = null;

  // --- the definition (fleet.dashboard.figures): every figure over one span holding `c` ----------------------
  function figures(c, seconds) {
    const n = c.episodes, i = c.interventions;
    return {
      episodes: n,
      autonomous: n ? c.autonomous_successes / n : null,
      assisted: n ? c.assisted_successes / n : null,
      episodes_per_hour: n * 3600 / seconds,
      interventions_per_hour: i * 3600 / seconds,
      steps_between_interventions: i ? (c.steps - c.intervention_steps) / i : null,
    };
  }
  const zero = () => Object.fromEntries(COUNTS.map((name) => [name, 0]));
  const percent = (v) => (v == null ? "—" : Math.round(v * 100) + " %");  // as the |percent filter
  const whole = (v) => (v == null ? "—" : String(Math.round(v)));          // as the |whole filter
  const serverNow = () => Date.now() + clockOffset;
  const bucketOf = (ms) => Math.floor(ms / bucketMs) * bucketMs;  // buckets are aligned on the epoch, as on the server
  const iso = (ms) => new Date(ms).toISOString();

  // Counts of the span whose point is `t`: the `span` buckets up to the one `t` ends or falls in.
  function spanCounts(task, t) {
    const last = t % bucketMs === 0 ? t - bucketMs : bucketOf(t);
    const total = zero();
    for (let b = last - (span - 1) * bucketMs; b <= last; b += bucketMs) {
      const perTask = buckets.get(b);
      if (!perTask) continue;
      perTask.forEach((c, id) => { if (task == null || id === task) COUNTS.forEach((k) => { total[k] += c[k]; }); });
    }
    return [total, ((span - 1) * bucketMs + (t - last)) / 1000];
  }

  function load(snapshot) {
    win = snapshot.window;
    bucketMs = win.bucket_seconds * 1000;
    span = win.span_buckets;
    clockOffset = Date.parse(snapshot.now) - Date.now();
    taskNames = snapshot.tasks;
    versionNumbers = Object.assign({}, snapshot.version_numbers);
    series = JSON.parse(JSON.stringify(snapshot.series));
    buckets = new Map();  // bucket start (ms) -> Map(task id -> counts): what live points are computed from
    series.recent.forEach((r) => {
      const b = Date.parse(r.at);
      if (!buckets.has(b)) buckets.set(b, new Map());
      const c = zero();
      COUNTS.forEach((k) => { c[k] = r[k]; });
      buckets.get(b).set(r.task, c);
    });
    lastPoint = series.x.length ? Date.parse(series.x[series.x.length - 1]) : Date.parse(win.now);
    render();
  }

  // --- points: the server's, then one per live episode and one at every bucket end -------------------------
  function addPoint(t) {
    if (series.x.length && Date.parse(series.x[series.x.length - 1]) >= t) dropLast();  // recomputed below
    series.x.push(iso(t));
    const [fleetCounts, seconds] = spanCounts(null, t);
    const fleet = figures(fleetCounts, seconds);
    Object.keys(series.fleet).forEach((k) => series.fleet[k].push(fleet[k]));
    Object.keys(series.tasks).forEach((id) => {
      const [c, s] = spanCounts(Number(id), t);
      const f = figures(c, s);
      Object.keys(series.tasks[id]).forEach((k) => series.tasks[id][k].push(f[k]));
    });
    lastPoint = t;
  }
  function dropLast() {
    series.x.pop();
    Object.keys(series.fleet).forEach((k) => series.fleet[k].pop());
    Object.keys(series.tasks).forEach((id) => Object.keys(series.tasks[id]).forEach((k) => series.tasks[id][k].pop()));
  }
  // The bucket ends passed since the last point (the span moved on: old episodes left it), then `t` itself.
  function advance(t, pointAtT) {
    for (let end = bucketOf(lastPoint) + bucketMs; end <= t; end += bucketMs) addPoint(end);
    if (pointAtT) addPoint(Math.max(t, lastPoint));
    trim();
    updateKpis();
    scheduleRender();
  }
  function trim() {  // a moving window keeps its points and buckets from its start on
    if (!win.moving) return;
    const start = serverNow() - (Date.parse(win.end) - Date.parse(win.start));
    let drop = 0;
    while (drop < series.x.length - 1 && Date.parse(series.x[drop]) < start) drop++;
    if (drop) {
      series.x.splice(0, drop);
      Object.keys(series.fleet).forEach((k) => series.fleet[k].splice(0, drop));
      Object.keys(series.tasks).forEach((id) => Object.keys(series.tasks[id]).forEach((k) => series.tasks[id][k].splice(0, drop)));
    }
    const oldest = bucketOf(lastPoint) - span * bucketMs;
    buckets.forEach((_, b) => { if (b < oldest) buckets.delete(b); });
  }

  // --- drawing: titles, axis labels, the window's whole range, legends outside the plot ---------------------
  // The window, whatever the data covers; a 2 % margin after its end keeps the newest point off the frame.
  function xRange() {
    const width = Date.parse(win.end) - Date.parse(win.start);
    const end = win.moving ? serverNow() : Date.parse(win.end);
    return [iso(end - width), iso(end + width / 50)];
  }
  // A chart with one line needs no legend: its title names it. Several lines get theirs beside the plot.
  function layout(title, yTitle, rate, legend) {
    return {
      title: {text: title, x: 0, xanchor: "left", font: {size: 14}}, height: 300, datarevision: revision,
      margin: {t: 40, r: 10, b: 50, l: 60}, showlegend: Boolean(legend),
      legend: {x: 1.02, xanchor: "left", y: 1, yanchor: "top"},
      xaxis: {type: "date", range: xRange(), autorange: false, title: {text: "time (UTC)"}},
      yaxis: Object.assign({title: {text: yTitle}},
                           rate ? {range: [-0.03, 1.03], tickformat: ".0%"} : {rangemode: "tozero"}),
    };
  }
  // Markers on the last point (the KPI's) and on any point whose neighbours have no value (it draws no line).
  function loneMarkers(y) {
    return {size: y.map((v, i) => (v != null && (i === y.length - 1 || (y[i - 1] == null && y[i + 1] == null)) ? 6 : 0))};
  }
  const rolling = (title) => title + "  <span style='font-size:12px;color:#5b6673'>each point over the " + win.span_label +
    " before it</span>";
  function rateTrace(name, x, values, extra) {
    return Object.assign({
      name, mode: "lines+markers", marker: loneMarkers(values.autonomous), x, y: values.autonomous, customdata: values.autonomous.map((_, i) => [values.assisted[i], values.episodes[i]]),
      hovertemplate: "%{fullData.name}<br>autonomous %{y:.0%}, assisted %{customdata[0]:.0%}<br>" +
                     "of %{customdata[1]} episodes<extra></extra>",
    }, extra || {});
  }
  function render() {
    renderTimer = null;
    revision += 1;
    const x = series.x, fleet = series.fleet;
    const taskIds = Object.keys(taskNames).map(Number).sort((a, b) => taskNames[a].localeCompare(taskNames[b]));
    const taskTraces = taskIds.filter((id) => series.tasks[id]).map((id) => rateTrace(taskNames[id], x, series.tasks[id]));
    taskTraces.push(rateTrace("all tasks", x, fleet, {line: {color: "#17202b", width: 3}}));
    taskTraces.push({name: "all tasks, assisted", mode: "lines+markers", marker: loneMarkers(fleet.assisted), x,
                     y: fleet.assisted, line: {color: "#8a94a3", dash: "dot"},
                     hovertemplate: "all tasks: assisted %{y:.0%}<extra></extra>"});
    Plotly.react("chart-task", taskTraces, layout(rolling("Autonomous success per task"), "autonomous success", true, true),
                 config);
    const versionIds = Object.keys(series.versions).map(Number).sort((a, b) => a - b).slice(-VERSION_TRACES);
    Plotly.react("chart-version", versionIds.map((v) => rateTrace("v" + (versionNumbers[v] || "?"), series.versions[v].x,
      series.versions[v], {mode: "lines+markers", marker: {size: 6}})),
      layout("Autonomous success per policy version  <span style='font-size:12px;color:#5b6673'>cumulative from the " +
             "window's start</span>", "autonomous success", true, true), config);
    const single = (name, y, color, unit) => [{name, mode: "lines+markers", marker: loneMarkers(y), x, y,
                                               line: {color}, hovertemplate: "%{y:.0f} " + unit + "<extra></extra>"}];
    Plotly.react("chart-throughput", single("episodes / hour", fleet.episodes_per_hour, "#2456c7", "episodes / hour"),
                 layout(rolling("Throughput"), "episodes / hour", false), config);
    Plotly.react("chart-interventions", single("interventions / hour", fleet.interventions_per_hour, "#b7791f",
                                               "takeovers / hour"),
                 layout(rolling("Interventions"), "takeovers / hour", false), config);
    Plotly.react("chart-steps", single("policy steps between interventions", fleet.steps_between_interventions,
                                       "#1f8a4c", "policy steps"),
                 layout(rolling("Policy steps between interventions"), "policy steps", false), config);
  }
  function scheduleRender() { if (renderTimer == null) renderTimer = setTimeout(render, 250); }

  // --- tiles ---------------------------------------------------------------------------------------------------
  const tile = (robot) => tiles && tiles.querySelector(`.tile[data-robot="${robot}"]`);
  const field = (robot, name) => tiles && tiles.querySelector(`[data-robot="${robot}"] [data-field="${name}"]`);
  function setText(robot, name, text) { const el = field(robot, name); if (el) el.textContent = text; }

  function elapsedTick() {
    if (!tiles) return;
    tiles.querySelectorAll('[data-field="elapsed"]').forEach((el) => {
      const started = el.dataset.started;
      el.textContent = started ? Math.max(0, Math.round((Date.now() - Date.parse(started)) / 1000)) + " s" : "—";
    });
  }

  function onProgress(p) {
    setText(p.robot, "task", p.task);
    // An evaluation episode runs the evaluated version on held-out seeds, not the robot's own.
    setText(p.robot, "version", "v" + p.version + (p.source === "evaluation" ? " · evaluation" : ""));
    setText(p.robot, "step", p.step);
    const box = tile(p.robot);
    if (box) SopRobotControls.control(box, p.control);
    const elapsed = field(p.robot, "elapsed");
    if (elapsed) elapsed.dataset.started = p.started_at;
  }

  function addMark(e) {
    const marks = field(e.robot, "outcomes");
    if (!marks) return;
    const a = document.createElement("a");
    a.href = "/episodes/" + e.episode + "/";
    a.className = "mark mark-" + e.outcome + (e.intervention_steps > 0 ? " helped" : "");
    a.title = "episode " + e.episode + ": " + e.outcome;
    marks.appendChild(a);
    while (marks.children.length > 20) marks.removeChild(marks.firstChild);
    setText(e.robot, "step", "—");
    const elapsed = field(e.robot, "elapsed");
    if (elapsed) elapsed.dataset.started = "";
  }

  // --- KPIs: the last points -------------------------------------------------------------------------------
  function setKpi(name, text) { const el = document.querySelector(`[data-kpi="${name}"]`); if (el) el.textContent = text; }
  function updateKpis() {
    const last = (values) => values[values.length - 1];
    const fleet = series.fleet;
    setKpi("autonomous", percent(last(fleet.autonomous)));
    setKpi("assisted", percent(last(fleet.assisted)));
    setKpi("episodes_per_hour", whole(last(fleet.episodes_per_hour)));
    setKpi("interventions_per_hour", whole(last(fleet.interventions_per_hour)));
    setKpi("steps_between_interventions", whole(last(fleet.steps_between_interventions)));
    Object.keys(series.tasks).forEach((id) => {
      const row = document.querySelector(`tr[data-task="${taskNames[id]}"]`);
      if (!row) return;
      const values = series.tasks[id];
      row.querySelector('[data-figure="autonomous"]').textContent = percent(last(values.autonomous));
      row.querySelector('[data-figure="assisted"]').textContent = percent(last(values.assisted));
      const n = last(values.episodes);
      row.querySelector('[data-figure="episodes"]').textContent = n == null ? "—" : n;
    });
  }

  // --- live deltas ---------------------------------------------------------------------------------------------
  function onEpisode(e) {
    if (e.robot) addMark(e);
    if (e.source !== "online" || !win.live) return;
    const t = Date.parse(e.finished_at), b = bucketOf(t), task = taskId(e.task);
    if (task == null) return;
    if (!buckets.has(b)) buckets.set(b, new Map());
    const c = buckets.get(b).get(task) || zero();
    const success = e.outcome === "success";
    c.episodes += 1;
    c.autonomous_successes += success && e.autonomous ? 1 : 0;
    c.assisted_successes += success && !e.autonomous ? 1 : 0;
    c.steps += e.steps || 0;
    c.success_steps += success ? e.steps || 0 : 0;
    c.intervention_steps += e.intervention_steps || 0;
    c.interventions += e.interventions || 0;
    buckets.get(b).set(task, c);
    if (e.version) addVersionPoint(e, Math.max(t, lastPoint), success);
    advance(t, true);
  }

  function addVersionPoint(e, t, success) {
    let line = series.versions[e.version];
    if (!line) line = series.versions[e.version] = {x: [], autonomous: [], assisted: [], episodes: [], totals: zero()};
    const totals = line.totals;
    totals.episodes += 1;
    totals.autonomous_successes += success && e.autonomous ? 1 : 0;
    totals.assisted_successes += success && !e.autonomous ? 1 : 0;
    const f = figures(totals, 1);
    line.x.push(iso(t)); line.autonomous.push(f.autonomous); line.assisted.push(f.assisted); line.episodes.push(f.episodes);
  }

  function taskId(name) {
    for (const t in taskNames) if (taskNames[t] === name) return Number(t);
    return null;
  }

  // A robot's new state, from a "robot.status" event or a resync: its badge and the commands it allows.
  function onStatus(data) {
    const box = tile(data.robot);
    if (!box) return;
    if (data.state === "removed") box.remove(); else SopRobotControls.apply(box, data);
  }

  function onVersionState(data) {
    versionNumbers[data.version] = data.number;
    if (data.state === "deployed") document.querySelector('[data-kpi="deployed"]').textContent = "v" + data.number;
  }

  function resync() {
    fetch(script.dataset.snapshotUrl, {headers: {Accept: "application/json"}})
      .then((response) => (response.ok ? response.json() : Promise.reject(response.status)))
      .then((snapshot) => {
        load(snapshot);
        snapshot.robots.forEach((r) => { onStatus(r); if (r.progress) onProgress(r.progress); });
        updateKpis();
      })
      .catch(() => location.reload());
  }

  if (tiles) tiles.querySelectorAll(".tile").forEach((box) => SopRobotControls.bind(box, (gone) => gone.remove()));
  load(JSON.parse(document.getElementById("fleet-snapshot").textContent));
  elapsedTick();
  setInterval(elapsedTick, 1000);
  // A live window's figures change as time passes, not only with episodes: a point at every bucket end, and a
  // moving window slides its x-axis with the clock.
  setInterval(() => { if (win.live) advance(Math.min(serverNow(), Date.parse(win.end)), false); }, 5000);
  SopLive.on("episode.finished", onEpisode);
  SopLive.on("robot.progress", onProgress);
  SopLive.on("robot.status", onStatus);
  SopLive.on("robot.version", (d) => setText(d.robot, "version", d.version ? "v" + (versionNumbers[d.version] || "?") : "—"));
  SopLive.on("version.state", onVersionState);
  SopLive.onResync(resync);
})();
