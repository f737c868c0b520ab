//! The lane bookkeeping's rules, on a table alone.

#![allow(clippy::unwrap_used, reason = "test code")]

use super::*;

fn head(id: &str, digest: u128) -> Head {
    Head {
        response_id: id.into(),
        digest: Some(digest),
        model: "m".into(),
        items: 2,
        stored: false,
        trailing_reasoning: Vec::new(),
    }
}

fn extend(prefixes: &[u128]) -> Affinity<'_> {
    Affinity::Extend {
        prefixes,
        model: "m",
    }
}

fn taken(pick: Result<Pick, NoMatch>) -> Taken {
    match pick {
        Ok(Pick::Take(taken)) => taken,
        other => panic!("{other:?}"),
    }
}

/// A table with one socket (id 1) whose lane 0 holds head `r1` (digest 11).
fn one_head() -> (Table, Instant) {
    let now = Instant::now();
    let mut table = Table::default();
    assert_eq!(
        table.choose(&Affinity::None, true, 4, now),
        Ok(Pick::Connect(None))
    );
    let first = table.add_mux(1, None);
    assert_eq!((first.mux, first.lane, first.reused), (1, 0, false));
    table.finish(1, 0, Finish::Head(Some(head("r1", 11))), now);
    (table, now)
}

#[test]
fn lane_names_are_ours_and_round_trip() {
    assert_eq!(lane_name(7), "wsbridge-7");
    assert_eq!(lane_of("wsbridge-7"), Some(7));
    for other in [
        "wsbridge-07",
        "wsbridge-32",
        "main",
        "wsbridge-",
        "wsbridge-x",
    ] {
        assert_eq!(lane_of(other), None, "{other}");
    }
}

#[test]
fn a_continuation_gets_the_lane_holding_its_head_and_new_conversations_get_new_lanes() {
    let (mut table, now) = one_head();
    let other = taken(table.choose(&Affinity::None, true, 4, now));
    assert_eq!((other.mux, other.lane, other.matched), (1, 1, None));
    assert!(other.reused);
    let continued = taken(table.choose(&extend(&[5, 11, 12]), true, 4, now));
    assert_eq!((continued.mux, continued.lane), (1, 0));
    let matched = continued.matched.unwrap();
    assert_eq!((matched.previous.as_str(), matched.items), ("r1", 2));
    assert!(!continued.evicted);
    assert_eq!(table.lanes_in_use(), 2);
    assert_eq!(table.sockets(), (0, 1));
    // A fork of r1 while its lane is busy: another lane of the same socket continues it.
    let fork = taken(table.choose(&extend(&[11, 12]), true, 4, now));
    assert_eq!((fork.mux, fork.lane), (1, 2));
    assert_eq!(fork.matched.unwrap().previous, "r1");
    // Once r1's lane moved on, r1 is no longer there to fork.
    table.finish(1, 0, Finish::Head(Some(head("r1b", 13))), now);
    let late = taken(table.choose(&extend(&[11, 12]), true, 4, now));
    assert_eq!((late.lane, late.matched), (3, None), "a new lane, fresh");
    assert!(!late.evicted);
}

#[test]
fn a_full_socket_makes_a_continuation_wait_then_start_afresh_elsewhere() {
    let (mut table, now) = one_head();
    for lane in 1..MAX_IN_FLIGHT + 1 {
        assert_eq!(
            taken(table.choose(&Affinity::None, true, 4, now)).lane,
            lane
        );
    }
    assert!(!table.is_idle(1));
    assert_eq!(
        table.choose(&extend(&[11]), true, 4, now),
        Ok(Pick::Wait),
        "its socket has no slot: wait for one"
    );
    assert_eq!(
        table.choose(&extend(&[11]), false, 4, now),
        Ok(Pick::Connect(None)),
        "out of patience: a new socket, fresh"
    );
    assert_eq!(
        table.choose(&Affinity::None, true, 4, now),
        Ok(Pick::Wait),
        "one connect at a time"
    );
    let fresh = table.add_mux(2, None);
    assert_eq!((fresh.mux, fresh.lane), (2, 0));
    table.finish(1, 5, Finish::Head(None), now);
    let continued = taken(table.choose(&extend(&[11]), true, 4, now));
    assert_eq!((continued.mux, continued.lane), (1, 0), "a slot came back");
}

#[test]
fn with_every_socket_open_the_least_recently_used_head_is_given_up() {
    let now = Instant::now();
    let mut table = Table::default();
    table.choose(&Affinity::None, true, 1, now).unwrap();
    table.add_mux(1, None);
    for lane in 1..MAX_LANES {
        assert_eq!(
            taken(table.choose(&Affinity::None, true, 1, now)).lane,
            lane
        );
        if lane == MAX_IN_FLIGHT - 1 {
            // Half the lanes go idle with heads so the other half can start.
            for done in 0..MAX_IN_FLIGHT {
                let digest = 100 + done as u128;
                let later = now + std::time::Duration::from_secs(done as u64 + 1);
                table.finish(
                    1,
                    done,
                    Finish::Head(Some(head(&format!("r{done}"), digest))),
                    later,
                );
            }
        }
    }
    for done in MAX_IN_FLIGHT..MAX_LANES {
        let later = now + std::time::Duration::from_secs(60);
        let head = head(&format!("r{done}"), 100 + done as u128);
        table.finish(1, done, Finish::Head(Some(head)), later);
    }
    assert_eq!(table.lanes_in_use(), MAX_LANES);
    let evicting = taken(table.choose(&Affinity::None, true, 1, now));
    assert_eq!(
        (evicting.lane, evicting.evicted),
        (0, true),
        "r0 is the oldest"
    );
    assert!(
        table.find(&extend(&[100])).is_none(),
        "r0 is no longer offered"
    );
    assert!(table.find(&extend(&[101])).is_some());
}

#[test]
fn a_refused_lane_caps_its_socket_and_the_next_conversation_goes_elsewhere() {
    let (mut table, now) = one_head();
    let second = taken(table.choose(&Affinity::None, true, 4, now));
    assert_eq!(second.lane, 1);
    table.refuse_lane(1, 1, now);
    // Lane 0 holds r1, lane 1 may not exist: a new socket.
    assert_eq!(
        table.choose(&Affinity::None, true, 4, now),
        Ok(Pick::Connect(None))
    );
    assert_eq!(table.add_mux(2, None).mux, 2);
    let continued = taken(table.choose(&extend(&[11]), true, 4, now));
    assert_eq!(
        (continued.mux, continued.lane),
        (1, 0),
        "its own lane still works"
    );
}

#[test]
fn a_retired_or_closed_socket_offers_no_head_and_only_its_turns_are_lost() {
    let (mut table, now) = one_head();
    table.add_mux(2, None);
    table.finish(2, 0, Finish::Head(Some(head("r2", 22))), now);
    let busy = taken(table.choose(&extend(&[22]), true, 4, now));
    assert_eq!(busy.mux, 2);
    assert!(!table.retire(2), "a turn is still in flight on it");
    assert!(
        table.finish(2, 0, Finish::Head(Some(head("r2b", 23))), now),
        "now idle"
    );
    assert!(
        table.find(&extend(&[23])).is_none(),
        "a retiring socket keeps no head"
    );
    table.remove_mux(2);
    assert_eq!(table.sockets(), (1, 0));
    let continued = taken(table.choose(&extend(&[11]), true, 4, now));
    assert_eq!(
        (continued.mux, continued.matched.unwrap().previous.as_str()),
        (1, "r1")
    );
    assert!(
        !table.finish(2, 0, Finish::Head(None), now),
        "a late finish on a gone socket is ignored"
    );
}

#[test]
fn a_request_that_only_fits_as_a_continuation_gets_its_lane_or_nothing() {
    let (mut table, now) = one_head();
    let only = |prefixes| Affinity::Only {
        prefixes,
        model: "m",
    };
    assert_eq!(table.choose(&only(&[99]), true, 4, now), Err(NoMatch));
    let continued = taken(table.choose(&only(&[11, 12]), true, 4, now));
    assert_eq!(continued.matched.unwrap().previous, "r1");
}
