// Rollout pages: curves drawn from the page's data; decisions, mode changes, evaluation progress and canary verdicts
// arrive over the page's socket (static/js/live.js). A decision or a new verdict refetches the page — unless the
// user is typing a reason, then a notice asks them to reload when ready.
(function () {
  "use strict";
  const curvesEl = document.getElementById("version-curves");
  const curves = curvesEl ? JSON.parse(curvesEl.textContent) : [];
  if (curves.length && window.Plotly) {
    const steps = curves.map((p) => p.step);
    // Plotly 2+ takes titles as {text}: a bare string is ignored (the charts were drawn without any).
    const layout = (id, y, extra) => Object.assign({
      title: {text: document.getElementById(id).dataset.title || "", font: {size: 14}},
      margin: {t: 40, r: 10, b: 80, l: 60}, height: 320,
      xaxis: {title: {text: "learner step"}}, yaxis: {title: {text: y}},
      legend: {orientation: "h", x: 0, y: -0.3, yanchor: "top"},  // below the axis title, not over it
    }, extra || {});
    const config = {displayModeBar: false, responsive: true};
    Plotly.newPlot("chart-loss", [{x: steps, y: curves.map((p) => p.loss), name: "loss", mode: "lines"}],
                   layout("chart-loss", "training loss"), config);
    const tasks = Object.keys(curves[curves.length - 1].w_on).sort();
    Plotly.newPlot("chart-share", tasks.map((t) => ({x: steps, y: curves.map((p) => p.w_on[t]), name: t,
                                                     mode: "lines"})),
                   layout("chart-share", "ω_on", {yaxis: {range: [0, 1], title: {text: "online share ω_on"}}}),
                   config);
  }
  if (!window.SopLive) return;

  let pending = null;
  function refresh() {
    const typing = Array.from(document.querySelectorAll("textarea, input[name=reason]")).some((el) => el.value);
    if (typing) {
      if (!document.getElementById("stale-notice")) {
        const p = document.createElement("p");
        p.id = "stale-notice";
        p.className = "message warning";
        p.textContent = "This version's state changed since the page was loaded: reload before deciding.";
        document.getElementById("alerts").prepend(p);
      }
      return;
    }
    clearTimeout(pending);
    pending = setTimeout(() => location.reload(), 500);
  }

  SopLive.on("rollout.decision", refresh);
  SopLive.on("rollout.mode", refresh);  // the mode or the freeze changed: the decisions offered change with it
  SopLive.on("version.state", (data) => {
    const shown = document.getElementById("version-state");
    if (!shown || String(data.version) === shown.dataset.version) refresh();
  });
  SopLive.on("evaluation.progress", (data) => {
    // Each counter lists the versions its evaluation runs (the candidate and the deployed one).
    document.querySelectorAll("[data-eval-versions]").forEach((el) => {
      if (el.dataset.evalVersions.split(",").includes(String(data.version))) {
        el.textContent = String(Number(el.textContent) + 1);
      }
    });
  });
  SopLive.on("canary.analysis", (data) => {
    const verdict = document.getElementById("canary-verdict");
    if (verdict && verdict.dataset.verdict !== data.verdict) refresh();
  });
  SopLive.onResync(refresh);
})();
