//! A room's member list: local and remote members in the store's join
//! order. Plain Rust: `O` is how a local member is reached (its session's
//! mailbox in the actor, anything in tests); a remote member, connected to
//! another process, has none and is only listed.
//!
//! Invariant: the list is sorted by `join_seq`, the store's join order, so
//! every process lists a room's members in the same order even when events
//! from other processes arrive after a later local join.

use crate::domain::{Member, SocketId};
use crate::store::MemberRecord;

/// One membership.
#[derive(Debug)]
pub struct MemberEntry<O> {
    pub member: Member,
    /// Place in the store's join order.
    pub join_seq: u64,
    pub socket_id: SocketId,
    /// `None` for a member connected to another process.
    pub outbox: Option<O>,
}

impl<O> MemberEntry<O> {
    /// A member announced by the store or another process.
    pub fn remote(record: MemberRecord) -> Self {
        MemberEntry {
            member: record.member,
            join_seq: record.join_seq,
            socket_id: record.socket_id,
            outbox: None,
        }
    }
}

/// What a `join` means for a connection that may already be a member here.
#[derive(Debug, PartialEq, Eq)]
pub enum Rejoin<'a> {
    /// Not a member connected to this process: an ordinary join.
    NotMember,
    /// Already a member under the nickname asked for: nothing to change.
    Same(&'a Member),
    /// Already a member under another nickname.
    OtherNickname(&'a Member),
}

/// The members, in join order.
#[derive(Debug)]
pub struct MemberList<O> {
    entries: Vec<MemberEntry<O>>,
    /// Entries with an outbox. Invariant: kept equal to that count by
    /// every method that adds or removes entries.
    locals: usize,
}

impl<O> Default for MemberList<O> {
    fn default() -> Self {
        MemberList {
            entries: Vec::new(),
            locals: 0,
        }
    }
}

impl<O> MemberList<O> {
    pub fn contains(&self, socket_id: &SocketId) -> bool {
        self.get(socket_id).is_some()
    }

    pub fn get(&self, socket_id: &SocketId) -> Option<&MemberEntry<O>> {
        self.entries.iter().find(|m| m.socket_id == *socket_id)
    }

    /// The outbox of a local member.
    pub fn outbox(&self, socket_id: &SocketId) -> Option<&O> {
        self.get(socket_id).and_then(|m| m.outbox.as_ref())
    }

    /// Whether `socket_id` is a member connected to this process.
    pub fn is_local(&self, socket_id: &SocketId) -> bool {
        self.outbox(socket_id).is_some()
    }

    /// Whether a `join` of `socket_id` as `nickname` is a rejoin. Only a
    /// local membership counts: a remote entry with the same socket id
    /// cannot exist (socket ids carry their process).
    pub fn rejoin(&self, socket_id: &SocketId, nickname: &str) -> Rejoin<'_> {
        match self.get(socket_id) {
            Some(m) if m.outbox.is_some() && m.member.nickname == nickname => {
                Rejoin::Same(&m.member)
            }
            Some(m) if m.outbox.is_some() => Rejoin::OtherNickname(&m.member),
            _ => Rejoin::NotMember,
        }
    }

    /// Puts a member in its place in the join order.
    pub fn insert(&mut self, entry: MemberEntry<O>) {
        let at = self
            .entries
            .partition_point(|m| m.join_seq <= entry.join_seq);
        self.locals += usize::from(entry.outbox.is_some());
        self.entries.insert(at, entry);
    }

    pub fn remove(&mut self, socket_id: &SocketId) -> Option<MemberEntry<O>> {
        let at = self
            .entries
            .iter()
            .position(|m| m.socket_id == *socket_id)?;
        let gone = self.entries.remove(at);
        self.locals -= usize::from(gone.outbox.is_some());
        Some(gone)
    }

    /// A remote member with this nickname (a newer membership of the same
    /// nickname means that one ended: nicknames are unique in a room).
    pub fn remote_named(&self, nickname: &str) -> Option<&SocketId> {
        self.entries
            .iter()
            .find(|m| m.outbox.is_none() && m.member.nickname == nickname)
            .map(|m| &m.socket_id)
    }

    /// The members connected to this process, with their outboxes.
    pub fn local(&self) -> impl Iterator<Item = (&SocketId, &O)> {
        self.entries
            .iter()
            .filter_map(|m| m.outbox.as_ref().map(|o| (&m.socket_id, o)))
    }

    pub fn has_local(&self) -> bool {
        self.locals > 0
    }

    /// How many members are connected to this process.
    pub fn local_count(&self) -> usize {
        self.locals
    }

    /// Every member, in join order, as the protocol lists them.
    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.entries.iter().map(|m| &m.member)
    }

    /// Every membership, in join order.
    pub fn entries(&self) -> impl Iterator<Item = &MemberEntry<O>> {
        self.entries.iter()
    }

    /// Empties the list.
    pub fn drain(&mut self) -> impl Iterator<Item = MemberEntry<O>> + '_ {
        self.locals = 0;
        self.entries.drain(..)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(nickname: &str, join_seq: u64, outbox: Option<u8>) -> MemberEntry<u8> {
        MemberEntry {
            member: Member {
                nickname: nickname.into(),
                joined_at: chrono::DateTime::from_timestamp(1_795_000_000, 0).unwrap(),
            },
            join_seq,
            socket_id: SocketId::from(format!("i:{join_seq}")),
            outbox,
        }
    }

    fn names(list: &MemberList<u8>) -> Vec<&str> {
        list.members().map(|m| m.nickname.as_str()).collect()
    }

    #[test]
    fn members_are_listed_in_join_order_whatever_the_arrival_order() {
        let mut list = MemberList::default();
        list.insert(entry("cy", 30, Some(3)));
        list.insert(entry("ann", 10, None));
        list.insert(entry("dee", 40, None));
        list.insert(entry("bob", 20, Some(2)));
        assert_eq!(names(&list), ["ann", "bob", "cy", "dee"]);
    }

    #[test]
    fn local_members_are_the_ones_with_an_outbox() {
        let mut list = MemberList::default();
        list.insert(entry("ann", 1, None));
        list.insert(entry("bob", 2, Some(2)));
        let local: Vec<u8> = list.local().map(|(_, o)| *o).collect();
        assert_eq!(local, [2]);
        assert!(list.is_local(&SocketId::from("i:2")));
        assert!(!list.is_local(&SocketId::from("i:1")));
        assert!(list.contains(&SocketId::from("i:1")));
        assert_eq!(list.remote_named("ann"), Some(&SocketId::from("i:1")));
        assert_eq!(list.remote_named("bob"), None, "bob is local");
        list.remove(&SocketId::from("i:2"));
        assert!(!list.has_local());
        assert_eq!(names(&list), ["ann"]);
        assert!(list.remove(&SocketId::from("i:2")).is_none());
    }

    #[test]
    fn a_join_by_a_local_member_is_a_rejoin() {
        let mut list = MemberList::default();
        list.insert(entry("ann", 1, None));
        list.insert(entry("bob", 2, Some(2)));
        let bob = SocketId::from("i:2");
        assert!(matches!(list.rejoin(&bob, "bob"), Rejoin::Same(m) if m.nickname == "bob"));
        assert!(
            matches!(list.rejoin(&bob, "bobby"), Rejoin::OtherNickname(m) if m.nickname == "bob")
        );
        // A remote entry or a stranger joins as usual.
        assert_eq!(
            list.rejoin(&SocketId::from("i:1"), "ann"),
            Rejoin::NotMember
        );
        assert_eq!(
            list.rejoin(&SocketId::from("i:9"), "bob"),
            Rejoin::NotMember
        );
    }

    proptest::proptest! {
        /// The local count the members gauge is fed from is the number of
        /// entries with an outbox, whatever the inserts and removals.
        #[test]
        fn the_local_count_matches_the_entries_with_an_outbox(
            ops in proptest::collection::vec((0u64..8, proptest::bool::ANY, proptest::bool::ANY), 0..40)
        ) {
            let mut list = MemberList::default();
            for (seq, insert, local) in ops {
                let id = SocketId::from(format!("i:{seq}"));
                if insert && !list.contains(&id) {
                    list.insert(entry(&format!("n{seq}"), seq, local.then_some(1)));
                } else {
                    list.remove(&id);
                }
                proptest::prop_assert_eq!(list.local_count(), list.local().count());
                proptest::prop_assert_eq!(list.has_local(), list.local().next().is_some());
            }
            let _ = list.drain().count();
            proptest::prop_assert_eq!(list.local_count(), 0);
        }
    }
}
