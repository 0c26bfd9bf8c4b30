-- Chat server schema (MySQL 5.7+ / 8.x, MariaDB 10.3+).
--
-- The server applies this file at start-up when one of its tables is missing
-- (with all of them present it runs no DDL but one: it adds the index
-- ix_chatRoom_empty to a chatRoom made before the index existed, and only
-- warns if it may not; so a user with only SELECT, INSERT, UPDATE, DELETE
-- can run it; an administrator may apply this file
-- beforehand: mysql <database> < sql/schema.sql), statement by statement, so
-- every statement must be idempotent (CREATE ... IF NOT EXISTS). A new table
-- must also be added to TABLES in src/store/mysql/mod.rs. Rules for editing:
-- comments only on whole lines starting with "--", and no ";" inside a
-- statement, because the server splits the file on ";".
--
-- Changes from the original Node.js service's schema:
--   1. utf8mb4 everywhere (the original database was utf8 = 3-byte utf8mb3),
--      so emoji and other characters outside the Basic Multilingual Plane
--      can be stored. Every table is explicitly ENGINE=InnoDB: transactions,
--      row locks and foreign keys are what the store's invariants rest on.
--   2. Ids are BIGINT UNSIGNED (were INT), matching the server's u64 ids;
--      join_member_count is INT UNSIGNED.
--   3. chatRoom.title and the nickname columns are VARCHAR(255) instead of
--      VARCHAR(50): 50 characters is only the default of MAX_TITLE_CHARS /
--      MAX_NICKNAME_CHARS, and raising a limit must not make inserts fail.
--      The server enforces the limits. (Limits above 255 need wider columns.)
--   4. chatRoom.last_msg_id (new): the room's message sequence counter. A
--      message batch takes the next consecutive ids by advancing it in the
--      transaction that inserts the messages, so ids are gap-free per room.
--   5. chatRoom gets an index on (join_member_count, created), for the
--      sweep that deletes rooms nobody joined within the grace period: it
--      reads the old empty rooms in that order, 500 at a time, and no other
--      row (databases made before it had an index on created alone, which
--      the server leaves in place and adds this one beside).
--   6. chatMember.instance_id (new, indexed): the server process that holds
--      the connection, so a crashed process's members can be reaped.
--      socket_id is NOT NULL and wider ("<instance id>:<counter>").
--   7. chatMember has UNIQUE (room_id, nickname) with nickname in the binary
--      collation utf8mb4_bin: uniqueness is exact and case-sensitive, as in
--      the in-memory store ("Alice" and "alice", "e" and "é" are different
--      nicknames). utf8mb4_bin ignores trailing spaces when comparing, which
--      never matters because nicknames are stored trimmed. The server
--      normalizes nicknames to NFC before they get here, so canonically
--      equivalent spellings (precomposed "é" and "e" + U+0301) are one
--      string and collide on this key as they should.
--   8. chatMsg's primary key is (room_id, id) where id is the per-room
--      sequence (1, 2, 3, ... in each room), not a table-wide AUTO_INCREMENT.
--      Reading a page of a room's history walks this key.
--   9. Correct foreign keys: the original chatMsg referenced a misspelled
--      table (chatRoomt) and neither foreign key cascaded. Now
--      chatMember.room_id and chatMsg.room_id reference chatRoom(id)
--      ON DELETE CASCADE, so deleting a room deletes its members and
--      messages in the same statement.
--  10. chatMsg.content is TEXT (was VARCHAR(100)): up to 65,535 bytes, so at
--      least 16,383 characters even at 4 bytes each. The default
--      MAX_CONTENT_CHARS is 1000; raising it beyond 16,383 needs MEDIUMTEXT.
--  11. Times are DATETIME holding UTC, supplied by the server (truncated to
--      whole seconds) instead of DEFAULT CURRENT_TIMESTAMP in the database
--      server's local time zone; sessions also run with time_zone '+00:00'.

CREATE TABLE IF NOT EXISTS chatRoom (
    id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    -- VARCHAR(255), not (50): MAX_TITLE_CHARS may be raised above 50.
    title VARCHAR(255) NOT NULL,
    join_member_count INT UNSIGNED NOT NULL DEFAULT 0,
    -- The id of the room's newest message (0 = none yet).
    last_msg_id BIGINT UNSIGNED NOT NULL DEFAULT 0,
    created DATETIME NOT NULL,
    PRIMARY KEY (id),
    KEY ix_chatRoom_empty (join_member_count, created)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

CREATE TABLE IF NOT EXISTS chatMember (
    id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    -- VARCHAR(255), not (50): MAX_NICKNAME_CHARS may be raised above 50.
    -- Binary collation: the unique key below compares nicknames exactly.
    nickname VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    room_id BIGINT UNSIGNED NOT NULL,
    -- "<instance id>:<counter>", so a little longer than instance_id.
    socket_id VARCHAR(320) NOT NULL,
    instance_id VARCHAR(255) NOT NULL,
    join_time DATETIME NOT NULL,
    PRIMARY KEY (id),
    UNIQUE KEY uq_chatMember_room_nickname (room_id, nickname),
    KEY ix_chatMember_instance (instance_id),
    CONSTRAINT fk_chatMember_room FOREIGN KEY (room_id)
        REFERENCES chatRoom (id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

CREATE TABLE IF NOT EXISTS chatMsg (
    -- The per-room sequence number, assigned from chatRoom.last_msg_id.
    id BIGINT UNSIGNED NOT NULL,
    room_id BIGINT UNSIGNED NOT NULL,
    nickname VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    content TEXT NOT NULL,
    chat_time DATETIME NOT NULL,
    PRIMARY KEY (room_id, id),
    CONSTRAINT fk_chatMsg_room FOREIGN KEY (room_id)
        REFERENCES chatRoom (id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- Domain events (with AMQP_URL; see docs/PROTOCOL.md "Domain events").
-- chatEventOutbox is the transactional outbox: the transaction that changes
-- a room writes the room's events here after it has locked the room's
-- chatRoom row, so per room the ids follow commit order. One process at a
-- time (the relay, holding a named lock) publishes rows in id order and
-- deletes each once RabbitMQ confirmed it. No foreign key: a room.deleted
-- event outlives its room.
CREATE TABLE IF NOT EXISTS chatEventOutbox (
    id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    room_id BIGINT UNSIGNED NOT NULL,
    -- The event's place in its room's stream (1, 2, 3, ...).
    seq BIGINT UNSIGNED NOT NULL,
    routing_key VARCHAR(32) NOT NULL,
    -- The message body, exactly as published (JSON).
    body MEDIUMTEXT NOT NULL,
    PRIMARY KEY (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- Each live room's last event seq, advanced under the room's row lock; the
-- row goes with the room's room.deleted event.
CREATE TABLE IF NOT EXISTS chatEventSeq (
    room_id BIGINT UNSIGNED NOT NULL,
    last_seq BIGINT UNSIGNED NOT NULL,
    PRIMARY KEY (room_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;
