from django.apps import AppConfig
from django.contrib.admin.apps import AdminConfig


class PanelConfig(AppConfig):
    name = "panel"
    verbose_name = "Commune"

    def ready(self) -> None:
        from panel import checks, signals  # noqa: F401  (registers checks, connects receivers)


class PanelAdminConfig(AdminConfig):
    default_site = "panel.admin_site.PanelAdminSite"
