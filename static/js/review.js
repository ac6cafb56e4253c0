// Review page: the replay video beside the episode's charts with one shared cursor (playing moves it, clicking a
// chart seeks the video), render progress polled from the server (annotators have no live socket), the claim
// kept alive while the page is open, and a key for every label action.
(function () {
  "use strict";
  const root = document.getElementById("replay");
  const video = document.getElementById("replay-video");
  const progress = document.getElementById("replay-progress");
  const message = document.getElementById("replay-message");
  const retry = document.getElementById("replay-retry");
  const stepLabel = document.getElementById("cursor-step");
  const form = document.getElementById("label-form");
  const stepInput = document.getElementById("id_failure_step");
  const notes = document.getElementById("id_notes");
  const steps = Number(root.dataset.steps);
  const csrf = form.querySelector("input[name=csrfmiddlewaretoken]").value;
  const series = JSON.parse(document.getElementById("episode-series").textContent);
  const charts = series ? window.SopEpisodeCharts.draw(series, "chart-actions", "chart-reward") : null;

  let fps = null;  // known once the video is ready
  let cursor = 0;

  function showCursor(step) {
    cursor = Math.max(0, Math.min(steps - 1, step));
    stepLabel.textContent = String(cursor);
    if (charts) charts.setCursor(cursor);
  }

  function seek(step) {
    showCursor(step);
    if (fps && video.readyState > 0) video.currentTime = Math.min(video.duration, (cursor + 0.5) / fps);
  }

  function stepFromVideo() {
    if (fps) showCursor(Math.floor(video.currentTime * fps));
  }

  function follow() {  // while playing, the cursor follows every painted frame, not only `timeupdate` (4 Hz)
    stepFromVideo();
    if (!video.paused && !video.ended) requestAnimationFrame(follow);
  }

  video.addEventListener("play", () => requestAnimationFrame(follow));
  video.addEventListener("seeked", stepFromVideo);
  video.addEventListener("timeupdate", stepFromVideo);
  if (charts) charts.onSeek(seek);

  function markFailure(step) {
    if (charts) charts.setMarker(step === null || Number.isNaN(step) ? null : step);
  }
  stepInput.addEventListener("input", () => markFailure(stepInput.value === "" ? null : Number(stepInput.value)));
  if (stepInput.value !== "") markFailure(Number(stepInput.value));

  // --- render progress ---------------------------------------------------------------------------------
  function post(url) {
    return fetch(url, {method: "POST", headers: {"X-CSRFToken": csrf}, credentials: "same-origin"});
  }

  function showState(state) {
    progress.value = state.progress || 0;
    retry.hidden = state.status !== "failed";
    progress.hidden = state.status === "failed";
    root.dataset.status = state.status;
    if (state.status === "failed") {
      message.textContent = state.error || "Rendering failed.";
      message.className = "error";
    } else if (state.status === "ready") {
      message.textContent = "";
      message.className = "";
    } else {
      message.className = "";
      message.textContent = state.status === "queued" ? "Waiting for a worker to render the replay…"
        : `Rendering the replay… ${Math.round(100 * (state.progress || 0))} %`;
    }
  }

  // 429 (this person asked for too many renders) or 503 (the render queue is full): nothing was queued; say why
  // and ask again once the server's Retry-After has passed.
  function refused(response) {
    return response.status === 429 || response.status === 503;
  }

  function showRefusal(response, body) {
    progress.hidden = true;
    retry.hidden = true;
    message.className = "error";
    message.textContent = body.error.charAt(0).toUpperCase() + body.error.slice(1) + ".";
    setTimeout(poll, 1000 * (Number(response.headers.get("Retry-After")) || 30));
  }

  function poll() {
    fetch(root.dataset.statusUrl, {credentials: "same-origin"})
      .then((response) => response.json().then((state) => {
        if (refused(response)) {
          showRefusal(response, state);
          return;
        }
        showState(state);
        if (state.status === "ready") {
          fps = state.fps;
          video.src = state.url;
          video.hidden = false;
          document.getElementById("replay-state").hidden = true;
        } else if (state.status !== "failed") {
          setTimeout(poll, 700);
        }
      }))
      .catch(() => setTimeout(poll, 3000));
  }
  retry.addEventListener("click", () => {
    retry.disabled = true;
    post(root.dataset.retryUrl).then((response) => response.json().then((state) => {
      retry.disabled = false;
      if (refused(response)) {
        showRefusal(response, state);
        return;
      }
      showState(state);
      poll();
    }));
  });
  poll();

  // --- the claim ------------------------------------------------------------------------------------------
  if (!root.dataset.held) {
    const every = Math.max(5, Number(root.dataset.claimSeconds) / 3) * 1000;
    setInterval(() => {
      post(root.dataset.claimUrl).then((response) => {
        if (response.status === 409) {
          response.json().then((body) => { message.textContent = body.error; message.className = "error"; });
        }
      });
    }, every);
  }

  // --- keys -----------------------------------------------------------------------------------------------
  function choose(groupId, key) {
    const input = document.querySelector(`#${groupId} input[data-key="${key}"]`);
    if (input && !input.disabled) {
      input.checked = true;
      return true;
    }
    return false;
  }

  function submit(id) {
    const target = document.getElementById(id);
    if (target) target.requestSubmit();
  }

  document.addEventListener("keydown", (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    // A focused button or video handles Enter / Space / arrows itself (its own click, the native controls).
    if (event.target.matches("button, video") && ["Enter", " ", "ArrowLeft", "ArrowRight"].includes(event.key)) return;
    const typing = event.target.matches("textarea, input:not([type=radio])");
    if (event.key === "Escape") {
      event.target.blur();
      return;
    }
    if (typing) {
      // Enter in the step box submits as usual; Enter in the notes is a new line.
      return;
    }
    const key = event.key.toLowerCase();
    let handled = true;
    if (event.key === " ") {
      if (video.src) {
        if (video.paused) video.play().catch(() => {});
        else video.pause();
      }
    } else if (event.key === "ArrowLeft" || event.key === "ArrowRight") {
      video.pause();
      seek(cursor + (event.key === "ArrowLeft" ? -1 : 1) * (event.shiftKey ? 10 : 1));
    } else if (key === "f") {
      stepInput.value = String(cursor);
      markFailure(cursor);
    } else if (/^[1-9]$/.test(key)) {
      handled = choose("failure-modes", key);
    } else if (key === "k" || key === "x" || key === "r") {
      handled = choose("dispositions", key);
    } else if (key === "n") {
      notes.focus();
    } else if (event.key === "Enter") {
      form.requestSubmit();
    } else if (key === "s") {
      submit("skip-form");
    } else if (key === "d") {
      submit("dismiss-form");
    } else {
      handled = false;
    }
    if (handled) event.preventDefault();
  });
})();
