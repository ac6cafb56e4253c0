// Fleet page: the table renders complete from the server; the socket only pushes status deltas.
(function () {
  "use strict";
  const table = document.getElementById("robots");
  if (!table) return;
  SopLive.on("robot.status", (data) => {
    const cell = table.querySelector(`tr[data-robot="${data.robot}"] [data-field="status"]`);
    if (!cell) return;
    cell.className = "status status-" + data.status;
    cell.textContent = data.status;
  });
})();
