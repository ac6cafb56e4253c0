// Learner page: charts drawn once from the page's data, then extended in place by `learner.metrics` events.
(function () {
  "use strict";
  const points = JSON.parse(document.getElementById("learner-points").textContent);
  const versions = JSON.parse(document.getElementById("learner-versions").textContent);
  const layout = (y) => ({margin: {t: 10, r: 10, b: 40, l: 50}, height: 260, xaxis: {title: "learner step"},
                          yaxis: {title: y}, legend: {orientation: "h"}});
  const config = {displayModeBar: false, responsive: true};
  const tasks = points.length ? Object.keys(points[points.length - 1].tasks).sort() : [];
  const steps = points.map((p) => p.step);
  const perTask = (field) => tasks.map((t) => points.map((p) => (p.tasks[t] || {})[field]));

  Plotly.newPlot("chart-loss", [{x: steps, y: points.map((p) => p.loss), name: "loss", mode: "lines"}],
                 layout("loss"), config);
  Plotly.newPlot("chart-share", tasks.map((t, i) => ({x: steps, y: perTask("w_on")[i], name: t, mode: "lines"})),
                 Object.assign(layout("ω_on"), {yaxis: {range: [0, 1], title: "ω_on"}}), config);
  const bufferTraces = [];
  tasks.forEach((t) => ["online", "offline"].forEach((s) => bufferTraces.push(
    {x: steps, y: points.map((p) => ((p.tasks[t] || {}).buffer || {})[s]), name: `${t} ${s}`, mode: "lines"})));
  Plotly.newPlot("chart-buffer", bufferTraces, layout("frames"), config);
  Plotly.newPlot("chart-staleness", [
    {x: steps, y: points.map((p) => p.staleness_mean), name: "mean", mode: "lines"},
    {x: steps, y: points.map((p) => p.staleness_max), name: "max", mode: "lines"}], layout("versions behind"), config);
  Plotly.newPlot("chart-sps", [{x: steps, y: points.map((p) => p.samples_per_second), name: "samples/s",
                                mode: "lines"}], layout("samples/s"), config);
  Plotly.newPlot("chart-versions", [{x: versions.map((v) => v.at), y: versions.map((v) => v.number),
                                     text: versions.map((v) => `${v.algorithm}, ${v.state}`), mode: "markers",
                                     name: "versions"}],
                 {margin: {t: 10, r: 10, b: 40, l: 50}, height: 260, yaxis: {title: "version"}}, config);

  function extend(p) {
    Plotly.extendTraces("chart-loss", {x: [[p.step]], y: [[p.loss]]}, [0]);
    Plotly.extendTraces("chart-share", {x: tasks.map(() => [p.step]), y: tasks.map((t) => [(p.tasks[t] || {}).w_on])},
                        tasks.map((_, i) => i));
    const bx = [], by = [];
    tasks.forEach((t) => ["online", "offline"].forEach((s) => { bx.push([p.step]); by.push([((p.tasks[t] || {}).buffer || {})[s]]); }));
    Plotly.extendTraces("chart-buffer", {x: bx, y: by}, bx.map((_, i) => i));
    Plotly.extendTraces("chart-staleness", {x: [[p.step], [p.step]], y: [[p.staleness_mean], [p.staleness_max]]}, [0, 1]);
    Plotly.extendTraces("chart-sps", {x: [[p.step]], y: [[p.samples_per_second]]}, [0]);
    document.getElementById("kpi-step").textContent = p.step;
    document.getElementById("kpi-loss").textContent = p.loss.toFixed(4);
    document.getElementById("kpi-sps").textContent = p.samples_per_second;
    document.getElementById("kpi-staleness").textContent =
      `${p.staleness_mean == null ? "—" : p.staleness_mean.toFixed(1)} / ${p.staleness_max == null ? "—" : p.staleness_max}`;
  }

  SopLive.on("learner.metrics", extend);
  SopLive.on("version.state", (data) => {
    if (data.state === "checkpoint") {
      Plotly.extendTraces("chart-versions", {x: [[new Date().toISOString()]], y: [[data.number]]}, [0]);
    }
  });
})();
