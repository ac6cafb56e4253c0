"""Hundreds of malformed episode uploads over HTTP against the real web process: each gets a 4xx with a clear message,
nothing is stored, no request errors on the server, and the server serves the next good upload."""
from __future__ import annotations

import io
import pickle
import struct
import uuid
import zipfile
from datetime import timedelta

import numpy as np
import pytest
from django.utils import timezone

from fleet.models import Episode
from fleet.sim import episode_data
from tests.factories import TASK_NAMES, make_arrays
from tests.test_gateway import api, episode_params, remote_robot

STEPS = 60
GOOD = make_arrays(STEPS)


def npz(arrays: dict, compress: bool = True) -> bytes:
    """A .npz written by numpy itself (not the product's encoder), so the corpus does not share its assumptions."""
    buffer = io.BytesIO()
    (np.savez_compressed if compress else np.savez)(buffer, **arrays)
    return buffer.getvalue()


def changed(**replace) -> dict:
    arrays = {name: array.copy() for name, array in GOOD.items()}
    for name, value in replace.items():
        if value is None:
            arrays.pop(name)
        else:
            arrays[name] = value
    return arrays


def deflate_bomb(inflated: int) -> bytes:
    """A zip whose one member inflates to `inflated` bytes of zeros from a few hundred kilobytes."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open("obs.npy", "w", force_zip64=True) as member:
            chunk = bytes(1 << 20)
            for _ in range(inflated >> 20):
                member.write(chunk)
    return buffer.getvalue()


def pickled_member() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, array in GOOD.items():
            data = io.BytesIO()
            np.save(data, array if name != "obs" else np.array([{"evil": True}] * STEPS, dtype=object),
                    allow_pickle=True)
            archive.writestr(f"{name}.npy", data.getvalue())
    return buffer.getvalue()


def corpus() -> list[tuple[str, dict, bytes]]:
    """(what, extra query parameters, body): every entry must be refused."""
    good = episode_data.encode(GOOD)
    rng = np.random.default_rng(7)
    cases: list[tuple[str, dict, bytes]] = []
    for cut in np.linspace(1, len(good) - 1, 40).astype(int):
        cases.append((f"truncated at {cut}", {}, good[:cut]))
    # A flipped byte in a member's data (a flip in a header's date field, say, changes nothing that matters).
    members = zipfile.ZipFile(io.BytesIO(good)).infolist()
    for i in range(30):
        member = members[i % len(members)]
        start = member.header_offset + 30 + len(member.filename) + len(member.extra)
        # Not in a deflated member's last bytes: bits after its final block are padding, and flipping those changes
        # nothing either.
        position = start + int(rng.integers(0, max(1, int(member.compress_size * 0.8))))
        flipped = bytearray(good)
        flipped[position] ^= 0xFF
        cases.append((f"byte {position} of {member.filename} flipped", {}, bytes(flipped)))
    for name, array in GOOD.items():
        wrong = np.float64 if array.dtype != np.float64 else np.float32
        cases.append((f"{name} as {np.dtype(wrong)}", {}, npz(changed(**{name: array.astype(wrong)}))))
        cases.append((f"{name} as int32", {}, npz(changed(**{name: np.zeros(array.shape, np.int32)}))))
        cases.append((f"{name} missing", {}, npz(changed(**{name: None}))))
        cases.append((f"{name} one step short", {}, npz(changed(**{name: array[:-1]}))))
        cases.append((f"{name} with an extra axis", {}, npz(changed(**{name: array[..., None]}))))
        if array.ndim == 2 and name not in ("qpos", "qvel"):  # the simulator state's width is the task's model's
            cases.append((f"{name} one column short", {}, npz(changed(**{name: array[:, :-1]}))))
        if array.dtype == np.float32:
            for bad in (np.nan, np.inf, -np.inf):
                broken = array.copy()
                broken[len(broken) // 2] = bad
                cases.append((f"{name} holding {bad}", {}, npz(changed(**{name: broken}))))
    for extra in ("evil", "obs2", "__init__", "qpos_backup", "x" * 200):
        cases.append((f"extra array {extra[:20]}", {}, npz(changed(**{extra: np.zeros(STEPS, np.float32)}))))
    cases.append(("a pickled object array", {}, pickled_member()))
    cases.append(("a pickle instead of a zip", {}, pickle.dumps(GOOD)))
    cases.append(("a deflate bomb of 256 MB", {}, deflate_bomb(256 << 20)))
    cases.append(("a deflate bomb of 80 MB", {}, deflate_bomb(80 << 20)))
    long = make_arrays(2100)
    cases.append(("2100 steps", {}, npz(long)))
    cases.append(("121 steps (over the task's 120)", {}, npz(make_arrays(121))))
    cases.append(("zero steps", {}, npz({name: array[:0] for name, array in GOOD.items()})))
    annotated = changed()
    annotated["intervention_source"][3:9] = 3
    cases.append(("annotator segments", {}, npz(annotated)))
    unknown = changed()
    unknown["intervention_source"][3:9] = 9
    cases.append(("an unknown intervention source", {}, npz(unknown)))
    cases.append(("success flags against the outcome", {"outcome": "success"}, npz(GOOD)))
    for seed in (2**63, -(2**63) - 1, 10**30, "abc", "1.5", ""):
        cases.append((f"seed {str(seed)[:12]}", {"seed": seed}, good))
    for field, value in [("outcome", "won"), ("task", "make-coffee-v3"), ("task", ""), ("version", "v1"),
                         ("version", -1), ("started_at", "yesterday"), ("finished_at", "2020-13-45T00:00:00"),
                         ("source", "annotator"), ("meta", "[1, 2]"), ("meta", "{not json"),
                         ("meta", '{"x": "' + "y" * 9000 + '"}')]:
        cases.append((f"{field}={str(value)[:20]}", {field: value}, good))
    for field, value in [("meta", "[" * 5000), ("meta", '{"a": "\\u0000"}'), ("meta", '{"a": "\\ud800"}'),
                         ("started_at", "2026-12-02T10:00:00"), ("started_at", "0001-01-01T00:00:00Z"),
                         ("task", "shelf-place-v3\x00")]:
        cases.append((f"{field}={value[:16]!r}", {field: value}, good))
    cases.append(("a .npy header with an unknown dtype", {},
                  _with_obs_header(lambda header: header.replace(b"'<f4'", b"'q9'"))))
    cases.append(("a .npy header with a 25-digit shape", {},
                  _with_obs_header(lambda header: header.replace(b"(60, 39)", b"(9999999999999999999999999, 39)"))))
    cases.append(("a member that inflates past its declared size", {}, _lying_sizes(good)))
    now = timezone.now()
    cases.append(("finished before it started", {"started_at": now.isoformat(),
                                                  "finished_at": (now - timedelta(hours=1)).isoformat()}, good))
    for i in range(40):
        cases.append((f"random bytes {i}", {}, rng.bytes(int(rng.integers(1, 5000)))))
    cases += [("an empty body", {}, b""), ("JSON", {}, b'{"obs": [1, 2, 3]}'), ("text", {}, b"hello robot"),
              ("a zip of nothing", {}, npz({})), ("a zip with a directory entry", {}, _directory_zip()),
              ("a lying zip64 header", {}, _lying_sizes(good))]
    return cases


def _with_obs_header(edit) -> bytes:
    """GOOD written by numpy with the obs member's .npy header text passed through `edit` (stored members, so the
    header can be rewritten; its length field and padding follow the new text)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, array in GOOD.items():
            raw = io.BytesIO()
            np.save(raw, array)
            data = raw.getvalue()
            if name == "obs":
                length = struct.unpack_from("<H", data, 8)[0]
                header = edit(data[10:10 + length]).rstrip(b" \n")
                header += b" " * (-(10 + len(header) + 1) % 64) + b"\n"
                data = data[:8] + struct.pack("<H", len(header)) + header + data[10 + length:]
            archive.writestr(f"{name}.npy", data)
    return buffer.getvalue()


def _directory_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("obs.npy/", b"")
    return buffer.getvalue()


def _lying_sizes(good: bytes) -> bytes:
    """The product's own payload with every central-directory entry claiming a tiny inflated size."""
    data = bytearray(good)
    start = data.rfind(b"PK\x05\x06")
    directory = struct.unpack_from("<I", data, start + 16)[0]
    position = directory
    while data[position:position + 4] == b"PK\x01\x02":
        struct.pack_into("<I", data, position + 24, 7)
        name_length, extra, comment = struct.unpack_from("<HHH", data, position + 28)
        position += 46 + name_length + extra + comment
    return bytes(data)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_two_hundred_malformed_uploads_are_refused_with_reasons_and_the_server_keeps_serving(
        start_web, tasks, olivia):
    from governance.decisions import deploy_to_fleet
    from tests.conftest import publish_random_policy

    version = publish_random_policy(1, TASK_NAMES)
    deploy_to_fleet(version, reason="base")
    robot, token = remote_robot("fuzzed", tasks, olivia)
    server = start_web(API_RATE_LIMIT=100_000)
    cases = corpus()
    assert len(cases) >= 200
    with api(server.address, token) as http:
        for what, extra, body in cases:
            response = http.put(f"/api/v1/episodes/{uuid.uuid4()}", params=episode_params(1, **extra),
                                content=body)
            assert 400 <= response.status_code < 500 and response.status_code not in (401, 403), \
                (what, response.status_code, response.text[:300])
            error = response.json()
            assert set(error) == {"error", "detail"} and error["detail"], (what, error)
        assert Episode.objects.count() == 0
        good = http.put(f"/api/v1/episodes/{uuid.uuid4()}", params=episode_params(1),
                        content=episode_data.encode(GOOD))
        assert good.status_code == 201, good.text
    log = server.log.read_text()
    assert "Internal Server Error" not in log and "Traceback" not in log
