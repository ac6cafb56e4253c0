"""Object storage (core.storage) against a real S3-compatible server process: moto in server mode, started here
like the embedded services. Checkpoints, the learner's state, replays and exports go to the bucket when STORAGE_URL
is set; a worker with an empty storage folder runs the published version; robots and browsers download through
presigned URLs with byte ranges; retention deletes the objects."""
from __future__ import annotations

import hashlib
import io
import json
import socket
import subprocess
import sys
import uuid
import zipfile
from pathlib import Path

import boto3
import httpx
import pytest
from django.conf import settings

from core import storage
from fleet import control
from fleet.models import Episode, Robot, Task
from learner import checkpoint_store
from learner.checkpoints import CheckpointError
from learner.models import PolicyVersion
from tests.conftest import ROOT, free_port, process_env, publish_random_policy, stop_process, wait_for
from tests.test_learner_stack import fleet_with_base  # noqa: F401  (the fixture)

AWS = {"AWS_ACCESS_KEY_ID": "sopweb-test", "AWS_SECRET_ACCESS_KEY": "sopweb-test-secret",
       "AWS_DEFAULT_REGION": "us-east-1"}


class S3Server(str):
    """The server's URL, with the path of its request log."""

    log: Path


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)

    def answers():
        if proc.poll() is not None:
            raise AssertionError(f"the S3 server exited: {log.read_text()[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return True
        except OSError:
            return False

    wait_for(answers, 60, "the S3 server to listen")
    server = S3Server(f"http://127.0.0.1:{port}")
    server.log = log
    yield server
    stop_process(proc)


class Bucket:
    def __init__(self, endpoint: str, name: str, prefix: str, folder: Path, cache: Path):
        self.endpoint, self.name, self.prefix = endpoint, name, prefix
        self.client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                                   aws_access_key_id=AWS["AWS_ACCESS_KEY_ID"],
                                   aws_secret_access_key=AWS["AWS_SECRET_ACCESS_KEY"])
        self.client.create_bucket(Bucket=name)
        self.env = {"STORAGE_URL": f"s3://{name}/{prefix}", "STORAGE_ENDPOINT_URL": endpoint,
                    "SOPWEB_STORAGE_DIR": str(folder), "SOPWEB_STORAGE_CACHE_DIR": str(cache), **AWS}

    def keys(self, under: str = "") -> list[str]:
        listing = self.client.list_objects_v2(Bucket=self.name, Prefix=f"{self.prefix}/{under}")
        return sorted(item["Key"].removeprefix(f"{self.prefix}/") for item in listing.get("Contents", []))

    def get(self, name: str) -> bytes:
        return self.client.get_object(Bucket=self.name, Key=f"{self.prefix}/{name}")["Body"].read()

    def put(self, name: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.name, Key=f"{self.prefix}/{name}", Body=data)


@pytest.fixture
def bucket(s3_server, settings, monkeypatch, tmp_path):
    """This test's own bucket, made the storage of this process (and, through `bucket.env`, of the processes it
    starts). The storage folder is an empty directory that must stay empty."""
    from sopweb.settings import storage_backend

    for key, value in AWS.items():
        monkeypatch.setenv(key, value)
    folder, cache = tmp_path / "storage-folder", tmp_path / "cache"
    folder.mkdir()
    made = Bucket(s3_server, f"sopweb-{uuid.uuid4().hex[:16]}", "fleet", folder, cache)
    backend, origin = storage_backend(made.env["STORAGE_URL"], s3_server, "us-east-1", 600, folder)
    settings.STORAGE_URL, settings.STORAGE_ENDPOINT_URL = made.env["STORAGE_URL"], s3_server
    settings.STORAGE_DIR, settings.STORAGE_CACHE_DIR = folder, cache
    settings.STORAGES = {**settings.STORAGES, "default": backend}
    assert storage.remote() and origin == s3_server
    yield made
    assert not any(folder.iterdir()), f"something was written to the storage folder: {list(folder.iterdir())}"


def test_files_round_trip_through_the_bucket_and_presigned_urls_keep_byte_ranges(bucket):
    data = bytes(range(256)) * 40
    storage.write_bytes("replays/episode-1.mp4", data)
    storage.write_bytes("policies/abc/config.json", b"{}")
    storage.write_bytes("policies/abc/model.safetensors", b"weights")
    storage.write_bytes("policies/def/config.json", b"{}")
    assert bucket.get("replays/episode-1.mp4") == data  # under the URL's prefix, in this bucket
    assert storage.read_bytes("replays/episode-1.mp4") == data and storage.size("replays/episode-1.mp4") == len(data)
    assert sorted(storage.folders("policies")) == ["policies/abc", "policies/def"]
    with pytest.raises(FileNotFoundError):
        storage.read_bytes("replays/nothing.mp4")
    with pytest.raises(storage.StorageNameError):
        storage.read_bytes("../outside")

    url = storage.signed_url("replays/episode-1.mp4", content_type="video/mp4")
    assert url.startswith(bucket.endpoint) and "X-Amz-Signature=" in url
    assert "sopweb-test-secret" not in url
    part = httpx.get(url, headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == data[100:200]
    assert part.headers["Content-Type"] == "video/mp4"
    tampered = url.replace("episode-1", "episode-2")
    assert httpx.get(tampered).status_code in (403, 404)

    assert storage.delete_folder("policies/abc") == 2
    assert bucket.keys("policies") == ["policies/def/config.json"]
    storage.delete("replays/episode-1.mp4")
    storage.delete("replays/episode-1.mp4")  # already gone: nothing happens
    assert not storage.exists("replays/episode-1.mp4")


def test_a_bad_storage_url_is_refused_without_echoing_its_credentials():
    result = subprocess.run([sys.executable, "-c", "import django; django.setup()"], cwd=ROOT, capture_output=True,
                            text=True, env=process_env(DJANGO_SETTINGS_MODULE="sopweb.settings",
                                                       STORAGE_URL="s3://AKIDEXAMPLE:hunter2secret@bucket/x"))
    assert result.returncode != 0
    assert "STORAGE_URL" in result.stderr and "never in the URL" in result.stderr
    assert "hunter2secret" not in result.stderr + result.stdout
    result = subprocess.run([sys.executable, "-c", "import django; django.setup()"], cwd=ROOT, capture_output=True,
                            text=True, env=process_env(DJANGO_SETTINGS_MODULE="sopweb.settings",
                                                       STORAGE_URL="gs://bucket"))
    assert result.returncode != 0 and "use s3://bucket" in result.stderr
    # A good one: the bucket's origin may serve the pages' videos (presigned redirects), and nothing else may.
    show = "import django, json; django.setup(); from django.conf import settings as s; " \
           "print(json.dumps([s.CONTENT_SECURITY_POLICY['DIRECTIVES']['media-src'], s.STORAGES['default']['BACKEND']]))"
    result = subprocess.run([sys.executable, "-c", show], cwd=ROOT, capture_output=True, text=True,
                            env=process_env(DJANGO_SETTINGS_MODULE="sopweb.settings", STORAGE_URL="s3://fleet/x",
                                            STORAGE_ENDPOINT_URL="https://minio.example.com:9000/"))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [["'self'", "https://minio.example.com:9000"], "storages.backends.s3.S3Storage"]


def test_a_checkpoint_in_the_bucket_is_fetched_once_verified_and_a_corrupt_one_is_refused(bucket, transactional_db):
    version = publish_random_policy(1, ["pick-place-v3"])
    path = version.checkpoint_path
    assert bucket.keys(path) == [f"{path}/bundle", f"{path}/config.json", f"{path}/model.safetensors"]
    assert hashlib.sha256(bucket.get(f"{path}/bundle")).hexdigest() == version.checkpoint_sha256
    local = checkpoint_store.local_dir(path, version.checkpoint_sha256)
    assert local == Path(settings.STORAGE_CACHE_DIR) / "checkpoints" / version.checkpoint_sha256
    from learner.policy import load_checkpoint

    load_checkpoint(local, version.checkpoint_sha256)

    other = publish_random_policy(2, ["pick-place-v3"], seed=5)
    bucket.put(f"{other.checkpoint_path}/model.safetensors", b"not the weights")
    with pytest.raises(CheckpointError, match="sha256"):
        checkpoint_store.local_dir(other.checkpoint_path, other.checkpoint_sha256)
    assert not (Path(settings.STORAGE_CACHE_DIR) / "checkpoints" / other.checkpoint_sha256).exists()
    bucket.client.delete_object(Bucket=bucket.name, Key=f"{bucket.prefix}/{other.checkpoint_path}/config.json")
    with pytest.raises(CheckpointError, match="gone from storage"):
        checkpoint_store.local_dir(other.checkpoint_path, other.checkpoint_sha256)


def test_retention_deletes_the_checkpoints_objects(bucket, transactional_db):
    from learner import retention

    versions = [publish_random_policy(n, ["pick-place-v3"], seed=n) for n in (1, 2, 3, 4)]
    retention.prune_checkpoints(keep_last=2, keep_fleet=0)
    removed = {v.number for v in PolicyVersion.objects.exclude(checkpoint_removed_at=None)}
    assert removed == {1, 2}
    assert bucket.keys("policies") == sorted(f"{v.checkpoint_path}/{name}" for v in versions[2:]
                                             for name in ("bundle", "config.json", "model.safetensors"))


def test_a_robot_downloads_its_checkpoint_from_the_bucket_and_resumes_a_broken_download(
        bucket, client, tasks, olivia, tmp_path):
    from gateway import credentials
    from governance.decisions import deploy_to_fleet
    from robot_client.api import Api

    version = publish_random_policy(1, [t.env_name for t in tasks])
    deploy_to_fleet(version, reason="base")
    robot = control.add("remote-s3", tasks, olivia, kind=Robot.Kind.REMOTE)
    _, token = credentials.issue(robot, olivia)
    assignment = client.get(f"/api/v1/robots/{robot.pk}/assignment", HTTP_AUTHORIZATION=f"Bearer {token}").json()
    described = assignment["version"]
    assert described["url"].startswith(bucket.endpoint) and token not in described["url"]
    bundle = bucket.get(f"{version.checkpoint_path}/bundle")
    assert described["size"] == len(bundle) and described["sha256"] == version.checkpoint_sha256

    sent = []
    api = Api("http://127.0.0.1:1", token)  # the presigned URL needs no sopweb: the bucket answers it
    api.storage.event_hooks["request"] = [lambda request: sent.append(request)]
    target = tmp_path / "robot" / f"{described['sha256']}.bundle"
    target.parent.mkdir()
    target.with_suffix(".part").write_bytes(bundle[:1000])  # a download broken after 1000 bytes
    assert api.download(described, target) == bundle
    assert sent[0].headers["Range"] == "bytes=1000-" and "Authorization" not in sent[0].headers
    assert target.read_bytes() == bundle
    api.close()
    # The API's own checkpoint endpoint still serves it (from the bucket) to a robot that asks there.
    served = client.get(f"/api/v1/robots/{robot.pk}/checkpoints/1", HTTP_AUTHORIZATION=f"Bearer {token}")
    assert served.status_code == 200 and b"".join(served.streaming_content if served.streaming else
                                                  [served.content]) == bundle


def test_an_actor_with_an_empty_storage_folder_runs_the_version_from_the_bucket(bucket, start_worker, olivia):
    task = Task.objects.create(env_name="pick-place-v3", title="Pick place", max_steps=30)
    from governance.decisions import deploy_to_fleet

    robot = Robot.objects.create(name="sim-s3")
    robot.tasks.set([task])
    version = publish_random_policy(1, [task.env_name])
    deploy_to_fleet(version, reason="base")
    start_worker("actors", queues="actors", FLEET_REALTIME_FACTOR=0, **bucket.env)
    control.start(robot, olivia)
    wait_for(lambda: Episode.objects.filter(robot=robot, policy_version=version).count() >= 2, 120,
             "two episodes of the version in the bucket")
    control.stop(robot, olivia)
    cached = Path(bucket.env["SOPWEB_STORAGE_CACHE_DIR"]) / "checkpoints" / version.checkpoint_sha256
    assert (cached / "model.safetensors").exists()


def test_a_replay_renders_into_the_bucket_and_plays_from_a_presigned_url(bucket, start_worker, client, anna):
    from django.urls import reverse

    from review.models import ReplayVideo
    from tests.reviewing import ingest, recorded
    from tests.test_review_render import SMALL, finished

    task = Task.objects.create(env_name="pick-place-v3", title="Pick place")
    episode = ingest(task, recorded(seed=7, steps=40), seed=7)
    start_worker(queues="background", **SMALL, **bucket.env)
    client.force_login(anna)
    client.get(reverse("review-replay-status", args=[episode.pk]))
    video = finished(episode.pk)
    assert video.status == ReplayVideo.Status.READY, video.error
    assert bucket.keys("replays") == [f"replays/episode-{episode.pk}.mp4"]
    status = client.get(reverse("review-replay-status", args=[episode.pk])).json()
    response = client.get(status["url"])
    assert response.status_code == 302 and response["Location"].startswith(bucket.endpoint)
    part = httpx.get(response["Location"], headers={"Range": "bytes=0-99"})
    assert part.status_code == 206 and len(part.content) == 100 and part.headers["Content-Type"] == "video/mp4"
    # Evicting old replays deletes the object.
    ReplayVideo.evict(older_than=__import__("datetime").timedelta(0))
    assert bucket.keys("replays") == []


def test_an_export_is_built_into_the_bucket_and_downloads_from_a_presigned_url(bucket, start_worker, client, anna):
    from django.urls import reverse

    from review.models import DatasetExport
    from tests.test_review_jobs import labelled

    task = Task.objects.create(env_name="pick-place-v3", title="Pick place")
    labelled(task, anna, 3)
    client.force_login(anna)
    assert client.post(reverse("review-export"), {"disposition": ["keep", "relabel"]}).status_code == 302
    start_worker(queues="background", **bucket.env)
    export = wait_for(lambda: DatasetExport.objects.exclude(status__in=["queued", "running"]).first(), 120,
                      "the export job")
    assert export.status == DatasetExport.Status.READY, export.error
    assert bucket.keys("exports") == [f"exports/export-{export.pk}.zip"]
    response = client.get(reverse("review-export-download", args=[export.pk]))
    assert response.status_code == 302 and response["Location"].startswith(bucket.endpoint)
    download = httpx.get(response["Location"])
    assert download.status_code == 200 and f'filename="{export.filename}"' in download.headers["Content-Disposition"]
    assert len(download.content) == export.size
    with zipfile.ZipFile(io.BytesIO(download.content)) as archive:
        assert any(name.endswith("info.json") for name in archive.namelist())


def test_the_learners_state_moves_through_the_bucket_and_a_crash_mid_save_keeps_the_last_one(
        bucket, transactional_db):
    from learner import loop
    from learner.models import TrainingRun
    from learner.trainer import LearnerConfig, Trainer

    base = publish_random_policy(1, ["pick-place-v3"])
    run = TrainingRun.objects.create(base_version=base, algorithm="hg_dagger", config={"algorithm": "hg_dagger"})
    trainer, resumed = loop._load_or_build(run)
    assert not resumed
    cursor = loop.EpisodeCursor()
    trainer.step = 10
    loop._save(trainer, run, cursor)
    first = run.state_path
    assert bucket.keys(first) == [f"{first}/state.json", f"{first}/state.safetensors"]
    trainer.step = 20
    loop._save(trainer, run, cursor)
    assert bucket.keys(f"learner/run-{run.pk}") == [f"{run.state_path}/state.json",
                                                    f"{run.state_path}/state.safetensors"]  # the older one went
    # Another host (an empty cache) resumes from the bucket.
    settings.STORAGE_CACHE_DIR = Path(bucket.env["SOPWEB_STORAGE_CACHE_DIR"]) / "elsewhere"
    resumed_trainer, resumed = loop._load_or_build(TrainingRun.objects.get(pk=run.pk))
    assert resumed and resumed_trainer.step == 20
    assert isinstance(resumed_trainer, Trainer) and isinstance(resumed_trainer.config, LearnerConfig)


def test_a_robot_client_process_runs_the_version_it_fetched_from_the_bucket(bucket, s3_server, start_web, olivia,
                                                                            tmp_path):
    """The real client against the real web process, both told only their own side: the robot downloads from the
    presigned URL its assignment names (the moto server's log shows the GET), and its episodes arrive."""
    from gateway import credentials
    from governance.decisions import deploy_to_fleet
    from tests.test_robot_client import ClientProcess

    task = Task.objects.create(env_name="pick-place-v3", title="Pick place", max_steps=40)
    robot = control.add("arm-s3", [task], olivia, kind=Robot.Kind.REMOTE)
    _, token = credentials.issue(robot, olivia)
    version = publish_random_policy(1, [task.env_name])
    deploy_to_fleet(version, reason="base")
    server = start_web(**bucket.env)
    client = ClientProcess(server.address, token, tmp_path)
    try:
        control.start(robot, olivia)
        wait_for(lambda: Episode.objects.filter(robot=robot, policy_version=version).count() >= 2, 90,
                 "two episodes of the version the robot fetched from the bucket")
    finally:
        control.stop(robot, olivia)
        client.stop()
    assert (tmp_path / "robot" / "checkpoints" / f"{version.checkpoint_sha256}.bundle").exists()
    assert f"GET /{bucket.name}/fleet/{version.checkpoint_path}/bundle?" in s3_server.log.read_text()


# --- payload archival --------------------------------------------------------------------------------------------


def _aged_episodes(count: int, days: float) -> list[Episode]:
    from datetime import timedelta

    from django.utils import timezone

    from tests.reviewing import ingest, synthetic

    task = Task.objects.get_or_create(env_name="pick-place-v3", defaults={"title": "Pick place"})[0]
    finished = timezone.now() - timedelta(days=days)
    return [ingest(task, synthetic(steps=20 + i, seed=i), finished_at=finished) for i in range(count)]


def _same_arrays(left: dict, right: dict) -> bool:
    import numpy as np

    return left.keys() == right.keys() and all(np.array_equal(left[k], right[k]) for k in left)


def test_old_payloads_move_to_the_bucket_and_read_back_the_same(bucket, transactional_db):
    from django.core.management import call_command

    from fleet.ingest import load_arrays
    from fleet.models import EpisodePayload

    old, recent = _aged_episodes(3, days=40), _aged_episodes(1, days=1)
    before = {episode.pk: load_arrays(episode) for episode in old + recent}
    out = io.StringIO()
    call_command("archive_payloads", "--older-than-days", "30", stdout=out)
    assert out.getvalue().startswith("archived 3 payloads (") and "; 0 failed" in out.getvalue()
    for episode in old:
        payload = EpisodePayload.objects.get(pk=episode.pk)
        assert payload.data is None and payload.archive.endswith(f"/{episode.uuid}.npz") and payload.archived_at
        assert hashlib.sha256(bucket.get(payload.archive)).hexdigest() == payload.sha256
    assert EpisodePayload.objects.get(pk=recent[0].pk).data is not None  # too young
    assert all(_same_arrays(load_arrays(episode), before[episode.pk]) for episode in old + recent)
    call_command("archive_payloads", "--older-than-days", "30", stdout=out)  # nothing left to move
    assert len(bucket.keys("payloads")) == 3

    # A tampered object is refused, as a corrupt payload is, by every reader.
    from fleet.sim.episode_data import EpisodeDataError

    victim = EpisodePayload.objects.get(pk=old[0].pk)
    bucket.put(victim.archive, b"PK\x03\x04 not it")
    with pytest.raises(EpisodeDataError, match="does not match its sha256"):
        load_arrays(old[0])
    # An episode deleted takes its object with it.
    gone = EpisodePayload.objects.get(pk=old[1].pk).archive
    Episode.objects.filter(pk=old[1].pk).delete()
    assert gone not in bucket.keys("payloads")


def test_a_crash_between_copy_and_clear_keeps_the_payload_and_the_next_run_finishes(
        bucket, transactional_db, monkeypatch):
    from fleet import archive
    from fleet.ingest import load_arrays
    from fleet.models import EpisodePayload

    (episode,) = _aged_episodes(1, days=60)
    before = load_arrays(episode)

    def crash(*args, **kwargs):
        raise RuntimeError("the worker died here")

    with monkeypatch.context() as patch:  # verify fails: the object came back different
        patch.setattr(archive.storage, "read_bytes", lambda name: b"different bytes")
        assert archive.archive_payloads() == {"archived": 0, "bytes": 0, "failed": 1}
    assert EpisodePayload.objects.get(pk=episode.pk).data is not None
    with monkeypatch.context() as patch:  # copied and verified, then the process dies before the row changes
        patch.setattr(archive.transaction, "atomic", crash)
        assert archive.archive_payloads()["failed"] == 1
    payload = EpisodePayload.objects.get(pk=episode.pk)
    assert payload.data is not None and payload.archive == "" and len(bucket.keys("payloads")) == 1
    assert _same_arrays(load_arrays(episode), before)
    assert archive.archive_payloads()["archived"] == 1  # the next run writes the same name again and clears
    assert bucket.keys("payloads") == [EpisodePayload.objects.get(pk=episode.pk).archive]
    assert _same_arrays(load_arrays(episode), before)


def test_payloads_archive_into_the_storage_folder_without_a_bucket(transactional_db, settings, tmp_path):
    from django.core.management import call_command

    from fleet.ingest import load_arrays
    from fleet.models import EpisodePayload

    settings.STORAGE_DIR = tmp_path / "storage"
    settings.STORAGES = {**settings.STORAGES, "default": {
        "BACKEND": "django.core.files.storage.FileSystemStorage", "OPTIONS": {"location": str(tmp_path / "storage")}}}
    (episode,) = _aged_episodes(1, days=45)
    before = load_arrays(episode)
    call_command("archive_payloads", stdout=io.StringIO())
    payload = EpisodePayload.objects.get(pk=episode.pk)
    assert payload.data is None and (tmp_path / "storage" / payload.archive).is_file()
    assert _same_arrays(load_arrays(episode), before)
    with pytest.raises(Exception, match="--older-than-days must be 0 or more"):
        call_command("archive_payloads", "--older-than-days", "-1", stdout=io.StringIO())


# --- two hosts ---------------------------------------------------------------------------------------------------


def test_a_robot_on_host_b_runs_the_version_the_learner_on_host_a_published(  # noqa: F811
        bucket, fleet_with_base, start_worker, olivia, tmp_path):  # noqa: F811
    """Two "hosts": separate working directories, var folders and caches, sharing only PostgreSQL, Redis, the
    broker and the bucket. Host A trains and publishes; host B's actor fetches the new checkpoint from the bucket
    and runs it. Neither host writes a file into its storage folder."""
    from django.core.management import call_command

    from learner.models import TrainingRun
    from tests.test_learner_stack import LEARNER_ENV

    robot = fleet_with_base  # after `bucket`: its base version is published to the bucket
    hosts = {}
    for name in ("a", "b"):
        root = tmp_path / f"host-{name}"
        (root / "storage").mkdir(parents=True)
        hosts[name] = {"cwd": root, **bucket.env, **LEARNER_ENV, "SOPWEB_VAR_DIR": root / "var",
                       "SOPWEB_STORAGE_DIR": root / "storage", "SOPWEB_STORAGE_CACHE_DIR": root / "cache",
                       "METRICS_DIR": root / "metrics"}
    start_worker("learner-a", queues="learner,default,control", **hosts["a"])
    start_worker("actors-b", queues="actors", FLEET_REALTIME_FACTOR=0, **hosts["b"])
    call_command("learner", "start", "--as", "olivia", stdout=io.StringIO())
    control.start(robot, olivia)
    try:
        wait_for(lambda: PolicyVersion.objects.filter(number__gte=2, state="deployed").exists(), 180,
                 "host A's learner to publish and (continuous mode) deploy version 2")
        v2 = PolicyVersion.objects.get(number=2)
        wait_for(lambda: Episode.objects.filter(robot=robot, policy_version__number__gte=2).exists(), 120,
                 "host B's robot to run a version host A published")
    finally:
        control.stop(robot, olivia)
        call_command("learner", "stop", stdout=io.StringIO())
    assert f"{v2.checkpoint_path}/bundle" in bucket.keys("policies")
    assert (tmp_path / "host-b" / "cache" / "checkpoints" / v2.checkpoint_sha256 / "model.safetensors").exists()
    run = TrainingRun.objects.order_by("-pk").first()
    assert run.state_path and bucket.keys(run.state_path)  # the learner's resumable state too
    for name in ("a", "b"):
        assert not any((tmp_path / f"host-{name}" / "storage").iterdir()), f"host {name} wrote to its folder"
