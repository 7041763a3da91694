"""Load the demo co-op: an admin, two members, one applicant. Safe to run again."""

from __future__ import annotations

import json
import secrets
from typing import Any

from allauth.account.models import EmailAddress
from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import transaction

from panel import services
from panel.models import Membership, User
from panel.selectors import current_statutes

STATUTES = """§1 Name and purpose. The co-op runs web hosting, newsletter lists and a dial-in
telephone service for its members, on servers it owns.

§2 Membership. Any person may apply. The admins decide on each application and give reasons
when they decline. Every member holds exactly one share, and only one.

§3 At cost. Every service is billed at what it costs the co-op, without markup.

§4 The commune. When a billing period closes, what is left over (or missing) belongs to the
commune and is split equally among the members, one share each.

§5 Leaving. A member may leave at any time; the share is cancelled and the history kept."""

PEOPLE = [
    # email, name, role
    ("carol@demo.coop", "Carol Admin", "admin"),
    ("alice@demo.coop", "Alice Example", "member"),
    ("bob@demo.coop", "Bob Example", "member"),
    ("dave@demo.coop", "Dave Applicant", "applicant"),
]


class Command(BaseCommand):
    help = "Create the demo co-op (idempotent); prints the logins."

    def handle(self, *args: Any, **options: Any) -> None:
        logins_file = settings.STATE_DIR / "demo-logins.json"
        logins: dict[str, str] = json.loads(logins_file.read_text()) if logins_file.exists() else {}
        with transaction.atomic():
            users = {}
            for email, name, role in PEOPLE:
                password = logins.setdefault(email, secrets.token_urlsafe(9))
                user = User.objects.filter(email=email).first()
                if user is None:
                    first, last = name.split(" ", 1)
                    create = (
                        User.objects.create_superuser
                        if role == "admin"
                        else User.objects.create_user
                    )
                    user = create(email=email, password=password, first_name=first, last_name=last)
                    EmailAddress.objects.create(user=user, email=email, verified=True, primary=True)
                users[email] = (user, name, role)
            admin = users["carol@demo.coop"][0]
            statutes = current_statutes() or services.statutes_publish(
                actor=admin, title="Statutes of the Commune Co-op", text=STATUTES
            )
            for user, name, role in users.values():
                if role == "admin" or Membership.objects.filter(user=user).exists():
                    continue
                application = services.membership_apply(
                    user=user,
                    name=name,
                    statement="I want to host my projects with people I trust.",
                    statutes=statutes,
                )
                if role == "member":
                    services.membership_approve(application=application, actor=admin)
        logins_file.parent.mkdir(parents=True, exist_ok=True)
        logins_file.write_text(json.dumps(logins, indent=1))
        logins_file.chmod(0o600)
        for email, _name, role in PEOPLE:
            self.stdout.write(f"  {role:<10} {email:<18} password: {logins[email]}")
