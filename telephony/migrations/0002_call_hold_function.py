"""telephony_call_hold(): a call setup's credit hold in one round trip (PostgreSQL only).

Call setup waits for every round trip to the database. The hold needs the member's balance
row locked and then, in a statement of its own, the count of calls in progress (a statement
that waited for the lock still sees the calls of before it waited): in SQL from Python that
is a transaction of its own, four round trips. A function runs them as one. It does what
credit_hold does (the same guarded update, the same row); it only takes the hold when the
available credit covers the whole amount asked, and otherwise changes nothing and says so,
and telephony.services decides step by step. SQLite (the demo) has no such functions.
"""

from django.db import migrations

CREATE = """
CREATE FUNCTION telephony_call_hold(
    p_member bigint,
    p_amount numeric,
    p_max_concurrent integer,
    p_key text,
    p_service text,
    p_expires timestamptz
) RETURNS TABLE (outcome text, busy bigint)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    free numeric;
BEGIN
    -- The member's call setups take turns on the balance row.
    SELECT b.posted - b.unbilled - b.held INTO free
    FROM panel_memberbalance b WHERE b.member_id = p_member FOR UPDATE;
    IF NOT FOUND OR free < p_amount THEN
        RETURN QUERY SELECT 'short'::text, NULL::bigint;
        RETURN;
    END IF;
    -- A statement of its own: it sees the calls of the setups that had the lock before.
    SELECT count(*) INTO busy FROM telephony_callrecord c
    WHERE c.member_id = p_member AND c.state = 'authorized';
    IF busy >= p_max_concurrent THEN
        RETURN QUERY SELECT 'busy'::text, busy;
        RETURN;
    END IF;
    -- credit_hold's guarded update and insert.
    UPDATE panel_memberbalance b SET held = b.held + p_amount
    WHERE b.member_id = p_member AND b.posted >= b.unbilled + b.held + p_amount;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'short'::text, busy;
        RETURN;
    END IF;
    INSERT INTO panel_credithold (member_id, key, service, amount, state, created_at, expires_at)
    VALUES (p_member, p_key, p_service, p_amount, 'held', now(), p_expires);
    RETURN QUERY SELECT 'held'::text, busy;
END
$$;
"""

DROP = "DROP FUNCTION telephony_call_hold(bigint, numeric, integer, text, text, timestamptz);"


def create(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(CREATE)


def drop(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP)


class Migration(migrations.Migration):
    dependencies = [
        ("telephony", "0001_dial_in"),
        ("panel", "0004_statement_line_without_charge"),
    ]

    operations = [migrations.RunPython(create, drop)]
