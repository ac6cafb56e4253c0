"""The simulated robot's life: assignment, checkpoint, episodes, uploads, commands.

State comes from the server, never from memory of what was asked: each heartbeat's answer, each socket message
and each poll carries the whole assignment, and the robot acts on the latest one. A version is swapped only
between episodes; a pause or an abort ends the running episode within POLL_EVERY steps; a takeover hands the rest
of the running episode to the scripted expert.
"""
from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

from robot_client.api import Api, Refused, Unreachable
from robot_client.outbox import Outbox
from robot_client.policy import NumpyPolicy

log = logging.getLogger(__name__)
POLL_EVERY = 8  # steps between two looks at the latest commands (the in-process actors' figure)
BEAT_SECONDS = 1.0
IDLE_POLL_SECONDS = 2.0  # with no socket, how often an idle robot asks for its assignment


class Robot:
    def __init__(self, api: Api, state_dir: Path, tasks: list[str] | None = None, realtime_factor: float = 1.0,
                 use_socket: bool = True):
        self.api, self.state_dir, self.only_tasks = api, state_dir, tasks
        self.realtime_factor, self.use_socket = realtime_factor, use_socket
        self.outbox = Outbox(state_dir / "outbox")
        self.assignment: dict | None = None
        self.changed = threading.Event()
        self.stopping = threading.Event()
        self.policies: dict[int, NumpyPolicy] = {}
        self.episodes = 0
        self._sims: dict = {}

    # --- the assignment ----------------------------------------------------------------------------------------

    def _take(self, assignment: dict) -> None:
        self.assignment = assignment
        self.changed.set()

    def refresh(self) -> bool:
        try:
            self._take(self.api.assignment())
            return True
        except Unreachable as exc:
            log.info("no assignment (%s)", exc)
            return False

    def commands(self) -> list[str]:
        return self.assignment["commands"] if self.assignment else []

    def _listen(self, url: str, token: str) -> None:
        """The socket: every push is the whole assignment. Reconnects until the robot stops."""
        from websockets.exceptions import ConnectionClosed
        from websockets.sync.client import connect

        socket_url = url.replace("http://", "ws://").replace("https://", "wss://").rstrip("/") + "/ws/robot/"
        while not self.stopping.is_set():
            try:
                with connect(socket_url, additional_headers={"Authorization": f"Bearer {token}"},
                             open_timeout=10) as socket:
                    while not self.stopping.is_set():
                        try:
                            message = json.loads(socket.recv(timeout=1.0))
                        except TimeoutError:
                            continue
                        if message.get("event") == "assignment":
                            self._take(message["data"])
                        elif message.get("event") == "revoked":
                            log.error("this robot's token was revoked")
                            self.stopping.set()
            except (OSError, ConnectionClosed, TimeoutError) as exc:
                if getattr(getattr(exc, "rcvd", None), "code", None) == 4401:
                    log.error("the socket refused this robot's token")
                    self.stopping.set()
                    return
                log.info("robot socket down (%s); reconnecting", exc)
            except Exception as exc:
                if getattr(getattr(exc, "response", None), "status_code", None) in (401, 403):
                    # The server refuses the token at the handshake (revoked, expired): polling tells the rest.
                    log.error("the robot socket refused this robot's token; polling instead")
                    return
                log.info("robot socket refused (%s); retrying", exc)
            self.stopping.wait(2.0)

    # --- policy ------------------------------------------------------------------------------------------------

    def _policy_for(self, version: dict) -> NumpyPolicy:
        """The version's policy, downloaded and verified once (the last two are kept: an evaluation may alternate
        a candidate with the robot's own version); called only between episodes."""
        if version["number"] not in self.policies:
            bundle = self.api.download(version, self.state_dir / "checkpoints" / f"{version['sha256']}.bundle")
            self.policies = {**{k: v for k, v in list(self.policies.items())[-1:]},
                             version["number"]: NumpyPolicy.from_bundle(bundle, version["config_size"])}
            log.info("holding v%d", version["number"])
        return self.policies[version["number"]]

    def _sim(self, name: str):
        from fleet.sim.envs import make_task

        if name not in self._sims:
            self._sims[name] = make_task(name)
        return self._sims[name]

    # --- the loop ----------------------------------------------------------------------------------------------

    def run(self, url: str, token: str, max_episodes: int | None = None) -> None:
        while True:
            try:
                me = self.api.whoami()
                break
            except Unreachable as exc:
                log.info("waiting for sopweb (%s)", exc)
                if self.stopping.wait(2.0):
                    return
        log.info("robot %s (id %d) at %s", me["name"], me["id"], url)
        if self.use_socket:
            threading.Thread(target=self._listen, args=(url, token), daemon=True, name="robot-socket").start()
        self.refresh()
        while not self.stopping.is_set() and (max_episodes is None or self.episodes < max_episodes):
            self.outbox.drain(self.api)
            plan = self._next_plan()
            if plan is None:
                self._idle()
                continue
            self._run_episode(*plan)
        self.stopping.set()
        try:
            self.api.heartbeat("idle")  # the fleet tile stops showing the last episode's progress
        except (Unreachable, Refused):
            pass

    def _idle(self) -> None:
        try:
            self._take(self.api.heartbeat("idle"))
        except Unreachable:
            pass
        self.changed.clear()
        self.changed.wait(IDLE_POLL_SECONDS)

    def _next_plan(self):
        """(version number, policy, task, seed, gate, evaluation item) for the next episode, or None to idle."""
        a = self.assignment
        if a is None:
            self.refresh()
            return None
        if a["version"] is None or {"stop", "pause"} & set(a["commands"]):
            return None
        tasks = [t for t in a["tasks"] if self.only_tasks is None or t["name"] in self.only_tasks]
        if not tasks:
            return None
        work = {"kind": "online"}
        # Evaluation work first (a candidate waits for it), but not while an episode waits in the outbox: the
        # server hands a claimed item that has no episode yet to its robot again.
        if not self.outbox.pending():
            try:
                work = self.api.next_episode()
            except (Unreachable, Refused):
                pass
        item = work["item"] if work["kind"] == "evaluation" else None
        try:
            if item is not None and work["task"] in {t["name"] for t in tasks}:
                task = next(t for t in tasks if t["name"] == work["task"])
                return (work["version"]["number"], self._policy_for(work["version"]), task, work["seed"],
                        work["gate"], item)
            if item is not None:  # a task this client leaves to others (--tasks)
                self._release(item)
            policy = self._policy_for(a["version"])
        except (Unreachable, Refused) as exc:
            log.warning("cannot fetch the next episode's policy: %s", exc)
            if item is not None:
                self._release(item)
            time.sleep(1.0)
            self.refresh()
            return None
        from fleet.sim.envs import online_seed

        return a["version"]["number"], policy, tasks[self.episodes % len(tasks)], online_seed(), a["gate"], None

    def _release(self, item: int) -> None:
        """Give an evaluation item back at once (else it waits out its claim's timeout on the server)."""
        try:
            self.api.release_item(item)
        except (Unreachable, Refused) as exc:
            log.info("could not give evaluation item %d back (%s): the server takes it back after its timeout",
                     item, exc)

    def _run_episode(self, version: int, policy: NumpyPolicy, task: dict, seed: int, gate_config: dict,
                     item: int | None) -> None:
        from fleet.sim import episode_data
        from fleet.sim.actor import run_episode
        from fleet.sim.gate import Gate, GateConfig

        gate = Gate(GateConfig.from_dict(gate_config))
        sim, name = self._sim(task["name"]), task["name"]
        beat = {"last": 0.0, "polls": 0}

        def poll() -> str | None:
            beat["polls"] += 1
            now = time.monotonic()
            if now - beat["last"] >= BEAT_SECONDS:
                beat["last"] = now
                control = "operator" if gate.operator else "expert" if gate.in_control else "policy"
                try:
                    self._take(self.api.heartbeat("expert" if control != "policy" else "running", task=name,
                                                  version=version, step=(beat["polls"] - 1) * POLL_EVERY,
                                                  control=control))
                except Unreachable:
                    pass  # the episode goes on; it is uploaded later
                except Refused as exc:  # e.g. the token was revoked: finish here, keep the episode, then stop
                    log.error("heartbeat refused: %s", exc)
                    self.stopping.set()
            wanted = set(self.commands())
            if self.stopping.is_set() or {"abort", "pause"} & wanted:
                return "abort"
            if "take_over" in wanted and not gate.operator:
                return "takeover"
            return None

        started = datetime.now(timezone.utc)
        result = run_episode(sim, lambda obs: policy.select_action(obs, name), seed, gate,
                             max_steps=task["max_steps"], realtime_factor=self.realtime_factor, poll=poll,
                             poll_every=POLL_EVERY,
                             doubt=(lambda obs: policy.doubt(obs, name)) if len(policy.members) > 1 else None)
        if result.steps == 0:
            if item is not None:
                self._release(item)
            return
        outcome = result.outcome  # success, timeout or aborted: the API's own words
        params = {"task": name, "seed": seed, "outcome": outcome, "version": version,
                  **({"source": "evaluation", "item": item} if item is not None else {}),
                  "started_at": started.isoformat(), "finished_at": datetime.now(timezone.utc).isoformat(),
                  "meta": json.dumps({"takeovers": result.takeovers, "realtime_factor": self.realtime_factor,
                                      "wall_seconds": round(result.wall_seconds, 3)})}
        key = str(uuid.uuid4())
        self.outbox.put(key, params, episode_data.encode(result.arrays))
        log.info("episode %s recorded (%s, v%d, %s, %d steps)", key, name, version, outcome, result.steps)
        self.episodes += 1
        self.outbox.drain(self.api)
