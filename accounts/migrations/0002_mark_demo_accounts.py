"""Installations seeded before demo mode existed: demo users that still have their demo password are demo accounts
(so the web command refuses them outside demo mode). A demo user whose password was changed is left alone."""
from django.contrib.auth.hashers import check_password
from django.db import migrations

from accounts.demo import DEMO_USERS, demo_password


def mark(apps, schema_editor):
    User = apps.get_model("auth", "User")
    DemoAccount = apps.get_model("accounts", "DemoAccount")
    for user in User.objects.filter(username__in=DEMO_USERS):
        if check_password(demo_password(user.username), user.password):
            DemoAccount.objects.get_or_create(user=user)


class Migration(migrations.Migration):
    dependencies = [("accounts", "0001_initial")]
    operations = [migrations.RunPython(mark, migrations.RunPython.noop)]
