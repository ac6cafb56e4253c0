// A robot's state badge and command buttons, shared by the fleet page's tiles and a robot's page. The server
// decides what each state allows (fleet.models.Robot.refusal): a new state, whether a command's answer or a
// "robot.status" event, carries its label and its allowed commands, and this applies it. Pressing a button posts
// its form (with the reason) and applies the answer at once; a refusal says why and shows the state as it is.
(function () {
  "use strict";
  const labelsNode = document.getElementById("robot-state-labels");
  const labels = labelsNode ? JSON.parse(labelsNode.textContent) : {};
  const RUNNING = ["policy", "expert"];

  function setBadge(box, state, label) {
    box.dataset.state = state;
    const badge = box.querySelector('[data-field="status"]');
    if (badge) { badge.className = "status state-" + state; badge.textContent = label || labels[state] || state; }
  }

  function apply(box, s) {
    setBadge(box, s.state, s.label);
    const note = box.querySelector('[data-field="note"]');
    if (note) note.hidden = !(s.paused && s.state === "stopped");
    if (s.commands) {
      box.querySelectorAll("[data-command]").forEach((b) => { b.hidden = !s.commands.includes(b.dataset.command); });
    }
  }

  // A running episode's progress says whether the policy or the gate's expert has control: they trade it without
  // an event (telemetry). Progress never sets or clears an operator's takeover, which only the server's events do:
  // a report can predate the takeover the server has accepted.
  function control(box, who) {
    if (RUNNING.includes(box.dataset.state) && RUNNING.includes(who) && who !== box.dataset.state) {
      setBadge(box, who);
    }
  }

  function say(box, text, failed) {
    const el = box.querySelector('[data-field="message"]');
    if (!el) return;
    el.textContent = text;
    el.classList.toggle("error", !!failed);
  }

  function answer(response) {
    const json = (response.headers.get("Content-Type") || "").includes("application/json");
    return json ? response.json().then((data) => ({ok: response.ok, data}))
      : Promise.resolve({ok: false, data: {error: "Refused (" + response.status + ")."}});
  }

  function bind(box, onRemoved) {
    const form = box && box.querySelector("form[data-controls]");
    if (!form) return;
    form.addEventListener("submit", (event) => {
      const button = event.submitter;
      if (!button || !button.dataset.command) return;
      event.preventDefault();
      const buttons = form.querySelectorAll("button");
      buttons.forEach((b) => { b.disabled = true; });
      fetch(button.formAction, {method: "POST", body: new FormData(form), credentials: "same-origin",
                                headers: {Accept: "application/json"}})
        .then(answer)
        .then(({ok, data}) => {
          if (data.robot) apply(box, data.robot);
          say(box, ok ? data.message : data.error, !ok);
          if (ok) form.querySelector('[name="reason"]').value = "";
          if (data.robot && data.robot.state === "removed" && onRemoved) onRemoved(box);
        })
        .catch(() => say(box, "No answer from the server: the command may not have reached it.", true))
        .finally(() => buttons.forEach((b) => { b.disabled = false; }));
    });
  }

  window.SopRobotControls = {apply, control, bind};
})();
