"""The dashboards of bench/soak.py, in a process of their own (Django-free): one asyncio loop holding one fleet page
per person — its socket on /ws/fleet/, read message by message as live.js does, and the page or its snapshot
fetched every POLL_SECONDS, alternately — and counting what went wrong.

    python bench/_viewers.py HOST:PORT COOKIES_FILE   (COOKIES_FILE: a JSON list of Cookie header values)

One line each way on stdin / stdout: it prints READY once every socket is open (or FAILED and the reason); then
"watch" says the robots run (from now on a quiet socket is suspect), "drain" that they are stopping (no longer),
and "stop N" waits up to STOP_WAIT seconds for every socket that never dropped to have heard N episodes, closes
the sockets and prints one JSON line: the counts, and per episode id how many of those sockets heard it.

What counts as wrong: a socket the server closed or that broke (the browser would reconnect after a second and
refetch the snapshot: so does this), a handshake that failed, a socket silent for SILENCE_SECONDS while robots run
(16 running robots change their progress every second, which the server forwards about once a second), an HTTP
answer other than 200 or no answer within HTTP_TIMEOUT.
"""
from __future__ import annotations

import asyncio
import json
import sys
import time

import httpx
import websockets

POLL_SECONDS = 30.0
SILENCE_SECONDS = 15.0
HTTP_TIMEOUT = 30.0
STOP_WAIT = 60.0
PAGES = ("/fleet/", "/fleet/snapshot.json")


class Viewer:
    def __init__(self, index: int, cookie: str):
        self.index, self.cookie = index, cookie
        self.connected = asyncio.Event()
        self.messages = 0
        self.episodes: set[int] = set()
        self.repeated = 0  # an episode heard twice on the same socket
        self.drops: list[str] = []
        self.last_message: float | None = None  # None until the first message: robots may not have started yet
        self.silent = False
        self.longest_gap = 0.0


class Viewers:
    def __init__(self, address: str, cookies: list[str]):
        self.address = address
        self.viewers = [Viewer(i, cookie) for i, cookie in enumerate(cookies)]
        self.stopping = False
        self.watching = False  # between "watch" and "drain": the robots run, so every socket hears something
        self.failures: dict[str, list[str]] = {"connect": [], "silence": [], "http": []}
        self.http_ok = 0
        self.resyncs: set[asyncio.Task] = set()
        self.http = httpx.AsyncClient(base_url=f"http://{address}", timeout=HTTP_TIMEOUT)

    async def watch(self, viewer: Viewer) -> None:
        """The page's socket, reconnected as live.js does (after 1 s, doubling to 30 s) with a snapshot refetch."""
        headers = {"Cookie": viewer.cookie, "Origin": f"http://{self.address}"}
        delay = 1.0
        while not self.stopping:
            try:
                async with websockets.connect(f"ws://{self.address}/ws/fleet/", additional_headers=headers,
                                              open_timeout=HTTP_TIMEOUT, ping_interval=None, max_size=None) as ws:
                    if viewer.connected.is_set():  # a reconnection: the page refetches what it may have missed
                        resync = asyncio.create_task(self.get(viewer, "/fleet/snapshot.json"))
                        self.resyncs.add(resync)  # the loop holds tasks only weakly
                        resync.add_done_callback(self.resyncs.discard)
                    viewer.connected.set()
                    delay = 1.0
                    async for raw in ws:
                        self.heard(viewer, raw)
                    code = ws.close_code
            except websockets.ConnectionClosed as exc:
                code = exc.rcvd.code if exc.rcvd else f"no close frame ({exc!r})"
            except (OSError, TimeoutError, websockets.InvalidHandshake) as exc:
                if not self.stopping:
                    self.failures["connect"].append(f"viewer {viewer.index}: {exc!r}")
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
                continue
            if not self.stopping:
                viewer.drops.append(f"viewer {viewer.index}: closed ({code}) at {time.strftime('%H:%M:%S')}")
                viewer.last_message = None
                await asyncio.sleep(delay)

    def heard(self, viewer: Viewer, raw: str) -> None:
        now = time.monotonic()
        if viewer.last_message is not None and self.watching:
            viewer.longest_gap = max(viewer.longest_gap, now - viewer.last_message)
        viewer.last_message, viewer.silent = now, False
        viewer.messages += 1
        for item in json.loads(raw).get("events", []):
            if item.get("event") == "episode.finished":
                episode = item["data"]["episode"]
                if episode in viewer.episodes:
                    viewer.repeated += 1
                viewer.episodes.add(episode)

    async def poll(self, viewer: Viewer) -> None:
        """The fleet page, then its snapshot, then the page... every POLL_SECONDS, staggered across viewers."""
        await asyncio.sleep(POLL_SECONDS * viewer.index / len(self.viewers))
        for turn in range(10**9):
            await self.get(viewer, PAGES[turn % len(PAGES)])
            await asyncio.sleep(POLL_SECONDS)

    async def get(self, viewer: Viewer, path: str) -> None:
        try:
            response = await self.http.get(path, headers={"Cookie": viewer.cookie})
        except httpx.HTTPError as exc:
            if not self.stopping:
                self.failures["http"].append(f"GET {path}: {exc!r}")
            return
        if response.status_code == 200:
            self.http_ok += 1
        else:
            self.failures["http"].append(f"GET {path}: {response.status_code}")

    async def watchdog(self) -> None:
        """A socket that hears nothing for SILENCE_SECONDS while robots run is counted once per silence."""
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            for viewer in self.viewers:
                quiet = viewer.last_message is not None and now - viewer.last_message > SILENCE_SECONDS
                if quiet and not viewer.silent and self.watching:
                    viewer.silent = True
                    self.failures["silence"].append(f"viewer {viewer.index}: silent for {SILENCE_SECONDS:g} s "
                                                    f"at {time.strftime('%H:%M:%S')}")

    def summary(self) -> dict:
        steady = [v for v in self.viewers if not v.drops]
        heard: dict[int, int] = {}
        for viewer in steady:
            for episode in viewer.episodes:
                heard[episode] = heard.get(episode, 0) + 1
        return {
            "viewers": len(self.viewers), "steady": len(steady), "heard": heard,
            "messages": sum(v.messages for v in self.viewers), "http_ok": self.http_ok,
            "repeated": sum(v.repeated for v in self.viewers),
            "longest_gap": max((v.longest_gap for v in self.viewers), default=0.0),
            "drops": [drop for v in self.viewers for drop in v.drops], **self.failures,
        }


async def main() -> None:
    address, cookies_file = sys.argv[1], sys.argv[2]
    with open(cookies_file) as f:
        viewers = Viewers(address, json.load(f))
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    # As a browser does: the page, then its socket (fifty people opening the page at once).
    await asyncio.gather(*(viewers.get(viewer, PAGES[0]) for viewer in viewers.viewers))
    watchers = [asyncio.create_task(viewers.watch(v)) for v in viewers.viewers]
    try:
        await asyncio.wait_for(asyncio.gather(*(v.connected.wait() for v in viewers.viewers)), 120)
    except TimeoutError:
        print(f"FAILED {sum(v.connected.is_set() for v in viewers.viewers)} of {len(viewers.viewers)} sockets "
              f"connected in 120 s: {viewers.failures['connect'][:3]}", flush=True)
        return
    background = [asyncio.create_task(viewers.poll(v)) for v in viewers.viewers]
    background.append(asyncio.create_task(viewers.watchdog()))
    print("READY", flush=True)
    expected = 0
    while line := (await stdin.readline()).decode().strip():
        if line in ("watch", "drain"):
            viewers.watching = line == "watch"
            for viewer in viewers.viewers:
                viewer.last_message = time.monotonic()  # a quiet spell counts from here
        elif line.startswith("stop"):
            expected = int(line.split()[1])
            break
    deadline = time.monotonic() + STOP_WAIT
    while time.monotonic() < deadline and any(len(v.episodes) < expected for v in viewers.viewers if not v.drops):
        await asyncio.sleep(0.2)
    viewers.stopping = True
    for task in background + watchers:
        task.cancel()
    await asyncio.gather(*background, *watchers, return_exceptions=True)
    await viewers.http.aclose()
    print(json.dumps(viewers.summary()), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
