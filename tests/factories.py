"""Factories for variety; the named people (alice, bob, carol) are fixtures in conftest."""

from __future__ import annotations

from typing import Any, cast

import factory
from allauth.account.models import EmailAddress

from panel.models import Statutes, User

PASSWORD = "correct horse battery staple"


class UserFactory(factory.django.DjangoModelFactory[User]):
    class Meta:
        model = User
        skip_postgeneration_save = True

    email = factory.Sequence(lambda n: f"person{n}@example.org")
    first_name = factory.Faker("first_name")
    last_name = factory.Faker("last_name")

    @factory.post_generation
    def password(obj: User, create: bool, extracted: str | None, **kwargs: Any) -> None:
        obj.set_password(extracted or PASSWORD)
        if create:
            obj.save(update_fields=["password"])

    @factory.post_generation
    def verified(obj: User, create: bool, extracted: bool | None, **kwargs: Any) -> None:
        if create and extracted is not False:
            EmailAddress.objects.create(user=obj, email=obj.email, verified=True, primary=True)


class StatutesFactory(factory.django.DjangoModelFactory[Statutes]):
    class Meta:
        model = Statutes

    version = factory.Sequence(lambda n: n + 1)
    title = "Statutes"
    text = factory.Faker("paragraph", nb_sentences=8)


def make_user(**kwargs: Any) -> User:
    """A verified user (``verified=False`` for one who has not confirmed the address yet)."""
    return cast(User, UserFactory(**kwargs))


def make_statutes(**kwargs: Any) -> Statutes:
    return cast(Statutes, StatutesFactory(**kwargs))
