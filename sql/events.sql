-- The event archive of `chat-events` (MySQL 5.7+ / 8.x, MariaDB 10.3+):
-- one row per domain event read from the RabbitMQ exchange chat.events.
--
-- chat-events applies this file at start-up (and again before retrying a
-- failed insert, in case the table was dropped meanwhile), so the statement
-- must stay idempotent (CREATE TABLE IF NOT EXISTS). An administrator may
-- apply it beforehand instead (mysql <database> < sql/events.sql); then the
-- archive's user needs only SELECT and INSERT. Comments only on whole
-- lines starting with "--"; chat-events drops them, then splits the rest
-- on semicolons.
--
-- Columns (snake_case, like the chat tables):
--   id        arrival order in this archive (AUTO_INCREMENT); not the
--             event's id. Redeliveries after a crash can interleave, so
--             query a room's history by (room_id, seq) or (room_id, at),
--             not by this column.
--   event_id  the event's `id`, unique: the key that makes a repeated
--             delivery a no-op (INSERT ... ON DUPLICATE KEY UPDATE).
--             utf8mb4_bin: ids compare exactly, case-sensitively.
--   type      the event's `type` (room.created, room.deleted,
--             member.joined, member.left, message.sent).
--   room_id   the event's `roomId`.
--   instance  the server process that produced it.
--   at        the event's `at`, in UTC, to the millisecond.
--   seq       the event's per-room `seq` when the publisher gives one,
--             else NULL.
--   body      the whole JSON body as received (TEXT, not JSON: MariaDB's
--             JSON is LONGTEXT anyway, and JSON_VALUE/JSON_EXTRACT read
--             text in both servers). MEDIUMTEXT holds 16 MiB, more than
--             EVENTS_MAX_BODY_BYTES allows.
--   received  when chat-events read it (UTC, milliseconds).
--
-- Indexes: a room's history by time or by seq, and every room by time (a
-- time window, or a retention DELETE).

CREATE TABLE IF NOT EXISTS chatEvent (
    id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    event_id VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    type VARCHAR(64) NOT NULL,
    room_id BIGINT UNSIGNED NOT NULL,
    instance VARCHAR(255) NOT NULL,
    at DATETIME(3) NOT NULL,
    seq BIGINT UNSIGNED NULL,
    body MEDIUMTEXT NOT NULL,
    received DATETIME(3) NOT NULL,
    PRIMARY KEY (id),
    UNIQUE KEY uq_chatEvent_event_id (event_id),
    KEY idx_chatEvent_room_at (room_id, at),
    KEY idx_chatEvent_room_seq (room_id, seq),
    KEY idx_chatEvent_at (at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;
