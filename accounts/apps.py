from django.apps import AppConfig
from django.contrib.auth.signals import user_logged_out


def _session_ended(sender, request=None, user=None, **kwargs):
    from accounts.sessions import announce_session_end

    session = getattr(request, "session", None)
    if session is not None and session.session_key:
        announce_session_end(session=session.session_key)


class AccountsConfig(AppConfig):
    name = "accounts"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        # A logout closes that session's dashboard sockets in every web process at once.
        user_logged_out.connect(_session_ended, dispatch_uid="accounts.session_ended")
