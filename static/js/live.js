// The one websocket of a page. Pages subscribe with SopLive.on(event, handler); the server coalesces deltas
// into batches ({"events": [{event, data}, ...]}), each handler runs once per event, in order.
// After a disconnection deltas may have been missed: SopLive.onResync(handler) refetches a snapshot; a page
// that registers none is reloaded. "alert" events are shown on every page.
(function () {
  "use strict";
  const handlers = {};
  const resyncers = [];
  const badge = document.getElementById("live-state");
  const path = document.body.dataset.socketPath;
  let delay = 1000, wasConnected = false;

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
    p.textContent = data.message;
    box.prepend(p);
  }

  function setBadge(on) {
    if (!badge) return;
    badge.textContent = on ? "live" : "offline";
    badge.classList.toggle("on", on);
  }

  function connect() {
    const socket = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + path);
    socket.onopen = function () {
      setBadge(true); delay = 1000;
      if (wasConnected) {
        if (resyncers.length) resyncers.forEach((fn) => fn()); else location.reload();
      }
      wasConnected = true;
    };
    socket.onmessage = function (message) {
      const payload = JSON.parse(message.data);
      (payload.events || [payload]).forEach(dispatch);
    };
    socket.onclose = function (event) {
      setBadge(false);
      // The session ended (logout, deactivation, idle timeout, a password change): the page reloads, and shows
      // the login page if the session is gone. Refused at the handshake, or forbidden: retrying will not help.
      if (event.code === 4401 && wasConnected) { location.reload(); return; }
      if (event.code === 4401 || event.code === 4403) return;
      setTimeout(connect, delay);
      delay = Math.min(delay * 2, 30000);
    };
  }

  window.SopLive = {
    on(event, fn) { (handlers[event] = handlers[event] || []).push(fn); },
    onResync(fn) { resyncers.push(fn); },
  };
  window.SopLive.on("alert", showAlert);
  if (path) document.addEventListener("DOMContentLoaded", connect);
})();
