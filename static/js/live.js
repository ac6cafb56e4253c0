// The one websocket of a page. Pages subscribe with SopLive.on(event, handler); the server coalesces deltas
// into batches ({"events": [{event, data}, ...]}), each handler runs once per event, in order.
// After a disconnection deltas may have been missed: SopLive.onResync(handler) refetches a snapshot; a page
// that registers none is reloaded. "alert" events are shown on every page.
// While Redis answers the server sends something at least every data-heartbeat-seconds (a "live.heartbeat" when
// nothing happened): after three periods without a word the badge says "reconnecting"; when words flow again the
// page resynchronises (what was published meanwhile was lost); after ten periods the socket is replaced.
(function () {
  "use strict";
  const handlers = {};
  const resyncers = [];
  const badge = document.getElementById("live-state");
  const path = document.body.dataset.socketPath;
  const beat = parseFloat(document.body.dataset.heartbeatSeconds || "0") * 1000;  // 0: the server sends none
  const SILENT_MS = 3 * beat, DEAD_MS = 10 * beat;
  let delay = 1000, wasConnected = false, lastHeard = 0, silent = false, current = null;

  function dispatch(item) {
    (handlers[item.event] || []).forEach((fn) => {
      try { fn(item.data); } catch (err) { console.error(err); }
    });
  }

  function showAlert(data) {
    const box = document.getElementById("alerts");
    if (!box) return;
    const p = document.createElement("p");
    p.className = "message alert " + (data.level || "error");
    if (data.alert) p.dataset.alert = data.alert;
    p.textContent = data.message;
    box.prepend(p);
  }

  // An alert rule's incident resolved itself: it stays shown until acknowledged, marked resolved.
  function markResolved(data) {
    const row = document.querySelector('#alerts [data-alert="' + data.alert + '"]');
    if (!row || row.querySelector(".resolved")) return;
    const mark = document.createElement("span");
    mark.className = "resolved";
    mark.textContent = "resolved";
    row.append(mark);
  }

  // "live", "reconnecting" (no word for a while, or the socket is being re-opened) or "offline" (refused).
  function setBadge(state) {
    if (!badge) return;
    badge.textContent = state;
    badge.classList.toggle("on", state === "live");
    badge.classList.toggle("waiting", state === "reconnecting");
  }

  function resync() {
    if (resyncers.length) resyncers.forEach((fn) => fn()); else location.reload();
  }

  function heard() {
    lastHeard = Date.now();
    if (silent) { silent = false; setBadge("live"); resync(); }
  }

  setInterval(function () {
    if (!beat || !current || current.readyState !== WebSocket.OPEN) return;
    const quiet = Date.now() - lastHeard;
    if (quiet > DEAD_MS) { current.close(); return; }  // onclose reconnects
    if (quiet > SILENT_MS && !silent) { silent = true; setBadge("reconnecting"); }
  }, 1000);

  function connect() {
    const socket = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + path);
    current = socket;
    socket.onopen = function () {
      setBadge("live"); delay = 1000; lastHeard = Date.now(); silent = false;
      if (wasConnected) resync();
      wasConnected = true;
    };
    socket.onmessage = function (message) {
      heard();
      const payload = JSON.parse(message.data);
      (payload.events || [payload]).forEach(dispatch);
    };
    socket.onclose = function (event) {
      current = null;
      // The session ended (logout, deactivation, idle timeout, a password change): the page reloads, and shows
      // the login page if the session is gone. Refused at the handshake, or forbidden: retrying will not help.
      if (event.code === 4401 && wasConnected) { location.reload(); return; }
      if (event.code === 4401 || event.code === 4403) { setBadge("offline"); return; }
      setBadge("reconnecting");
      // Back-off with jitter, so the pages of a whole control room do not all come back in the same instant.
      setTimeout(connect, delay * (0.5 + Math.random() / 2));
      delay = Math.min(delay * 2, 30000);
    };
  }

  window.SopLive = {
    on(event, fn) { (handlers[event] = handlers[event] || []).push(fn); },
    onResync(fn) { resyncers.push(fn); },
  };
  window.SopLive.on("alert", showAlert);
  window.SopLive.on("alert.resolved", markResolved);
  if (path) document.addEventListener("DOMContentLoaded", connect);
})();
