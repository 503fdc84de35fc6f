"""Collections and their indexes, created at start-up by every store adapter.

Unique indexes are concurrency guards (ARCHITECTURE.md): the store, not the
application, decides who wins a race.
"""

from __future__ import annotations

from gateway import constants as c
from gateway.ports import Index

# Indexes only Appointments have values for: a Slot, a Schedule or a Location is not in
# them (MongoDB's partialFilterExpression). Every query that reads one names the type.
APPOINTMENTS = (("type", "Appointment"),)
# Indexes only Slots need: a schedule's slots by start, the free slots of a scope across
# providers (every query that reads one names the type). Appointments, which have no
# schedule and are never searched across providers, stay out of them: a booking writes
# two index entries fewer (and every waiting-room entry's FHIR face as well).
SLOTS = (("type", "Slot"),)

INDEXES: dict[str, list[Index]] = {
    c.RESOURCES: [
        Index((("tenant", 1), ("type", 1), ("last_updated", 1))),
        # Conditional create (If-None-Exist on identifier): one live resource per
        # business identifier within a tenant and type.
        Index((("ident_key", 1),), unique=True, sparse=True),
        Index(
            (("tenant", 1), ("type", 1), ("central.schedule_id", 1), ("central.start", 1)),
            partial=SLOTS,
        ),
        # An appointment by its slot (search ``slot``), a patient's (``patient:identifier``).
        Index((("tenant", 1), ("type", 1), ("central.slot_ids", 1)), partial=APPOINTMENTS),
        Index((("tenant", 1), ("type", 1), ("central.patient_pesel", 1)), partial=APPOINTMENTS),
        Index((("tenant", 1), ("type", 1), ("ident_keys", 1))),
        # One provider's free slots of a scope by date: a patient's search for one facility
        # (R-CRIT-1). Before the next index: the embedded store takes the first of equals.
        Index(
            (
                ("tenant", 1),
                ("type", 1),
                ("central.status", 1),
                ("central.scope", 1),
                ("central.start", 1),
            )
        ),
        Index((("tenant", 1), ("type", 1), ("central.start", 1))),
        # The patients' search across providers (R-CRIT-1): free slots of a scope by date.
        Index(
            (("type", 1), ("central.status", 1), ("central.scope", 1), ("central.start", 1)),
            partial=SLOTS,
        ),
        # A patient's own visits across providers (GET /patient/v1/appointments).
        Index(
            (("type", 1), ("central.patient_pesel", 1), ("central.start", 1)),
            partial=APPOINTMENTS,
        ),
    ],
    c.JOBS: [Index((("tenant", 1), ("created", 1)))],
    c.HISTORY: [Index((("tenant", 1), ("type", 1), ("rid", 1), ("version", 1)))],
    c.PROCESSED: [],
    c.PROVIDERS: [Index((("client_id", 1),), unique=True)],
    c.PATIENTS: [],
    c.CLOCK: [],
    c.USED_JTI: [],
    # Exactly one message per event and channel (issue 7): the claim is this key.
    c.NOTIFICATIONS: [Index((("event_id", 1), ("channel", 1)), unique=True)],
    # The reminder task asks for pending reminders by due time (R-NOT-2).
    c.REMINDERS: [
        Index((("status", 1), ("due", 1))),
        Index((("tenant", 1), ("appointment_id", 1))),
    ],
    c.SMS_REFS: [Index((("phone", 1), ("active", 1), ("start", 1)))],
    c.SANDBOX_OUTBOX: [Index((("pesel", 1), ("at", 1))), Index((("at", 1),))],
    # A patient's referrals of a scope (the search's categories, R-PAT-2).
    c.REFERRALS: [Index((("pesel", 1), ("scope", 1)))],
    # The screening history SIMP judges from (R-PAT-3), per patient and programme.
    c.SCREENINGS: [Index((("pesel", 1), ("scope", 1), ("date", 1)))],
    # Webhooks (issue 6). A subscription's events by number (the unique guard of
    # "one number, one event"); the sweeper's due deliveries; retention by time.
    c.SUBSCRIPTIONS: [
        Index((("tenant", 1), ("status", 1))),
        Index((("status", 1), ("next_heartbeat_at", 1))),
    ],
    c.WEBHOOK_EVENTS: [
        # The _id "<subscription>:<event id>" is the dedupe guard; a document is
        # born with its number, unique within its subscription.
        Index((("subscription", 1), ("number", 1)), unique=True),
        # The sweeper: pending tries by when their broker copy is due back.
        Index((("status", 1), ("copy_at", 1))),
        Index((("at", 1),)),
    ],
    c.WEBHOOK_ATTEMPTS: [Index((("subscription", 1), ("at", 1))), Index((("at", 1),))],
    c.SANDBOX_INBOX: [Index((("tenant", 1), ("at", 1)))],
    c.WEBHOOK_COUNTERS: [],
    # The waiting room (issue 5). Entries of a queue in rank order (R-WAIT-5: the
    # best-ranked entry that takes a slot); one active entry per e-referral (the
    # unique, sparse active_key); a patient's entries; SMS REZYGNUJE by phone. Few
    # indexes: every status change of an entry moves it in each of them.
    c.WAITING_ROOM: [
        # The look for the best-ranked taker of one slot: only the entries whose location
        # criterion the slot meets (waiting_rules.location_key), in rank order. Before the
        # next index: the embedded store takes the first of equals.
        Index(
            (("scope", 1), ("status", 1), ("queue", 1), ("loc_key", 1), ("rank", 1)),
            partial=(("status", "waiting"),),
        ),
        # Entries of a queue in rank order, of every status: is anyone waiting for a new
        # slot (waiting_service.on_slot), the unlock plan's look when its location keys
        # are more than one look of the previous index takes (both waiting); the claims
        # whose command died (recover_claims: assigning, at every poll); bench's count of
        # the assigned. Partial on waiting (as MongoDB, the embedded store serves only a
        # query stating status "waiting" with it) an assignment would move it once, not
        # twice: claim + assigned 54 -> 48 us of CPU (60,000 entries); but the recovery
        # would then read every entry at each poll, or need an index of its own, which
        # moves as often (a sparse claim.real: 59 us).
        Index((("scope", 1), ("status", 1), ("queue", 1), ("rank", 1))),
        Index((("active_key", 1),), unique=True, sparse=True),
        Index((("pesel", 1), ("entered_at", 1))),
        Index((("referral.key", 1), ("entered_at", 1))),
        Index((("phone_key", 1),)),
    ],
    # R-CAN-2 proposals: due answers by time, a patient's proposals.
    c.WAITING_ROOM_PROPOSALS: [
        Index((("status", 1), ("expires_at", 1))),
        Index((("pesel", 1), ("created_at", 1))),
    ],
    c.WAITING_ROOM_STATE: [],
    c.WAITING_ROOM_RELEASES: [Index((("scope", 1), ("at", 1)))],
    # Initial imports (R-SCHED-5): one running import per provider (the unique, sparse
    # active_key, which is also the freeze the write path looks up); a job's rejections
    # in file order for its error file.
    c.IMPORT_JOBS: [
        Index((("active_key", 1),), unique=True, sparse=True),
        Index((("tenant", 1), ("created", 1))),
    ],
    c.IMPORT_ERRORS: [Index((("job", 1), ("order", 1)))],
    c.AUDIT: [Index((("tenant", 1), ("at", 1))), Index((("pesel", 1), ("at", 1)))],
}
