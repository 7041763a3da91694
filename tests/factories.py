"""Factories for variety; the named people (alice, bob, carol) are fixtures in conftest."""

from __future__ import annotations

from typing import Any

import factory
from allauth.account.models import EmailAddress

from panel.models import Statutes, User

PASSWORD = "correct horse battery staple"  # noqa: S105  (test-only, never a real account)


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = User
        skip_postgeneration_save = True

    email = factory.Sequence(lambda n: f"person{n}@example.org")
    first_name = factory.Faker("first_name")
    last_name = factory.Faker("last_name")

    @factory.post_generation
    def password(self, create: bool, extracted: str | None, **kwargs: Any) -> None:
        self.set_password(extracted or PASSWORD)
        if create:
            self.save(update_fields=["password"])

    @factory.post_generation
    def verified(self, create: bool, extracted: bool | None, **kwargs: Any) -> None:
        if create and extracted is not False:
            EmailAddress.objects.create(user=self, email=self.email, verified=True, primary=True)


class StatutesFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Statutes

    version = factory.Sequence(lambda n: n + 1)
    title = "Statutes"
    text = factory.Faker("paragraph", nb_sentences=8)
