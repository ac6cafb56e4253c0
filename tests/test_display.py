"""How values read on pages: one date format with relative time on hover, display names, JSON as tables, and
finding an episode by id or UUID."""
from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone

import pytest
from django.template import Context, Template
from django.utils import timezone

from core.models import AuditEvent
from tests.reviewing import ingest, synthetic


def render(source: str, **context) -> str:
    return Template("{% load display %}" + source).render(Context(context))


def test_a_date_reads_the_same_everywhere_with_how_long_ago_on_hover():
    moment = timezone.now() - timedelta(minutes=3)
    html = render("{{ t|when }}", t=moment)
    assert f'datetime="{moment.isoformat()}"' in html and 'title="3\xa0minutes ago"' in html
    assert f">{moment.strftime('%Y-%m-%d %H:%M:%S')}</time>" in html
    assert render("{{ t }}", t=datetime(2026, 11, 29, 19, 31, tzinfo=dt_timezone.utc)) == "2026-11-29 19:31:00"
    assert render("{{ t|when }}", t=None) == ""


def test_codes_read_as_words_and_json_as_a_labelled_table():
    assert render("{{ c|label }}", c="wrong_placement") == "Wrong placement"
    assert render("{{ c|label }}", c="hg_dagger") == "HG-DAgger"
    html = render("{% details_table d %}", d={"from": 1, "to": 2, "gate": {"no_progress_steps": 20, "enabled": True},
                                              "tasks": ["a", "b"], "loss": 0.123456})
    for row in ("<th scope=\"row\">From</th><td>1</td>", "<th scope=\"row\">Gate › No progress steps</th><td>20</td>",
                "<th scope=\"row\">Gate › Enabled</th><td>yes</td>", "<td>a, b</td>", "<td>0.1235</td>"):
        assert row in html
    assert "{" not in html and render("{% details_table d %}", d={}) .strip() == ""


@pytest.fixture
def episode(db):
    from tests.factories import make_tasks

    return ingest(make_tasks()[0], synthetic())


def test_an_episode_is_found_by_its_id_or_its_uuid(client, olivia, episode):
    client.force_login(olivia)
    for query in (str(episode.pk), str(episode.uuid), str(episode.uuid).upper()):
        response = client.get("/episodes/", {"find": query})
        assert response.status_code == 302 and response["Location"] == f"/episodes/{episode.pk}/"
    missing = client.get("/episodes/", {"find": str(uuid.uuid4())})
    assert missing.status_code == 404 and "no episode has the UUID" in missing.content.decode()
    bad = client.get("/episodes/", {"find": "robot-7"})
    assert bad.status_code == 400 and "neither an episode id" in bad.content.decode()


def test_the_audit_log_shows_details_as_a_table_not_a_dict(client, sam, episode):
    AuditEvent.record(sam, "robot.version", episode, reason="test", details={"from": 1, "to": 2})
    client.force_login(sam)
    page = client.get("/audit/").content.decode()
    assert "{&#x27;from&#x27;" not in page and "<th scope=\"row\">From</th><td>1</td>" in page
    assert "<time datetime=" in page
