"""Rules of the books that the database itself enforces.

On PostgreSQL: every transaction balances (checked at commit by deferred constraint
triggers), posted legs and transactions are never updated or deleted, and nothing is posted
into a closed period. On SQLite (the demo) the last two hold; balancing is checked in code.
"""

from django.db import migrations

POSTGRES = [
    """
    CREATE FUNCTION panel_ledger_check_balanced() RETURNS trigger AS $$
    DECLARE
        tid bigint;
        total_debit numeric;
        total_credit numeric;
        legs integer;
    BEGIN
        IF TG_TABLE_NAME = 'panel_leg' THEN
            tid := NEW.transaction_id;
        ELSE
            tid := NEW.id;
        END IF;
        SELECT COALESCE(SUM(debit), 0), COALESCE(SUM(credit), 0), COUNT(*)
          INTO total_debit, total_credit, legs
          FROM panel_leg WHERE transaction_id = tid;
        IF legs < 2 OR total_debit <> total_credit THEN
            RAISE EXCEPTION 'ledger transaction % does not balance: debit %, credit %, % legs',
                tid, total_debit, total_credit, legs
                USING ERRCODE = 'check_violation';
        END IF;
        RETURN NULL;
    END;
    $$ LANGUAGE plpgsql;
    """,
    """
    CREATE CONSTRAINT TRIGGER panel_transaction_balanced
        AFTER INSERT ON panel_transaction
        DEFERRABLE INITIALLY DEFERRED
        FOR EACH ROW EXECUTE FUNCTION panel_ledger_check_balanced();
    """,
    """
    CREATE CONSTRAINT TRIGGER panel_leg_balanced
        AFTER INSERT ON panel_leg
        DEFERRABLE INITIALLY DEFERRED
        FOR EACH ROW EXECUTE FUNCTION panel_ledger_check_balanced();
    """,
    """
    CREATE FUNCTION panel_ledger_immutable() RETURNS trigger AS $$
    BEGIN
        RAISE EXCEPTION 'posted % rows are never changed or deleted; post a reversal', TG_TABLE_NAME
            USING ERRCODE = 'integrity_constraint_violation';
    END;
    $$ LANGUAGE plpgsql;
    """,
    """
    CREATE TRIGGER panel_leg_immutable BEFORE UPDATE OR DELETE ON panel_leg
        FOR EACH ROW EXECUTE FUNCTION panel_ledger_immutable();
    """,
    """
    CREATE TRIGGER panel_transaction_immutable BEFORE UPDATE OR DELETE ON panel_transaction
        FOR EACH ROW EXECUTE FUNCTION panel_ledger_immutable();
    """,
    """
    CREATE FUNCTION panel_ledger_period_open() RETURNS trigger AS $$
    DECLARE
        pid bigint;
        st text;
    BEGIN
        IF TG_TABLE_NAME = 'panel_leg' THEN
            SELECT period_id INTO pid FROM panel_transaction WHERE id = NEW.transaction_id;
        ELSE
            pid := NEW.period_id;
        END IF;
        SELECT state INTO st FROM panel_billingperiod WHERE id = pid;
        IF st = 'closed' THEN
            RAISE EXCEPTION 'billing period % is closed; nothing may be posted into it', pid
                USING ERRCODE = 'check_violation';
        END IF;
        RETURN NEW;
    END;
    $$ LANGUAGE plpgsql;
    """,
    """
    CREATE TRIGGER panel_transaction_period_open BEFORE INSERT ON panel_transaction
        FOR EACH ROW EXECUTE FUNCTION panel_ledger_period_open();
    """,
    """
    CREATE TRIGGER panel_leg_period_open BEFORE INSERT ON panel_leg
        FOR EACH ROW EXECUTE FUNCTION panel_ledger_period_open();
    """,
    # Cost rates of one service and kind never overlap in time.
    "CREATE EXTENSION IF NOT EXISTS btree_gist;",
    """
    ALTER TABLE panel_costrate ADD CONSTRAINT cost_rate_no_overlap EXCLUDE USING gist (
        service WITH =, kind WITH =,
        daterange(valid_from, valid_to, '[)') WITH &&
    );
    """,
]

POSTGRES_REVERSE = [
    "ALTER TABLE panel_costrate DROP CONSTRAINT cost_rate_no_overlap;",
    "DROP TRIGGER panel_leg_period_open ON panel_leg;",
    "DROP TRIGGER panel_transaction_period_open ON panel_transaction;",
    "DROP FUNCTION panel_ledger_period_open();",
    "DROP TRIGGER panel_transaction_immutable ON panel_transaction;",
    "DROP TRIGGER panel_leg_immutable ON panel_leg;",
    "DROP FUNCTION panel_ledger_immutable();",
    "DROP TRIGGER panel_leg_balanced ON panel_leg;",
    "DROP TRIGGER panel_transaction_balanced ON panel_transaction;",
    "DROP FUNCTION panel_ledger_check_balanced();",
]

SQLITE = [
    f"""
    CREATE TRIGGER panel_{table}_immutable_{op.lower()} BEFORE {op} ON panel_{table}
    BEGIN SELECT RAISE(ABORT, 'posted {table} rows are never changed or deleted'); END;
    """
    for table in ("leg", "transaction")
    for op in ("UPDATE", "DELETE")
] + [
    """
    CREATE TRIGGER panel_transaction_period_open BEFORE INSERT ON panel_transaction
    WHEN (SELECT state FROM panel_billingperiod WHERE id = NEW.period_id) = 'closed'
    BEGIN SELECT RAISE(ABORT, 'billing period is closed; nothing may be posted into it'); END;
    """
]

SQLITE_REVERSE = [
    f"DROP TRIGGER panel_{table}_immutable_{op.lower()};"
    for table in ("leg", "transaction")
    for op in ("UPDATE", "DELETE")
] + ["DROP TRIGGER panel_transaction_period_open;"]


def _run(statements: dict[str, list[str]]):  # type: ignore[no-untyped-def]
    def run(apps, schema_editor):  # type: ignore[no-untyped-def]
        for sql in statements.get(schema_editor.connection.vendor, []):
            schema_editor.execute(sql, params=None)

    return run


class Migration(migrations.Migration):
    dependencies = [("panel", "0002_ledger")]

    operations = [
        migrations.RunPython(
            _run({"postgresql": POSTGRES, "sqlite": SQLITE}),
            _run({"postgresql": POSTGRES_REVERSE, "sqlite": SQLITE_REVERSE}),
        )
    ]
