"""Settings of the commune panel, all read from the environment.

Every value has a default that runs (the demo: SQLite and a broker in files), and every value a
production deployment must decide is an environment variable read with a strict helper.
"""

from __future__ import annotations

import os
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured
from django.utils.translation import gettext_lazy as _

from panel.csp import CSP
from panel.env import (
    env_bool,
    env_choice,
    env_int,
    env_list,
    env_path,
    env_str,
    parse_database_url,
    parse_email_url,
    read_or_create_secret,
)

BASE_DIR = Path(__file__).resolve().parent.parent

# State that must live outside the repository: the generated secret key, the demo database,
# the embedded broker's folders.
_xdg_state = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
STATE_DIR = env_path("PANEL_STATE_DIR", _xdg_state / "commune-panel")

DEBUG = env_bool("DEBUG", False)

SECRET_KEY = os.environ.get("SECRET_KEY", "").strip() or read_or_create_secret(
    env_path("SECRET_KEY_FILE", STATE_DIR / "secret_key")
)

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"] if DEBUG else [])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])
# Public base URL, used in emails sent from workers where no request is at hand.
PANEL_BASE_URL = env_str("PANEL_BASE_URL", "http://localhost:8000").rstrip("/")

INSTALLED_APPS = [
    "panel.apps.PanelConfig",
    "provisioning.apps.ProvisioningConfig",
    "telephony.apps.TelephonyConfig",
    "newsletters.apps.NewslettersConfig",
    "panel.apps.PanelAdminConfig",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "django_htmx",
    "allauth",
    "allauth.account",
    "allauth.mfa",
]

MIDDLEWARE = [
    # Outermost: every response gets the policy, redirects and error pages included.
    "panel.csp.ContentSecurityPolicyMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "allauth.account.middleware.AccountMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
]

ROOT_URLCONF = "panel.urls"
WSGI_APPLICATION = "panel.wsgi.application"
ASGI_APPLICATION = "panel.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.template.context_processors.i18n",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "panel.context_processors.shell",
                "panel.csp.nonce",
            ],
        },
    },
]

# Database ------------------------------------------------------------------------------
DATABASE_URL = env_str("DATABASE_URL", f"sqlite:///{STATE_DIR / 'panel.sqlite3'}")
try:
    DATABASES = {
        "default": parse_database_url(
            DATABASE_URL, conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 0, minimum=0)
        )
    }
except ValueError as exc:
    raise ImproperlyConfigured(f"environment variable DATABASE_URL: {exc}") from None
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    Path(DATABASES["default"]["NAME"]).parent.mkdir(parents=True, exist_ok=True)
    # The demo runs a web server, a worker and beat on one SQLite file; wait for locks
    # instead of failing at once.
    DATABASES["default"]["OPTIONS"] = {"timeout": 20, "transaction_mode": "IMMEDIATE"}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

CACHE_URL = env_str("CACHE_URL", "locmem://")
if CACHE_URL.startswith("redis://"):
    CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": CACHE_URL}
    }
elif CACHE_URL == "locmem://":
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
else:
    raise ImproperlyConfigured(
        f"environment variable CACHE_URL={CACHE_URL!r}: use redis:// or locmem://"
    )

# Accounts ------------------------------------------------------------------------------
AUTH_USER_MODEL = "panel.User"
AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",
    "allauth.account.auth_backends.AuthenticationBackend",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {
        "NAME": "django.contrib.auth.password_validation.MinimumLengthValidator",
        "OPTIONS": {"min_length": 10},
    },
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "account_login"
LOGIN_REDIRECT_URL = "dashboard"

ACCOUNT_ADAPTER = "panel.adapters.AccountAdapter"
ACCOUNT_USER_MODEL_USERNAME_FIELD = None
ACCOUNT_LOGIN_METHODS = {"email"}
ACCOUNT_SIGNUP_FIELDS = ["email*", "password1*", "password2*"]
ACCOUNT_EMAIL_VERIFICATION = "mandatory"
ACCOUNT_UNIQUE_EMAIL = True
ACCOUNT_CHANGE_EMAIL = True
ACCOUNT_EMAIL_NOTIFICATIONS = True
ACCOUNT_LOGIN_ON_EMAIL_CONFIRMATION = True
ACCOUNT_LOGOUT_ON_PASSWORD_CHANGE = False
ACCOUNT_EMAIL_SUBJECT_PREFIX = "[Commune panel] "
ACCOUNT_DEFAULT_HTTP_PROTOCOL = "http" if DEBUG else "https"
ACCOUNT_PRESERVE_USERNAME_CASING = False
# allauth's limits, stated here so that they are visible and reviewed, not implied.
ACCOUNT_RATE_LIMITS = {
    "login": "30/m/ip",
    "login_failed": "10/m/ip,5/5m/key",
    "signup": "20/m/ip",
    "reset_password": "20/m/ip,5/m/key",
    "reset_password_from_key": "20/m/ip",
    "confirm_email": "1/3m/key",
    "change_password": "5/m/user",
    "manage_email": "10/m/user",
    "reauthenticate": "10/m/user",
}
MFA_SUPPORTED_TYPES = ["totp", "recovery_codes"]
MFA_TOTP_ISSUER = env_str("MFA_TOTP_ISSUER", "Commune panel")

# Email ---------------------------------------------------------------------------------
EMAIL_URL = env_str("EMAIL_URL", "console:" if DEBUG else "smtp://localhost:25")
globals().update(parse_email_url("EMAIL_URL", EMAIL_URL))
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "Commune panel <panel@localhost>")
SERVER_EMAIL = env_str("SERVER_EMAIL", DEFAULT_FROM_EMAIL)
ADMINS = [("Admins", address) for address in env_list("ADMIN_EMAILS", [])]

# Internationalisation -------------------------------------------------------------------
LANGUAGE_CODE = "en"
LANGUAGES = [("en", _("English")), ("de", _("German")), ("es", _("Spanish"))]
LOCALE_PATHS = [BASE_DIR / "panel" / "locale"]
TIME_ZONE = env_str("TIME_ZONE", "Europe/Berlin")
USE_I18N = True
USE_TZ = True

# Static files --------------------------------------------------------------------------
STATIC_URL = "static/"
STATIC_ROOT = env_path("STATIC_ROOT", STATE_DIR / "static")

# Security ------------------------------------------------------------------------------
# Production defaults are the safe ones; the demo (DEBUG on, plain HTTP) turns them off.
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", not DEBUG)
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", not DEBUG)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", not DEBUG)
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0 if DEBUG else 31536000, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", not DEBUG)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", not DEBUG)
if env_bool("BEHIND_TLS_PROXY", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    # gunicorn listens on a unix socket, so REMOTE_ADDR is empty and allauth (rate limits)
    # refuses every POST without a client address. The proxy appends the address it saw to
    # X-Forwarded-For; only that last hop is trusted, the rest is the client's to write.
    ALLAUTH_TRUSTED_PROXY_COUNT = 1
SESSION_COOKIE_HTTPONLY = True
X_FRAME_OPTIONS = "DENY"
# Content-Security-Policy (panel/csp.py), sent with every response whatever DEBUG says: no
# inline scripts, styles or handlers anywhere, so that markup slipped into a page cannot run
# or restyle it; code and styles come from our own static files only. A nonce is there for an
# element that cannot be a file (none today). Images may be data: URIs (allauth's TOTP QR code).
# htmx is told not to add its indicator <style> and not to evaluate anything (base.html).
# `check --deploy` warns when this is loosened (panel/checks.py).
SECURE_CSP = {
    "default-src": [CSP.SELF],
    "script-src": [CSP.SELF, CSP.NONCE],
    "style-src": [CSP.SELF, CSP.NONCE],
    "img-src": [CSP.SELF, "data:"],
    "object-src": [CSP.NONE],
    "base-uri": [CSP.SELF],
    "frame-ancestors": [CSP.NONE],
    "form-action": [CSP.SELF],
}

# Celery --------------------------------------------------------------------------------
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", "filesystem://localhost/")
CELERY_RESULT_BACKEND = env_str("CELERY_RESULT_BACKEND", f"file://{STATE_DIR / 'celery-results'}")
if CELERY_BROKER_URL.startswith("filesystem://"):
    # The embedded broker of the demo: plain folders, no server to install.
    _broker_dir = STATE_DIR / "broker"
    for _sub in ("queue", "processed", "control"):
        (_broker_dir / _sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir / "queue"),
        "data_folder_out": str(_broker_dir / "queue"),
        "processed_folder": str(_broker_dir / "processed"),
        "control_folder": str(_broker_dir / "control"),
        "polling_interval": 0.2,
    }
if CELERY_RESULT_BACKEND.startswith("file://"):
    Path(CELERY_RESULT_BACKEND.removeprefix("file://")).mkdir(parents=True, exist_ok=True)
CELERY_TASK_DEFAULT_QUEUE = env_str("CELERY_TASK_DEFAULT_QUEUE", "panel")
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_RESULT_EXPIRES = 3600
CELERY_TIMEZONE = TIME_ZONE
CELERY_BEAT_SCHEDULE_FILENAME = str(STATE_DIR / "celerybeat-schedule")

# Hosting -------------------------------------------------------------------------------
# The panel's SSH key for node agents; generated here on first use, never in the repository.
PROVISIONING_SSH_KEY_FILE = env_path(
    "PROVISIONING_SSH_KEY_FILE", STATE_DIR / "ssh" / "panel_ed25519"
)
ACME_DIRECTORY_URL = env_str("ACME_DIRECTORY_URL", "https://acme-v02.api.letsencrypt.org/directory")
ACME_EMAIL = env_str("ACME_EMAIL", "hostmaster@localhost")
SITE_PURGE_AFTER_DAYS = env_int("SITE_PURGE_AFTER_DAYS", 14, minimum=0)
JOB_MAX_ATTEMPTS = env_int("JOB_MAX_ATTEMPTS", 8, minimum=1)
# Domain proofs: a member's name is served once its DNS points at the site's node (A/AAAA to
# the node's public address, or a CNAME to HOSTING_CNAME_TARGET or a name under it) or a TXT
# record _commune-panel.NAME carries the token the panel shows. Names under these suffixes
# need none: reserved names (RFC 2606, RFC 6761) cannot be registered, so no one can be robbed
# of them, and they never resolve on the internet (the demo's NAME.localhost sites).
HOSTING_CNAME_TARGET = env_str("HOSTING_CNAME_TARGET", "").lower().rstrip(".")
HOSTING_NAMES_WITHOUT_PROOF = env_list(
    "HOSTING_NAMES_WITHOUT_PROOF",
    ["localhost", "test", "example", "invalid", "example.com", "example.net", "example.org"],
)
HOSTING_DNS_SERVERS = env_list("HOSTING_DNS_SERVERS", [])  # empty: /etc/resolv.conf
HOSTING_DNS_TIMEOUT = env_int("HOSTING_DNS_TIMEOUT", 5, minimum=1)
# The beat job re-checks unproved names for this many days after they were claimed.
HOSTING_PROOF_RECHECK_DAYS = env_int("HOSTING_PROOF_RECHECK_DAYS", 14, minimum=1)
# Members are emailed when a site's disk use crosses this share of its quota.
HOSTING_QUOTA_WARN_PERCENT = env_int("HOSTING_QUOTA_WARN_PERCENT", 90, minimum=1)

# The largest upload the panel takes (a rate deck); the panel role gives nginx the same limit.
PANEL_UPLOAD_MAX_MB = env_int("PANEL_UPLOAD_MAX_MB", 50, minimum=1)

# Telephony -----------------------------------------------------------------------------
FASTAGI_LISTEN = env_str("FASTAGI_LISTEN", "127.0.0.1:4573")
# Who may connect to the FastAGI port: the Asterisk nodes (addresses or networks). A stranger
# on it could forge a caller ID or a hangup; the panel role firewalls the port as well.
FASTAGI_ALLOW = env_list("FASTAGI_ALLOW", ["127.0.0.0/8", "::1/128"])
# Authorize sessions last as long as callers take to key in digits; settles take
# milliseconds and get slots of their own, so that they never wait behind callers.
FASTAGI_MAX_SESSIONS = env_int("FASTAGI_MAX_SESSIONS", 64, minimum=1)
FASTAGI_SETTLE_SESSIONS = env_int("FASTAGI_SETTLE_SESSIONS", 16, minimum=1)
FASTAGI_MAX_PER_PEER = env_int("FASTAGI_MAX_PER_PEER", 80, minimum=1)
FASTAGI_DB_CONNECTIONS = env_int("FASTAGI_DB_CONNECTIONS", 4, minimum=1)
# On SIGTERM: stop accepting, let the sessions in progress finish for at most this long.
FASTAGI_DRAIN_SECONDS = env_int("FASTAGI_DRAIN_SECONDS", 30, minimum=0)
# The Asterisk nodes' manager interfaces, NAME=ami://USER:SECRET@HOST:PORT each: a beat job
# reconciles calls whose hangup never reached a FastAGI server.
ASTERISK_AMI = env_list("ASTERISK_AMI", [])
# A rate deck still importing this long after it was asked for is taken for one whose worker
# stopped: it is marked failed (beat job), to be retried. An import of 1,000,000 rates takes
# under a minute.
TELEPHONY_DECK_IMPORT_TIMEOUT_MINUTES = env_int(
    "TELEPHONY_DECK_IMPORT_TIMEOUT_MINUTES", 30, minimum=1
)

# Newsletters. Campaigns go to one relay (newsletters/relay.py in front of Postfix, see
# ansible/), which drops a Message-ID it has already accepted; bounces, complaints and mailto
# unsubscribes come back through the LMTP endpoint to addresses on the bounce domain.
NEWSLETTER_SMTP_URL = env_str("NEWSLETTER_SMTP_URL", "smtp://127.0.0.1:2525")
NEWSLETTER_BOUNCE_DOMAIN = env_str("NEWSLETTER_BOUNCE_DOMAIN", "bounces.localhost").lower()
NEWSLETTER_SPF_INCLUDE = env_str("NEWSLETTER_SPF_INCLUDE", f"_spf.{NEWSLETTER_BOUNCE_DOMAIN}")
NEWSLETTER_INBOUND_LISTEN = env_str("NEWSLETTER_INBOUND_LISTEN", "127.0.0.1:8025")
NEWSLETTER_INBOUND_ALLOW = env_list("NEWSLETTER_INBOUND_ALLOW", ["127.0.0.0/8", "::1/128"])
NEWSLETTER_DNS_SERVERS = env_list("NEWSLETTER_DNS_SERVERS", [])  # empty: /etc/resolv.conf
NEWSLETTER_DNS_TIMEOUT = env_int("NEWSLETTER_DNS_TIMEOUT", 5, minimum=1)
NEWSLETTER_RATE_PER_MINUTE = env_int("NEWSLETTER_RATE_PER_MINUTE", 1200, minimum=1)
NEWSLETTER_SENDERS_PER_CAMPAIGN = env_int("NEWSLETTER_SENDERS_PER_CAMPAIGN", 2, minimum=1)
NEWSLETTER_BATCH_SIZE = env_int("NEWSLETTER_BATCH_SIZE", 100, minimum=1)
NEWSLETTER_LEASE_SECONDS = env_int("NEWSLETTER_LEASE_SECONDS", 120, minimum=5)
NEWSLETTER_MAX_ATTEMPTS = env_int("NEWSLETTER_MAX_ATTEMPTS", 8, minimum=1)
NEWSLETTER_SEND_BUDGET_SECONDS = env_int("NEWSLETTER_SEND_BUDGET_SECONDS", 30, minimum=1)
NEWSLETTER_MAINTENANCE_SECONDS = env_int("NEWSLETTER_MAINTENANCE_SECONDS", 30, minimum=1)
NEWSLETTER_MAX_BODY_BYTES = env_int("NEWSLETTER_MAX_BODY_BYTES", 512 * 1024, minimum=1024)
NEWSLETTER_OUTBOX_DIR = env_str("NEWSLETTER_OUTBOX_DIR", "")  # the demo's sink, shown to staff
# A campaign pauses itself on complaints only from this many different people (and above 0.3 %).
NEWSLETTER_PAUSE_MIN_COMPLAINERS = env_int("NEWSLETTER_PAUSE_MIN_COMPLAINERS", 3, minimum=1)
# The largest message the inbound endpoint takes: the mail node's Postfix message_size_limit
# (ansible mail_node_message_size_limit) is the same number, so what Postfix took, it takes.
NEWSLETTER_INBOUND_MAX_BYTES = env_int(
    "NEWSLETTER_INBOUND_MAX_BYTES", 15 * 1024 * 1024, minimum=1024 * 1024
)
# Inbound messages and bounce and complaint events are deleted after this many days (a daily
# job); consent events are kept.
NEWSLETTER_RETENTION_DAYS = env_int("NEWSLETTER_RETENTION_DAYS", 30, minimum=1)

# Logging -------------------------------------------------------------------------------
LOG_LEVEL = env_choice("LOG_LEVEL", "INFO", {"DEBUG", "INFO", "WARNING", "ERROR"})
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {"django.db.backends": {"level": "INFO"}},
}

# The co-op -----------------------------------------------------------------------------
COOP_NAME = env_str("COOP_NAME", "Commune Co-op")
# One currency for the whole co-op; amounts carry no currency of their own.
CURRENCY = env_str("PANEL_CURRENCY", "EUR")
if not (len(CURRENCY) == 3 and CURRENCY.isascii() and CURRENCY.isupper()):
    raise ImproperlyConfigured(
        f"environment variable PANEL_CURRENCY={CURRENCY!r} is not an ISO 4217 code"
    )
