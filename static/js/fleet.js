// Fleet page. The server renders it complete (tiles, KPIs) and embeds the chart data; the socket's deltas then
// patch tiles and extend the charts in place (Plotly.extendTraces); a reconnect refetches the snapshot.
(function () {
  "use strict";
  const MINUTE = 60000, ROLLING = 15, MAX_POINTS = 5000, VERSION_TRACES = 6;
  const script = document.getElementById("fleet-script");
  const tiles = document.getElementById("robots");
  const config = {displayModeBar: false, responsive: true};
  const layout = (y, range) => ({margin: {t: 10, r: 10, b: 40, l: 50}, height: 260, legend: {orientation: "h"},
                                 xaxis: {type: "date"}, yaxis: Object.assign({title: y}, range ? {range} : {})});
  let snap, taskNames, versionNumbers, minutes, versionTotals, versionTraces;

  // --- the model: per-minute counts (server time), from the snapshot, then from each ingested episode ----------
  function bucketOf(iso) { return Math.floor(Date.parse(iso) / MINUTE) * MINUTE; }
  function add(map, key, n, s, i) {
    const b = map.get(key) || {n: 0, s: 0, i: 0};
    b.n += n; b.s += s; b.i += i; map.set(key, b);
  }
  function sumWindow(task, end, width) {  // counts over the `width` minutes ending with minute `end`
    const total = {n: 0, s: 0, i: 0};
    for (let m = end - (width - 1) * MINUTE; m <= end; m += MINUTE) {
      const perTask = minutes.get(m);
      if (!perTask) continue;
      perTask.forEach((b, t) => { if (task == null || t === task) { total.n += b.n; total.s += b.s; total.i += b.i; } });
    }
    return total;
  }
  const rate = (c) => (c.n ? c.s / c.n : null);

  function load(snapshot) {
    snap = snapshot;
    taskNames = snapshot.tasks;
    versionNumbers = Object.assign({}, snapshot.version_numbers);
    minutes = new Map();   // minute -> Map(task id -> counts)
    versionTotals = new Map();  // version id -> {n, s}
    versionTraces = [];    // version ids, in trace order
    const versionPoints = new Map();
    const start = Date.parse(snapshot.series.start);
    snapshot.series.rows.forEach((r) => {
      const m = Date.parse(r.t);
      if (!minutes.has(m)) minutes.set(m, new Map());
      add(minutes.get(m), r.task, r.n, r.s, r.i);
      if (m >= start && r.version) {
        const v = versionTotals.get(r.version) || {n: 0, s: 0};
        v.n += r.n; v.s += r.s; versionTotals.set(r.version, v);
        if (!versionPoints.has(r.version)) versionPoints.set(r.version, {x: [], y: []});
        const p = versionPoints.get(r.version);
        p.x.push(new Date(Math.min(m + MINUTE, Date.parse(snapshot.now))).toISOString()); p.y.push(v.s / v.n);
      }
    });
    const now = bucketOf(snapshot.now);
    // From the first minute with episodes (a young fleet's charts are not six hours of nothing), or from now.
    const first = Math.min(now, ...snapshot.series.rows.map((r) => Date.parse(r.t)).filter((m) => m >= start));
    const xs = [];
    for (let m = first; m <= now; m += MINUTE) xs.push(m);
    // A minute's point stands at its end; the running minute's at the snapshot's time, so that live points
    // (stamped with their episode's end) continue the line instead of stepping back from the minute's end.
    const at = (m) => new Date(Math.min(m + MINUTE, Date.parse(snapshot.now))).toISOString();
    const taskIds = Object.keys(taskNames).map(Number);
    Plotly.react("chart-task", taskIds.map((t) => ({
      name: taskNames[t], mode: "lines", x: xs.map(at), y: xs.map((m) => rate(sumWindow(t, m, ROLLING)))})),
      layout("success rate", [0, 1]), config);
    versionTraces = Array.from(versionPoints.keys()).sort((a, b) => b - a).slice(0, VERSION_TRACES).reverse();
    Plotly.react("chart-version", versionTraces.map((v) => ({
      name: "v" + (versionNumbers[v] || "?"), mode: "lines+markers", x: versionPoints.get(v).x,
      y: versionPoints.get(v).y})), layout("success rate", [0, 1]), config);
    Plotly.react("chart-throughput", [{name: "episodes / hour", mode: "lines", x: xs.map(at),
      y: xs.map((m) => sumWindow(null, m, ROLLING).n * 60 / ROLLING)}], layout("episodes / hour"), config);
    Plotly.react("chart-interventions", [{name: "interventions / hour", mode: "lines", x: xs.map(at),
      y: xs.map((m) => sumWindow(null, m, ROLLING).i * 60 / ROLLING)}], layout("interventions / hour"), config);
  }

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

  // --- KPIs ----------------------------------------------------------------------------------------------------
  function percent(c) { return c.n ? `${Math.round(100 * c.s / c.n)} % <span class="muted">of ${c.n}</span>` : "—"; }
  function updateKpis(now) {
    Object.keys(taskNames).forEach((t) => {
      const row = document.querySelector(`tr[data-task="${taskNames[t]}"]`);
      if (!row) return;
      row.querySelector('[data-window="quarter"]').innerHTML = percent(sumWindow(Number(t), now, 15));
      row.querySelector('[data-window="hour"]').innerHTML = percent(sumWindow(Number(t), now, 60));
    });
    const hour = sumWindow(null, now, 60);
    document.querySelector('[data-kpi="episodes_per_hour"]').textContent = hour.n;
    document.querySelector('[data-kpi="interventions_per_hour"]').textContent = hour.i;
  }

  // --- live deltas ---------------------------------------------------------------------------------------------
  function onEpisode(e) {
    if (e.robot) addMark(e);
    if (e.source !== "online") return;
    const m = bucketOf(e.finished_at);
    if (!minutes.has(m)) minutes.set(m, new Map());
    add(minutes.get(m), taskId(e.task), 1, e.outcome === "success" ? 1 : 0, e.interventions || 0);
    const x = [[e.finished_at]];
    const taskIds = Object.keys(taskNames).map(Number);
    const index = taskIds.indexOf(taskId(e.task));
    if (index >= 0) {
      Plotly.extendTraces("chart-task", {x, y: [[rate(sumWindow(taskIds[index], m, ROLLING))]]}, [index], MAX_POINTS);
    }
    const fleet = sumWindow(null, m, ROLLING);
    Plotly.extendTraces("chart-throughput", {x, y: [[fleet.n * 60 / ROLLING]]}, [0], MAX_POINTS);
    Plotly.extendTraces("chart-interventions", {x, y: [[fleet.i * 60 / ROLLING]]}, [0], MAX_POINTS);
    if (e.version) {
      const v = versionTotals.get(e.version) || {n: 0, s: 0};
      v.n += 1; v.s += e.outcome === "success" ? 1 : 0; versionTotals.set(e.version, v);
      let trace = versionTraces.indexOf(e.version);
      if (trace < 0) {
        Plotly.addTraces("chart-version", {name: "v" + (versionNumbers[e.version] || "?"), mode: "lines+markers",
                                           x: [], y: []});
        versionTraces.push(e.version);
        trace = versionTraces.length - 1;
      }
      Plotly.extendTraces("chart-version", {x, y: [[v.s / v.n]]}, [trace], MAX_POINTS);
    }
    updateKpis(m);
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
        updateKpis(bucketOf(snapshot.now));
      })
      .catch(() => location.reload());
  }

  if (tiles) tiles.querySelectorAll(".tile").forEach((box) => SopRobotControls.bind(box, (gone) => gone.remove()));
  load(JSON.parse(document.getElementById("fleet-snapshot").textContent));
  elapsedTick();
  setInterval(elapsedTick, 1000);
  SopLive.on("episode.finished", onEpisode);
  SopLive.on("robot.progress", onProgress);
  SopLive.on("robot.status", onStatus);
  SopLive.on("robot.version", (d) => setText(d.robot, "version", d.version ? "v" + (versionNumbers[d.version] || "?") : "—"));
  SopLive.on("version.state", onVersionState);
  SopLive.onResync(resync);
})();
