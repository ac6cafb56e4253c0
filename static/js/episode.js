// Episode page: the episode's time series (static/js/episode_charts.js).
(function () {
  "use strict";
  const data = JSON.parse(document.getElementById("episode-series").textContent);
  window.SopEpisodeCharts.draw(data, "chart-actions", "chart-reward");
})();
