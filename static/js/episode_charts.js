// The episode's time series, shared by the episode page and the review page: the policy's actions against the
// expert's per action dimension, with intervention segments shaded by who was in control; reward and success.
// SopEpisodeCharts.draw(data, actionsId, rewardId) -> {setCursor(step), setMarker(step), onSeek(fn)}.
window.SopEpisodeCharts = (function () {
  "use strict";
  const names = ["dx", "dy", "dz", "gripper"];
  const colours = {gate: "rgba(183,121,31,0.18)", operator: "rgba(192,57,43,0.18)", annotator: "rgba(36,86,199,0.18)"};
  const config = {displayModeBar: false, responsive: true};

  function draw(data, actionsId, rewardId) {
    const steps = data.reward.map((_, i) => i);
    const segments = data.segments.map((s) => ({type: "rect", xref: "x", yref: "paper", x0: s.start_step,
                                                x1: s.end_step, y0: 0, y1: 1, line: {width: 0},
                                                fillcolor: colours[s.source] || "rgba(0,0,0,0.1)"}));
    const traces = [];
    names.forEach((name, i) => {
      traces.push({x: steps, y: data.action[i], name: `${name} taken`, mode: "lines", yaxis: `y${i + 1}`,
                   line: {color: "#2456c7"}, showlegend: i === 0, legendgroup: "taken"});
      traces.push({x: steps, y: data.expert_action[i], name: `${name} expert`, mode: "lines", yaxis: `y${i + 1}`,
                   line: {color: "#b7791f", dash: "dot"}, showlegend: i === 0, legendgroup: "expert"});
    });
    const layout = {height: 520, margin: {t: 10, r: 10, b: 40, l: 50}, shapes: segments, legend: {orientation: "h"},
                    grid: {rows: 4, columns: 1, shared_xaxes: true}, xaxis: {title: "step"}, hovermode: "x"};
    names.forEach((name, i) => { layout[`yaxis${i + 1}`] = {title: name, range: [-1.05, 1.05]}; });
    Plotly.newPlot(actionsId, traces, layout, config);
    Plotly.newPlot(rewardId, [
      {x: steps, y: data.reward, name: "reward", mode: "lines"},
      {x: steps, y: data.success, name: "success", mode: "lines", yaxis: "y2", line: {shape: "hv"}},
    ], {height: 260, margin: {t: 10, r: 50, b: 40, l: 50}, shapes: segments, xaxis: {title: "step"}, hovermode: "x",
        yaxis: {title: "reward"}, yaxis2: {overlaying: "y", side: "right", range: [-0.05, 1.05], title: "success"},
        legend: {orientation: "h"}}, config);

    // A vertical line per chart for the playback cursor and one for a marked step (where a failure began).
    let cursor = null;
    let marker = null;
    function line(step, colour, dash) {
      return {type: "line", xref: "x", yref: "paper", x0: step, x1: step, y0: 0, y1: 1,
              line: {color: colour, width: 2, dash: dash}};
    }
    function redraw() {
      const extra = [];
      if (cursor !== null) extra.push(line(cursor, "#17202b", "solid"));
      if (marker !== null) extra.push(line(marker, "#c0392b", "dash"));
      const shapes = segments.concat(extra);
      Plotly.relayout(actionsId, {shapes: shapes});
      Plotly.relayout(rewardId, {shapes: shapes});
    }
    let pending = false;
    function schedule() {  // at most one relayout per animation frame, however often the video reports time
      if (pending) return;
      pending = true;
      requestAnimationFrame(() => { pending = false; redraw(); });
    }
    return {
      setCursor(step) { if (step !== cursor) { cursor = step; schedule(); } },
      setMarker(step) { marker = step; schedule(); },
      onSeek(fn) {
        [actionsId, rewardId].forEach((id) => {
          document.getElementById(id).on("plotly_click", (event) => {
            if (event.points && event.points.length) fn(Math.round(event.points[0].x));
          });
        });
      },
    };
  }
  return {draw: draw};
})();
