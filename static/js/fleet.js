// Fleet page: the table renders complete from the server; the socket only pushes status deltas.
(function () {
  "use strict";
  const table = document.getElementById("robots");
  const badge = document.getElementById("live-state");
  if (!table) return;
  const url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + table.dataset.socketPath;
  let delay = 1000;
  let wasConnected = false;

  function setStatus(robotId, status, label) {
    const cell = table.querySelector(`tr[data-robot="${robotId}"] [data-field="status"]`);
    if (!cell) return;
    cell.className = "status status-" + status;
    cell.textContent = label || status;
  }

  function connect() {
    const socket = new WebSocket(url);
    socket.onopen = function () {
      // Deltas may have been missed while disconnected: refetch the snapshot (the page) on reconnect.
      if (wasConnected) { location.reload(); return; }
      wasConnected = true;
      badge.textContent = "live"; badge.classList.add("on"); delay = 1000;
    };
    socket.onmessage = function (message) {
      const payload = JSON.parse(message.data);
      if (payload.event === "robot.status") setStatus(payload.data.robot, payload.data.status);
    };
    socket.onclose = function (event) {
      badge.textContent = "offline"; badge.classList.remove("on");
      if (event.code === 4401 || event.code === 4403) return;  // not allowed: retrying will not help
      setTimeout(connect, delay);
      delay = Math.min(delay * 2, 30000);
    };
  }
  connect();
})();
