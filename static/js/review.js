// Review page: the replay player above the episode's charts with one shared cursor on the episode's steps (playing
// moves it; a chart click, the timeline or a step key moves it and seeks the video), playback speed, render
// progress polled from the server (annotators have no live socket), the claim kept alive while the page is open,
// and a key for every label action.
(function () {
  "use strict";
  const root = document.getElementById("replay");
  const video = document.getElementById("replay-video");
  const progress = document.getElementById("replay-progress");
  const message = document.getElementById("replay-message");
  const retry = document.getElementById("replay-retry");
  const stepLabel = document.getElementById("cursor-step");
  const frameLabel = document.getElementById("cursor-frame");
  const timeline = document.getElementById("replay-timeline");
  const playButton = document.getElementById("replay-play");
  const speed = document.getElementById("replay-speed");
  const form = document.getElementById("label-form");
  const stepInput = document.getElementById("id_failure_step");
  const notes = document.getElementById("id_notes");
  const steps = Number(root.dataset.steps);
  const csrf = form.querySelector("input[name=csrfmiddlewaretoken]").value;
  const series = JSON.parse(document.getElementById("episode-series").textContent);
  const charts = series ? window.SopEpisodeCharts.draw(series, "chart-actions", "chart-reward") : null;

  // The video's frame k shows step k * stride from time k / fps (the server says both; replays from before strides
  // drew every step at 80 fps). The cursor is a step: it may rest on a step between two drawn ones, and the
  // picture is then the drawn step before it.
  let fps = null;  // known once the video is ready
  let stride = 1;
  let cursor = 0;

  function frameOf(step) {
    return Math.floor(step / stride);
  }

  function showCursor(step) {
    cursor = Math.max(0, Math.min(steps - 1, step));
    stepLabel.textContent = String(cursor);
    timeline.value = String(cursor);
    const drawn = frameOf(cursor) * stride;
    frameLabel.textContent = fps && drawn !== cursor ? `(the picture is step ${drawn})` : "";
    if (charts) charts.setCursor(cursor);
  }

  function seek(step) {
    showCursor(step);
    if (fps && video.readyState > 0) video.currentTime = Math.min(video.duration, (frameOf(cursor) + 0.5) / fps);
  }

  function stepFromVideo() {
    if (!fps) return;
    const frame = Math.floor(video.currentTime * fps);
    if (frame !== frameOf(cursor)) showCursor(frame * stride);
  }

  function follow() {  // while playing, the cursor follows every painted frame, not only `timeupdate` (4 Hz)
    stepFromVideo();
    if (!video.paused && !video.ended) requestAnimationFrame(follow);
  }

  function togglePlay() {
    if (!video.src) return;
    if (video.paused) video.play().catch(() => {});
    else video.pause();
  }

  function stepBy(delta) {
    video.pause();
    seek(cursor + delta);
  }

  // Playback speed: 1x is the robot's own pace whatever the stride; the choice is kept from episode to episode.
  const speeds = Array.from(speed.options, (option) => Number(option.value));
  function setSpeed(rate) {
    speed.value = String(rate);
    video.defaultPlaybackRate = rate;  // a new src starts at the default rate
    video.playbackRate = rate;
    try { localStorage.setItem("sopweb.replaySpeed", String(rate)); } catch (e) { /* storage off: this page only */ }
  }
  function changeSpeed(direction) {
    const at = speeds.indexOf(Number(speed.value));
    setSpeed(speeds[Math.max(0, Math.min(speeds.length - 1, at + direction))]);
  }
  let saved = null;
  try { saved = Number(localStorage.getItem("sopweb.replaySpeed")); } catch (e) { /* storage off */ }
  setSpeed(speeds.includes(saved) ? saved : 1);
  speed.addEventListener("change", () => {
    setSpeed(Number(speed.value));
    speed.blur();  // the keys are the page's again
  });

  video.addEventListener("play", () => {
    playButton.textContent = "Pause";
    requestAnimationFrame(follow);
  });
  video.addEventListener("pause", () => { playButton.textContent = "Play"; });
  video.addEventListener("loadedmetadata", () => seek(cursor));  // where the annotator stepped while it rendered
  video.addEventListener("seeked", stepFromVideo);
  video.addEventListener("timeupdate", stepFromVideo);
  video.addEventListener("click", togglePlay);
  playButton.addEventListener("click", togglePlay);
  document.getElementById("replay-back").addEventListener("click", () => stepBy(-1));
  document.getElementById("replay-forward").addEventListener("click", () => stepBy(1));
  // A click on a player button leaves the focus where it was, so Space and the arrows stay the page's keys.
  for (const button of document.querySelectorAll("#player button")) {
    button.addEventListener("mousedown", (event) => event.preventDefault());
  }
  timeline.addEventListener("input", () => {
    video.pause();
    seek(Number(timeline.value));
  });
  if (charts) charts.onSeek(seek);

  function markFailure(step) {
    if (charts) charts.setMarker(step === null || Number.isNaN(step) ? null : step);
  }
  stepInput.addEventListener("input", () => {
    const step = stepInput.value === "" ? null : Number(stepInput.value);
    markFailure(step);
    if (step !== null && Number.isInteger(step) && step >= 0 && step < steps) {  // typing a step shows it
      video.pause();
      seek(step);
    }
  });
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
          stride = state.stride || 1;
          video.src = state.url;
          playButton.disabled = false;
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
    // A focused button clicks itself on Enter / Space.
    if (event.target.matches("button") && ["Enter", " "].includes(event.key)) return;
    // The timeline's arrows are the page's step keys (the same steps); the other keys work there too.
    const typing = event.target.matches("textarea, input:not([type=radio]):not([type=range])");
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
      togglePlay();
    } else if (event.key === "ArrowLeft" || event.key === "ArrowRight") {
      stepBy((event.key === "ArrowLeft" ? -1 : 1) * (event.shiftKey ? 10 : 1));
    } else if (event.key === "Home" || event.key === "End") {
      stepBy(event.key === "Home" ? -steps : steps);
    } else if (event.key === "[" || event.key === "]") {
      changeSpeed(event.key === "[" ? -1 : 1);
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
