//! One store read at a time, none lost: the check a room makes when a
//! remote member departs (see `RoomActor::check_after_departure`). Plain
//! Rust.
//!
//! Invariant: while a check runs, any number of further requests make
//! exactly one more check once it ends, so a mass departure (a process
//! shutting down with hundreds of members in the room) costs at most two
//! reads, and a request made during a read is never answered by a read
//! that started before it.

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum Recheck {
    #[default]
    Idle,
    Running,
    /// Running, and asked again meanwhile.
    RunningAgain,
}

impl Recheck {
    /// A check is asked for; returns whether to start one now.
    pub fn request(&mut self) -> bool {
        match self {
            Recheck::Idle => {
                *self = Recheck::Running;
                true
            }
            Recheck::Running | Recheck::RunningAgain => {
                *self = Recheck::RunningAgain;
                false
            }
        }
    }

    /// The running check ended; returns whether to start another.
    pub fn finished(&mut self) -> bool {
        let again = *self == Recheck::RunningAgain;
        *self = if again {
            Recheck::Running
        } else {
            Recheck::Idle
        };
        again
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_during_a_check_make_exactly_one_more() {
        let mut r = Recheck::default();
        assert!(r.request());
        assert!(!r.request());
        assert!(!r.request());
        assert!(r.finished(), "one more for the requests made meanwhile");
        assert!(!r.finished(), "and no third");
        assert_eq!(r, Recheck::Idle);
        assert!(r.request());
        assert!(!r.finished());
    }
}
