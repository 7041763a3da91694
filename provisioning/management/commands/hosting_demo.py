"""The demo's hosting: a local node (the agent runs here, no SSH) with its own nginx, and
alice's site. Run by bin/demo after demo_seed; safe to run again.
"""

from __future__ import annotations

import json
import os
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from panel.models import User
from provisioning.models import Node, NodeStatus, Site
from provisioning.services import site_create


class Command(BaseCommand):
    help = "Give the demo a local hosting node and alice's site (idempotent)."

    def handle(self, *args: Any, **options: Any) -> None:
        alice = User.objects.filter(email="alice@demo.coop").first()
        if alice is None:
            raise CommandError("run demo_seed first (alice@demo.coop is missing)")
        seed_hosting(alice)


NGINX_DEMO = """# The demo's own nginx: on a high port, serving the local node's sites.
{user_line}worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/logs/nginx-error.log;
events {{ worker_connections 256; }}
http {{
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    client_body_temp_path {root}/tmp/body;
    proxy_temp_path {root}/tmp/proxy;
    fastcgi_temp_path {root}/tmp/fastcgi;
    uwsgi_temp_path {root}/tmp/uwsgi;
    scgi_temp_path {root}/tmp/scgi;
    access_log {root}/logs/nginx-access.log;
    log_format panel '$remote_addr [$time_local] "$host" "$request" $status $bytes_sent';
    server_names_hash_bucket_size 128;
    server {{ listen {port} default_server; server_name _; return 404; }}
    include {root}/vhosts/*.conf;
}}
"""


def seed_hosting(member: User) -> None:
    """A local node (the agent runs here, no SSH) with an unprivileged nginx, and one site.

    Sites are named *.localhost, which browsers resolve to this machine, so a site created in
    the demo opens at http://NAME.localhost:PORT/.
    """
    root = settings.STATE_DIR / "hosting"
    port = int(os.environ.get("DEMO_SITES_PORT", "8081"))
    for sub in ("sites", "vhosts", "agent", "backups", "logs", "keys", "php", "pages", "tmp"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    conf = root / "nginx.conf"
    # Run as root (as here, in a container), nginx would hand its workers to "nobody", who
    # cannot read a home directory; the demo keeps them as the user who runs it.
    user_line = "user root;\n" if os.geteuid() == 0 else ""
    conf.write_text(NGINX_DEMO.format(root=root, port=port, user_line=user_line))
    agent = {
        "privileged": False,
        "sites_root": str(root / "sites"),
        "vhost_dir": str(root / "vhosts"),
        "state_dir": str(root / "agent"),
        "backup_dir": str(root / "backups"),
        "log_dir": str(root / "logs"),
        "keys_dir": str(root / "keys"),
        "php_pool_dir": str(root / "php"),
        "pages_dir": str(root / "pages"),
        "acme_dir": str(root / "acme"),
        "acme_webroot": str(root / "acme-webroot"),
        "http_port": port,
        "nginx": ["nginx", "-c", str(conf), "-p", str(root)],
        "php_fpm_reload": ["true"],
        "reload_settle_s": 0.1,
    }
    config = root / "agent.json"
    config.write_text(json.dumps(agent, indent=1))
    Node.objects.get_or_create(
        name="local",
        defaults={
            "transport": "local",
            "local_config": str(config),
            "status": NodeStatus.AVAILABLE,
            "capacity": 50,
            "monthly_cost": Decimal("20.00"),
            "cost_source": "demo: one small server",
        },
    )
    if not Site.objects.filter(member=member).exists():
        site_create(member=member, domain="alice.localhost")
