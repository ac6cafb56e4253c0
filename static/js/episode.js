// Episode page: the policy's actions against the expert's, per action dimension, with the intervention
// segments shaded by who was in control; reward and success below.
(function () {
  "use strict";
  const data = JSON.parse(document.getElementById("episode-series").textContent);
  const steps = data.reward.map((_, i) => i);
  const names = ["dx", "dy", "dz", "gripper"];
  const colours = {gate: "rgba(183,121,31,0.18)", operator: "rgba(192,57,43,0.18)", annotator: "rgba(36,86,199,0.18)"};
  const shapes = data.segments.map((s) => ({type: "rect", xref: "x", yref: "paper", x0: s.start_step, x1: s.end_step,
                                            y0: 0, y1: 1, fillcolor: colours[s.source] || "rgba(0,0,0,0.1)",
                                            line: {width: 0}}));
  const traces = [];
  names.forEach((name, i) => {
    traces.push({x: steps, y: data.action[i], name: `${name} taken`, mode: "lines", yaxis: `y${i + 1}`,
                 line: {color: "#2456c7"}, showlegend: i === 0, legendgroup: "taken"});
    traces.push({x: steps, y: data.expert_action[i], name: `${name} expert`, mode: "lines", yaxis: `y${i + 1}`,
                 line: {color: "#b7791f", dash: "dot"}, showlegend: i === 0, legendgroup: "expert"});
  });
  const layout = {height: 520, margin: {t: 10, r: 10, b: 40, l: 50}, shapes: shapes, legend: {orientation: "h"},
                  grid: {rows: 4, columns: 1, shared_xaxes: true}, xaxis: {title: "step"}};
  names.forEach((name, i) => { layout[`yaxis${i + 1}`] = {title: name, range: [-1.05, 1.05]}; });
  Plotly.newPlot("chart-actions", traces, layout, {displayModeBar: false, responsive: true});
  Plotly.newPlot("chart-reward", [
    {x: steps, y: data.reward, name: "reward", mode: "lines"},
    {x: steps, y: data.success, name: "success", mode: "lines", yaxis: "y2", line: {shape: "hv"}},
  ], {height: 260, margin: {t: 10, r: 50, b: 40, l: 50}, shapes: shapes, xaxis: {title: "step"},
      yaxis: {title: "reward"}, yaxis2: {overlaying: "y", side: "right", range: [-0.05, 1.05], title: "success"},
      legend: {orientation: "h"}}, {displayModeBar: false, responsive: true});
})();
