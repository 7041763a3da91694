"""Any change to phones, memberships or call plans sends NOTIFY telephony_callers.

The FastAGI server keeps the callers it identified (``telephony.callers``) and forgets them
all on this notification. PostgreSQL delivers it when the changing transaction commits, and
not at all if it rolls back. Statement-level triggers: one notification per statement
(PostgreSQL folds equal ones of a transaction into one), whatever the number of rows.
SQLite (the demo) has no NOTIFY, and its server keeps no callers.
"""

from django.db import migrations

TABLES = ["telephony_phone", "panel_membership", "telephony_callplan"]

FORWARD = [
    """
    CREATE FUNCTION telephony_callers_changed() RETURNS trigger AS $$
    BEGIN
        PERFORM pg_notify('telephony_callers', TG_TABLE_NAME);
        RETURN NULL;
    END;
    $$ LANGUAGE plpgsql;
    """,
    *(
        f"""
        CREATE TRIGGER telephony_callers_changed
            AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON {table}
            FOR EACH STATEMENT EXECUTE FUNCTION telephony_callers_changed();
        """
        for table in TABLES
    ),
]

REVERSE = [
    *(f"DROP TRIGGER telephony_callers_changed ON {table};" for table in TABLES),
    "DROP FUNCTION telephony_callers_changed();",
]


def _run(statements: list[str]):  # type: ignore[no-untyped-def]
    def run(apps, schema_editor):  # type: ignore[no-untyped-def]
        if schema_editor.connection.vendor == "postgresql":
            for sql in statements:
                schema_editor.execute(sql, params=None)

    return run


class Migration(migrations.Migration):
    dependencies = [
        ("telephony", "0004_callrecord_fewer_indexes"),
        ("panel", "0005_credithold_key_without_like_index"),
    ]

    operations = [migrations.RunPython(_run(FORWARD), _run(REVERSE))]
