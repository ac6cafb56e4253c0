// A robot's page: its badge and buttons follow the robot live (static/js/robot_controls.js); the tables are the
// server's, and a reconnect reloads the page.
(function () {
  "use strict";
  const box = document.getElementById("robot");
  const id = Number(box.dataset.robot);
  SopRobotControls.bind(box, () => location.reload());
  SopLive.on("robot.status", (s) => {
    if (s.robot !== id) return;
    if (s.state === "removed") location.reload(); else SopRobotControls.apply(box, s);
  });
  SopLive.on("robot.progress", (p) => { if (p.robot === id) SopRobotControls.control(box, p.control); });
  SopLive.onResync(() => location.reload());
})();
