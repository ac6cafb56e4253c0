// Export page: polls the job's state until it is ready (then shows the download link) or failed.
(function () {
  "use strict";
  const root = document.getElementById("export");
  const progress = document.getElementById("export-progress");
  const message = document.getElementById("export-message");
  const download = document.getElementById("export-download");

  function sizeText(bytes) {
    if (bytes === null || bytes === undefined) return "";
    const units = ["bytes", "KB", "MB", "GB"];
    let value = bytes, unit = 0;
    while (value >= 1024 && unit < units.length - 1) { value /= 1024; unit += 1; }
    return `${unit ? value.toFixed(1) : value} ${units[unit]}`;
  }

  function show(state) {
    root.dataset.status = state.status;
    progress.value = state.progress || 0;
    progress.hidden = state.status === "failed" || state.status === "expired";
    download.hidden = state.status !== "ready";
    message.className = state.status === "failed" ? "error" : "";
    if (state.status === "queued") {
      message.textContent = "Waiting for a worker…";
    } else if (state.status === "running") {
      message.textContent = `Exporting ${state.episodes} episodes… ${Math.round(100 * (state.progress || 0))} %`;
    } else if (state.status === "ready") {
      download.href = state.download_url;
      message.textContent = `${state.episodes} episodes, ${sizeText(state.size)}.`;
    } else if (state.status === "failed") {
      message.textContent = state.error || "The export failed.";
    }
  }

  function poll() {
    fetch(root.dataset.statusUrl, {credentials: "same-origin"})
      .then((response) => {
        if (!response.ok) throw new Error(String(response.status));
        return response.json();
      })
      .then((state) => {
        show(state);
        if (state.status === "queued" || state.status === "running") setTimeout(poll, 1000);
      })
      .catch(() => setTimeout(poll, 5000));
  }

  const initial = JSON.parse(document.getElementById("export-state").textContent);
  if (initial.status === "queued" || initial.status === "running") poll();
})();
