"""A rate, once imported, is never updated: the database refuses it.

A deck's rates are inserted in the transaction that marks it ready, and a new price list is
a new deck. The FastAGI server keeps the rates of the decks in force in memory
(``telephony.ratecache``) and relies on this; so does every call record that names the rate
it was charged at.
"""

from django.db import migrations

MESSAGE = "rates are never changed; import a new deck version instead"

FORWARD = {
    "postgresql": [
        f"""
        CREATE FUNCTION telephony_rate_unchanged() RETURNS trigger AS $$
        BEGIN
            RAISE EXCEPTION '{MESSAGE}' USING ERRCODE = 'integrity_constraint_violation';
        END;
        $$ LANGUAGE plpgsql;
        """,
        # For each statement: no cost to the 200,000 rows of an import's COPY.
        """
        CREATE TRIGGER telephony_rate_unchanged BEFORE UPDATE ON telephony_rate
            FOR EACH STATEMENT EXECUTE FUNCTION telephony_rate_unchanged();
        """,
    ],
    "sqlite": [
        f"""
        CREATE TRIGGER telephony_rate_unchanged BEFORE UPDATE ON telephony_rate
        BEGIN SELECT RAISE(ABORT, '{MESSAGE}'); END;
        """
    ],
}

REVERSE = {
    "postgresql": [
        "DROP TRIGGER telephony_rate_unchanged ON telephony_rate;",
        "DROP FUNCTION telephony_rate_unchanged();",
    ],
    "sqlite": ["DROP TRIGGER telephony_rate_unchanged;"],
}


def _run(statements: dict[str, list[str]]):  # type: ignore[no-untyped-def]
    def run(apps, schema_editor):  # type: ignore[no-untyped-def]
        for sql in statements.get(schema_editor.connection.vendor, []):
            schema_editor.execute(sql, params=None)

    return run


class Migration(migrations.Migration):
    dependencies = [("telephony", "0002_call_hold_function")]

    operations = [migrations.RunPython(_run(FORWARD), _run(REVERSE))]
