from django.apps import AppConfig


class PanelConfig(AppConfig):
    name = "panel"
    verbose_name = "Commune"

    def ready(self) -> None:
        from panel import signals  # noqa: F401  (connects the audit receivers)
