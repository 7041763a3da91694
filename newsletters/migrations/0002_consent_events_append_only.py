"""Consent events are evidence: the database refuses to change or delete them.

PostgreSQL and SQLite (the demo) both get a trigger; code never updates these rows, so a
change can only come from a mistake or from someone tampering, and both should fail loudly.
"""

from django.db import migrations

POSTGRES = [
    """
    CREATE FUNCTION newsletters_consent_immutable() RETURNS trigger AS $$
    BEGIN
        RAISE EXCEPTION 'consent events are append-only; record a new event instead'
            USING ERRCODE = 'integrity_constraint_violation';
    END;
    $$ LANGUAGE plpgsql;
    """,
    """
    CREATE TRIGGER newsletters_consentevent_immutable
        BEFORE UPDATE OR DELETE ON newsletters_consentevent
        FOR EACH ROW EXECUTE FUNCTION newsletters_consent_immutable();
    """,
]
POSTGRES_REVERSE = [
    "DROP TRIGGER newsletters_consentevent_immutable ON newsletters_consentevent;",
    "DROP FUNCTION newsletters_consent_immutable();",
]
SQLITE = [
    f"""
    CREATE TRIGGER newsletters_consentevent_immutable_{op.lower()}
    BEFORE {op} ON newsletters_consentevent
    BEGIN SELECT RAISE(ABORT, 'consent events are append-only'); END;
    """
    for op in ("UPDATE", "DELETE")
]
SQLITE_REVERSE = [
    f"DROP TRIGGER newsletters_consentevent_immutable_{op.lower()};" for op in ("UPDATE", "DELETE")
]


def _run(statements):  # type: ignore[no-untyped-def]
    def run(apps, schema_editor):  # type: ignore[no-untyped-def]
        for sql in statements.get(schema_editor.connection.vendor, []):
            schema_editor.execute(sql, params=None)

    return run


class Migration(migrations.Migration):
    dependencies = [("newsletters", "0001_newsletters")]

    operations = [
        migrations.RunPython(
            _run({"postgresql": POSTGRES, "sqlite": SQLITE}),
            _run({"postgresql": POSTGRES_REVERSE, "sqlite": SQLITE_REVERSE}),
        )
    ]
