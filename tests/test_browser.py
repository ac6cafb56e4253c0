"""The dashboard in a real headless Chromium against the real ASGI server."""
import pytest

from fleet.models import Robot, Task

pytestmark = pytest.mark.django_db(transaction=True)


def test_operator_sees_the_fleet(browser_session, olivia):
    task = Task.objects.create(env_name="pick-place-v3")
    Robot.add("robot-a", tasks=[task])
    session = browser_session(olivia)
    session.page.goto(session.base_url + "/fleet/")
    assert "robot-a" in session.page.content()
    assert session.console_errors == []
