from django.apps import AppConfig


class TelephonyConfig(AppConfig):
    name = "telephony"
    verbose_name = "Calls"

    def ready(self) -> None:
        from django.db.models.signals import post_delete, post_save

        from telephony import services
        from telephony.models import AccessNumber, RateDeck, Trunk

        # Call setup caches trunks and decks for a few seconds; a change here is seen at once.
        for model in (Trunk, RateDeck, AccessNumber):
            post_save.connect(lambda **kw: services.forget_routes(), sender=model, weak=False)
            post_delete.connect(lambda **kw: services.forget_routes(), sender=model, weak=False)
