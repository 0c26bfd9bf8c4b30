//! Settings `chat-events` cannot use stop it at once with exit code 2 and
//! one line naming the variable; refusals waiting cannot fix (bad
//! RabbitMQ credentials, an unknown vhost, an unknown MySQL user) with exit
//! code 1.

use std::time::Duration;

use crate::helpers::TestDatabase;
use crate::{amqp_base_url, Archiver, Vhost};

const EXIT_LIMIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn unusable_settings_exit_2_naming_the_variable() {
    let amqp = "amqp://guest:guest@127.0.0.1:5672/%2f";
    let mysql = "mysql://root@127.0.0.1:3306/never_created";
    for (vars, name) in [
        (vec![("MYSQL_URL", mysql)], "AMQP_URL"),
        (vec![("AMQP_URL", amqp)], "MYSQL_URL"),
        (
            vec![("AMQP_URL", "http://127.0.0.1:5672"), ("MYSQL_URL", mysql)],
            "AMQP_URL",
        ),
        (
            vec![
                ("AMQP_URL", amqp),
                ("MYSQL_URL", mysql),
                ("EVENTS_PREFETCH", "0"),
            ],
            "EVENTS_PREFETCH",
        ),
        (
            vec![
                ("AMQP_URL", amqp),
                ("MYSQL_URL", mysql),
                ("EVENTS_PREFETCH", "10"),
                ("EVENTS_BATCH_MAX", "20"),
            ],
            "EVENTS_BATCH_MAX",
        ),
        (
            vec![
                ("AMQP_URL", amqp),
                ("MYSQL_URL", mysql),
                ("EVENTS_QUEUE", "amq.mine"),
            ],
            "EVENTS_QUEUE",
        ),
    ] {
        let mut archiver = Archiver::start_with(&vars);
        let status = archiver.wait_exit(EXIT_LIMIT).await;
        assert_eq!(status.code(), Some(2), "{vars:?}");
        // The reader thread may still be collecting the last line.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let log = archiver.log();
        assert_eq!(log.len(), 1, "{log:#?}");
        assert!(
            log[0].starts_with(&format!("configuration error: {name}=")),
            "{log:#?}"
        );
    }
}

#[tokio::test]
async fn refusals_that_waiting_cannot_fix_exit_1() {
    let (vhost, db) = (Vhost::new(), TestDatabase::new());
    let base = amqp_base_url();
    let wrong_password = base.replacen("guest:guest@", "guest:wrong@", 1);
    for (amqp, why) in [
        (vhost.url_on(&wrong_password), "password"),
        (format!("{base}/no-such-vhost-{}", vhost.name), "vhost"),
    ] {
        let mut archiver =
            Archiver::start_with(&[("AMQP_URL", amqp.as_str()), ("MYSQL_URL", &db.url)]);
        let status = archiver.wait_exit(EXIT_LIMIT).await;
        assert_eq!(status.code(), Some(1), "{why}: {:#?}", archiver.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            archiver.lines_with("cannot start: RabbitMQ refused"),
            1,
            "{why}: {:#?}",
            archiver.log()
        );
    }
    // A MySQL user that does not exist: access denied, not waited for.
    let mysql = format!("mysql://no_such_archive_user:x@127.0.0.1:3306/{}", db.name);
    let mut archiver = Archiver::start_with(&[("AMQP_URL", &vhost.url()), ("MYSQL_URL", &mysql)]);
    let status = archiver.wait_exit(EXIT_LIMIT).await;
    assert_eq!(status.code(), Some(1), "{:#?}", archiver.log());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        archiver.lines_with("cannot start: MySQL refused"),
        1,
        "{:#?}",
        archiver.log()
    );
}
