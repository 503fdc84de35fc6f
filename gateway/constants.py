"""Names of queues, exchanges and collections, in one place."""

from __future__ import annotations

# RabbitMQ topology (also used by the embedded bus, so names match everywhere)
COMMANDS_EXCHANGE = "cer.commands"  # direct; routing key = partition number
COMMAND_QUEUE_PREFIX = "cer.commands."  # + partition number; quorum, single active consumer
EVENTS_EXCHANGE = "cer.events"  # topic; routing key = event type
EVENT_QUEUE_PREFIX = "cer.events."  # + consumer group; quorum
RETRY_EXCHANGE = "cer.retry"  # direct; routing key = tier name
RETRY_QUEUE_PREFIX = "cer.retry."  # + delay in ms; classic, x-message-ttl, DLX -> cer.requeue
REQUEUE_EXCHANGE = "cer.requeue"  # direct; routing key = original queue name
DEAD_EXCHANGE = "cer.dead"  # fanout
DEAD_QUEUE = "cer.dead-letters"
REPLY_QUEUE_PREFIX = "cer.reply."  # + process id; exclusive, auto-delete

# MongoDB collections
RESOURCES = "resources"  # current version of every FHIR resource, per tenant
# The versions a resource's later writes superseded (vread, _history read the current
# one in RESOURCES first): an update or a deletion archives the version it replaces.
HISTORY = "resource_history"
PROCESSED = "processed_messages"  # message ids already applied, with their replies
PROVIDERS = "providers"  # tenants with their client credentials (public keys)
PATIENTS = "patients"  # sandbox / known patients (pseudonymous)
CLOCK = "clock"  # sandbox clock offset, shared by API and workers
USED_JTI = "used_jti"  # client-assertion ids already seen (replay guard)
JOBS = "jobs"  # asynchronous requests (Prefer: respond-async): status and outcome
NOTIFICATIONS = "notifications"  # one record per (event, channel): exactly-once sending
REMINDERS = "reminders"  # due reminders (7 d / 1 d before a visit), picked up by due time
SMS_REFS = "sms_refs"  # the short reference and phone of each visit, for SMS replies
SANDBOX_OUTBOX = "sandbox_outbox"  # sandbox only: every notification sent, for GET /sandbox/outbox
REFERRALS = "referrals"  # e-referrals (key, 4-digit code, PESEL, scope, medical category, status)
SCREENINGS = "screenings"  # screening exams done, and each patient's booked exam (R-PAT-3/4)
SUBSCRIPTIONS = "subscriptions"  # providers' webhook Subscriptions (endpoint, secrets, counter)
WEBHOOK_EVENTS = "webhook_events"  # one per (subscription, domain event): number, delivery state
WEBHOOK_ATTEMPTS = "webhook_attempts"  # the delivery log: one per HTTP try
SANDBOX_INBOX = "sandbox_inbox"  # sandbox only: deliveries to `sandbox:inbox` endpoints
WEBHOOK_COUNTERS = "webhook_counters"  # per subscription: its event counter

# Webhooks: consumer groups and the delivery message type (issue 6)
WEBHOOK_GROUP = "webhooks"  # resource.Appointment.* / resource.Slot.* -> numbered events
WEBHOOK_DELIVERY_GROUP = "webhook-deliveries"  # webhook.deliver -> one HTTP try
WEBHOOK_DELIVER = "webhook.deliver"  # body {event, round, attempt}: ids, never payloads

# The waiting room (issue 5, R-WAIT-1..7, R-CAN-2)
WAITING_ROOM = "waiting_room"  # entries: criteria, place in the queue (rank), status
WAITING_ROOM_PROPOSALS = "waiting_room_proposals"  # R-CAN-2 48-72 h offers and their answers
WAITING_ROOM_STATE = "waiting_room_state"  # per scope: the last day unlocked (R-SCHED-6)
WAITING_ROOM_RELEASES = "waiting_room_releases"  # cancellations seen: the release rate (R-WAIT-5)
IMPORT_JOBS = "import_jobs"  # initial imports (R-SCHED-5): progress, checkpoint, the freeze
IMPORT_ERRORS = "import_errors"  # one per rejected resource of an import: file, line, outcome
AUDIT = "audit"  # who read what: providers' reads of a patient's waiting-room entries
WAITING_ROOM_GROUP = "waiting-room"  # slot events -> waiting-room commands
# The provider-less "tenant" of waiting-room entries as FHIR Appointments (status
# waitlist): not a provider, so no provider's token ever names it.
WAITING_ROOM_TENANT = "cer-waiting-room"
