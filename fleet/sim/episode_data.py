"""An episode's arrays: the recorder that fills them, and the validation and codec at the ingestion boundary.

Row t holds the state the robot saw before acting at step t (observation and simulator state), what it did,
what the expert would have done, who acted, and the reward and success that followed.
"""
from __future__ import annotations

import io
import re
import struct
import zipfile
import zlib

import numpy as np
from isal import isal_zlib

from fleet.sim.envs import ACTION_DIM, OBS_DIM
from fleet.sim.gate import ANNOTATOR, POLICY

# name -> (dtype, trailing shape); None in a shape is a width fixed per task (the simulator's nq / nv).
# Simulator state is float32: replay puts the scene back to within a fraction of a micrometre, and float64 made it
# half of every payload (and of ingestion's time).
SCHEMA = {
    "obs": (np.float32, (OBS_DIM,)),
    "action": (np.float32, (ACTION_DIM,)),
    "expert_action": (np.float32, (ACTION_DIM,)),
    "intervention": (np.bool_, ()),
    "intervention_source": (np.uint8, ()),
    "reward": (np.float32, ()),
    "success": (np.bool_, ()),
    "qpos": (np.float32, (None,)),
    "qvel": (np.float32, (None,)),
    "mocap_pos": (np.float32, (3,)),
    "mocap_quat": (np.float32, (4,)),
}
MAX_SIM_WIDTH = 256  # nq / nv of any Meta-World scene is far below this
MAX_PAYLOAD_BYTES = 16 * 1024 * 1024  # a 500-step episode is ~95 KB; this is a guard, not a goal
# Members stored without compression: joint positions and velocities are noisy floats that deflate by 4-14 % at
# ~0.5 ms each (more than the rest of the episode together). Everything else deflates to 1-50 %.
STORED = frozenset({"qpos", "qvel"})


class EpisodeDataError(ValueError):
    """The episode's arrays are malformed; nothing was written."""


class EpisodeRecorder:
    """Preallocated per-step buffers for one episode (no per-step allocation in the control loop)."""

    def __init__(self, max_steps: int, nq: int, nv: int):
        widths = {"qpos": nq, "qvel": nv}
        self.arrays = {
            name: np.zeros((max_steps, *(widths[name] if dim is None else dim for dim in shape)), dtype=dtype)
            for name, (dtype, shape) in SCHEMA.items()
        }
        self.steps = 0

    def record(self, obs, action, expert_action, source: int, reward: float, success: bool, snapshot) -> None:
        t, a = self.steps, self.arrays
        a["obs"][t] = obs
        a["action"][t] = action
        a["expert_action"][t] = expert_action
        a["intervention"][t] = source != POLICY
        a["intervention_source"][t] = source
        a["reward"][t] = reward
        a["success"][t] = success
        a["qpos"][t], a["qvel"][t], a["mocap_pos"][t], a["mocap_quat"][t] = snapshot
        self.steps = t + 1

    def finish(self) -> dict[str, np.ndarray]:
        return {name: array[: self.steps] for name, array in self.arrays.items()}


def segments(intervention_source: np.ndarray) -> list[tuple[int, int, int]]:
    """Runs of steps where someone other than the policy acted: [(start, end_exclusive, source)]."""
    src = np.asarray(intervention_source)
    if src.size == 0:
        return []
    change = np.flatnonzero(np.diff(src)) + 1
    starts = np.concatenate([[0], change])
    ends = np.concatenate([change, [src.size]])
    return [(int(s), int(e), int(src[s])) for s, e in zip(starts, ends) if src[s] != POLICY]


def validate(arrays: dict, max_steps: int) -> int:
    """Check names, dtypes, shapes, lengths and values. Returns the step count; raises EpisodeDataError."""
    if not isinstance(arrays, dict):
        raise EpisodeDataError("episode data must be a mapping of array names to arrays")
    missing, extra = set(SCHEMA) - set(arrays), set(arrays) - set(SCHEMA)
    if missing or extra:
        raise EpisodeDataError(
            f"episode arrays: missing {sorted(missing) or 'none'}, unexpected {sorted(extra) or 'none'}")
    steps = None
    for name, (dtype, shape) in SCHEMA.items():
        array = arrays[name]
        if not isinstance(array, np.ndarray):
            raise EpisodeDataError(f"{name} must be a numpy array, not {type(array).__name__}")
        if array.dtype != np.dtype(dtype):
            raise EpisodeDataError(f"{name} must be {np.dtype(dtype)}, got {array.dtype}")
        if array.ndim != 1 + len(shape):
            raise EpisodeDataError(f"{name} must have {1 + len(shape)} dimension(s), got shape {array.shape}")
        for axis, want in enumerate(shape, start=1):
            got = array.shape[axis]
            if (want is None and not 0 < got <= MAX_SIM_WIDTH) or (want is not None and got != want):
                raise EpisodeDataError(f"{name} has shape {array.shape}; expected (steps, {want or 'nq/nv'})")
        if steps is None:
            steps = array.shape[0]
        elif array.shape[0] != steps:
            raise EpisodeDataError(f"{name} has {array.shape[0]} steps but obs has {steps}")
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise EpisodeDataError(f"{name} contains NaN or infinite values")
    if not 0 < steps <= max_steps:
        raise EpisodeDataError(f"an episode has 1 to {max_steps} steps, this one has {steps}")
    if (arrays["intervention_source"] > ANNOTATOR).any():
        raise EpisodeDataError("intervention_source holds an unknown source code")
    if not np.array_equal(arrays["intervention"], arrays["intervention_source"] != POLICY):
        raise EpisodeDataError("intervention flags disagree with intervention_source")
    if np.abs(arrays["action"]).max() > 1.0 + 1e-6:
        raise EpisodeDataError("actions must lie in [-1, 1]")
    return steps


def encode(arrays: dict) -> bytes:
    """A .npz that np.load reads (allow_pickle=False): one .npy member per array, deflated except the STORED ones.

    Deflate is ISA-L's at level 1: the same sizes as zlib's level 1 (level 6 saved <1 % more at twice the time)
    in half of zlib's time, and any inflater reads it. Written directly rather than through zipfile, whose
    per-member bookkeeping cost as much as deflating the small arrays."""
    parts, directory, offset = [], [], 0
    for name, array in arrays.items():
        raw = _npy_header(array) + np.ascontiguousarray(array).tobytes()
        crc = isal_zlib.crc32(raw)
        if name in STORED:
            method, data = _ZIP_STORED, raw
        else:
            method, data = _ZIP_DEFLATED, isal_zlib.compress(raw, 1, -15)  # a raw deflate stream, as zips hold it
        member = f"{name}.npy".encode()
        fields = (method, *_DOS_1980, crc, len(data), len(raw), len(member))
        local = _LOCAL.pack(b"PK\x03\x04", 20, 0, *fields, 0) + member
        directory.append(_CENTRAL.pack(b"PK\x01\x02", 20, 20, 0, *fields, 0, 0, 0, 0, 0, offset) + member)
        parts += [local, data]
        offset += len(local) + len(data)
    central = b"".join(directory)
    end = _END.pack(b"PK\x05\x06", 0, 0, len(directory), len(directory), len(central), offset, 0)
    data = b"".join(parts) + central + end
    if len(data) > MAX_PAYLOAD_BYTES:
        raise EpisodeDataError(f"the episode payload is {len(data)} bytes; the limit is {MAX_PAYLOAD_BYTES}")
    return data


def _npy_header(array: np.ndarray) -> bytes:
    """The .npy v1.0 header numpy writes for a C-ordered array of a plain dtype (NEP 1: magic, version, length,
    a dict literal padded with spaces to a multiple of 64 bytes and ended by a newline), built without numpy's
    general-purpose writer, which cost more than deflating the small arrays."""
    text = f"{{'descr': '{array.dtype.str}', 'fortran_order': False, 'shape': {array.shape!r}, }}"
    text += " " * (-(_NPY_PREFIX + len(text) + 1) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text.encode("latin1")


_NPY_PREFIX = 10  # magic (6), version (2), header length (2)


_HEADER_FIELDS = {
    "descr": re.compile(r"'descr':\s*'([<>|=]?[a-zA-Z][0-9]*)'"),
    "fortran_order": re.compile(r"'fortran_order':\s*(True|False)"),
    "shape": re.compile(r"'shape':\s*\(\s*((?:\d+\s*,\s*)*\d*)\s*\)"),
}
_PLAIN_KINDS = set("biuf")  # bool, signed, unsigned, float: never objects, strings or structures


def read_npy(raw: bytes) -> np.ndarray:
    """One .npy member (format 1.0-3.0, NEP 1), parsed without `ast`: numpy's reader evaluates the header with
    ast.literal_eval, which CPython 3.11 can fail with "AST constructor recursion depth mismatch" when threads
    call it at once (the web process reads uploads in several threads). Only plain numeric and bool dtypes."""
    if raw[:6] != b"\x93NUMPY" or len(raw) < 10:
        raise ValueError("not a .npy array")
    major = raw[6]
    if major == 1:
        (length,), start = struct.unpack_from("<H", raw, 8), 10
    elif major in (2, 3):
        (length,), start = struct.unpack_from("<I", raw, 8), 12
    else:
        raise ValueError(f".npy format version {major} is not supported")
    header = raw[start:start + length].decode("latin1")
    found = {name: pattern.search(header) for name, pattern in _HEADER_FIELDS.items()}
    if not all(found.values()):
        raise ValueError(f"unreadable .npy header {header[:80]!r}")
    try:
        dtype = np.dtype(found["descr"].group(1))
    except TypeError:
        raise ValueError(f"unknown dtype {found['descr'].group(1)!r}") from None
    if dtype.kind not in _PLAIN_KINDS or dtype.fields is not None:
        raise ValueError(f"dtype {dtype} is not a plain numeric type")
    dims = [n for n in found["shape"].group(1).replace(" ", "").split(",") if n]
    if len(dims) > 4 or any(len(n) > 9 for n in dims):
        raise ValueError(f"shape {found['shape'].group(0)[:60]} is out of range")
    shape = tuple(int(n) for n in dims)
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    data = memoryview(raw)[start + length:]
    if len(data) != count * dtype.itemsize:
        raise ValueError(f"the array's data is {len(data)} bytes; {shape} of {dtype} needs {count * dtype.itemsize}")
    order = "F" if found["fortran_order"].group(1) == "True" else "C"
    return np.frombuffer(data, dtype=dtype, count=count).reshape(shape, order=order)


# Zip records (PKWARE APPNOTE 4.3.7, 4.3.12, 4.3.16). No zip64: validated arrays are a few MB at most. Every member is dated 1980-01-01, the zip epoch: a payload's bytes depend on its arrays only.
_LOCAL = struct.Struct("<4sHHHHHIIIHH")
_CENTRAL = struct.Struct("<4sHHHHHHIIIHHHHHII")
_END = struct.Struct("<4sHHHHIIH")
_ZIP_STORED, _ZIP_DEFLATED = 0, 8
_DOS_1980 = (0, 0x21)  # (time, date) in MS-DOS format


def _member_bytes(data: bytes, archive: zipfile.ZipFile, member: zipfile.ZipInfo) -> bytes:
    """A member's bytes, inflated no further than the size its directory entry declares (zipfile's own reader
    inflates up to 2 GiB of a lying member before it notices), its CRC checked."""
    offset = member.header_offset
    if data[offset:offset + 4] != b"PK\x03\x04":
        raise ValueError(f"{member.filename}: no local header where the directory says")
    name_length, extra_length = struct.unpack_from("<HH", data, offset + 26)
    start = offset + 30 + name_length + extra_length
    raw = data[start:start + member.compress_size]
    if member.compress_type == zipfile.ZIP_STORED:
        out = raw
    elif member.compress_type == zipfile.ZIP_DEFLATED:
        inflater = isal_zlib.decompressobj(-15)  # ISA-L: zlib's format at about half its CPU on these arrays
        out = inflater.decompress(raw, member.file_size + 1)
    else:
        raise ValueError(f"{member.filename}: compression {member.compress_type} is not supported")
    if len(out) != member.file_size or isal_zlib.crc32(out) != member.CRC:
        raise ValueError(f"{member.filename}: its size or CRC does not match the zip directory")
    return out


def decode(data: bytes, legacy: bool = True) -> dict[str, np.ndarray]:
    """Read a payload back (never unpickling anything). `legacy`: today's dtypes for payloads stored by an older
    version (stored payloads only; uploads must be of today's schema)."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            # Each member inflated in one call (CRC checked) and parsed from memory: np.load's lazy members read
            # in small chunks, and its header parser is not safe in threads (read_npy).
            arrays = {member.filename[:-4]: read_npy(_member_bytes(data, archive, member))
                      for member in archive.infolist() if member.filename.endswith(".npy")}
    except (ValueError, OSError, EOFError, RuntimeError, NotImplementedError, zipfile.BadZipFile, zlib.error,
            isal_zlib.error, struct.error) as exc:  # encrypted or unknown compression: RuntimeError, NotImplementedError
        raise EpisodeDataError(f"the episode payload is not a readable .npz: {exc}") from None
    # Payloads stored before the simulator state became float32 hold it as float64; readers get today's schema.
    for name in _WAS_FLOAT64.intersection(arrays) if legacy else ():
        if arrays[name].dtype == np.float64:
            arrays[name] = arrays[name].astype(np.float32)
    return arrays


def decode_untrusted(data: bytes, max_bytes: int) -> dict[str, np.ndarray]:
    """Read a payload that came from outside (a robot over the API): only the schema's .npy members, at most
    `max_bytes` once inflated (judged from the zip directory before anything is inflated, and no member is
    inflated past its declared size), never unpickling. Raises EpisodeDataError saying why."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise EpisodeDataError(f"the episode payload is not a readable .npz: {exc}") from None
    names = [member.filename for member in members]
    unexpected = sorted(n for n in names if not n.endswith(".npy") or n[:-4] not in SCHEMA)
    if unexpected:
        raise EpisodeDataError(f"unexpected members in the episode payload: {', '.join(unexpected[:5])}")
    if len(set(names)) != len(names):
        raise EpisodeDataError("the episode payload holds a member twice")
    inflated = sum(member.file_size for member in members)
    if inflated > max_bytes:
        raise EpisodeDataError(f"the episode payload inflates to {inflated} bytes; the limit is {max_bytes}")
    if any(member.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED) for member in members):
        raise EpisodeDataError("the episode payload uses a compression other than stored or deflate")
    return decode(data, legacy=False)


_WAS_FLOAT64 = {"qpos", "qvel", "mocap_pos", "mocap_quat"}


def relabelled(arrays: dict, start: int) -> dict:
    """The episode as training data once an annotator has marked where its failure began: from `start` to the
    end, every step the policy controlled gets the scripted expert's action (recorded at every step on the very
    state the robot saw) and counts as an annotator intervention — as if an operator had taken over there.
    Steps where the gate or an operator already acted keep their source. Returns new arrays; the input is kept."""
    steps = len(arrays["obs"])
    if not 0 <= start < steps:
        raise EpisodeDataError(f"the failing segment must start within the episode's {steps} steps, not at {start}")
    out = dict(arrays)
    policy = np.zeros(steps, bool)
    policy[start:] = arrays["intervention_source"][start:] == POLICY
    out["action"] = np.where(policy[:, None], arrays["expert_action"], arrays["action"]).astype(np.float32)
    out["intervention_source"] = np.where(policy, ANNOTATOR, arrays["intervention_source"]).astype(np.uint8)
    out["intervention"] = out["intervention_source"] != POLICY
    return out
